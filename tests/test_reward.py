import json
import math

import pytest
from test_rubric_quality import SALAD

from rubric_rl.data.documents import load_documents
from rubric_rl.reward import InfluenceReward, RunningScaler, group_novelty, shape_rewards
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


def test_running_scaling_scores_a_lone_sample_by_its_influence():
    """batch_minmax gives a group's only valid sample 0.5 whatever its influence; running scaling compares
    it with the window of earlier scores."""
    scaler = RunningScaler(window=64)
    shape_rewards([1.0, 2.0, 3.0, 4.0], [True] * 4, invalid_penalty=0.1, scaler=scaler)  # history
    hi = shape_rewards([4.5, None], [True, False], invalid_penalty=0.1, scaler=scaler)[0]
    lo = shape_rewards([0.5, None], [True, False], invalid_penalty=0.1, scaler=scaler)[0]
    assert hi > 0.7 and lo < 0.3, (hi, lo)
    # the old behaviour, for contrast
    assert shape_rewards([4.5, None], [True, False], invalid_penalty=0.1, scaling="batch_minmax")[0] == 0.5


def test_running_scaling_does_not_stretch_two_close_values():
    scaler = RunningScaler(window=64)
    shape_rewards([0.0, 1.0, 2.0, 3.0, 4.0], [True] * 5, invalid_penalty=0.1, scaler=scaler)
    a, b = shape_rewards([2.0, 2.01], [True, True], invalid_penalty=0.1, scaler=scaler)
    assert 0.4 < a < b < 0.6  # batch_minmax would make them 0 and 1
    assert shape_rewards([2.0, 2.01], [True, True], invalid_penalty=0.1, scaling="batch_minmax") == [0.0, 1.0]


def test_running_scaling_keeps_valid_above_invalid_and_floors_the_spread():
    scaler = RunningScaler(window=8, min_rel=0.05)
    out = shape_rewards([-1e9, 5.0, None], [True, True, False], invalid_penalty=0.1, scaler=scaler)
    assert 0 <= out[0] < out[1] < 1 and out[2] == -0.1
    # identical scores up to noise 1e-9: the floor (5% of |mean|) keeps them near the midpoint
    flat = RunningScaler(window=8, min_rel=0.05)
    x = flat([1.0, 1.0 + 1e-9, 1.0 - 1e-9])
    assert all(abs(v - 0.5) < 1e-6 for v in x)
    # the window forgets: only the last `window` values count
    w = RunningScaler(window=2)
    w([100.0, 200.0])
    w([0.0, 1.0])
    assert list(w.values) == [0.0, 1.0]


def test_reward_restores_the_running_window_from_its_rollout_log(tmp_path):
    log = tmp_path / "rollouts.jsonl"
    rows = [{"step": 0, "outcome": "valid", "influence": 1.0}, {"step": 0, "outcome": "ungrounded", "influence": None},
            {"step": 1, "outcome": "valid", "influence": 3.0}, {"step": 1, "outcome": "valid", "influence": None}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward = InfluenceReward(None, None, log_path=log)
    reward.scaler.values.extend([9.0, 9.0])
    assert reward.restore_scaler_from_log() == 2
    assert list(reward.scaler.values) == [1.0, 3.0]


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
    good = json.dumps({"prompt_related": ["Write a multiple-choice question."],
                       "response_related": ["Reason step by step."]})
    short = json.dumps({"prompt_related": ["Ask about the dose."], "response_related": ["Be concise."]})
    timeout = json.dumps({"prompt_related": ["Ask after a timeout please."]})
    completions = [[{"role": "assistant", "content": c}] for c in (good, short, "not a rubric", timeout)]
    metrics, extras = {}, {}
    out = reward(prompts=[None] * 4, completions=completions, document=[docs[0]["text"]] * 4,
                 doc_id=["d0"] * 4, log_metric=metrics.__setitem__, log_extra=extras.__setitem__)
    assert out[0] > out[1] > 0  # longer (step-by-step) answers score higher under the fake scorer
    assert out[2] == pytest.approx(-0.1)  # invalid rubric: penalty
    assert out[3] is None  # teacher infrastructure failure: unscorable, not the rubric's fault
    assert metrics["valid_rate"] == pytest.approx(0.5)
    assert extras["outcome"][2] == "rubric_no_rubric_found" and extras["outcome"][3] == "teacher_timeout"
    # TRL's completions table: its reward column (named after the callable) is the shaped reward; the raw
    # influence, validity, document and the teacher's question and answer are columns of their own
    assert reward.__name__ == "reward" and "raw_influence" not in extras
    assert extras["valid"] == [True, True, False, False] and extras["doc_id"] == ["d0"] * 4
    logged = [json.loads(x) for x in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert extras["influence"] == [r["influence"] for r in logged] and extras["influence"][2:] == [None, None]
    assert extras["influence"][0] == len(logged[0]["sample"][-1]["content"].split())  # FakeScorer's raw score
    assert all(extras["question"][:2]) and all(extras["answer"][:2]) and extras["question"][2:] == ["", ""]
    assert reward.stats.outcomes["valid"] == 2
    lines = [json.loads(x) for x in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and lines[2]["reward"] == pytest.approx(-0.1)


def test_word_salad_and_trailing_garbage_get_the_invalid_penalty_and_their_reason_in_the_log(quickstart_dir,
                                                                                           tmp_path):
    """Issue 19: a stuttering rubric and a clean rubric followed by garbage were parsed and paid; now they are
    invalid rollouts (the penalty, no teacher query) with their reason code in rollouts.jsonl."""
    docs = load_documents(quickstart_dir / "documents.jsonl")
    teacher = TemplateTeacher([d["text"] for d in docs])
    synth = SampleSynthesizer(teacher)
    reward = InfluenceReward(synth, FakeScorer, invalid_penalty=0.1, scaling="none",
                             log_path=tmp_path / "rollouts.jsonl")
    clean = json.dumps({"prompt_related": ["Write a multiple-choice question."],
                        "response_related": ["Reason step by step."]})
    garbage = clean + " step by the answer the answer with a step by step with with a question" * 3
    metrics = {}
    out = reward(prompts=[None] * 3, completions=[SALAD, garbage, clean], document=[docs[0]["text"]] * 3,
                 doc_id=["d0"] * 3, trainer_state=type("S", (), {"global_step": 7})(),
                 log_metric=metrics.__setitem__)
    assert out[0] == out[1] == pytest.approx(-0.1) and out[2] > 0
    assert synth.queries_spent == 1  # only the clean rubric reached the teacher
    assert metrics["rubric_parse_rate"] == pytest.approx(1 / 3)
    rows = [json.loads(x) for x in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in rows] == ["rubric_stuttering", "rubric_trailing_text", "valid"]
    assert rows[0]["rubric"] == SALAD and rows[0]["reward"] == pytest.approx(-0.1) and rows[0]["step"] == 7
    assert rows[0]["sample"] is None and rows[0]["novelty"] is None
    assert reward.stats.outcomes["rubric_stuttering"] == reward.stats.outcomes["rubric_trailing_text"] == 1


def test_reward_nan_influence_is_none_and_counted(quickstart_dir):
    docs = load_documents(quickstart_dir / "documents.jsonl")

    class NanTeacher(TemplateTeacher):
        def generate(self, requests):
            # (an answer of only "nan nan" is no text: the verifiers reject it before scoring; see test_junk_answers;
            # and the answer's claim must be in the document, or grounding rejects it)
            return [TeacherResult("Question: What is it?\nAnswer: Belmozaline is used to treat migraine, nan")
                    for _ in requests]

    reward = InfluenceReward(SampleSynthesizer(NanTeacher()), FakeScorer, scaling="batch_minmax")
    rubric = json.dumps({"technical": ["Use plain text."]})
    out = reward(prompts=[None], completions=[rubric], document=[docs[0]["text"]])
    assert out == [None] and not math.isnan(reward.stats.calls)
    assert reward.stats.outcomes["influence_nonfinite_gradient"] == 1


def test_group_novelty_is_the_share_of_the_group_about_another_passage():
    from rubric_rl.reward import MISSING

    out = group_novelty([0, 0, 3, MISSING, None, 0], ["g", "g", "g", "g", "g", "other"])
    # group g has valid samples about passages 0, 0, 3, None (matched nothing: a passage of its own)
    assert out[0] == pytest.approx(2 / 3) and out[1] == pytest.approx(2 / 3)
    assert out[2] == 1.0 and out[4] == 1.0
    assert out[3] is None  # no sample (invalid): no novelty, not 0
    assert out[5] == 1.0  # alone in its group: never compared with group "g"
    assert group_novelty([5] * 8, ["g"] * 8) == [0.0] * 8  # eight times the same fact


def test_supporting_sentence_ignores_the_format(quickstart_dir):
    from rubric_rl.synth.grounding import document_sentences, supporting_sentence

    doc = load_documents(quickstart_dir / "documents.jsonl")[0]["text"]
    sents = document_sentences(doc)
    side = next(k for k, x in enumerate(sents) if "side effect" in x)
    dose = next(k for k, x in enumerate(sents) if "dose" in x)
    mc = ("Which adverse effect is reported most often with Belmozaline?\nOptions:\n(A) fatigue\n(B) dry cough\n"
          "(C) insomnia\n(D) nausea\nThink step by step, then give the letter of the correct option.")
    assert supporting_sentence(mc, "Let's think step by step. The most common side effect of Belmozaline is dry "
                                   "cough. This matches option (B). The answer is (B).", doc) == side
    assert supporting_sentence("What is the main side effect of Belmozaline?", "Dry cough.", doc) == side
    assert supporting_sentence("How much Belmozaline does an adult take?", "200 mg once daily.", doc) == dose
    assert supporting_sentence("Is the sky blue?", "Yes.", doc) is None
    assert supporting_sentence("anything", "anything", "") is None


def test_reward_novelty_term_pays_the_different_question(quickstart_dir):
    docs = load_documents(quickstart_dir / "documents.jsonl")
    sentences = {"dose": "The standard adult dose of Belmozaline is 200 mg once daily.",
                 "side effect": "The most common side effect of Belmozaline is dry cough."}
    assert all(x in docs[0]["text"] for x in sentences.values())

    class ByRubricTeacher(TemplateTeacher):
        """The sample is a function of the rubric's first line only."""

        def generate(self, requests):
            out = []
            for r in requests:
                topic = next(t for t in sentences if t in r.rubric.to_dict()["prompt_related"][0])
                out.append(TeacherResult(f"Question: What is the {topic} of Belmozaline?\n"
                                         f"Answer: {sentences[topic]}"))
            return out

    def rubric(topic):
        return json.dumps({"prompt_related": [f"Ask about the {topic}."]})

    comps = [rubric("dose"), rubric("dose"), rubric("side effect"), "broken"]
    kw = dict(completions=comps, document=[docs[0]["text"]] * 4, doc_id=["d0"] * 4)
    with_nov = InfluenceReward(SampleSynthesizer(ByRubricTeacher()), FakeScorer, invalid_penalty=0.1,
                               scaling="none", novelty_weight=0.5, novelty_center=False)
    centred = InfluenceReward(SampleSynthesizer(ByRubricTeacher()), FakeScorer, invalid_penalty=0.1,
                              scaling="none", novelty_weight=0.5)  # the default: centred within the group
    without = InfluenceReward(SampleSynthesizer(ByRubricTeacher()), FakeScorer, invalid_penalty=0.1,
                              scaling="none", novelty_weight=0.0)
    extras = {}
    r1 = with_nov(prompts=["p"] * 4, **kw, log_extra=extras.__setitem__)
    r0 = without(prompts=["p"] * 4, **kw)
    # two dose samples: each has 1 of 2 others about another sentence; the side effect one: 2 of 2
    assert extras["novelty"] == [0.5, 0.5, 1.0, None]
    assert r1[:3] == pytest.approx([r0[0] + 0.25, r0[1] + 0.25, r0[2] + 0.5])
    assert r1[3] == r0[3] == pytest.approx(-0.1)  # the penalty is not touched
    # centred: the same differences within the group, no offset for being valid (group mean novelty 2/3)
    rc = centred(prompts=["p"] * 4, **kw)
    assert rc[:3] == pytest.approx([r0[0] - 0.5 / 6, r0[1] - 0.5 / 6, r0[2] + 0.5 / 3])
    assert sum(rc[:3]) == pytest.approx(sum(r0[:3])) and rc[3] == pytest.approx(-0.1)
    # the same completions under two prompts (two groups): sample 1 is alone in group "q"
    extras2 = {}
    with_nov(prompts=["p", "q", "p", "p"], **kw, log_extra=extras2.__setitem__)
    assert extras2["novelty"] == [1.0, 1.0, 1.0, None]


def test_centred_novelty_removes_each_groups_mean_only():
    from rubric_rl.reward import centred_novelty

    out = centred_novelty([0.5, 0.5, 1.0, None, 1.0, 0.0], ["g", "g", "g", "g", "h", "h"])
    assert out[:3] == pytest.approx([-1 / 6, -1 / 6, 1 / 3]) and out[3] is None
    assert out[4:] == pytest.approx([0.5, -0.5])
    assert centred_novelty([1.0], ["alone"]) == [0.0]  # a sample alone in its group gets nothing for it


def test_stall_guard_stops_a_run_that_cannot_learn():
    from types import SimpleNamespace

    from rubric_rl.errors import TrainingStalled
    from rubric_rl.train import StallGuard

    state = SimpleNamespace(global_step=0)
    guard = StallGuard(3)
    flat = {"reward": -0.1, "frac_reward_zero_std": 1.0, "unscorable_rate": 0.0, "rubric_parse_rate": 0.0}
    ok = {"reward": 0.3, "frac_reward_zero_std": 0.5, "unscorable_rate": 0.0}
    for logs in (flat, flat, ok, flat, flat):  # a step with spread resets the count
        state.global_step += 1
        guard.on_log(None, state, None, logs=logs)
    with pytest.raises(TrainingStalled, match="no GRPO group had any reward spread"):
        state.global_step += 1
        guard.on_log(None, state, None, logs=flat)
    none = StallGuard(2)
    none.on_log(None, state, None, logs={"reward": 0.0, "unscorable_rate": 1.0})
    with pytest.raises(TrainingStalled, match="every reward was None"):
        none.on_log(None, state, None, logs={"reward": 0.0, "unscorable_rate": 1.0})
    off = StallGuard(0)
    for _ in range(20):
        off.on_log(None, state, None, logs=flat)  # 0 turns it off


def test_preflight_stops_a_policy_that_writes_no_rubric(tiny_tokenizer):
    import torch
    from types import SimpleNamespace

    from rubric_rl.config import RubricRLArguments
    from rubric_rl.errors import TrainingStalled
    from rubric_rl.models import TinySpec, build_tiny_model
    from rubric_rl.train import preflight_parse_rate

    model = build_tiny_model(TinySpec(hidden=32, layers=2, heads=4, seed=0), tiny_tokenizer)  # random: no JSON
    args = RubricRLArguments(preflight_rubrics=3)
    grpo = SimpleNamespace(max_completion_length=16, temperature=1.0, top_p=1.0, seed=0)
    docs = [{"text": f"Drug {i} is used to treat migraine."} for i in range(5)]
    before = torch.random.get_rng_state()
    with pytest.raises(TrainingStalled, match="0 of 3 rubrics"):
        preflight_parse_rate(args, grpo, model, tiny_tokenizer, docs)
    assert torch.equal(before, torch.random.get_rng_state())  # the check does not shift the run's sampling
    assert preflight_parse_rate(RubricRLArguments(preflight_rubrics=0), grpo, model, tiny_tokenizer, docs) == {}


def test_count_valid_rollouts_reads_every_process_log(tmp_path):
    from rubric_rl.train import count_valid_rollouts

    (tmp_path / "rollouts.jsonl").write_text('{"outcome": "ungrounded"}\n{"outcome": "rubric_no_rubric_found"}\n')
    assert count_valid_rollouts(tmp_path) == 0
    (tmp_path / "rollouts.rank1.jsonl").write_text('{"outcome": "valid"}\nnot json\n')
    assert count_valid_rollouts(tmp_path) == 1
