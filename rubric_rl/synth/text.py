"""Small text utilities shared by the verifiers (tokenising, content words)."""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here
hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very was we were what
when where which while who whom why will with would you your yours yourself yourselves may might must shall
per via one two three four many much every either neither whether yes
""".split())


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters/digits, inner hyphens and apostrophes kept)."""
    return _WORD.findall(text.lower())


def stem(word: str) -> str:
    """A deliberately crude plural/3rd-person stripper: enough to match 'effects'/'effect', 'treats'/'treat'."""
    if len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    return word[:-1]


def content_words(text: str, extra_stopwords: frozenset[str] = frozenset()) -> set[str]:
    """Stemmed content words: no stop words, at least 3 characters unless a number."""
    out = set()
    for w in words(text):
        if w in STOPWORDS or w in extra_stopwords:
            continue
        if len(w) < 3 and not w.isdigit():
            continue
        out.add(stem(w))
    return out
