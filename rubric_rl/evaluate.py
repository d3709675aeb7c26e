"""``rubric-rl evaluate``: the downstream proof that a rubric source's data helps the target.

::

    rubric-rl evaluate --config configs/evaluate_quickstart.yaml \\
        --sources trained=runs/X/export seed=data/quickstart/seed_rubrics.json none=none --output REPORT_DIR

For every source (an exported rubric generator, a rubrics JSON file, or ``none``) and every seed in
``eval_seeds``, with the same documents, teacher, budget and teacher seeds for all sources:

1. synthesize ``eval_num_samples`` accepted samples (at most ``eval_max_queries_per_sample`` items per
   sample are tried; an item is one rubric + one teacher query, an unparseable generated rubric is an
   item that fails) -- the dataset's validity rate, size in tokens and diversity (distinct n-grams) are
   recorded;
2. score the dataset's mean influence on the validation set (the same estimator as the RL reward;
   warm-up in ``eval_influence_run_dir``, default ``REPORT_DIR/influence``);
3. fine-tune a fresh copy of the target on it (``eval_finetune``: full or LoRA);
4. measure the target on the held-out test set: loss on the answer tokens, and where items are multiple
   choice, acc / acc_norm by answer log-likelihood (:mod:`rubric_rl.mcscore`).

Outputs in REPORT_DIR: ``report.json`` (every number), ``report.md`` (tables), ``heldout.png`` (held-out
metrics per source, mean +- std over seeds, seeds as dots, the untrained target as a dashed line),
``influence_vs_gain.png`` (the Pearson r between a dataset's mean influence and its held-out gain over
the (source, seed) datasets), ``reward_curve_<source>.png`` for generator sources whose export names its
run (``rubric_rl_export.json`` -> ``run_dir`` -> ``metrics.jsonl``), and ``datasets/<source>/seed<k>.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .jsonl import iter_log_rows, write_jsonl
from .stats import pearson, spearman

logger = logging.getLogger(__name__)

REPORT_FORMAT = 1
FINETUNE_MODES = ("full", "lora")
PRIMARY_METRICS = ("loss", "acc", "acc_norm")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
LOWER_IS_BETTER = {"loss": True, "acc": False, "acc_norm": False}
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ============================================================================================ config
@dataclass
class EvalConfig:
    """Downstream evaluation of rubric sources (flat ``eval_*`` fields, parsed with the teacher and influence
    configs)."""

    eval_documents: str = field(
        default="data/quickstart/documents.jsonl",
        metadata={"help": "Documents the samples are written from (jsonl/json/parquet or a datasets folder)."},
    )
    eval_document_text_field: str = field(default="text", metadata={"help": "Field of the document text."})
    eval_test_data: str = field(
        default="data/quickstart/test.jsonl",
        metadata={"help": "Held-out test set, chat jsonl ({'messages': [...]}); items with 'choices' and 'answer' "
                          "(a letter) are also scored as multiple choice. Never the validation set."},
    )
    eval_target_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Target model fine-tuned on each dataset (hub id, path or tiny spec). Default: "
                          "target_model_name_or_path, the target the generator was rewarded on."},
    )
    eval_target_dtype: str = field(default="float32", metadata={"help": "dtype of the fine-tuned target."})
    eval_finetune: str = field(
        default="full", metadata={"help": f"How the target is fine-tuned: one of {list(FINETUNE_MODES)}."}
    )
    eval_lora_r: int = field(default=8, metadata={"help": "LoRA rank (eval_finetune=lora)."})
    eval_lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (eval_finetune=lora)."})
    eval_lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "LoRA target modules (eval_finetune=lora), or 'all-linear'."},
    )
    eval_epochs: float = field(default=3.0, metadata={"help": "Fine-tuning epochs over each dataset."})
    eval_learning_rate: float = field(default=1e-3, metadata={"help": "Peak fine-tuning learning rate (AdamW)."})
    eval_lr_scheduler_type: str = field(
        default="linear", metadata={"help": f"Learning-rate schedule, one of {list(SCHEDULERS)}."}
    )
    eval_warmup_ratio: float = field(default=0.05, metadata={"help": "Share of steps ramping the learning rate up."})
    eval_weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    eval_max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 = off)."})
    eval_batch_size: int = field(default=16, metadata={"help": "Fine-tuning batch size (samples)."})
    eval_max_length: int = field(default=512, metadata={"help": "Samples and test items are cut to this many tokens."})
    eval_num_samples: int = field(
        default=200, metadata={"help": "Budget: accepted samples per (source, seed) dataset, the same for every source."}
    )
    eval_max_queries_per_sample: float = field(
        default=2.0,
        metadata={"help": "Items tried per wanted sample at most (an item = one rubric + one teacher query). A source "
                          "that runs out has a smaller dataset; the report says so."},
    )
    eval_seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "Seeds: each gives every source the same document order and teacher seeds, its own rubric "
                          "generations, and its own fine-tuning order (and LoRA init)."},
    )
    eval_decontaminate: bool = field(
        default=True,
        metadata={"help": "Reject samples that overlap a test item (n-gram decontamination, as `rubric-rl synthesize`)."},
    )
    eval_influence: bool = field(
        default=True, metadata={"help": "Score each dataset's mean influence (needs influence_validation_data)."}
    )
    eval_influence_run_dir: str | None = field(
        default=None,
        metadata={"help": "Folder holding (or receiving) the target warm-up and validation-gradient cache used for "
                          "influence. Default: REPORT_DIR/influence. A training run's folder reuses its warm-up if "
                          "the target_*/warmup_* arguments match (else it refuses, naming the differences)."},
    )
    eval_primary_metric: str = field(
        default="loss",
        metadata={"help": f"Held-out metric that ranks sources and defines the gain, one of {list(PRIMARY_METRICS)}."},
    )
    eval_mc_context: str = field(
        default="reasoning_prefix",
        metadata={"help": "Multiple-choice context: 'reasoning_prefix' (prompt + gold answer up to the gold choice "
                          "text, which holds no answer information) or 'prompt' (prompt only); continuations are the "
                          "choice texts. See rubric_rl/mcscore.py."},
    )
    eval_score_batch_size: int = field(default=32, metadata={"help": "Batch size of held-out scoring."})
    eval_generator_batch_size: int = field(default=16, metadata={"help": "Documents per rubric-generator call."})
    eval_device: str = field(default="auto", metadata={"help": "Device for fine-tuning and scoring: auto, cpu, cuda..."})
    eval_torch_num_threads: int = field(
        default=0, metadata={"help": "CPU threads for torch (0 = torch's default; 1 is fastest for tiny models)."}
    )
    eval_save_datasets: bool = field(
        default=True, metadata={"help": "Write every dataset to REPORT_DIR/datasets/<source>/seed<k>.jsonl."}
    )
    eval_progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        if self.eval_finetune not in FINETUNE_MODES:
            raise ValueError(f"eval_finetune must be one of {list(FINETUNE_MODES)}, got {self.eval_finetune!r}")
        if self.eval_primary_metric not in PRIMARY_METRICS:
            raise ValueError(f"eval_primary_metric must be one of {list(PRIMARY_METRICS)}, got {self.eval_primary_metric!r}")
        if self.eval_lr_scheduler_type not in SCHEDULERS:
            raise ValueError(f"eval_lr_scheduler_type must be one of {list(SCHEDULERS)}, got {self.eval_lr_scheduler_type!r}")
        from .mcscore import MC_CONTEXT_MODES

        if self.eval_mc_context not in MC_CONTEXT_MODES:
            raise ValueError(f"eval_mc_context must be one of {list(MC_CONTEXT_MODES)}, got {self.eval_mc_context!r}")
        for name in ("eval_lora_r", "eval_batch_size", "eval_max_length", "eval_num_samples", "eval_score_batch_size",
                     "eval_generator_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("eval_epochs", "eval_learning_rate", "eval_lora_alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.eval_max_queries_per_sample < 1:
            raise ValueError(f"eval_max_queries_per_sample must be >= 1, got {self.eval_max_queries_per_sample!r}")
        if not 0 <= self.eval_warmup_ratio < 1:
            raise ValueError(f"eval_warmup_ratio must be in [0, 1), got {self.eval_warmup_ratio!r}")
        for name in ("eval_weight_decay", "eval_max_grad_norm", "eval_torch_num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if isinstance(self.eval_seeds, int):
            self.eval_seeds = [self.eval_seeds]
        if not self.eval_seeds or len(set(self.eval_seeds)) != len(self.eval_seeds):
            raise ValueError(f"eval_seeds must be a non-empty list of distinct integers, got {self.eval_seeds!r}")
        if isinstance(self.eval_lora_target_modules, str):
            self.eval_lora_target_modules = [self.eval_lora_target_modules]
        if not self.eval_documents:
            raise ValueError("eval_documents must name a documents file")
        if not self.eval_test_data:
            raise ValueError("eval_test_data must name the held-out test file")


@dataclass
class EvalArguments:
    sources: list[str] | None = field(
        default=None,
        metadata={"help": "Rubric sources to compare, NAME=SPEC each (repeat the flag or list them): SPEC is an "
                          "exported rubric generator folder, a rubrics JSON file, or 'none' (no rubric)."},
    )
    output: str | None = field(default=None, metadata={"help": "Report folder (report.json, report.md, plots)."})

    def __post_init__(self):
        if isinstance(self.sources, dict):  # YAML mapping {name: spec}
            self.sources = [f"{k}={v}" for k, v in self.sources.items()]
        if isinstance(self.sources, str):
            self.sources = self.sources.split()
        if not self.sources:
            raise ValueError("--sources is required: NAME=SPEC ... (SPEC: export folder, rubrics JSON, or 'none')")
        parse_sources(self.sources)
        if not self.output:
            raise ValueError("--output is required (the report folder)")


def parse_sources(items: list[str]) -> dict[str, str]:
    """``["a=SPEC", ...]`` -> ``{"a": "SPEC"}`` (order kept); names must be unique."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = str(item).partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            raise ValueError(f"sources: {item!r} is not NAME=SPEC")
        if not _SOURCE_NAME.match(name):
            raise ValueError(f"sources: name {name!r} must be letters, digits, '_', '.', '-'")
        if name in out:
            raise ValueError(f"sources: name {name!r} is given twice")
        out[name] = spec
    return out


@dataclass
class Source:
    name: str
    kind: str  # none | file | generator
    spec: str
    rubrics: list | None = None
    run_dir: str | None = None  # the training run of a generator (from its export metadata)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "spec": self.spec, "run_dir": self.run_dir,
                "num_rubrics": len(self.rubrics) if self.rubrics is not None else None}


def resolve_source(name: str, spec: str) -> Source:
    """A source from its SPEC; errors name the source and the SPEC."""
    from .data.documents import DataFileError, load_rubric_file
    from .errors import UserError
    from .generator import EXPORT_META

    if spec == "none":
        return Source(name, "none", spec)
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"source {name}={spec!r}: folder is not an exported rubric generator (no config.json)")
        run_dir = None
        meta_path = path / EXPORT_META
        if meta_path.exists():
            run_dir = json.loads(meta_path.read_text()).get("run_dir")
        return Source(name, "generator", spec, run_dir=run_dir)
    if path.is_file():
        try:
            return Source(name, "file", spec, rubrics=load_rubric_file(path))
        except DataFileError as err:
            raise UserError(f"source {name}={spec!r}: {err}") from None
    raise UserError(f"source {name}={spec!r} is neither 'none', an existing rubrics JSON file, nor an exported "
                     "rubric generator folder")


# ============================================================================================ synthesis
def _permutation(seed: int, epoch: int, n: int) -> list[int]:
    return random.Random(f"eval:{seed}:{epoch}").sample(range(n), n)


class _GeneratedRubrics:
    """One rubric per (document, epoch) from a generator, made lazily; generation seeds derive from the eval seed."""

    def __init__(self, generator, docs: list[dict], seed: int, batch_size: int):
        self.generator, self.docs, self.seed, self.batch_size = generator, docs, seed, batch_size
        self.epochs: dict[int, list] = {}

    def get(self, epoch: int, doc_index: int):
        if epoch not in self.epochs:
            texts = [d["text"] for d in self.docs]
            # the generator seeds torch's global RNG: keep that from leaking into fine-tuning
            with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
                rubrics = list(self.generator.generate(texts, seed=self.seed * 10_007 + epoch,
                                                       batch_size=self.batch_size))
            if len(rubrics) != len(texts):
                raise RuntimeError(f"rubric generator returned {len(rubrics)} rubrics for {len(texts)} documents")
            self.epochs[epoch] = rubrics
        return self.epochs[epoch][doc_index]


def synthesize_dataset(source: Source, docs: list[dict], synthesizer, *, num_samples: int, max_items: int,
                       seed: int, generator=None, generator_batch_size: int = 16) -> tuple[list[dict], dict]:
    """Accepted samples (``{"messages", "doc_id", "rubric", "item"}``) and the synthesis stats.

    Item k (the same for every source under one seed): document ``perm(seed, epoch)[pos]`` with
    ``epoch, pos = divmod(k, n_docs)``, teacher seed ``seed * 1_000_003 + k``; the rubric is the source's
    (file: ``rubrics[k % R]``; generator: its rubric for that document in that epoch; none: no rubric).
    Items are sent in chunks until ``num_samples`` are accepted or ``max_items`` tried.
    """
    from .synth.engine import SynthItem

    gen = _GeneratedRubrics(generator, docs, seed, generator_batch_size) if source.kind == "generator" else None
    samples: list[dict] = []
    reasons: Counter = Counter()
    k = tried = queries = 0
    while len(samples) < num_samples and k < max_items:
        rate = len(samples) / tried if tried else 1.0
        size = min(max_items - k, max(8, math.ceil((num_samples - len(samples)) / max(rate, 0.1) * 1.1)))
        items, plan = [], []
        for kk in range(k, k + size):
            epoch, pos = divmod(kk, len(docs))
            d = _permutation(seed, epoch, len(docs))[pos]
            if source.kind == "none":
                rubric = None
            elif source.kind == "file":
                rubric = source.rubrics[kk % len(source.rubrics)]
            else:
                rubric = gen.get(epoch, d)
                if rubric is None:
                    continue  # an item that fails without a query (counted below)
            items.append(SynthItem(document=docs[d]["text"], rubric=rubric, doc_id=docs[d]["id"],
                                   seed=seed * 1_000_003 + kk))
            plan.append(kk)
        outcomes = dict(zip(plan, synthesizer.synthesize(items) if items else [], strict=True))
        queries += len(items)
        by_k = dict(zip(plan, items, strict=True))
        for kk in range(k, k + size):
            if len(samples) >= num_samples:
                break  # items past the last wanted sample do not count (the last chunk may overshoot)
            tried += 1
            if kk not in outcomes:
                reasons["rubric_unparseable"] += 1
                continue
            out, item = outcomes[kk], by_k[kk]
            if not out.valid:
                reasons[out.reason] += 1
            else:
                samples.append({"messages": out.messages, "doc_id": item.doc_id, "item": kk,
                                "rubric": item.rubric.to_dict() if item.rubric is not None else None})
        k += size
    stats = {"items_tried": tried, "teacher_queries": queries, "accepted": len(samples),
             "validity_rate": len(samples) / tried if tried else 0.0,
             "rejected": dict(sorted(reasons.items())), "budget_exhausted": len(samples) < num_samples}
    if gen is not None:
        made = [r for e in gen.epochs.values() for r in e]
        stats["rubrics_generated"] = len(made)
        stats["rubric_parse_rate"] = sum(r is not None for r in made) / len(made) if made else 0.0
    return samples, stats


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique word n-grams / all word n-grams over the dataset."""
    total, seen = 0, set()
    for t in texts:
        w = _words(t)
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def dataset_stats(samples: list[dict], tokenizer, max_length: int) -> dict:
    """Size in target tokens (all and loss-bearing), distinct-1/2/3, unique samples, question formats."""
    from .data.chat import tokenize_chat

    texts = ["\n".join(m["content"] for m in s["messages"]) for s in samples]
    tokens = loss_tokens = truncated = 0
    for s in samples:
        chat = tokenize_chat(tokenizer, s["messages"], max_length)
        tokens += len(chat.input_ids)
        loss_tokens += chat.num_loss_tokens
        truncated += chat.truncated
    formats = Counter(_sample_format(s["messages"]) for s in samples)
    return {"samples": len(samples), "tokens": tokens, "answer_tokens": loss_tokens, "truncated": truncated,
            "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2), "distinct_3": distinct_n(texts, 3),
            "unique_samples": len(set(texts)) / len(texts) if texts else 0.0,
            "formats": dict(sorted(formats.items()))}


def _sample_format(messages: list[dict]) -> str:
    """A coarse label of a sample's shape (question type + answer type), for the report."""
    q = next((m["content"] for m in messages if m["role"] == "user"), "")
    a = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
    qt = ("mc" if re.search(r"^\(A\)", q, re.M) else "tf" if "true or false" in q.lower()
          else "cloze" if "____" in q else "open")
    at = ("reasoning" if "step by step" in a.lower() else "short" if len(a.split()) <= 4 else "sentence")
    if re.search(r"The answer is \([A-Z]\)\.\s*$", a):
        at += "+letter"
    return f"{qt}/{at}"


# ============================================================================================ fine-tuning
def _device(name: str) -> torch.device:
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_target(cfg: EvalConfig, target: str, tokenizer, device, seed: int, trust_remote_code: bool = False):
    """A fresh target: the base model, plus a LoRA adapter (initialised from ``seed``) for eval_finetune=lora."""
    from .models import load_causal_lm

    model = load_causal_lm(target, tokenizer, dtype=cfg.eval_target_dtype, trust_remote_code=trust_remote_code)
    if cfg.eval_finetune == "lora":
        from peft import LoraConfig, get_peft_model

        mods = cfg.eval_lora_target_modules
        lora = LoraConfig(r=cfg.eval_lora_r, lora_alpha=cfg.eval_lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules="all-linear" if mods == ["all-linear"] else mods)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_peft_model(model, lora)
    return model.to(device)


def finetune(model, tokenizer, samples: list[dict], cfg: EvalConfig, *, seed: int, progress: bool = False) -> dict:
    """Plain AdamW fine-tuning on the assistant tokens of ``samples`` (token-mean loss per batch)."""
    from transformers import get_scheduler

    from .data.chat import IGNORE_INDEX, tokenize_chat
    from .mcscore import _pad_batch

    chats = [tokenize_chat(tokenizer, s["messages"], cfg.eval_max_length) for s in samples]
    chats = [c for c in chats if c.num_loss_tokens > 0]
    if not chats:
        return {"steps": 0, "train_loss_first": None, "train_loss_last": None, "seconds": 0.0}
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.eval_learning_rate, weight_decay=cfg.eval_weight_decay)
    per_epoch = math.ceil(len(chats) / cfg.eval_batch_size)
    total = max(1, math.ceil(cfg.eval_epochs * per_epoch))
    sched = get_scheduler(cfg.eval_lr_scheduler_type, opt, num_warmup_steps=int(cfg.eval_warmup_ratio * total),
                          num_training_steps=total)
    rng = random.Random(f"finetune:{seed}")
    pad = tokenizer.pad_token_id or 0
    losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    step = 0
    order: list[int] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="fine-tune", leave=False, disable=not progress, dynamic_ncols=True)
    while step < total:
        if not order:
            order = list(range(len(chats)))
            rng.shuffle(order)
        batch = [chats[i] for i in order[:cfg.eval_batch_size]]
        order = order[cfg.eval_batch_size:]
        ids, mask = _pad_batch([c.input_ids for c in batch], pad, device)
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, c in enumerate(batch):
            labels[row, :len(c.labels)] = torch.tensor(c.labels, dtype=torch.long)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:],
                                                 ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.eval_max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.eval_max_grad_norm)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        step += 1
        bar.update(1)
    bar.close()
    model.eval()
    k = max(1, min(5, len(losses)))
    return {"steps": total, "train_loss_first": sum(losses[:k]) / k, "train_loss_last": sum(losses[-k:]) / k,
            "seconds": round(time.perf_counter() - t0, 3)}


def heldout_metrics(model, tokenizer, test_items: list[dict], cfg: EvalConfig) -> dict:
    from .mcscore import answer_loss, is_mc_item, score_multiple_choice

    loss = answer_loss(model, tokenizer, test_items, batch_size=cfg.eval_score_batch_size,
                       max_length=cfg.eval_max_length)
    out = {"loss": loss["loss"], "item_mean_loss": loss["item_mean_loss"], "answer_tokens": loss["tokens"]}
    mc_items = [it for it in test_items if is_mc_item(it)]
    if mc_items:
        mc = score_multiple_choice(model, tokenizer, mc_items, mode=cfg.eval_mc_context,
                                   batch_size=cfg.eval_score_batch_size, max_length=cfg.eval_max_length)
        out.update(acc=mc["acc"], acc_norm=mc["acc_norm"], gold_choice_nll=mc["gold_nll"], mc_items=mc["n"],
                   mc_context_modes=mc["modes"],
                   per_subtask=mc["per_subtask"])
    else:
        out.update(acc=None, acc_norm=None, gold_choice_nll=None, mc_items=0)
    return out


# ============================================================================================ statistics
def _stats(values: list[float]) -> dict:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "values": values}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(vals), "max": max(vals), "n": len(vals), "values": values}


def correlation(x: list[float], y: list[float], *, permutations: int = 10000, seed: int = 0,
                bootstrap: int = 2000) -> dict:
    """Pearson r, Spearman rho, a two-sided permutation p-value of r, and a 95% percentile bootstrap interval
    of r over (x, y) pairs resampled with replacement (no scipy needed)."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
    r = pearson(xs, ys)
    out = {"n": len(pairs), "pearson_r": r, "spearman_rho": spearman(xs, ys) if r is not None else None,
           "p_permutation": None}
    if r is not None:
        rng = random.Random(seed)
        yy = list(ys)
        hits = 0
        for _ in range(permutations):
            rng.shuffle(yy)
            rp = pearson(xs, yy)
            hits += rp is not None and abs(rp) >= abs(r) - 1e-12
        out["p_permutation"] = (hits + 1) / (permutations + 1)
        boot = []
        for _ in range(bootstrap):
            idx = [rng.randrange(len(xs)) for _ in xs]
            rb = pearson([xs[i] for i in idx], [ys[i] for i in idx])
            if rb is not None:
                boot.append(rb)
        boot.sort()
        out["pearson_ci95"] = ([boot[int(0.025 * (len(boot) - 1))], boot[int(0.975 * (len(boot) - 1))]]
                               if len(boot) >= 20 else None)
    return out


def _gain(metric: str, value, base) -> float | None:
    if value is None or base is None:
        return None
    return (base - value) if LOWER_IS_BETTER[metric] else (value - base)


# ============================================================================================ the run
def evaluate(eval_cfg: EvalConfig, teacher_cfg, influence_cfg, sources: dict[str, str], output_dir,
             *, teacher=None, generators: dict | None = None) -> dict:
    """Compare rubric sources downstream (module docstring); writes REPORT_DIR and returns the report dict.

    ``teacher`` replaces the one ``teacher_cfg`` names; ``generators`` maps a source name to an object with
    ``generate(texts, seed=, batch_size=) -> list[Rubric | None]`` (an already loaded generator, or a stub in
    tests) used instead of loading its SPEC.
    """
    from tqdm.auto import tqdm

    from .data.documents import load_chat_samples, load_documents
    from .models import load_tokenizer
    from .synth.engine import SampleSynthesizer
    from .synth.verifiers import default_verifiers

    cfg = eval_cfg
    t_start = time.perf_counter()
    from .provenance import provenance

    made_by = provenance()  # at the start: the code that runs, not the HEAD at the end
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.eval_torch_num_threads:
        torch.set_num_threads(cfg.eval_torch_num_threads)
    device = _device(cfg.eval_device)
    generators = dict(generators or {})

    resolved = []
    for n, s in sources.items():
        if n in generators:  # an injected generator; an export folder SPEC still names its training run
            src = resolve_source(n, s) if Path(s).is_dir() else Source(n, "generator", s)
            src.kind = "generator"
        else:
            src = resolve_source(n, s)
        resolved.append(src)
    if not resolved:
        raise ValueError("sources: nothing to evaluate")
    docs = [d for d in load_documents(cfg.eval_documents, text_field=cfg.eval_document_text_field) if d["text"].strip()]
    test_items = load_chat_samples(cfg.eval_test_data)  # errors name the file and the sample
    target = cfg.eval_target_model_name_or_path or influence_cfg.target_model_name_or_path
    trust = bool(getattr(influence_cfg, "target_trust_remote_code", False))
    tokenizer = load_tokenizer(target, trust_remote_code=trust, padding_side="right")

    if teacher is None:
        from .teachers.factory import build_teacher

        teacher = build_teacher(teacher_cfg, documents=[d["text"] for d in docs], device=device)
    eval_items = None
    if cfg.eval_decontaminate:
        from .synth.decontam import load_eval_items

        # (load_eval_items tags items with their file, which the decontaminator's boilerplate detection needs)
        eval_items = load_eval_items([cfg.eval_test_data])

    # The untrained target: the reference of every gain.
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        base_model = load_target(EvalConfig(**{**asdict(cfg), "eval_finetune": "full"}), target, tokenizer, device,
                                 seed=0, trust_remote_code=trust)
    base_model.eval()
    baseline = heldout_metrics(base_model, tokenizer, test_items, cfg)
    del base_model
    timing = {"baseline_s": round(time.perf_counter() - t0, 3), "synthesis_s": 0.0, "influence_s": 0.0,
              "finetune_s": 0.0, "heldout_s": 0.0, "generator_load_s": 0.0}
    logger.info("untrained target %s: test loss %.4f, acc %s", target, baseline["loss"], baseline.get("acc"))

    scorer = None
    influence_dir = None
    if cfg.eval_influence:
        if not getattr(influence_cfg, "influence_validation_data", None):
            raise ValueError("eval_influence needs influence_validation_data (the validation chat jsonl); set it or "
                             "pass --eval_influence false")
        influence_dir = Path(cfg.eval_influence_run_dir) if cfg.eval_influence_run_dir else out_dir / "influence"

    runs: list[dict] = []
    total = len(cfg.eval_seeds) * len(resolved)
    bar = tqdm(total=total, desc="evaluate", disable=not cfg.eval_progress, dynamic_ncols=True)
    max_items = math.ceil(cfg.eval_max_queries_per_sample * cfg.eval_num_samples)
    for seed in cfg.eval_seeds:
        for src in resolved:
            bar.set_postfix(source=src.name, seed=seed, refresh=True)
            gen = None
            if src.kind == "generator":
                gen = generators.get(src.name)
                if gen is None:
                    from .generator import RubricGenerator

                    t0 = time.perf_counter()
                    gen = RubricGenerator.from_pretrained(src.spec, device=device)
                    generators[src.name] = gen
                    timing["generator_load_s"] += time.perf_counter() - t0
            # a fresh verifier chain per dataset (no state shared between sources or seeds)
            synth = SampleSynthesizer(teacher, default_verifiers(eval_items=eval_items))
            t0 = time.perf_counter()
            samples, sstats = synthesize_dataset(src, docs, synth, num_samples=cfg.eval_num_samples,
                                                 max_items=max_items, seed=seed, generator=gen,
                                                 generator_batch_size=cfg.eval_generator_batch_size)
            timing["synthesis_s"] += time.perf_counter() - t0
            dstats = dataset_stats(samples, tokenizer, cfg.eval_max_length)
            ds_path = None
            if cfg.eval_save_datasets:
                ds_path = out_dir / "datasets" / src.name / f"seed{seed}.jsonl"
                write_jsonl(ds_path, samples)

            infl = {"mean": None, "std": None, "scored": 0}
            if cfg.eval_influence and samples:
                t0 = time.perf_counter()
                if scorer is None:
                    from .influence import InfluenceScorer

                    with torch.random.fork_rng(devices=[]):
                        scorer = InfluenceScorer.from_config(influence_cfg, influence_dir)
                vals = [r.value for r in scorer.score([s["messages"] for s in samples]) if r.value is not None
                        and math.isfinite(r.value)]
                st = _stats(vals)
                infl = {"mean": st["mean"], "std": st["std"], "scored": len(vals)}
                timing["influence_s"] += time.perf_counter() - t0

            t0 = time.perf_counter()
            model = load_target(cfg, target, tokenizer, device, seed=seed, trust_remote_code=trust)
            with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
                torch.manual_seed(seed)
                ft = finetune(model, tokenizer, samples, cfg, seed=seed, progress=False)
            timing["finetune_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            held = heldout_metrics(model, tokenizer, test_items, cfg) if samples else dict(baseline)
            timing["heldout_s"] += time.perf_counter() - t0
            del model
            gains = {m: _gain(m, held.get(m), baseline.get(m)) for m in PRIMARY_METRICS}
            runs.append({"source": src.name, "seed": seed, "synthesis": sstats, "dataset": dstats,
                         "dataset_path": str(ds_path) if ds_path else None, "influence": infl, "finetune": ft,
                         "heldout": held, "gain": gains})
            logger.info("%s seed %d: %d samples (validity %.2f), influence %s, test loss %.4f, acc %s", src.name, seed,
                        len(samples), sstats["validity_rate"], _fmt(infl["mean"]), held["loss"], _fmt(held.get("acc")))
            bar.update(1)
    bar.close()
    if scorer is not None:
        scorer.close()

    from .mcscore import is_mc_item

    report = build_report(cfg, teacher_cfg, influence_cfg, resolved, runs, baseline, target=target,
                          influence_dir=influence_dir,
                          choices_per_item=[len(it["choices"]) for it in test_items if is_mc_item(it)])
    report.update(made_by)
    timing = {k: round(v, 3) for k, v in timing.items()}
    report["timing"] = timing
    report["plots"] = write_plots(report, resolved, out_dir)
    report["timing"]["total_s"] = round(time.perf_counter() - t_start, 3)
    (out_dir / "report.json").write_text(json.dumps(_jsonable(report), indent=1) + "\n")
    (out_dir / "report.md").write_text(format_markdown(report))
    return report


def build_report(cfg, teacher_cfg, influence_cfg, sources: list[Source], runs: list[dict], baseline: dict, *,
                 target: str, influence_dir, choices_per_item: list[int] | None = None) -> dict:
    primary = cfg.eval_primary_metric
    summary: dict[str, dict] = {}
    for src in sources:
        rs = [r for r in runs if r["source"] == src.name]
        summary[src.name] = {
            **{m: _stats([r["heldout"].get(m) for r in rs]) for m in PRIMARY_METRICS + ("gold_choice_nll",)},
            **{f"{m}_gain": _stats([r["gain"][m] for r in rs]) for m in PRIMARY_METRICS},
            "influence_mean": _stats([r["influence"]["mean"] for r in rs]),
            "validity_rate": _stats([r["synthesis"]["validity_rate"] for r in rs]),
            "samples": _stats([r["dataset"]["samples"] for r in rs]),
            "tokens": _stats([r["dataset"]["tokens"] for r in rs]),
            "answer_tokens": _stats([r["dataset"]["answer_tokens"] for r in rs]),
            "distinct_1": _stats([r["dataset"]["distinct_1"] for r in rs]),
            "distinct_2": _stats([r["dataset"]["distinct_2"] for r in rs]),
            "distinct_3": _stats([r["dataset"]["distinct_3"] for r in rs]),
        }
    lower = LOWER_IS_BETTER[primary]

    def key(name):
        m = summary[name][primary]["mean"]
        return (m is None, (m if lower else -m) if m is not None else 0.0)

    ranking = sorted(summary, key=key)
    # paired comparison: the same seed gives every source the same documents, teacher seeds and target init
    by = {(r["source"], r["seed"]): r for r in runs}
    paired = {}
    for a in summary:
        for b in summary:
            if a == b:
                continue
            diffs, wins = [], 0
            for seed in cfg.eval_seeds:
                va, vb = by[(a, seed)]["heldout"].get(primary), by[(b, seed)]["heldout"].get(primary)
                if va is None or vb is None:
                    continue
                d = (vb - va) if lower else (va - vb)  # > 0: a better than b
                diffs.append(d)
                wins += d > 0
            paired[f"{a}>{b}"] = {"wins": wins, "seeds": len(diffs), "mean_advantage": _stats(diffs)["mean"],
                                  "advantages": diffs}
    corr = {}
    for m in PRIMARY_METRICS:
        corr[f"influence_vs_{m}_gain"] = correlation([r["influence"]["mean"] for r in runs],
                                                     [r["gain"][m] for r in runs])
    curves = {}
    for src in sources:
        if src.kind == "generator":
            curves[src.name] = reward_curve(src.run_dir)
    return {
        "format": REPORT_FORMAT,
        "target": target,
        "primary_metric": primary,
        "sources": {s.name: s.to_dict() for s in sources},
        "seeds": list(cfg.eval_seeds),
        "config": {"eval": asdict(cfg), "teacher": asdict(teacher_cfg), "influence": asdict(influence_cfg)},
        "influence_run_dir": str(influence_dir) if influence_dir else None,
        "baseline": baseline,
        "choices_per_item": choices_per_item or [],
        "runs": runs,
        "summary": summary,
        "ranking": ranking,
        "paired": paired,
        "correlation": corr,
        "reward_curves": curves,
    }


def reward_curve(run_dir: str | None) -> dict:
    """The reward per step of the run that produced a generator (RUN_DIR/metrics.jsonl)."""
    if not run_dir:
        return {"run_dir": None, "available": False, "why": "the export names no run_dir"}
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return {"run_dir": run_dir, "available": False, "why": f"{path} not found"}
    rows = [row for row in iter_log_rows(path) if "reward" in row and "step" in row]
    if not rows:
        return {"run_dir": run_dir, "available": False, "why": f"{path} holds no reward rows"}
    w = max(1, len(rows) // 5)
    first = [r["reward"] for r in rows[:w]]
    last = [r["reward"] for r in rows[-w:]]
    return {"run_dir": run_dir, "available": True, "steps": [r["step"] for r in rows],
            "reward": [r["reward"] for r in rows], "valid_rate": [r.get("valid_rate") for r in rows],
            "influence_mean": [r.get("influence_mean") for r in rows],
            "first_20pct_mean": sum(first) / len(first), "last_20pct_mean": sum(last) / len(last)}


# ============================================================================================ outputs
def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _pm(st: dict, digits: int = 3) -> str:
    if st["mean"] is None:
        return "-"
    return f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f}" if st["n"] > 1 else f"{st['mean']:.{digits}f}"


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def format_table(report: dict) -> str:
    """The main table (markdown): one row per source, mean ± std over seeds, and the untrained target."""
    primary = report["primary_metric"]
    head = ("| source | kind | test loss ↓ | acc ↑ | acc_norm ↑ | gold-choice NLL ↓ | " + f"{primary} gain | "
            "mean influence | validity | distinct-2 | samples | tokens |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    b = report["baseline"]
    lines.append(f"| (untrained target) | - | {_fmt(b['loss'])} | {_fmt(b.get('acc'))} | {_fmt(b.get('acc_norm'))} "
                 f"| {_fmt(b.get('gold_choice_nll'))} | 0 | - | - | - | 0 | 0 |")
    for name in report["ranking"]:
        s = report["summary"][name]
        kind = report["sources"][name]["kind"]
        lines.append(f"| **{name}** | {kind} | {_pm(s['loss'])} | {_pm(s['acc'])} | {_pm(s['acc_norm'])} | "
                     f"{_pm(s['gold_choice_nll'])} | "
                     f"{_pm(s[primary + '_gain'])} | {_pm(s['influence_mean'], 4)} | {_pm(s['validity_rate'], 2)} | "
                     f"{_pm(s['distinct_2'])} | {_pm(s['samples'], 0)} | {_pm(s['tokens'], 0)} |")
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    primary = report["primary_metric"]
    seeds = report["seeds"]
    cfg = report["config"]["eval"]
    out = [
        "# rubric-rl evaluate",
        "",
        f"Target `{report['target']}` fine-tuned ({cfg['eval_finetune']}, {cfg['eval_epochs']} epochs, lr "
        f"{cfg['eval_learning_rate']}, batch {cfg['eval_batch_size']}) on {cfg['eval_num_samples']} accepted samples "
        f"per source and seed; teacher `{report['config']['teacher']['teacher_backend']}`; seeds {seeds}; "
        f"held-out test `{cfg['eval_test_data']}`. Sources ranked by mean test **{primary}** "
        f"({'lower' if LOWER_IS_BETTER[primary] else 'higher'} is better); ± is the std over seeds.",
        "",
        format_table(report),
        "",
        "## Per seed",
        "",
        "| source | " + " | ".join(f"seed {s}: {primary} / acc / influence" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    by = {(r["source"], r["seed"]): r for r in report["runs"]}
    for name in report["ranking"]:
        cells = []
        for s in seeds:
            r = by[(name, s)]
            cells.append(f"{_fmt(r['heldout'].get(primary))} / {_fmt(r['heldout'].get('acc'))} / "
                         f"{_fmt(r['influence']['mean'], 4)}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", f"## Paired wins on {primary} (same seed = same documents, teacher seeds, target init)", ""]
    names = report["ranking"]
    out.append("| A beats B in k/n seeds | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for a in names:
        cells = []
        for b in names:
            if a == b:
                cells.append("-")
            else:
                p = report["paired"][f"{a}>{b}"]
                cells.append(f"{p['wins']}/{p['seeds']} ({_fmt(p['mean_advantage'], 4)})")
        out.append(f"| {a} | " + " | ".join(cells) + " |")
    c = report["correlation"][f"influence_vs_{primary}_gain"]
    out += ["", "## Influence vs held-out gain", "",
            f"Pearson r between a dataset's mean influence and its {primary} gain over {c['n']} (source, seed) "
            f"datasets: **{_fmt(c['pearson_r'])}** (Spearman {_fmt(c['spearman_rho'])}, permutation p "
            f"{_fmt(c['p_permutation'])}); OptimSyn reports r = 0.71."]
    for m in PRIMARY_METRICS:
        if m != primary:
            cm = report["correlation"][f"influence_vs_{m}_gain"]
            out.append(f"- vs {m} gain: r = {_fmt(cm['pearson_r'])} (n = {cm['n']})")
    out += ["", "## Datasets", "", "| source | validity | rejected (all seeds) | formats (all seeds) | distinct-1/2/3 |",
            "|---|---|---|---|---|"]
    for name in names:
        rs = [r for r in report["runs"] if r["source"] == name]
        rej, fm = Counter(), Counter()
        for r in rs:
            rej.update(r["synthesis"]["rejected"])
            fm.update(r["dataset"]["formats"])
        s = report["summary"][name]
        out.append(f"| {name} | {_pm(s['validity_rate'], 2)} | "
                   f"{', '.join(f'{k} {v}' for k, v in rej.most_common(4)) or '-'} | "
                   f"{', '.join(f'{k} {v}' for k, v in fm.most_common(4))} | "
                   f"{_fmt(s['distinct_1']['mean'])} / {_fmt(s['distinct_2']['mean'])} / {_fmt(s['distinct_3']['mean'])} |")
    subt = {}
    for r in report["runs"]:
        for st, v in (r["heldout"].get("per_subtask") or {}).items():
            subt.setdefault(r["source"], {}).setdefault(st, []).append(v["acc"])
    if subt:
        sts = sorted({st for v in subt.values() for st in v})
        out += ["", "## Test accuracy per subtask (mean over seeds)", "",
                "| source | " + " | ".join(sts) + " |", "|---|" + "---|" * len(sts)]
        base_sub = report["baseline"].get("per_subtask") or {}
        out.append("| (untrained) | " + " | ".join(_fmt(base_sub.get(st, {}).get("acc")) for st in sts) + " |")
        for name in names:
            vals = subt.get(name, {})
            out.append(f"| {name} | " + " | ".join(_fmt(sum(vals[st]) / len(vals[st])) if st in vals else "-"
                                                   for st in sts) + " |")
    curves = report.get("reward_curves") or {}
    if curves:
        out += ["", "## Reward curves of the generators' training runs", ""]
        for name, cv in curves.items():
            if cv.get("available"):
                out.append(f"- {name}: `{cv['run_dir']}`, {len(cv['steps'])} steps, mean reward first 20% "
                           f"{_fmt(cv['first_20pct_mean'])} -> last 20% {_fmt(cv['last_20pct_mean'])} "
                           f"(reward_curve_{name}.png)")
            else:
                out.append(f"- {name}: not available ({cv.get('why')})")
    plots = report.get("plots") or []
    if plots:
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    t = report.get("timing") or {}
    if t:
        out += ["", "Timing (s): " + ", ".join(f"{k} {v}" for k, v in t.items())]
    return "\n".join(out) + "\n"


def write_plots(report: dict, sources: list[Source], out_dir: Path) -> list[str]:
    """heldout.png, influence_vs_gain.png, reward_curve_<name>.png; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = [s.name for s in sources]
    metrics = [m for m in PRIMARY_METRICS + ("gold_choice_nll",) if report["summary"][names[0]][m]["mean"] is not None]
    lower_better = {**LOWER_IS_BETTER, "gold_choice_nll": True}
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.9 * len(metrics), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes[0], metrics):
        means = [report["summary"][n][m]["mean"] or 0.0 for n in names]
        stds = [report["summary"][n][m]["std"] or 0.0 for n in names]
        x = range(len(names))
        ax.bar(x, means, yerr=stds, capsize=5, color=[colors[i % len(colors)] for i in x], alpha=0.8)
        for i, n in enumerate(names):
            vals = [v for v in report["summary"][n][m]["values"] if v is not None]
            ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
        base = report["baseline"].get(m)
        if base is not None:
            ax.axhline(base, color="gray", linestyle="--", linewidth=1, label="untrained target")
        if m in ("acc", "acc_norm"):
            n_choices = report.get("choices_per_item") or []
            if n_choices:
                ax.axhline(sum(1 / k for k in n_choices) / len(n_choices), color="red", linestyle=":",
                           linewidth=1, label="chance")
            ax.set_ylim(0, 1)
        else:
            lo = min(min(v for v in report["summary"][n][m]["values"] if v is not None) for n in names)
            hi = max([max(v for v in report["summary"][n][m]["values"] if v is not None) for n in names]
                     + ([base] if base is not None else []))
            ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo + 1e-9)), hi + 0.1 * (hi - lo + 1e-9))
        ax.set_xticks(list(x), names, rotation=20)
        ax.set_title(f"test {m} ({'lower' if lower_better[m] else 'higher'} is better)", fontsize=10)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"held-out metrics, mean ± std over seeds {report['seeds']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "heldout.png", dpi=120)
    plt.close(fig)
    written.append("heldout.png")

    primary = report["primary_metric"]
    pts = [(r["source"], r["influence"]["mean"], r["gain"][primary]) for r in report["runs"]]
    if any(i is not None and g is not None for _, i, g in pts):
        fig, ax = plt.subplots(figsize=(5, 4))
        for k, n in enumerate(names):
            xs = [i for s, i, g in pts if s == n and i is not None and g is not None]
            ys = [g for s, i, g in pts if s == n and i is not None and g is not None]
            ax.scatter(xs, ys, label=n, color=colors[k % len(colors)])
        c = report["correlation"][f"influence_vs_{primary}_gain"]
        ax.set_xlabel("dataset mean influence")
        ax.set_ylabel(f"held-out {primary} gain")
        ax.set_title(f"Pearson r = {_fmt(c['pearson_r'])} (n = {c['n']})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "influence_vs_gain.png", dpi=120)
        plt.close(fig)
        written.append("influence_vs_gain.png")

    for name, cv in (report.get("reward_curves") or {}).items():
        if not cv.get("available"):
            continue
        steps, rew = cv["steps"], cv["reward"]
        w = max(1, len(rew) // 10)
        smooth = [sum(rew[max(0, i - w + 1):i + 1]) / len(rew[max(0, i - w + 1):i + 1]) for i in range(len(rew))]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot(steps, rew, alpha=0.35, label="reward")
        ax.plot(steps, smooth, label=f"reward (moving mean, {w})")
        vr = [v for v in cv["valid_rate"] if v is not None]
        if len(vr) == len(steps):
            ax.plot(steps, vr, alpha=0.6, linestyle=":", label="valid rate")
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("reward (as shaped in training)")
        ax.set_title(f"training reward of {name} ({cv['run_dir']})", fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        im = [(st, v) for st, v in zip(steps, cv["influence_mean"]) if v is not None]
        if im:
            ax2 = ax.twinx()
            ax2.plot([a for a, _ in im], [b for _, b in im], color="tab:red", alpha=0.5, linewidth=1,
                     label="raw influence, batch mean")
            ax2.set_ylabel("raw influence", fontsize=8)
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, fontsize=7, loc="upper left")
        fig.tight_layout()
        fname = f"reward_curve_{name}.png"
        fig.savefig(out_dir / fname, dpi=120)
        plt.close(fig)
        written.append(fname)
    return written


# ============================================================================================ CLI
def _merge_repeated(argv: list[str], flag: str = "--sources") -> list[str]:
    """``--sources a=x --sources b=y c=z`` -> ``--sources a=x b=y c=z`` (argparse keeps only the last)."""
    values, rest, found = [], [], False
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == flag:
            found = True
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            continue
        if tok.startswith(flag + "="):
            found = True
            values.append(tok[len(flag) + 1:])
        else:
            rest.append(tok)
        i += 1
    return rest + ([flag, *values] if found else [])


def format_paired(report: dict) -> str:
    """One line: how often each source beats each lower-ranked one on the primary metric, seed by seed."""
    names, paired = report["ranking"], report["paired"]
    return f"Paired wins on test {report['primary_metric']} (same seed): " + ", ".join(
        f"{a} > {b} in {paired[f'{a}>{b}']['wins']}/{paired[f'{a}>{b}']['seeds']}"
        for k, a in enumerate(names) for b in names[k + 1:])


def cmd_evaluate(argv: list[str] | None = None) -> dict:
    """``rubric-rl evaluate`` (the argv after the subcommand): parse, run, print the table."""
    from .config import parse_config
    from .influence.config import InfluenceConfig
    from .teachers.config import TeacherConfig

    argv = _merge_repeated(list(sys.argv[1:] if argv is None else argv))
    ea, cfg, teacher_cfg, influence_cfg = parse_config(
        (EvalArguments, EvalConfig, TeacherConfig, InfluenceConfig), argv, prog="rubric-rl evaluate",
        description="Compare rubric sources downstream: synthesize with each, fine-tune the target, score the "
                    "held-out test set (loss, multiple-choice acc/acc_norm), with influence, validity, diversity, "
                    "several seeds. Writes report.json, report.md and plots to --output.", shared_config=True)
    from .preflight import check_evaluate

    check_evaluate(ea, cfg, teacher_cfg, influence_cfg)
    report = evaluate(cfg, teacher_cfg, influence_cfg, parse_sources(ea.sources), ea.output)
    print(format_table(report))
    print("\n" + format_paired(report))
    c = report["correlation"][f"influence_vs_{report['primary_metric']}_gain"]
    print(f"\nPearson r (mean influence vs {report['primary_metric']} gain, n={c['n']}): {_fmt(c['pearson_r'])}")
    print(f"Report: {Path(ea.output) / 'report.md'} ({report['timing']['total_s']:.0f} s)")
    return report
