"""(document, rubric) -> teacher -> parse -> verifiers -> accepted sample or a reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..rubric import Rubric
from ..teachers.base import Teacher, TeacherRequest
from .parse import parse_sample
from .verifiers import Candidate, default_verifiers

TEACHER_SYSTEM = "You are a domain expert who writes high-quality training data for a language model."
TEACHER_INSTRUCTIONS = (
    "Write one question and its answer, based only on the document and following every criterion of the "
    "rubric. Reply exactly in this format:\nQuestion:\n<the question>\nAnswer:\n<the answer>"
)


def teacher_messages(document: str, rubric: Rubric | None) -> list[dict]:
    """The teacher prompt for the ``new_question`` strategy."""
    rubric_text = rubric.render() if rubric is not None and rubric.num_items else "(no rubric: use your judgement)"
    user = f"Document:\n{document}\n\nRubric:\n{rubric_text}\n\n{TEACHER_INSTRUCTIONS}"
    return [{"role": "system", "content": TEACHER_SYSTEM}, {"role": "user", "content": user}]


@dataclass
class SynthItem:
    document: str
    rubric: Rubric | None
    doc_id: str = ""
    seed: int = 0


@dataclass
class SampleOutcome:
    messages: list[dict] | None
    reason: str | None  # None when accepted
    teacher_text: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.reason is None and self.messages is not None


class SampleSynthesizer:
    """Turns (document, rubric) pairs into verified chat samples with one teacher call each."""

    def __init__(self, teacher: Teacher, verifiers: list | None = None):
        self.teacher = teacher
        self.verifiers = default_verifiers() if verifiers is None else verifiers
        self.counts: Counter = Counter()

    def synthesize(self, items: list[SynthItem]) -> list[SampleOutcome]:
        outcomes: list[SampleOutcome | None] = [None] * len(items)
        requests, index = [], []
        for i, item in enumerate(items):
            if not item.document or not item.document.strip():
                outcomes[i] = SampleOutcome(None, "empty_document")
                continue
            requests.append(TeacherRequest(messages=teacher_messages(item.document, item.rubric),
                                           document=item.document, rubric=item.rubric, seed=item.seed,
                                           meta={"doc_id": item.doc_id}))
            index.append(i)
        results = self.teacher.generate(requests) if requests else []
        for i, res in zip(index, results, strict=True):
            item = items[i]
            meta = {"doc_id": item.doc_id, "teacher": getattr(self.teacher, "name", type(self.teacher).__name__)}
            if not res.ok:
                outcomes[i] = SampleOutcome(None, f"teacher_{res.error or 'failed'}", res.text, meta)
                continue
            messages, reason = parse_sample(res.text)
            if messages is None:
                outcomes[i] = SampleOutcome(None, f"parse_{reason}", res.text, meta)
                continue
            cand = Candidate(messages, item.document, meta)
            reason = next((r for r in (v(cand) for v in self.verifiers) if r), None)
            outcomes[i] = SampleOutcome(messages if reason is None else None, reason, res.text, meta)
        for o in outcomes:
            self.counts["accepted" if o.valid else o.reason] += 1
        return outcomes
