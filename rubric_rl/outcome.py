"""What became of one item on its way to a reward: why it stopped (:class:`Reason`: the stage and that stage's code)
and what that means for the policy (:class:`Status`), read off ONE table (:data:`CLASSIFICATION`).

The synthesis engine (``synth.engine.SampleOutcome.cause``), the influence scorer (``InfluenceResult.cause``) and
the reward (``reward.Rollout.cause``) carry a :class:`Reason`; strings exist only where they are written down (the
rollout log's ``outcome``, ``metrics.jsonl``, the summaries, ``synthesize``'s rejected file): ``str(reason)`` is
the string those files have always held:

========== ======================= =====================================================================
stage      logged as               codes
========== ======================= =====================================================================
rubric     ``rubric_<code>``       ``rubric.try_parse_rubric``'s reasons (``json_error``, ``stuttering``, ...)
item       ``<code>``              the item could not be sent: ``unknown_strategy``, ``missing_seed_sample``,
                                   ``empty_document``
teacher    ``teacher_<code>``      the teacher's error code (``timeout``, ``http_503``, ``empty``, ...;
                                   ``failed`` when it gave none), ``budget_exhausted``
parse      ``parse_<code>``        ``synth.parse``'s reasons
verifier   ``<code>``              the first verifier's rejection (``ungrounded``, ``near_duplicate``, ...)
influence  ``influence_<code>``    the scorer's code (``bad_format``, ``nonfinite_gradient``, ...;
                                   ``nonfinite`` for a non-finite value without one), ``service_<code>``
                                   (the influence service failed for good)
========== ======================= =====================================================================

:class:`Status`: ``valid`` (no reason), ``invalid`` (the rubric's fault: the reward is ``-lambda``), ``unscorable``
(it says nothing about the rubric: the reward is ``None``, left out of the group baseline). Teacher codes are
also ``infrastructure`` or not: an infrastructure failure (timeout, connection, HTTP 5xx/408/429) is retried,
costs no budget and counts towards the circuit breaker (``teachers.base``).

The bottom floor: imports nothing of the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from fnmatch import fnmatchcase

__all__ = ["Status", "Reason", "Rule", "CLASSIFICATION", "STAGES", "RUBRIC", "ITEM", "TEACHER", "PARSE", "VERIFIER",
           "INFLUENCE", "classify", "parse_reason", "influence_cause", "UNKNOWN_STRATEGY", "MISSING_SEED_SAMPLE",
           "EMPTY_DOCUMENT", "BUDGET_EXHAUSTED"]


class Status(Enum):
    VALID = "valid"
    INVALID = "invalid"  # the rubric's fault: -lambda
    UNSCORABLE = "unscorable"  # not the rubric's fault: None (TRL's NaN), counted, never 0


RUBRIC, ITEM, TEACHER, PARSE, VERIFIER, INFLUENCE = "rubric", "item", "teacher", "parse", "verifier", "influence"
STAGES = (RUBRIC, ITEM, TEACHER, PARSE, VERIFIER, INFLUENCE)  # in the order an item meets them
_PREFIXED = (RUBRIC, TEACHER, PARSE, INFLUENCE)  # logged "<stage>_<code>"; item and verifier codes are logged bare


@dataclass(frozen=True)
class Reason:
    """Why an item stopped: the ``stage`` that stopped it and that stage's ``code``. ``str()`` is the logged form."""

    stage: str
    code: str

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"unknown outcome stage {self.stage!r} (one of {', '.join(STAGES)})")
        if not isinstance(self.code, str) or not self.code:
            raise ValueError(f"an outcome code is a non-empty string, got {self.code!r}")

    def __str__(self) -> str:
        return f"{self.stage}_{self.code}" if self.stage in _PREFIXED else self.code

    @property
    def status(self) -> Status:
        return classify(self).status

    @property
    def infrastructure(self) -> bool:
        return classify(self).infrastructure


@dataclass(frozen=True)
class Rule:
    """A row of :data:`CLASSIFICATION`: reasons of ``stage`` whose code matches ``codes`` (``fnmatch``, case
    sensitive) have ``status``; ``infrastructure``: the teacher's infrastructure failed, not the sample."""

    stage: str
    codes: str
    status: Status
    infrastructure: bool = False

    def matches(self, reason: Reason) -> bool:
        return reason.stage == self.stage and fnmatchcase(reason.code, self.codes)


_U, _I = Status.UNSCORABLE, Status.INVALID

# THE classification: the first row that matches a reason decides. Every stage ends in a "*" row, so every reason
# is classified. Teacher codes: the infrastructure failures (exact codes) first; then the other teacher-side
# failures, which say nothing about the rubric either (a malformed response, a spent budget, a failed or crashed
# generation, any other HTTP status; prefixes, so "generation_error:RuntimeError" is one); what is left (``empty``,
# ``no_usable_fact``, ``prompt_too_long``, ``bad_request:...``, ``empty_document``) follows from what the rubric
# asked for and is invalid. An influence failure is never the rubric's fault.
CLASSIFICATION: tuple[Rule, ...] = (
    Rule(RUBRIC, "*", _I),
    Rule(ITEM, "*", _I),
    Rule(TEACHER, "timeout", _U, infrastructure=True),
    Rule(TEACHER, "connection_error", _U, infrastructure=True),
    Rule(TEACHER, "http_5[0-9][0-9]", _U, infrastructure=True),
    Rule(TEACHER, "http_408", _U, infrastructure=True),
    Rule(TEACHER, "http_429", _U, infrastructure=True),
    Rule(TEACHER, "timeout*", _U),
    Rule(TEACHER, "http*", _U),
    Rule(TEACHER, "connection*", _U),
    Rule(TEACHER, "bad_response*", _U),
    Rule(TEACHER, "budget_exhausted*", _U),
    Rule(TEACHER, "failed*", _U),
    Rule(TEACHER, "generation_error*", _U),
    Rule(TEACHER, "*", _I),
    Rule(PARSE, "*", _I),
    Rule(VERIFIER, "*", _I),
    Rule(INFLUENCE, "*", _U),
)


def classify(reason: Reason) -> Rule:
    """The row of :data:`CLASSIFICATION` that decides ``reason``."""
    for rule in CLASSIFICATION:
        if rule.matches(reason):
            return rule
    raise AssertionError(f"no classification row for {reason!r}")  # every stage ends in a "*" row


# The codes the synthesis engine gives before it asks the teacher (logged bare, like a verifier's).
UNKNOWN_STRATEGY = Reason(ITEM, "unknown_strategy")
MISSING_SEED_SAMPLE = Reason(ITEM, "missing_seed_sample")
EMPTY_DOCUMENT = Reason(ITEM, "empty_document")
BUDGET_EXHAUSTED = Reason(TEACHER, "budget_exhausted")  # the query budget is spent: not sent, costs nothing
_ITEM_CODES = {r.code for r in (UNKNOWN_STRATEGY, MISSING_SEED_SAMPLE, EMPTY_DOCUMENT)}


def parse_reason(text: str) -> Reason:
    """The :class:`Reason` a logged outcome string was written from (``str(parse_reason(s)) == s``): for readers
    of the logs. A bare code that is not an item code is a verifier's."""
    for stage in _PREFIXED:
        if text.startswith(stage + "_") and len(text) > len(stage) + 1:
            return Reason(stage, text[len(stage) + 1:])
    return Reason(ITEM if text in _ITEM_CODES else VERIFIER, text)


def influence_cause(value, code: str | None) -> Reason | None:
    """An influence result's reason: ``None`` for a finite value; otherwise the scorer's ``code`` (``nonfinite``
    when a non-finite value came without one) in the influence stage. Takes the result's two fields, so that any
    object with the scorer's ``value`` and ``reason`` (the service's client, a test double) reads the same."""
    if value is not None and math.isfinite(value):
        return None
    return Reason(INFLUENCE, code or "nonfinite")
