"""`rubric-rl calibrate` on tiny models: the evaluation runs in the reward's regime (LoRA of the warm-up,
the same base target, the reward's influence settings), and the summary is the evaluation's own numbers."""

import json

import pytest

from rubric_rl.calibrate import CalibrateArguments, calibrate, calibration_config, format_calibration
from rubric_rl.errors import UserError
from rubric_rl.evaluate import correlation

from test_evaluate import MATCHING, MISMATCHING, _configs


def test_calibration_config_takes_the_warmup_regime(quickstart_dir, tmp_path):
    cfg, _, influence = _configs(quickstart_dir, eval_finetune="full", eval_learning_rate=3e-3)
    args = CalibrateArguments(sources=["a=none"], output=str(tmp_path), run_dir="runs/x")
    out = calibration_config(cfg, influence, args)
    assert (out.eval_finetune, out.eval_lora_r, out.eval_lora_alpha) == ("lora", influence.warmup_lora_r,
                                                                          influence.warmup_lora_alpha)
    assert out.eval_learning_rate == influence.warmup_learning_rate
    assert out.eval_target_model_name_or_path == influence.target_model_name_or_path
    assert out.eval_influence and out.eval_influence_run_dir == "runs/x"
    full = calibration_config(cfg, influence, CalibrateArguments(sources=["a=none"], output=str(tmp_path),
                                                                 calibrate_full_finetune=True))
    assert full.eval_finetune == "full" and full.eval_learning_rate == 3e-3


def test_calibrate_refuses_too_few_datasets(quickstart_dir, tmp_path):
    cfg, teacher, influence = _configs(quickstart_dir, eval_seeds=[0])
    with pytest.raises(UserError, match="2 datasets, fewer than calibrate_min_datasets=8"):
        calibrate(CalibrateArguments(sources=["a=none", "b=none"], output=str(tmp_path)), cfg, teacher, influence)


def test_calibrate_writes_the_correlation_of_the_evaluation(quickstart_dir, tmp_path):
    (tmp_path / "match.json").write_text(json.dumps(MATCHING))
    (tmp_path / "mismatch.json").write_text(json.dumps(MISMATCHING))
    cfg, teacher, influence = _configs(quickstart_dir, eval_seeds=[0, 1], eval_num_samples=32, eval_epochs=2)
    args = CalibrateArguments(sources=[f"match={tmp_path / 'match.json'}", f"mismatch={tmp_path / 'mismatch.json'}"],
                              output=str(tmp_path / "out"), calibrate_min_datasets=4)
    summary = calibrate(args, cfg, teacher, influence)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert summary["num_datasets"] == 4 == len(report["runs"])
    xs = [r["influence"]["mean"] for r in report["runs"]]
    ys = [r["gain"]["loss"] for r in report["runs"]]
    again = correlation(xs, ys)
    assert summary["pearson_r"] == pytest.approx(again["pearson_r"])
    assert summary["spearman_rho"] == pytest.approx(again["spearman_rho"])
    assert json.loads((tmp_path / "out" / "calibration.json").read_text())["pearson_r"] == summary["pearson_r"]
    assert all(isinstance(x, float) for x in xs)  # influence was scored (the reward's estimator)
    assert report["config"]["eval"]["eval_finetune"] == "lora"
    assert {"torch", "transformers", "trl", "peft", "accelerate"} <= set(report["versions"]) and "commit" in report
    assert "Pearson r" in format_calibration(summary)


def test_bootstrap_interval_brackets_r():
    xs = [float(i) for i in range(12)]
    ys = [x + (0.5 if i % 2 else -0.5) for i, x in enumerate(xs)]
    c = correlation(xs, ys)
    lo, hi = c["pearson_ci95"]
    assert lo <= c["pearson_r"] <= hi <= 1.0 and c["p_permutation"] < 0.01
