"""Small text utilities shared by the verifiers (tokenising, content words)."""

from __future__ import annotations

import re
import unicodedata

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


# Values a broken pipeline writes where text should be ("NaN", "inf", "null"...).
PLACEHOLDER_TOKENS = frozenset({"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity",
                                "null", "undefined", "n/a"})
_NUMBER = re.compile(r"^[-+]?(\d+([.,]\d*)?|[.,]\d+)([eE][-+]?\d+)?%?$")

# Reason codes of answers that are not text.
EMPTY_ANSWER = "empty_answer"
WHITESPACE_ANSWER = "whitespace_answer"
CONTROL_CHARACTERS_ANSWER = "control_characters_answer"
NON_TEXT_ANSWER = "non_text_answer"
JUNK_REASONS = (EMPTY_ANSWER, WHITESPACE_ANSWER, CONTROL_CHARACTERS_ANSWER, NON_TEXT_ANSWER)


def junk_text_reason(text: str | None) -> str | None:
    """Why ``text`` is no answer at all, or None when it is text.

    ``empty_answer`` (empty), ``whitespace_answer`` (only whitespace), ``control_characters_answer`` (only
    control/format/unassigned characters besides whitespace), ``non_text_answer`` (no letter or digit at all,
    or nothing but placeholders such as NaN, inf, null, possibly with numbers: "NaN inf", "nan 0.5"). A plain
    number ("42") is an answer.
    """
    if not text:
        return EMPTY_ANSWER
    if not text.strip():
        return WHITESPACE_ANSWER
    visible = [c for c in text if not c.isspace()]
    if all(unicodedata.category(c).startswith("C") for c in visible):
        return CONTROL_CHARACTERS_ANSWER
    if not any(c.isalnum() for c in visible):
        return NON_TEXT_ANSWER
    tokens = [t.strip(".,;:!?()[]{}\"'`") for t in text.lower().split()]
    tokens = [t for t in tokens if t]
    if tokens and any(t in PLACEHOLDER_TOKENS for t in tokens) and all(
            t in PLACEHOLDER_TOKENS or _NUMBER.match(t) for t in tokens):
        return NON_TEXT_ANSWER
    return None


def answer_junk_reason(messages) -> str | None:
    """:func:`junk_text_reason` of the last assistant turn of a chat sample (None when it has no assistant turn:
    that is another reason, found elsewhere)."""
    answers = [m.get("content") for m in messages or [] if isinstance(m, dict) and m.get("role") == "assistant"]
    if not answers:
        return None
    return junk_text_reason(answers[-1] if isinstance(answers[-1], str) else "")
