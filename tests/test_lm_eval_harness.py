"""lm-evaluation-harness scoring (rubric_rl/evaluate/harness.py, the ``eval`` extra): on the same items and the same
tiny model, the harness's acc / acc_norm on the shipped task ``rubric_rl_heldout`` against rubric_rl.mcscore's in the
matching context mode (``prompt``), and the harness's numbers in an evaluation's report.

What is equal and why (the harness module's docstring): the contexts and choice texts the harness scores are
rubric-rl's, string for string; the harness also moves the chat template's closing newline from the context to every
continuation, so each choice's log-likelihood gains the same term log p(newline | prompt). Hence acc is equal
exactly, and acc_norm is the harness's length normalisation of the shifted scores, which this test recomputes from
rubric-rl's own scores and that term."""

import json

import pytest

pytest.importorskip("lm_eval")

from rubric_rl.configs.evaluate import HELDOUT_TASK  # noqa: E402
from rubric_rl.mcscore import build_mc_item, choose, encode_pair, loglikelihoods, score_multiple_choice  # noqa: E402

TINY = "tiny:hidden=32,layers=1,heads=2,seed=0"


@pytest.fixture(scope="module")
def tiny():
    from rubric_rl.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(TINY, padding_side="right")
    return load_causal_lm(TINY, tok).eval(), tok


def test_heldout_task_matches_mcscore_on_the_same_items(tiny, quickstart_dir):
    from rubric_rl.evaluate.harness import run_harness, summarize

    model, tok = tiny
    test = quickstart_dir / "test.jsonl"
    items = [json.loads(x) for x in test.read_text().splitlines() if x.strip()]
    ours = score_multiple_choice(model, tok, items, mode="prompt", batch_size=32)
    res = run_harness(model, tok, [HELDOUT_TASK], test_data=str(test), batch_size=32, log_samples=True)
    harness = summarize(res)[HELDOUT_TASK]
    assert harness["n"] == len(items) == 96
    samples = sorted(res["samples"][HELDOUT_TASK], key=lambda s: s["doc_id"])
    norm_picks = []
    for smp, item, mine in zip(samples, items, ours["items"]):
        mc = build_mc_item(tok, item, mode="prompt")
        # the same context and continuations, string for string
        assert [tuple(a) for a in smp["arguments"]] == [(mc.context, c) for c in mc.continuations]
        assert smp["target"] == mc.gold == mine["gold"]
        # the harness's scores are rubric-rl's plus one term per item: log p(template's closing newline | prompt)
        stripped = mc.context.rstrip()
        assert stripped != mc.context  # the chat prompt ends with the template's newline
        newline = loglikelihoods(model, [encode_pair(tok, stripped, mc.context[len(stripped):])])[0]
        theirs = [float(r[0][0]) for r in smp["resps"]]
        assert theirs == pytest.approx([s + newline for s in mine["scores"]], abs=1e-4)
        assert smp["acc"] == float(mine["pick"] == mine["gold"])
        # acc_norm: the harness's rule (score / choice length) on rubric-rl's scores shifted by that term
        _, pick_norm = choose([s + newline for s in mine["scores"]], mc.continuations)
        assert smp["acc_norm"] == float(pick_norm == mine["gold"])
        norm_picks.append(pick_norm == mine["gold"])
    assert harness["acc"] == ours["acc"]  # exactly
    assert harness["acc_norm"] == sum(norm_picks) / len(norm_picks)
    # (on this untrained model the newline term is about -7 nats, and the two acc_norm differ: 0.271 vs 0.250)


def test_unknown_task_and_missing_choices_are_one_line_errors(tmp_path, quickstart_dir):
    from rubric_rl.configs.evaluate import EvalConfig
    from rubric_rl.errors import UserError
    from rubric_rl.evaluate.harness import check_tasks
    from rubric_rl.preflight import check_eval_harness

    with pytest.raises(UserError, match="'rubric_rl_heldot' \\(did you mean 'rubric_rl_heldout'\\?\\): no such"):
        check_tasks(EvalConfig(eval_lm_eval_tasks=["rubric_rl_heldot"]))
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "line": 3}
    cfg = EvalConfig(eval_lm_eval_tasks=[HELDOUT_TASK], eval_test_data=str(tmp_path / "t.jsonl"))
    with pytest.raises(UserError, match="t.jsonl:3: no 'choices' and 'answer'"):
        check_eval_harness(cfg, [row])


def test_evaluate_reports_the_harness_tasks(tmp_path, quickstart_dir):
    """A LoRA target (a PEFT model in the harness) and the untrained one, scored by both scorers; the harness's
    numbers (eval_lm_eval_limit documents) in report.json and a table in report.md."""
    from rubric_rl.configs.evaluate import EvalConfig
    from rubric_rl.configs.influence import InfluenceConfig
    from rubric_rl.configs.teacher import TeacherConfig
    from rubric_rl.evaluate import evaluate

    cfg = EvalConfig(eval_documents=str(quickstart_dir / "documents.jsonl"), eval_test_data=str(quickstart_dir / "test.jsonl"),
                     eval_target_model_name_or_path=TINY, eval_num_samples=8, eval_epochs=1, eval_seeds=[0],
                     eval_influence=False, eval_progress=False, eval_torch_num_threads=1, eval_finetune="lora",
                     eval_mc_context="prompt", eval_lm_eval_tasks=[HELDOUT_TASK], eval_lm_eval_limit=40)
    report = evaluate(cfg, TeacherConfig(teacher_backend="template"), InfluenceConfig(target_model_name_or_path=TINY),
                      {"none": "none"}, tmp_path)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    for held in (on_disk["baseline"], on_disk["runs"][0]["heldout"]):
        h = held["lm_eval"][HELDOUT_TASK]
        assert h["n"] == 40 and 0 <= h["acc"] <= 1 and 0 <= h["acc_norm"] <= 1 and held["lm_eval_s"] > 0
    assert on_disk["lm_eval_version"] and on_disk["summary"]["none"]["lm_eval"][HELDOUT_TASK]["acc"]["n"] == 1
    assert "lm_eval_s" in report["timing"]
    md = (tmp_path / "report.md").read_text()
    assert "## lm-evaluation-harness tasks" in md and f"| source | {HELDOUT_TASK} acc | {HELDOUT_TASK} acc_norm |" in md
