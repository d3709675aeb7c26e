"""The mislabelled-sample check: does a score prefer a right answer over a wrong one of the same form?

Influence estimators are routinely checked on mislabelled training samples (TracIn, TRAK, kronfluence):
a sample whose label was flipped should score below its correct twin. Here a pair is built from one
multiple-choice item (``messages`` with an ``Options:`` block of lines ``(A) ...``, ``choices`` and the
``answer`` letter, as in ``data/quickstart/*.jsonl``): its options are shuffled, and two training samples
are written with the same question and the same answer text, one stating the right option's fact and
letter, one stating a wrong option's fact and letter. Only the fact and the letter differ, so a score that
follows the answer's *form* cannot tell them apart.

:func:`mislabelled_pairs` builds the pairs; :func:`pair_summary` reports the AUC (probability that a right
sample outscores a wrong one, over all right x wrong combinations) and the paired wins (right > wrong for
the same item).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .choices import LETTERS, answer_variants


@dataclass
class MislabelledPair:
    index: int  # line of the source item
    right: list[dict]
    wrong: list[dict]
    right_letter: str
    wrong_letter: str


def mislabelled_pairs(items: Sequence[dict], *, seed: int = 0) -> list[MislabelledPair]:
    """One (right, wrong) pair per multiple-choice item that states its gold option's text in its answer:
    the item's :func:`~rubric_rl.influence.choices.answer_variants` with shuffled options, the gold one and a
    random other. Items not in the multiple-choice layout, or whose answer does not contain the gold option's
    text (a wrong twin would then differ by the letter alone), are skipped."""
    pairs = []
    for k, item in enumerate(items):
        rng = random.Random(seed * 1_000_003 + k)
        made = answer_variants(item, rng=rng)
        if made is None or item["choices"][LETTERS.index(item["answer"])] not in item["messages"][-1]["content"]:
            continue
        variants, g = made
        w = rng.choice([j for j in range(len(variants)) if j != g])
        pairs.append(MislabelledPair(k, variants[g], variants[w], LETTERS[g], LETTERS[w]))
    return pairs


def pair_summary(right: Sequence[float], wrong: Sequence[float]) -> dict:
    """AUC (right > wrong, ties half) over all combinations, and paired wins of right over its own twin."""
    from .check import auc

    if len(right) != len(wrong):
        raise ValueError(f"{len(right)} right scores for {len(wrong)} wrong ones")
    wins = sum(r > w for r, w in zip(right, wrong))
    return {"auc": auc(list(right), list(wrong)), "paired_wins": int(wins), "pairs": len(right),
            "mean_right": sum(right) / len(right), "mean_wrong": sum(wrong) / len(wrong)}
