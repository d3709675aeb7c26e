"""Grounding: is the answer supported by the source document?

A cheap lexical check: the share of the answer's content words (stop words and answer boilerplate such
as "step", "option", "answer" removed, crude stemming) that occur in the document. Short answers that
carry no content of their own are resolved first: an option letter "(B)" is replaced by the text of
option (B) in the question; a "True" verdict is judged through the statement in the question (a
"False" verdict asserts nothing checkable).
Answers that still carry fewer than ``min_content_words`` content words are not judged (accepted).

The overall share alone lets a wrong fact through: "Belmozaline is used to treat heart failure" shares the
drug's name and "used", "treat" with its document, 3 of 5 words, while "heart failure" is not in it. So the
*claim* is also judged: the answer's content words that the question stem (the question without its option
lines) does not already hold, plus the words of the option its letter names, i.e. what the answer adds.
At least ``min_claim_overlap`` (0.75) of those must occur in the document (reason ``ungrounded_claim``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .text import content_words

# Words answers use to talk about themselves, not about the domain.
ANSWER_BOILERPLATE = frozenset(
    "answer answers let lets let's think step steps reasoning matches match option options correct final statement "
    "true false blank document documents according says said state states stated therefore thus hence so "
    "conclude conclusion question questions".split()
)
_LETTER = re.compile(r"^\W*\(?([A-Da-d])\)?\W*$|\banswer is \(?([A-D])\)|^\(([A-D])\)", re.MULTILINE)
_VERDICT = re.compile(r"\b(true|false)\b", re.IGNORECASE)
_OPTION = re.compile(r"^\(([A-D])\)\s*(.+?)\s*$", re.MULTILINE)


def _letter(answer: str) -> str | None:
    m = _LETTER.search(answer)
    return next((g.upper() for g in m.groups() if g), None) if m else None


@dataclass
class GroundingVerifier:
    """Rejects answers whose content words mostly do not occur in the document (reason ``ungrounded``)."""

    min_overlap: float = 0.5
    min_content_words: int = 2
    min_claim_overlap: float = 0.75
    name: str = "grounding"

    def claim(self, question: str, answer: str) -> set[str]:
        """What the answer adds to its question: its content words not in the question stem, plus the words
        of the option its letter names (boilerplate left out)."""
        options = dict(_OPTION.findall(question))
        stem = _OPTION.sub("", question)
        words = content_words(answer, ANSWER_BOILERPLATE)
        letter = _letter(answer)
        if letter and letter in options:
            words |= content_words(options[letter], ANSWER_BOILERPLATE)
        return words - content_words(stem, ANSWER_BOILERPLATE)

    def claim_score(self, question: str, answer: str, document: str) -> float | None:
        """Share of the claim's words in the document, or None when there is no document or no claim."""
        if not document.strip():
            return None
        claim = self.claim(question, answer)
        if not claim:
            return None
        return len(claim & content_words(document)) / len(claim)

    def score(self, question: str, answer: str, document: str) -> float | None:
        """Overlap in [0, 1], or None when there is nothing to judge (no document, or no content)."""
        if not document.strip():
            return None
        answer_words = content_words(answer, ANSWER_BOILERPLATE)
        if len(answer_words) < self.min_content_words:
            # Too little of its own: judge what a bare option letter / verdict refers to, if anything.
            referred: set[str] = set()
            options = dict(_OPTION.findall(question))
            letter = _letter(answer)
            if letter and letter in options:
                referred = content_words(options[letter], ANSWER_BOILERPLATE)
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
        claim = self.claim_score(c.question, c.answer, c.document)
        if claim is not None and claim < self.min_claim_overlap:
            return "ungrounded_claim"
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
