"""The evaluation's datasets: rubric sources, the synthesis plan shared by all sources, and dataset statistics."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch


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
    from ..data.documents import DataFileError, load_rubric_file
    from ..errors import UserError
    from ..generator import EXPORT_META

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
    from ..synth.engine import SynthItem

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
    from ..data.chat import tokenize_chat

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
