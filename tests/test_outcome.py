"""The typed outcome (rubric_rl/outcome.py): the logged strings, the one classification table, and that the engine,
the scorer's result and the reward carry a Reason, with strings only where they are written down."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from rubric_rl.outcome import (CLASSIFICATION, INFLUENCE, ITEM, PARSE, RUBRIC, STAGES, TEACHER, VERIFIER, Reason,
                               Status, classify, influence_cause, parse_reason)

ROOT = Path(__file__).resolve().parents[1] / "rubric_rl"

# The strings rollouts.jsonl, metrics and the summaries have always held, and what each one means for the reward.
LOGGED = [
    (Reason(RUBRIC, "json_error"), "rubric_json_error", Status.INVALID),
    (Reason(RUBRIC, "stuttering"), "rubric_stuttering", Status.INVALID),
    (Reason(ITEM, "unknown_strategy"), "unknown_strategy", Status.INVALID),
    (Reason(ITEM, "missing_seed_sample"), "missing_seed_sample", Status.INVALID),
    (Reason(ITEM, "empty_document"), "empty_document", Status.INVALID),
    (Reason(TEACHER, "timeout"), "teacher_timeout", Status.UNSCORABLE),
    (Reason(TEACHER, "connection_error"), "teacher_connection_error", Status.UNSCORABLE),
    (Reason(TEACHER, "http_503"), "teacher_http_503", Status.UNSCORABLE),
    (Reason(TEACHER, "http_429"), "teacher_http_429", Status.UNSCORABLE),
    (Reason(TEACHER, "http_400"), "teacher_http_400", Status.UNSCORABLE),
    (Reason(TEACHER, "bad_response"), "teacher_bad_response", Status.UNSCORABLE),
    (Reason(TEACHER, "budget_exhausted"), "teacher_budget_exhausted", Status.UNSCORABLE),
    (Reason(TEACHER, "failed"), "teacher_failed", Status.UNSCORABLE),
    (Reason(TEACHER, "generation_error:RuntimeError"), "teacher_generation_error:RuntimeError", Status.UNSCORABLE),
    (Reason(TEACHER, "empty"), "teacher_empty", Status.INVALID),
    (Reason(TEACHER, "no_usable_fact"), "teacher_no_usable_fact", Status.INVALID),
    (Reason(TEACHER, "prompt_too_long"), "teacher_prompt_too_long", Status.INVALID),
    (Reason(TEACHER, "bad_request:ValueError"), "teacher_bad_request:ValueError", Status.INVALID),
    (Reason(TEACHER, "empty_document"), "teacher_empty_document", Status.INVALID),
    (Reason(PARSE, "no_text"), "parse_no_text", Status.INVALID),
    (Reason(VERIFIER, "ungrounded"), "ungrounded", Status.INVALID),
    (Reason(VERIFIER, "near_duplicate"), "near_duplicate", Status.INVALID),
    (Reason(INFLUENCE, "nonfinite_gradient"), "influence_nonfinite_gradient", Status.UNSCORABLE),
    (Reason(INFLUENCE, "nonfinite"), "influence_nonfinite", Status.UNSCORABLE),
    (Reason(INFLUENCE, "bad_format"), "influence_bad_format", Status.UNSCORABLE),
    (Reason(INFLUENCE, "service_http_500"), "influence_service_http_500", Status.UNSCORABLE),
]


@pytest.mark.parametrize("reason,logged,status", LOGGED, ids=[x[1] for x in LOGGED])
def test_each_reason_is_logged_as_before_and_classified(reason, logged, status):
    assert str(reason) == logged
    assert reason.status is status
    assert parse_reason(logged) == reason


# The two regular expressions the table replaced (teachers/base.py before it): the table must agree with them on
# every teacher code the backends give and on near misses.
OLD_INFRA = re.compile(r"^(timeout|connection_error|http_5\d\d|http_408|http_429)$")
OLD_TEACHER_SIDE = re.compile(r"^(timeout|http|connection|bad_response|budget_exhausted|failed|generation_error)")
TEACHER_CODES = ["timeout", "timeout_x", "connection_error", "connection_reset", "http_500", "http_503", "http_599",
                 "http_408", "http_429", "http_400", "http_404", "http_4290", "http_5000", "http_50", "httpx",
                 "bad_response", "bad_request:ValueError", "budget_exhausted", "failed", "failed_twice",
                 "generation_error:OutOfMemoryError", "empty", "no_usable_fact", "prompt_too_long", "empty_document",
                 "unknown", "Timeout", "xtimeout"]


@pytest.mark.parametrize("code", TEACHER_CODES)
def test_the_table_classifies_teacher_codes_as_the_old_regexes_did(code):
    from rubric_rl.teachers.base import is_infrastructure_error

    reason = Reason(TEACHER, code)
    assert reason.infrastructure is bool(OLD_INFRA.match(code)) is is_infrastructure_error(code)
    assert (reason.status is Status.UNSCORABLE) is bool(OLD_TEACHER_SIDE.match(code))
    assert reason.status is not Status.VALID


def test_the_table_covers_every_stage_and_infrastructure_is_only_a_teachers_unscorable_failure():
    for stage in STAGES:
        assert CLASSIFICATION[[r.stage for r in CLASSIFICATION].index(stage)]  # a row for it
        last = [r for r in CLASSIFICATION if r.stage == stage][-1]
        assert last.codes == "*", stage  # so every reason of the stage is classified
        assert classify(Reason(stage, "anything_new")) is not None
    for rule in CLASSIFICATION:
        assert rule.status is not Status.VALID  # a reason is never valid: valid is no reason
        if rule.infrastructure:
            assert rule.stage == TEACHER and rule.status is Status.UNSCORABLE
    assert [r.stage for r in CLASSIFICATION if r.status is Status.UNSCORABLE and r.codes == "*"] == [INFLUENCE]


def test_a_reason_is_frozen_and_checked():
    r = Reason(TEACHER, "timeout")
    with pytest.raises(AttributeError):
        r.code = "x"
    assert r == Reason(TEACHER, "timeout") and hash(r) == hash(Reason(TEACHER, "timeout"))
    with pytest.raises(ValueError, match="stage"):
        Reason("reward", "x")
    with pytest.raises(ValueError, match="code"):
        Reason(TEACHER, "")


def test_influence_cause_reads_value_and_code():
    assert influence_cause(0.5, None) is None
    assert influence_cause(None, "bad_format") == Reason(INFLUENCE, "bad_format")
    assert influence_cause(float("nan"), None) == Reason(INFLUENCE, "nonfinite")
    assert influence_cause(float("inf"), "nonfinite_gradient") == Reason(INFLUENCE, "nonfinite_gradient")


def test_the_scorers_result_carries_the_typed_cause():
    pytest.importorskip("torch")
    from rubric_rl.influence.scorer import InfluenceResult

    assert InfluenceResult(1.0).cause is None and InfluenceResult(1.0).status is Status.VALID
    bad = InfluenceResult(None, "no_assistant_tokens")
    assert bad.cause == Reason(INFLUENCE, "no_assistant_tokens") and bad.status is Status.UNSCORABLE
    assert str(bad.cause) == "influence_no_assistant_tokens" and bad.reason == "no_assistant_tokens"


RUBRIC_JSON = '{"prompt_related": ["Write a multiple-choice question."], "response_related": ["Reason step by step."]}'


def test_the_engine_gives_typed_causes_and_their_logged_strings(quickstart_dir):
    from rubric_rl.data.documents import load_documents
    from rubric_rl.rubric import try_parse_rubric
    from rubric_rl.synth.engine import SampleSynthesizer, SynthItem
    from rubric_rl.teachers.base import TeacherResult
    from rubric_rl.teachers.template import TemplateTeacher

    class Failing(TemplateTeacher):
        def generate(self, requests):
            return [TeacherResult(None, "http_503")] + [TeacherResult("no labelled blocks here")] * (len(requests) - 1)

    text = load_documents(quickstart_dir / "documents.jsonl")[0]["text"]
    rubric, err = try_parse_rubric(RUBRIC_JSON, "json")
    assert err is None
    items = [SynthItem(text, rubric, strategy="nope"), SynthItem(text, rubric), SynthItem(text, rubric)]
    outs = SampleSynthesizer(Failing(), verifiers=[]).synthesize(items)
    assert [o.cause.stage for o in outs] == [ITEM, TEACHER, PARSE]
    assert [o.reason for o in outs] == ["unknown_strategy", "teacher_http_503", str(outs[2].cause)]
    assert outs[2].reason.startswith("parse_")
    assert [o.status for o in outs] == [Status.INVALID, Status.UNSCORABLE, Status.INVALID]
    assert [o.infrastructure for o in outs] == [False, True, False]


class Result:
    def __init__(self, value, reason=None):
        self.value, self.reason = value, reason


class HalfNanScorer:
    """The first sample is unscorable (no value), the others score 1.0."""

    def score(self, samples):
        return [Result(None, "nonfinite_gradient")] + [Result(1.0)] * (len(samples) - 1)


def test_an_influence_failure_is_unscorable_without_passing_through_the_penalty(quickstart_dir):
    """The reward shapes an unscorable rollout to None directly: shape_rewards is told it is not invalid, so it never
    computes -lambda for it (before, that value was computed and then overwritten with None)."""
    from unittest import mock

    from rubric_rl import reward as reward_module
    from rubric_rl.data.documents import load_documents
    from rubric_rl.synth.engine import SampleSynthesizer
    from rubric_rl.teachers.template import TemplateTeacher

    docs = load_documents(quickstart_dir / "documents.jsonl")
    seen = {}
    real = reward_module.shape_rewards

    def spy(influences, valid, **kw):
        seen["valid"] = list(valid)
        return real(influences, valid, **kw)

    reward = reward_module.InfluenceReward(SampleSynthesizer(TemplateTeacher([d["text"] for d in docs])),
                                           HalfNanScorer, invalid_penalty=0.1, scaling="none")
    with mock.patch.object(reward_module, "shape_rewards", spy):
        out = reward(prompts=[None] * 3, completions=[RUBRIC_JSON, RUBRIC_JSON, "not a rubric"],
                     document=[docs[0]["text"]] * 3, doc_id=["d0"] * 3)
    assert out[0] is None and out[1] == pytest.approx(1.0) and out[2] == pytest.approx(-0.1)
    assert seen["valid"] == [True, True, False]
    assert reward.stats.outcomes["influence_nonfinite_gradient"] == 1 and reward.stats.outcomes["valid"] == 1


# Outcome strings are built in one place: no f-string or concatenation in the package starts with a stage's prefix.
PREFIX = re.compile(r"^(rubric|teacher|parse|influence)_$")


def test_no_module_builds_an_outcome_string_by_hand():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "outcome.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            head = None
            if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                head = node.values[0].value
            elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and isinstance(node.left, ast.Constant)
                  and isinstance(node.left.value, str)):
                head = node.left.value
            if head is not None and PREFIX.match(head):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {head!r}")
    assert not found, "build a reason with outcome.Reason(stage, code) instead:\n" + "\n".join(found)
