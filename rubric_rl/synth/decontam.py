"""Decontamination against evaluation sets (validation, test), n-gram overlap as in the Tulu toolkit.

Following open-instruct's ``decontamination/search.py`` (ngram mode): for every evaluation item, the
tokens of its prompt that belong to an n-gram (default 8 words) which also occurs in a training
sample's prompt are "matched"; the item's match score against that sample is the share of its tokens
matched by that single sample, and the sample is contaminated when some item's score exceeds
``threshold`` (default 0.5, Tulu 3's setting). Evaluation prompts shorter than n words must occur
whole. Matching is on lower-cased word tokens, punctuation ignored.

Two additions to the Tulu recipe, both against false alarms, neither weakening the catch of a copy
(a copied item scores 1.0, embedded in a longer prompt or not):

* evaluation boilerplate is discounted: an n-gram that occurs in at least ``boilerplate_df`` of the
  items of one evaluation file (and in at least 3 of them), such as the instruction line every item
  of a multiple-choice task ends with, is boilerplate; the tokens it covers count neither as matched
  nor in the item's length;
* a multiple-choice item is scored on its question: the coverage of its informative tokens outside
  option lines (``(A) ...``, ``B. ...``); n-grams that run from the question into the options count
  for the question tokens they cover. Option lists drawn from a small vocabulary repeat across items
  by construction; a sample that shares three options with an item about another drug has not seen
  that item, while a sample that copies the question has, whatever it does with the options.

Measured on the quickstart world (template teacher, 48 documents x 12 seed rubrics x 8 seeds, 4608
samples): plain Tulu scoring flags 129 of them, 120 about a different drug than the item they
"match"; with both additions none, while every validation/test item is still caught when copied, also
with its options shuffled (see tests/test_synth_verifiers.py and notes/teachers.md).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataFileError
from ..jsonl import iter_values
from .text import words


_OPTION_LINE = re.compile(r"^\s*(?:\(?[A-Ha-h]\)|[A-H][.:])\s+\S")


def prompt_text(messages: list[dict], roles=("user",)) -> str:
    return "\n".join(m["content"] for m in messages if m.get("role") in roles)


def tokens_and_option_mask(text: str) -> tuple[list[str], int]:
    """Word tokens of ``text`` and a bitmask of the positions that lie on multiple-choice option lines."""
    toks: list[str] = []
    mask = 0
    for line in text.splitlines():
        line_toks = words(line)
        if _OPTION_LINE.match(line):
            mask |= ((1 << len(line_toks)) - 1) << len(toks)
        toks.extend(line_toks)
    return toks, mask


def load_eval_items(paths) -> list[dict]:
    """Chat-format evaluation items (``{"messages": [...]}`` per jsonl line) from one or more files."""
    items = []
    for path in paths:
        for lineno, row in iter_values(path):  # errors name file:line (missing, directory, not UTF-8, not JSON)
            if not isinstance(row, dict) or "messages" not in row:
                raise DataFileError(f"{path}:{lineno}: decontamination needs chat items with 'messages'")
            row.setdefault("_source", f"{Path(path).name}:{lineno}")
            items.append(row)
    return items


@dataclass
class Decontaminator:
    """Rejects samples whose prompt covers more than ``threshold`` of an evaluation prompt's informative tokens
    (reason ``contaminated``)."""

    eval_items: list[dict] = field(default_factory=list, repr=False)
    ngram: int = 8
    threshold: float = 0.5
    boilerplate_df: float = 0.5
    roles: tuple = ("user",)
    name: str = "decontam"

    def __post_init__(self):
        if self.ngram < 1:
            raise ValueError(f"decontamination ngram must be >= 1, got {self.ngram!r}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"decontamination threshold must be in [0, 1), got {self.threshold!r}")
        if self.boilerplate_df <= 0:
            raise ValueError(f"decontamination boilerplate_df must be > 0, got {self.boilerplate_df!r}")
        split = [tokens_and_option_mask(prompt_text(item["messages"], self.roles)) for item in self.eval_items]
        toks = [t for t, _ in split]
        self._sources = [str(item.get("_source", k)) for k, item in enumerate(self.eval_items)]
        grams = [self._grams(t) for t in toks]  # per item: [(ngram, start)]
        # Boilerplate: n-grams frequent within one evaluation file.
        groups: dict[str, list[int]] = defaultdict(list)
        for k, src in enumerate(self._sources):
            groups[src.rsplit(":", 1)[0]].append(k)
        frequent: set[tuple] = set()
        for members in groups.values():
            df: dict[tuple, int] = defaultdict(int)
            for k in members:
                for g in {g for g, _ in grams[k]}:
                    df[g] += 1
            cutoff = max(3, math.ceil(self.boilerplate_df * len(members)))
            frequent |= {g for g, n in df.items() if n >= cutoff}
        self._informative: list[int] = []  # per item: bitmask of the token positions that count
        self._question: list[int] = []  # per item: informative positions outside option lines (0: not MC)
        self._index: dict[tuple, list[tuple[int, int]]] = defaultdict(list)  # ngram -> [(item, start)]
        self._sizes: set[int] = set()  # n-gram sizes in the index (prompts shorter than ngram are indexed whole)
        for k, (t, item_grams) in enumerate(zip(toks, grams, strict=True)):
            full = (1 << len(t)) - 1
            boiler = 0
            for g, start in item_grams:
                if g in frequent:
                    boiler |= ((1 << len(g)) - 1) << start
                else:
                    self._index[g].append((k, start))
                    self._sizes.add(len(g))
            self._informative.append(full & ~boiler or full)
            options = split[k][1]
            self._question.append(self._informative[k] & ~options if options else 0)
        if frequent:
            # Items made only of boilerplate fall back to all their tokens: index their frequent n-grams too.
            for k, item_grams in enumerate(grams):
                if self._informative[k] and not any(g not in frequent for g, _ in item_grams):
                    for g, start in item_grams:
                        self._index[g].append((k, start))
                        self._sizes.add(len(g))

    def _grams(self, toks: list[str]) -> list[tuple[tuple, int]]:
        if not toks:
            return []
        n = min(self.ngram, len(toks))
        return [(tuple(toks[i:i + n]), i) for i in range(len(toks) - n + 1)]

    def __len__(self) -> int:
        return len(self._sources)

    def match(self, messages: list[dict]) -> tuple[str, float] | None:
        """``(eval item source, score)`` of the best-matching evaluation item, or None if nothing overlaps."""
        toks = words(prompt_text(messages, self.roles))
        if not toks or not self._index:
            return None
        covered: dict[int, int] = defaultdict(int)  # item -> bitmask of its matched token positions
        for n in self._sizes:
            for start in range(len(toks) - n + 1):
                for item, pos in self._index.get(tuple(toks[start:start + n]), ()):
                    covered[item] |= ((1 << n) - 1) << pos
        best = None
        for item, mask in covered.items():
            info, question = self._informative[item], self._question[item]
            if question:  # multiple choice: the question decides, options alone never do
                score = (mask & question).bit_count() / question.bit_count()
            else:
                score = (mask & info).bit_count() / info.bit_count()
            if best is None or score > best[1]:
                best = (self._sources[item], score)
        return best

    def __call__(self, c) -> str | None:
        m = self.match(c.messages)
        return "contaminated" if m is not None and m[1] > self.threshold else None
