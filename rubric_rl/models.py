"""Loading the three models (policy, teacher, target) and their tokenizers.

Real runs name a hub id or a local path; that goes through ``AutoModelForCausalLM`` /
``AutoTokenizer`` as usual. Tests and the offline quickstart name a *tiny spec* instead::

    tiny:hidden=64,layers=2,heads=4,seed=0

which builds a small randomly initialised Llama-style model in-process, with a byte-level BPE
tokenizer trained on the fly on a text corpus (the shipped quickstart world by default) and cached
on disk. The tiny path is an offline stand-in, never a replacement for the hub path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

TINY_PREFIX = "tiny:"

# The chat format of tiny tokenizers. ``{% generation %}`` marks assistant tokens so that
# ``apply_chat_template(..., return_assistant_tokens_mask=True)`` works as for real chat models.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|unk|>"]


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def default_tiny_corpus() -> list[Path]:
    """The files a tiny tokenizer is trained on when a config names none: the shipped quickstart world."""
    base = repo_root() / "data" / "quickstart"
    return sorted(p for p in base.glob("*.jsonl")) + sorted(base.glob("*.json"))


def cache_dir() -> Path:
    path = Path(os.environ.get("RUBRIC_RL_CACHE", Path.home() / ".cache" / "rubric_rl"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class TinySpec:
    """A tiny random model, for tests and the offline quickstart."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 0  # 0 means 2 * hidden
    vocab: int = 2048
    seed: int = 0
    max_positions: int = 1024

    @classmethod
    def parse(cls, spec: str) -> "TinySpec":
        if not spec.startswith(TINY_PREFIX):
            raise ValueError(f"not a tiny spec: {spec!r} (expected it to start with {TINY_PREFIX!r})")
        body = spec[len(TINY_PREFIX):].strip()
        kwargs: dict[str, int] = {}
        names = set(cls.__dataclass_fields__)
        for part in filter(None, (p.strip() for p in body.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key not in names:
                raise ValueError(
                    f"bad tiny spec {spec!r}: {part!r} is not one of {sorted(names)} as key=value"
                )
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise ValueError(f"bad tiny spec {spec!r}: {key} must be an integer, got {value!r}") from None
        out = cls(**kwargs)
        if out.hidden % out.heads:
            raise ValueError(f"bad tiny spec {spec!r}: hidden={out.hidden} is not divisible by heads={out.heads}")
        return out


def is_tiny(name_or_path: str) -> bool:
    return isinstance(name_or_path, str) and name_or_path.startswith(TINY_PREFIX)


def _corpus_texts(paths: Sequence[str | Path]) -> Iterable[str]:
    """The string values of JSON/JSONL files, and the raw JSON too (so keys and JSON syntax get merges)."""
    for path in paths:
        path = Path(path)
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield _flatten_strings(json.loads(line))
                        yield line
        else:
            raw = path.read_text(encoding="utf-8")
            yield _flatten_strings(json.loads(raw))
            yield raw
            yield json.dumps(json.loads(raw), ensure_ascii=False)


def _flatten_strings(obj) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        return "\n".join(_flatten_strings(v) for v in obj.values())
    if isinstance(obj, list):
        return "\n".join(_flatten_strings(v) for v in obj)
    return str(obj) if obj is not None else ""


def build_tiny_tokenizer(vocab_size: int = 2048, corpus: Sequence[str | Path] | None = None):
    """Train (or load from cache) a byte-level BPE tokenizer on ``corpus`` files; returns a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [Path(p) for p in (corpus or default_tiny_corpus())]
    missing = [str(p) for p in corpus if not p.exists()]
    if missing:
        raise FileNotFoundError(f"tiny tokenizer corpus file(s) not found: {missing}")
    if not corpus:
        raise FileNotFoundError("tiny tokenizer: no corpus files (run scripts/make_quickstart_world.py?)")
    digest = hashlib.sha256(f"v2|{vocab_size}|{TINY_CHAT_TEMPLATE}".encode())
    for p in corpus:
        digest.update(p.read_bytes())
    target = cache_dir() / "tokenizers" / digest.hexdigest()[:16]
    if not (target / "tokenizer.json").exists():
        tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=TINY_SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_corpus_texts(corpus), trainer=trainer)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=None,
            eos_token="<|end|>",
            pad_token="<|pad|>",
            unk_token="<|unk|>",
        )
        fast.chat_template = TINY_CHAT_TEMPLATE
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        fast.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; theirs is identical
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(str(target))


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, corpus=None, padding_side: str = "left"):
    """A tokenizer for ``name_or_path`` (hub id, local path, or tiny spec) with a pad token and a chat template."""
    from transformers import AutoTokenizer

    if is_tiny(name_or_path):
        tok = build_tiny_tokenizer(TinySpec.parse(name_or_path).vocab, corpus)
    else:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    if tok.chat_template is None:
        raise ValueError(
            f"tokenizer of {name_or_path!r} has no chat template; rubric-rl needs chat models "
            "(use an instruct/chat checkpoint)"
        )
    return tok


def build_tiny_model(spec: TinySpec, tokenizer, dtype: torch.dtype = torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate or 2 * spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.to(dtype)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)} or 'auto'")
    return table[dtype]


def load_causal_lm(
    name_or_path: str,
    tokenizer=None,
    *,
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
):
    """A causal LM for ``name_or_path``: hub id / local path via ``from_pretrained``, or a tiny random model."""
    from transformers import AutoModelForCausalLM

    if is_tiny(name_or_path):
        if tokenizer is None:
            tokenizer = load_tokenizer(name_or_path)
        resolved = resolve_dtype(dtype)
        model = build_tiny_model(TinySpec.parse(name_or_path), tokenizer,
                                 torch.float32 if resolved == "auto" else resolved)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code
        )
    if device is not None:
        model.to(device)
    return model


def load_model_and_tokenizer(name_or_path: str, *, dtype="auto", trust_remote_code=False, device=None,
                             padding_side: str = "left"):
    tok = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code, padding_side=padding_side)
    model = load_causal_lm(name_or_path, tok, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
    return model, tok
