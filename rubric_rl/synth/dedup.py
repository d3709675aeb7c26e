"""Near-duplicate removal with MinHash + LSH over word shingles.

Each sample (question and answer, normalised) becomes a set of word ``shingle``-grams. MinHash
signatures (``num_perm`` universal hashes modulo the Mersenne prime 2^61-1) are split into ``bands``
bands; two samples that agree on a whole band become candidates (LSH), and a candidate counts as a
near duplicate when the EXACT Jaccard similarity of the shingle sets is >= ``threshold``, so LSH only
saves time and never decides alone. With 64 permutations in 16 bands of 4, a pair at Jaccard 0.8 is a
candidate with probability 1 - (1 - 0.8^4)^16 > 0.999.

The filter is stateful: :meth:`NearDuplicateFilter.__call__` checks a candidate against everything
:meth:`NearDuplicateFilter.add`-ed so far (the engine adds accepted samples only).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass, field

from .text import words

_PRIME = (1 << 61) - 1


def _hash64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")


def shingles(text: str, n: int = 3) -> frozenset[str]:
    toks = words(text)
    if len(toks) <= n:
        return frozenset([" ".join(toks)]) if toks else frozenset()
    return frozenset(" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def sample_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m.get("role") in ("user", "assistant"))


@dataclass
class NearDuplicateFilter:
    """Rejects a sample whose shingle Jaccard similarity to an accepted one is >= ``threshold`` (``near_duplicate``)."""

    threshold: float = 0.8
    shingle: int = 3
    num_perm: int = 64
    bands: int = 16
    seed: int = 0
    name: str = "dedup"
    _sets: list = field(default_factory=list, repr=False)
    _ids: list = field(default_factory=list, repr=False)
    _buckets: dict = field(default_factory=lambda: defaultdict(list), repr=False)

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise ValueError(f"dedup threshold must be in (0, 1], got {self.threshold!r}")
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        rng = random.Random(self.seed)
        self._perms = [(rng.randrange(1, _PRIME), rng.randrange(0, _PRIME)) for _ in range(self.num_perm)]
        self.rows = self.num_perm // self.bands

    def __len__(self) -> int:
        return len(self._sets)

    def signature(self, shingle_set) -> list[int]:
        hashes = [_hash64(s) for s in shingle_set] or [0]
        return [min(((a * h + b) % _PRIME) for h in hashes) for a, b in self._perms]

    def _band_keys(self, sig: list[int]):
        r = self.rows
        return [(k, tuple(sig[k * r:(k + 1) * r])) for k in range(self.bands)]

    def find(self, messages: list[dict]) -> tuple[object, float] | None:
        """``(id, jaccard)`` of the most similar accepted sample at or above the threshold, or None."""
        s = shingles(sample_text(messages), self.shingle)
        candidates = {i for key in self._band_keys(self.signature(s)) for i in self._buckets.get(key, ())}
        best = None
        for i in candidates:
            sim = jaccard(s, self._sets[i])
            if sim >= self.threshold and (best is None or sim > best[1]):
                best = (self._ids[i], sim)
        return best

    def add(self, messages: list[dict], ident=None) -> None:
        s = shingles(sample_text(messages), self.shingle)
        index = len(self._sets)
        self._sets.append(s)
        self._ids.append(index if ident is None else ident)
        for key in self._band_keys(self.signature(s)):
            self._buckets[key].append(index)

    # verifier protocol (stateful): check, then the engine calls observe() for accepted samples
    def __call__(self, c) -> str | None:
        return "near_duplicate" if self.find(c.messages) is not None else None

    def observe(self, c) -> None:
        self.add(c.messages, c.meta.get("id") if isinstance(c.meta, dict) else None)
