"""Safety blocklist: rejects samples that contain clearly harmful requests or content, or personal data.

A small, conservative list of regular expressions per category (the reason code is
``unsafe_<category>``); it is a last line of defence for a domain data pipeline, not a moderation
model. Domain vocabulary is not blocked: a pharmacology sample may talk about overdoses, toxicity or
contraindications. Extra patterns come from a file, one regular expression per line, optionally
``category: pattern``; lines starting with ``#`` are comments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BLOCKLIST: dict[str, list[str]] = {
    "weapons": [
        r"\b(?:build|make|assemble|construct)(?:s|ing)?\s+(?:a\s+|an\s+)?(?:pipe\s+|nail\s+|car\s+)?bombs?\b",
        r"\b(?:synthesi[sz]e|produce|make)\s+(?:sarin|vx|tabun|novichok|ricin|a\s+nerve\s+agent)\b",
        r"\bweaponi[sz](?:e|ing)\s+(?:anthrax|smallpox|plague|a\s+pathogen|a\s+virus)\b",
    ],
    "self_harm": [
        r"\b(?:kill|hang)\s+(?:yourself|urself)\b",
        r"\b(?:best|easiest|painless)\s+way\s+to\s+(?:commit\s+suicide|kill\s+(?:yourself|myself)|end\s+(?:your|my)\s+life)\b",
        r"\bhow\s+to\s+commit\s+suicide\b",
    ],
    "illicit_drugs": [
        r"\b(?:synthesi[sz]e|cook|manufacture)\w*\s+(?:crystal\s+)?(?:meth(?:amphetamine)?|fentanyl|heroin|lsd)\b",
    ],
    "sexual_minors": [
        r"\b(?:child|minor|underage)\w*\s+(?:porn\w*|sexual\s+(?:content|images|abuse\s+material))\b",
    ],
    "pii": [
        r"\b[\w.+-]+@[\w-]+\.[\w.-]*[a-z]{2,}\b",  # e-mail address
        r"\b\d{3}-\d{2}-\d{4}\b",  # US social security number
    ],
}
_CARD = re.compile(r"\b(?:\d[ -]?){13,19}\b")


def _luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def load_blocklist_file(path: str | Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        category, sep, pattern = line.partition(": ")
        if not sep or not re.fullmatch(r"[a-z_]+", category):
            category, pattern = "custom", line
        out.setdefault(category, []).append(pattern)
    return out


@dataclass
class SafetyVerifier:
    """Rejects a sample if its question or answer matches a blocklist pattern (reason ``unsafe_<category>``)."""

    blocklist: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_BLOCKLIST.items()})
    blocklist_file: str | None = None
    check_credit_cards: bool = True
    name: str = "safety"

    def __post_init__(self):
        if self.blocklist_file:
            for category, patterns in load_blocklist_file(self.blocklist_file).items():
                self.blocklist.setdefault(category, []).extend(patterns)
        self._compiled = []
        for category, patterns in self.blocklist.items():
            for pattern in patterns:
                try:
                    self._compiled.append((category, re.compile(pattern, re.IGNORECASE)))
                except re.error as err:
                    raise ValueError(f"safety blocklist: bad pattern {pattern!r} in category {category!r}: {err}") from None

    def check(self, text: str) -> str | None:
        for category, pattern in self._compiled:
            if pattern.search(text):
                return f"unsafe_{category}"
        if self.check_credit_cards:
            for m in _CARD.finditer(text):
                digits = re.sub(r"\D", "", m.group())
                if 13 <= len(digits) <= 19 and _luhn_ok(digits):
                    return "unsafe_pii"
        return None

    def __call__(self, c) -> str | None:
        return self.check(c.question + "\n" + c.answer)
