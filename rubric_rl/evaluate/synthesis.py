"""The evaluation's datasets: rubric sources and the synthesis loop are the shared pipeline's
(:mod:`rubric_rl.synth.pipeline`); this module adds the dataset statistics."""

from __future__ import annotations

import re
from collections import Counter

from ..synth.pipeline import RubricSource as Source
from ..synth.pipeline import synthesize_dataset

__all__ = ["Source", "resolve_source", "synthesize_dataset", "loop_dataset", "dataset_stats", "distinct_n"]


def resolve_source(name: str, spec: str) -> Source:
    """A source from its SPEC (a closed-loop dataset folder too); errors name the source and the SPEC."""
    return Source.resolve(spec, name, datasets=True)


def loop_dataset(source: Source, seed: int, num_samples: int) -> tuple[list[dict], dict]:
    """A closed-loop rule folder's dataset for ``seed`` (its first ``num_samples`` samples: the budget of the
    evaluation) and synthesis stats read from the loop's rounds, in the evaluation's keys."""
    import json
    from pathlib import Path

    from ..errors import UserError
    from ..jsonl import read_jsonl

    folder = Path(source.spec) / f"seed{seed}"
    summary_path = folder / "summary.json"
    if not summary_path.exists():
        raise UserError(f"source {source.name}={source.spec!r}: no finished closed loop for seed {seed} "
                        f"({summary_path} missing); run closed-loop with eval_seeds including {seed}")
    summary = json.loads(summary_path.read_text())
    samples = read_jsonl(folder / "dataset.jsonl")
    kept = samples[:num_samples]
    rejected: Counter = Counter()
    for r in summary["rounds"]:
        rejected.update(r.get("rejected", {}))
    tried = summary["accepted"] + sum(rejected.values())
    stats = {"items_tried": tried, "teacher_queries": summary["queries"], "accepted": len(kept),
             "validity_rate": summary["accepted"] / tried if tried else 0.0, "rejected": dict(sorted(rejected.items())),
             "budget_exhausted": len(kept) < num_samples, "closed_loop": {"rule": summary["rule"],
                                                                           "loop_samples": len(samples),
                                                                           "rounds": len(summary["rounds"])}}
    return kept, stats


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
