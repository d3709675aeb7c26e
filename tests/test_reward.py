import json
import math

import pytest

from rubric_rl.data.documents import load_documents
from rubric_rl.reward import InfluenceReward, group_novelty, sample_bigrams, shape_rewards
from rubric_rl.synth.engine import SampleSynthesizer
from rubric_rl.teachers.base import TeacherResult
from rubric_rl.teachers.template import TemplateTeacher


def test_shaping_invalid_and_nan():
    out = shape_rewards([0.2, None, float("nan"), 0.4, 9.0], [True, True, True, True, False],
                        invalid_penalty=0.1, scaling="none")
    assert out[0] == pytest.approx(0.2) and out[3] == pytest.approx(0.4)
    assert out[1] is None and out[2] is None  # never a silent 0
    assert out[4] == pytest.approx(-0.1)


def test_shaping_batch_minmax():
    out = shape_rewards([0.1, 0.3, 0.2, None], [True, True, True, False], invalid_penalty=0.5,
                        scaling="batch_minmax", scale=2.0)
    assert out == pytest.approx([0.0, 2.0, 1.0, -0.5])
    # a single distinct valid value carries no ranking: midpoint, not 0
    assert shape_rewards([0.7, 0.7], [True, True], invalid_penalty=0.1)[0] == pytest.approx(0.5)
    assert shape_rewards([], [], invalid_penalty=0.1) == []


class FakeResult:
    def __init__(self, value, reason=None):
        self.value, self.reason = value, reason


class FakeScorer:
    """Test double: influence = number of words in the answer (NaN for answers containing 'nan')."""

    def score(self, samples):
        out = []
        for s in samples:
            a = s[-1]["content"]
            out.append(FakeResult(float("nan"), "nonfinite_gradient") if "nan" in a.lower()
                       else FakeResult(float(len(a.split()))))
        return out


class FlakyTeacher(TemplateTeacher):
    def generate(self, requests):
        res = super().generate(requests)
        return [TeacherResult(None, "timeout") if "timeout" in str(r.rubric.to_dict()) else x
                for r, x in zip(requests, res)]


def test_reward_callable_end_to_end(quickstart_dir, tmp_path):
    docs = load_documents(quickstart_dir / "documents.jsonl")
    teacher = FlakyTeacher([d["text"] for d in docs])
    reward = InfluenceReward(SampleSynthesizer(teacher), FakeScorer, invalid_penalty=0.1, scaling="none",
                             log_path=tmp_path / "rollouts.jsonl")
    good = json.dumps({"prompt_related": ["multiple-choice question"], "response_related": ["step by step"]})
    short = json.dumps({"prompt_related": ["ask about the dose"], "response_related": ["concise"]})
    timeout = json.dumps({"prompt_related": ["timeout please"]})
    completions = [[{"role": "assistant", "content": c}] for c in (good, short, "not a rubric", timeout)]
    metrics, extras = {}, {}
    out = reward(prompts=[None] * 4, completions=completions, document=[docs[0]["text"]] * 4,
                 doc_id=["d0"] * 4, log_metric=metrics.__setitem__, log_extra=extras.__setitem__)
    assert out[0] > out[1] > 0  # longer (step-by-step) answers score higher under the fake scorer
    assert out[2] == pytest.approx(-0.1)  # invalid rubric: penalty
    assert out[3] is None  # teacher infrastructure failure: unscorable, not the rubric's fault
    assert metrics["valid_rate"] == pytest.approx(0.5)
    assert extras["outcome"][2] == "rubric_no_rubric_found" and extras["outcome"][3] == "teacher_timeout"
    assert reward.stats.outcomes["valid"] == 2
    lines = [json.loads(x) for x in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and lines[2]["reward"] == pytest.approx(-0.1)


def test_reward_nan_influence_is_none_and_counted(quickstart_dir):
    docs = load_documents(quickstart_dir / "documents.jsonl")

    class NanTeacher(TemplateTeacher):
        def generate(self, requests):
            return [TeacherResult("Question: What is it?\nAnswer: nan nan") for _ in requests]

    reward = InfluenceReward(SampleSynthesizer(NanTeacher()), FakeScorer, scaling="batch_minmax")
    rubric = json.dumps({"technical": ["x"]})
    out = reward(prompts=[None], completions=[rubric], document=[docs[0]["text"]])
    assert out == [None] and not math.isnan(reward.stats.calls)
    assert reward.stats.outcomes["influence_nonfinite_gradient"] == 1


def _chat(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_group_novelty_hand_computed():
    a = _chat("Which drug treats gout?", "Zorin treats gout.")
    b = _chat("Which drug treats gout?", "Zorin treats gout.")  # exact duplicate of a
    c = _chat("What is the dose of Zorin?", "Zorin is given at 10 mg.")
    # bigrams of a: which-drug drug-treats treats-gout gout-zorin zorin-treats (treats-gout again) -> 5 distinct
    assert len(sample_bigrams(a)) == 5
    ga, gc = sample_bigrams(a), sample_bigrams(c)
    jac_ac = len(ga & gc) / len(ga | gc)
    out = group_novelty([a, b, c, None, a], ["g", "g", "g", "g", "other"])
    assert out[0] == 0.0 and out[1] == 0.0  # duplicates of each other
    assert out[2] == pytest.approx(1.0 - jac_ac)
    assert out[3] is None  # no sample (invalid): no novelty, not 0
    assert out[4] == 1.0  # alone in its group: never compared with group "g"


def test_reward_novelty_term_pays_the_different_question(quickstart_dir):
    docs = load_documents(quickstart_dir / "documents.jsonl")

    sentences = {"dose": "The standard adult dose of Belmozaline is 200 mg once daily.",
                 "side effect": "The most common side effect of Belmozaline is dry cough."}
    assert all(x in docs[0]["text"] for x in sentences.values())

    class ByRubricTeacher(TemplateTeacher):
        """The sample is a function of the rubric's first line only (so equal rubrics give equal samples)."""

        def generate(self, requests):
            out = []
            for r in requests:
                topic = r.rubric.to_dict()["prompt_related"][0]
                out.append(TeacherResult(f"Question: What is the {topic} of Belmozaline?\n"
                                         f"Answer: {sentences[topic]}"))
            return out

    def rubric(topic):
        return json.dumps({"prompt_related": [topic]})

    comps = [rubric("dose"), rubric("dose"), rubric("side effect"), "broken"]
    scaled = InfluenceReward(SampleSynthesizer(ByRubricTeacher()), FakeScorer, invalid_penalty=0.1,
                             scaling="none", novelty_weight=0.5)
    plain = InfluenceReward(SampleSynthesizer(ByRubricTeacher()), FakeScorer, invalid_penalty=0.1,
                            scaling="none", novelty_weight=0.0)
    kw = dict(prompts=["p"] * 4, completions=comps, document=[docs[0]["text"]] * 4, doc_id=["d0"] * 4)
    extras = {}
    with_nov = scaled(**kw, log_extra=extras.__setitem__)
    without = plain(**kw)
    nov = extras["novelty"]
    assert nov[0] == nov[1] == 0.0 and 0.0 < nov[2] < 1.0 and nov[3] is None
    for i in range(3):
        assert with_nov[i] == pytest.approx(without[i] + 0.5 * nov[i])
    assert with_nov[3] == without[3] == pytest.approx(-0.1)  # the penalty is not touched
    # the same completions as two different prompts (groups): nobody is a duplicate any more
    extras2 = {}
    scaled(prompts=["p", "q", "p", "p"], completions=comps, document=[docs[0]["text"]] * 4, doc_id=["d0"] * 4,
           log_extra=extras2.__setitem__)
    assert extras2["novelty"][:3] == [nov[2], 1.0, nov[2]]  # 0 and 2 share prompt "p"; 1 is alone in "q"
