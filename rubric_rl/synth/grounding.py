"""Grounding: is the answer supported by the source document?

A cheap lexical check: the share of the answer's content words (stop words and answer boilerplate such
as "step", "option", "answer" removed, crude stemming) that occur in the document. Short answers that
carry no content of their own are resolved first: an option letter "(B)" is replaced by the text of
option (B) in the question; a "True" verdict is judged through the statement in the question (a
"False" verdict asserts nothing checkable).
Answers that still carry fewer than ``min_content_words`` content words are not judged (accepted).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .text import content_words

# Words answers use to talk about themselves, not about the domain.
ANSWER_BOILERPLATE = frozenset(
    "answer answers let lets think step steps reasoning matches match option options correct final statement "
    "true false blank document documents according says said state states stated therefore thus hence so "
    "conclude conclusion question questions".split()
)
_LETTER = re.compile(r"^\W*\(?([A-Da-d])\)?\W*$|\banswer is \(?([A-D])\)|^\(([A-D])\)", re.MULTILINE)
_VERDICT = re.compile(r"\b(true|false)\b", re.IGNORECASE)


@dataclass
class GroundingVerifier:
    """Rejects answers whose content words mostly do not occur in the document (reason ``ungrounded``)."""

    min_overlap: float = 0.5
    min_content_words: int = 2
    name: str = "grounding"

    def score(self, question: str, answer: str, document: str) -> float | None:
        """Overlap in [0, 1], or None when there is nothing to judge (no document, or no content)."""
        if not document.strip():
            return None
        answer_words = content_words(answer, ANSWER_BOILERPLATE)
        if len(answer_words) < self.min_content_words:
            # Too little of its own: judge what a bare option letter / verdict refers to, if anything.
            referred: set[str] = set()
            options = dict(re.findall(r"^\(([A-D])\)\s*(.+?)\s*$", question, re.MULTILINE))
            m = _LETTER.search(answer)
            letter = next((g for g in m.groups() if g), None) if m else None
            if letter and letter.upper() in options:
                referred = content_words(options[letter.upper()], ANSWER_BOILERPLATE)
            elif (verdict := _VERDICT.search(answer)) is not None and verdict.group(1).lower() == "true":
                # A "True" verdict claims the statement: judge the statement. A "False" one claims nothing.
                referred = content_words(question.split("\n", 1)[0], ANSWER_BOILERPLATE)
            if not referred:
                return None
            answer_words |= referred
        doc_words = content_words(document)
        return len(answer_words & doc_words) / len(answer_words)

    def __call__(self, c) -> str | None:
        score = self.score(c.question, c.answer, c.document)
        if score is not None and score < self.min_overlap:
            return "ungrounded"
        return None


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def document_sentences(document: str) -> list[str]:
    """The document split into sentences (and lines); empty pieces dropped."""
    return [x.strip() for x in _SENTENCE_END.split(document) if x.strip()]


def supporting_sentence(question: str, answer: str, document: str) -> int | None:
    """Index of the document sentence a sample is about, or None when it matches none.

    The sentence sharing the most content words with question + answer, each word weighted by its
    inverse sentence frequency in the document (a word in every sentence, such as the subject's name,
    weighs least). Answer boilerplate ("step", "option", ...) is ignored, so the same fact asked as a
    multiple-choice question or as an open one maps to the same sentence.
    """
    sentences = [content_words(x) for x in document_sentences(document)]
    if not sentences:
        return None
    words = content_words(question + "\n" + answer, ANSWER_BOILERPLATE)
    df: dict[str, int] = {}
    for sent in sentences:
        for w in sent:
            df[w] = df.get(w, 0) + 1
    n = len(sentences)
    best, best_score = None, 0.0
    for k, sent in enumerate(sentences):
        score = sum(math.log(1.0 + n / df[w]) for w in words & sent)
        if score > best_score:
            best, best_score = k, score
    return best
