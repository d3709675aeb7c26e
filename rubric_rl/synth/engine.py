"""(document, rubric[, seed sample]) -> teacher -> parse -> verifiers -> accepted sample or a reason."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from ..configs.synth import NEEDS_DOCUMENT
from ..outcome import (BUDGET_EXHAUSTED, EMPTY_DOCUMENT, MISSING_SEED_SAMPLE, PARSE, TEACHER, UNKNOWN_STRATEGY,
                       VERIFIER, Reason, Status)
from ..rubric import Rubric
from ..teachers.base import Teacher, TeacherRequest
from ..teachers.factory import teacher_label
from .parse import parse_answer, parse_sample
from .strategies import (AUGMENT_ANSWER, NEW_QUESTION, SEEDED, STRATEGIES, TEACHER_SYSTEM, new_question_messages,
                         strategy_messages)
from .verifiers import Candidate, default_verifiers, verifier_name

__all__ = ["TEACHER_SYSTEM", "teacher_messages", "cap_document", "SynthItem", "SampleOutcome",
           "SampleSynthesizer"]

logger = logging.getLogger(__name__)


def cap_document(document: str, max_chars: int) -> str:
    """``document`` itself when it has at most ``max_chars`` characters (or ``max_chars`` is 0); otherwise its
    first ``max_chars`` characters cut back to the last sentence end (". ", "! ", "? " or a newline) in the
    window's last fifth, else to the last space, and marked ``[... document cut: N of M characters]``."""
    if not max_chars or document is None or len(document) <= max_chars:
        return document
    window = document[:max_chars]
    floor = int(max_chars * 0.8)
    ends = [window.rfind(p) + len(p) - 1 for p in (". ", "! ", "? ", "\n")]
    cut = max(ends)
    if cut < floor:
        space = window.rfind(" ")
        cut = space if space >= floor else max_chars
    kept = window[:cut].rstrip()
    return f"{kept}\n[... document cut: {len(kept)} of {len(document)} characters]"


def teacher_messages(document: str, rubric: Rubric | None) -> list[dict]:
    """The teacher prompt for the ``new_question`` strategy."""
    return new_question_messages(document, rubric)


@dataclass
class SynthItem:
    """One candidate sample to synthesize. ``seed_messages`` (a chat sample) is required by the ``rephrase`` and
    ``augment_answer`` strategies; ``meta`` is copied into the outcome's provenance."""

    document: str
    rubric: Rubric | None
    doc_id: str = ""
    seed: int = 0
    strategy: str = NEW_QUESTION
    seed_messages: list[dict] | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class SampleOutcome:
    """What one item gave: the accepted sample's ``messages``, or why there is none (``cause``)."""

    messages: list[dict] | None
    cause: Reason | None  # None when accepted
    teacher_text: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.cause is None and self.messages is not None

    @property
    def status(self) -> Status:
        return self.cause.status if self.cause is not None else Status.VALID

    @property
    def reason(self) -> str | None:
        """The logged form of ``cause`` (``teacher_timeout``, ``parse_no_text``, ``ungrounded``, ...)."""
        return None if self.cause is None else str(self.cause)

    @property
    def infrastructure(self) -> bool:
        """The teacher's infrastructure failed (not the sample): retry the item."""
        return self.cause is not None and self.cause.infrastructure


class SampleSynthesizer:
    """Turns items into verified chat samples with ONE teacher query per item.

    ``verifiers`` run in order and the first rejection wins; a verifier with an ``observe(candidate)``
    method (near-duplicate filter) is told about every accepted sample, so later candidates, also
    within the same ``synthesize`` call, are checked against it. ``budget`` caps the teacher queries over
    the synthesizer's lifetime: items past it come back with reason ``teacher_budget_exhausted`` and cost
    nothing. A query that failed for infrastructure reasons (timeout, connection, HTTP 5xx/408/429: the
    outcome's ``infrastructure`` is True) says nothing about the item and is not counted as spent; the
    teacher's circuit breaker stops the run when there are too many (``TeacherUnavailable`` propagates).
    ``queries_spent``, ``infrastructure_failures`` and ``counts`` (accepted / reason -> n) accumulate over calls.
    """

    # max_document_chars 0 (never cut), not teacher_max_document_chars: a bare synthesizer (tests, scripts) sends
    # what it is given; every command passes the teacher setting.
    def __init__(self, teacher: Teacher, verifiers: list | None = None, *, budget: int | None = None,
                 max_document_chars: int = 0):
        self.teacher = teacher
        self.max_document_chars = max_document_chars
        self.documents_cut = 0
        self.verifiers = default_verifiers() if verifiers is None else verifiers
        self.budget = budget
        self.queries_spent = 0
        self.infrastructure_failures = 0
        self.counts: Counter = Counter()
        self.teacher_label = teacher_label(teacher)

    @property
    def budget_left(self) -> int | None:
        return None if self.budget is None else max(0, self.budget - self.queries_spent)

    def _request(self, item: SynthItem) -> TeacherRequest:
        meta = {"doc_id": item.doc_id, "strategy": item.strategy}
        if item.strategy in SEEDED:
            meta["seed_question"] = _turn(item.seed_messages, "user")
            meta["seed_answer"] = _turn(item.seed_messages, "assistant")
        document = self._document(item)
        return TeacherRequest(messages=strategy_messages(item.strategy, document, item.rubric, item.seed_messages),
                              document=document, rubric=item.rubric, seed=item.seed, meta=meta)

    def _document(self, item: SynthItem) -> str:
        """The document as the teacher sees it: cut by :func:`cap_document` (the verifiers check against it too)."""
        document = cap_document(item.document, self.max_document_chars)
        if document is not item.document:
            self.documents_cut += 1
            if self.documents_cut == 1:
                logger.warning("teacher prompt: document %s has %d characters, cut to teacher_max_document_chars=%d "
                               "(at the last sentence end before it); later cuts are counted, not logged",
                               item.doc_id, len(item.document), self.max_document_chars)
        return document

    def synthesize(self, items: list[SynthItem]) -> list[SampleOutcome]:
        outcomes: list[SampleOutcome | None] = [None] * len(items)
        requests, index, shown = [], [], {}
        for i, item in enumerate(items):
            meta = {"doc_id": item.doc_id, "teacher": self.teacher_label, "strategy": item.strategy, **item.meta}
            if item.strategy not in STRATEGIES:
                outcomes[i] = SampleOutcome(None, UNKNOWN_STRATEGY, meta=meta)
            elif item.strategy in SEEDED and not item.seed_messages:
                outcomes[i] = SampleOutcome(None, MISSING_SEED_SAMPLE, meta=meta)
            elif item.strategy in NEEDS_DOCUMENT and (not item.document or not item.document.strip()):
                outcomes[i] = SampleOutcome(None, EMPTY_DOCUMENT, meta=meta)
            elif self.budget_left is not None and self.budget_left <= len(requests):
                outcomes[i] = SampleOutcome(None, BUDGET_EXHAUSTED, meta=meta)
            else:
                requests.append(self._request(item))
                index.append(i)
                shown[i] = requests[-1].document  # what the teacher saw (cut if too long): what it is checked on
        results = self.teacher.generate(requests) if requests else []
        if len(results) != len(requests):
            raise RuntimeError(f"teacher {self.teacher_label} returned {len(results)} results for "
                               f"{len(requests)} requests")
        failures = [None if res.ok else Reason(TEACHER, res.error or "failed") for res in results]
        infra = sum(1 for cause in failures if cause is not None and cause.infrastructure)
        self.queries_spent += len(requests) - infra
        self.infrastructure_failures += infra
        for i, res, failure in zip(index, results, failures, strict=True):
            item = items[i]
            meta = {"doc_id": item.doc_id, "teacher": self.teacher_label, "strategy": item.strategy, **item.meta}
            if res.prompt_tokens or res.completion_tokens:
                meta["tokens"] = {"prompt": res.prompt_tokens, "completion": res.completion_tokens}
            if failure is not None:
                outcomes[i] = SampleOutcome(None, failure, res.text, meta)
                continue
            if item.strategy == AUGMENT_ANSWER:
                answer, reason = parse_answer(res.text)
                messages = None if answer is None else [{"role": "user", "content": _turn(item.seed_messages, "user")},
                                                        {"role": "assistant", "content": answer}]
            else:
                messages, reason = parse_sample(res.text)
            if messages is None:
                outcomes[i] = SampleOutcome(None, Reason(PARSE, reason), res.text, meta)
                continue
            outcomes[i] = self._verify(Candidate(messages, shown[i], meta), res.text)
        for o in outcomes:
            self.counts["accepted" if o.valid else o.reason] += 1
        return outcomes

    def _verify(self, cand: Candidate, text: str) -> SampleOutcome:
        results: dict[str, str] = {}
        reason = None
        for verifier in self.verifiers:
            name = verifier_name(verifier)
            reason = verifier(cand)
            results[name] = reason or "pass"
            if reason:
                cand.meta["rejected_by"] = name
                break
        cand.meta["verifiers"] = results
        if reason is None:
            for verifier in self.verifiers:
                observe = getattr(verifier, "observe", None)
                if observe is not None:
                    observe(cand)
        return SampleOutcome(cand.messages if reason is None else None,
                             None if reason is None else Reason(VERIFIER, reason), text, cand.meta)


def _turn(messages: list[dict] | None, role: str) -> str:
    messages = list(messages or [])
    for m in reversed(messages) if role == "assistant" else messages:
        if m.get("role") == role:
            return m.get("content", "")
    return ""
