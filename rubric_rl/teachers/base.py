"""The teacher interface: ``generate(requests) -> results``, one result per request, same order.

A teacher never raises for one bad request: a timeout, an HTTP error or an empty generation
becomes a :class:`TeacherResult` with ``text=None`` and an ``error`` reason code, so the caller can
count it as an invalid sample and go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..rubric import Rubric


@dataclass
class TeacherRequest:
    """What the teacher is asked: chat ``messages`` (the rendered teacher prompt).

    ``document`` and ``rubric`` carry the same content in structured form; only the offline
    template teacher reads them, real backends send ``messages``.
    """

    messages: list[dict]
    document: str = ""
    rubric: Rubric | None = None
    seed: int = 0
    meta: dict = field(default_factory=dict)


@dataclass
class TeacherResult:
    text: str | None
    error: str | None = None  # reason code when text is None: "timeout", "http_500", "empty", ...
    prompt_tokens: int = 0
    completion_tokens: int = 0
    meta: dict = field(default_factory=dict)  # backend details: attempts, finish_reason, ...

    @property
    def ok(self) -> bool:
        return self.text is not None and self.error is None


@runtime_checkable
class Teacher(Protocol):
    name: str

    def generate(self, requests: list[TeacherRequest]) -> list[TeacherResult]: ...
