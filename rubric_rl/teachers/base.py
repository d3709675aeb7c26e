"""The teacher interface: ``generate(requests) -> results``, one result per request, same order.

A teacher never raises for one bad request: a timeout, an HTTP error or an empty generation
becomes a :class:`TeacherResult` with ``text=None`` and an ``error`` reason code, so the caller can
count it as an invalid sample and go on.

Infrastructure failures (:func:`is_infrastructure_error`: timeouts, broken or refused connections,
HTTP 5xx, 408 and 429 after the retries) say nothing about the sample: callers do not count them
against a sample budget, and a :class:`CircuitBreaker` turns too many of them into
:class:`TeacherUnavailable`, the one exception a teacher raises, so that a run stops instead of
"training" on connection errors.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..configs.teacher import TeacherConfig as T  # the one place of each teacher_* default
from ..outcome import TEACHER, Reason
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


def is_infrastructure_error(code: str | None) -> bool:
    """True for failures of the teacher's infrastructure (not of the sample): ``timeout``,
    ``connection_error``, ``http_5xx``, ``http_408``, ``http_429``. Read off the one classification table,
    ``outcome.CLASSIFICATION`` (which also says which other teacher codes are not the rubric's fault)."""
    return bool(code) and Reason(TEACHER, code).infrastructure


class TeacherUnavailable(RuntimeError):
    """The teacher's infrastructure failed on too many requests of a window (see :class:`CircuitBreaker`)."""

    def __init__(self, endpoint: str, failures: int, window: int, last_error: str | None):
        self.endpoint, self.failures, self.window, self.last_error = endpoint, failures, window, last_error
        super().__init__(f"teacher unavailable: {endpoint}: {failures} of the last {window} requests failed for "
                         f"infrastructure reasons (last error: {last_error or 'unknown'}); stopped. Fix the endpoint "
                         "and rerun (finished work is kept), or tune teacher_breaker_window / "
                         "teacher_breaker_max_failure_rate (0 disables)")


class CircuitBreaker:
    """Trips when more than ``max_failure_rate * window`` of the last ``window`` requests failed for
    infrastructure reasons (so it never trips on fewer than that many failures, even before the
    window has filled). ``window=0`` or ``max_failure_rate=0`` disables it. Thread-safe.

    ``record(failed, error)`` after every finished request; ``check()`` raises
    :class:`TeacherUnavailable` once tripped (and keeps raising: a dead endpoint stays dead for the run).
    ``unavailable`` is the exception class raised instead, called as ``unavailable(endpoint, failures, window,
    last_error)`` (the influence service's client: ``errors.InfluenceUnavailable``).
    """

    def __init__(self, endpoint: str, window: int = T.teacher_breaker_window,
                 max_failure_rate: float = T.teacher_breaker_max_failure_rate, *,
                 unavailable: type = TeacherUnavailable):
        if window < 0:
            raise ValueError(f"circuit breaker window must be >= 0, got {window!r}")
        if not 0 <= max_failure_rate <= 1:
            raise ValueError(f"circuit breaker max_failure_rate must be in [0, 1], got {max_failure_rate!r}")
        self.endpoint, self.window, self.max_failure_rate = endpoint, window, max_failure_rate
        self.unavailable = unavailable
        self._recent: deque = deque(maxlen=max(window, 1))
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.tripped: Exception | None = None

    @property
    def enabled(self) -> bool:
        return self.window > 0 and self.max_failure_rate > 0

    def record(self, failed: bool, error: str | None = None) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._recent.append(bool(failed))
            if failed:
                self.last_error = error or "unknown"
            failures = sum(self._recent)
            if self.tripped is None and failures > self.max_failure_rate * self.window:
                self.tripped = self.unavailable(self.endpoint, failures, len(self._recent), self.last_error)

    def check(self) -> None:
        t = self.tripped
        if t is not None:  # a fresh exception each time (re-raising one instance would chain its tracebacks)
            raise self.unavailable(t.endpoint, t.failures, t.window, t.last_error)
