"""Verifiers: each looks at one candidate sample and accepts it or rejects it with a reason code.

A verifier is a callable ``(candidate) -> reason | None``. The reason codes are what the logs, the
reward extras and the dataset provenance count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace

from ..configs.synth import SynthConfig as S  # the one place of each verifier default (synth_*)


@dataclass
class Candidate:
    """A parsed teacher sample and where it came from."""

    messages: list[dict]
    document: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def question(self) -> str:
        return next((m["content"] for m in self.messages if m["role"] == "user"), "")

    @property
    def answer(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


@dataclass
class FormatVerifier:
    """Length bounds on question and answer; no leftover template markers."""

    min_question_chars: int = 10
    max_question_chars: int = 4000
    min_answer_chars: int = 1
    max_answer_chars: int = 8000
    name: str = "format"

    def __call__(self, c: Candidate) -> str | None:
        q, a = c.question, c.answer
        if len(q) < self.min_question_chars:
            return "question_too_short"
        if len(q) > self.max_question_chars:
            return "question_too_long"
        if len(a) < self.min_answer_chars:
            return "answer_too_short"
        if len(a) > self.max_answer_chars:
            return "answer_too_long"
        if re.search(r"<the (question|answer)>|^\s*(question|answer)\s*:", a, re.IGNORECASE | re.MULTILINE):
            return "template_leak"
        return None


@dataclass
class NonTrivialVerifier:
    """Rejects samples that teach nothing: an answer that is no text (empty, whitespace, control characters,
    placeholders like "NaN inf": the reason codes of :func:`rubric_rl.synth.text.junk_text_reason`), an answer
    equal to the question, a question that is the document, or a non-answer (``non_answer``: an echoed
    instruction, a placeholder letter, "the document does not say")."""

    max_document_overlap: float = 0.8
    name: str = "nontrivial"

    def __call__(self, c: Candidate) -> str | None:
        from .text import junk_text_reason

        junk = junk_text_reason(c.answer)  # empty, whitespace, control characters, "NaN inf"...
        if junk:
            return junk
        q, a = _norm(c.question), _norm(c.answer)
        if not a:
            return "empty_answer"
        if a == q:
            return "answer_repeats_question"
        if len(q.split()) < 3:
            return "question_too_few_words"
        doc = _norm(c.document)
        if doc and len(doc) > 80 and doc in q:
            return "question_copies_document"
        if _REFUSAL.match(c.answer.strip()) or _REFUSAL.match(c.question.strip()):
            return "refusal"
        if _NON_ANSWER.search(c.answer):
            return "non_answer"
        return degenerate_reason(c.question) or degenerate_reason(c.answer)


_SENTENCE = re.compile(r"[^.!?\n]+")
_SELF_COMPARISON = re.compile(r"\b(\w[\w -]{2,40}?)\s+(?:vs\.?|versus|or|and|compared (?:to|with))\s+\1\b",
                              re.IGNORECASE)


def degenerate_reason(text: str) -> str | None:
    """What small teachers write when they loop: a statement repeated (``repeated_statement``), a thing
    compared with itself (``self_comparison``: "X vs X"), or a long text of few distinct words
    (``repetitive``)."""
    sentences = [_norm(s) for s in _SENTENCE.findall(text)]
    sentences = [s for s in sentences if len(s.split()) >= 3]
    if len(sentences) != len(set(sentences)):
        return "repeated_statement"
    if _SELF_COMPARISON.search(text):
        return "self_comparison"
    words = _norm(text).split()
    if len(words) >= 24 and len(set(words)) / len(words) < 0.35:
        return "repetitive"
    return None


_REFUSAL = re.compile(r"(i'?m sorry|i am sorry|sorry, (but )?i|i can(no|')t (help|answer|assist|provide|write)|"
                      r"i am (not able|unable) to|as an ai( language model)?,?)", re.IGNORECASE)

# What a small teacher writes in place of an answer (seen from SmolLM2-135M-Instruct, notes/teachers.md): the
# rubric's instruction echoed ("The answer must be stated in the document."), the format's placeholder letter
# ("The answer is (X)."), or a statement that the document has no answer.
_NON_ANSWER = re.compile(r"^\s*(the )?(correct |final )?answer (must|should|will|has to|needs to) be\b|"
                         r"(?<!\w)\(\s*x\s*\)|\bthe (document|text|passage) does not (provide|contain|mention|say|"
                         r"state|give)\b", re.IGNORECASE)


@dataclass(frozen=True)
class VerifierSettings:
    """One verifier chain's settings, shared by ``synthesize`` (the ``synth_*`` fields) and the RL step (their
    ``reward_*`` twins): :func:`rubric_rl.synth.verifiers.default_verifiers` builds the chain from it. The defaults
    are ``SynthConfig``'s (``S``)."""

    grounding: bool = S.synth_grounding
    grounding_min_overlap: float = S.synth_grounding_min_overlap
    grounding_min_claim_overlap: float = S.synth_grounding_min_claim_overlap
    safety: bool = S.synth_safety
    blocklist_file: str | None = S.synth_blocklist_file
    decontam_ngram: int = S.synth_decontam_ngram
    decontam_threshold: float = S.synth_decontam_threshold

    @classmethod
    def of(cls, cfg, prefix: str) -> "VerifierSettings":
        """The settings a config holds under ``prefix`` (``"synth_"`` or ``"reward_"``)."""
        return cls(**{f.name: getattr(cfg, prefix + f.name) for f in fields(cls)})


def default_verifiers(settings: VerifierSettings | None = None, *, eval_items: list[dict] | None = None,
                      **overrides) -> list:
    """The standard stateless chain: format, non-triviality, grounding, safety, and decontamination when
    ``eval_items`` (chat-format validation/test items) are given, configured by ``settings`` (default:
    ``VerifierSettings()``, synthesize's defaults) with ``overrides`` (its field names) on top. Near-duplicate
    removal is stateful and added separately (:class:`rubric_rl.synth.dedup.NearDuplicateFilter`)."""
    from .decontam import Decontaminator
    from .grounding import GroundingVerifier
    from .safety import SafetyVerifier

    v = replace(settings or VerifierSettings(), **overrides)
    chain: list = [FormatVerifier(), NonTrivialVerifier()]
    if v.grounding:
        chain.append(GroundingVerifier(min_overlap=v.grounding_min_overlap,
                                       min_claim_overlap=v.grounding_min_claim_overlap))
    if v.safety:
        chain.append(SafetyVerifier(blocklist_file=v.blocklist_file))
    if eval_items:
        chain.append(Decontaminator(eval_items, ngram=v.decontam_ngram, threshold=v.decontam_threshold))
    return chain


def verifier_name(verifier) -> str:
    return getattr(verifier, "name", None) or type(verifier).__name__
