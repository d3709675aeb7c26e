"""scripts/reproduce_quickstart.py and rubric_rl.evaluate.distribution on stand-ins: fake run folders (the files a
finished `rubric-rl train` with evaluate_config leaves) and a fake runner; no training."""

import importlib.util
import json
import logging
import shlex
import sys
import threading
from pathlib import Path

import pytest

from rubric_rl.evaluate import distribution as dist
from rubric_rl.evaluate.distribution import DistributionError

ROOT = Path(__file__).resolve().parents[1]
EVAL_SEEDS = [0, 1, 2]
SEED_LOSS = [1.3, 1.3, 1.3]
NONE_LOSS = [6.8, 6.9, 7.0]


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce_quickstart", ROOT / "scripts" / "reproduce_quickstart.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_args(seed, *, threads=1, noise=0.0, policy="tiny:hidden=128,layers=4,heads=4,seed=0", output_dir="x"):
    return {"rubric_rl": {"policy_model_name_or_path": policy, "torch_num_threads": threads,
                          "policy_init_noise": noise, "evaluate_config": "configs/evaluate_quickstart.yaml"},
            "grpo": {"seed": seed, "max_steps": 100, "learning_rate": 0.0002, "output_dir": output_dir},
            "teacher": {"teacher_backend": "template"}, "influence": {"influence_proj_dim": 2048}}


def eval_report(trained, seed=SEED_LOSS, none=NONE_LOSS, *, eval_seeds=EVAL_SEEDS, num_samples=240):
    runs = [{"source": src, "seed": e, "heldout": {"loss": losses[k]}}
            for src, losses in (("trained", trained), ("seed", seed), ("none", none)) for k, e in enumerate(eval_seeds)]
    wins = sum(t < s for t, s in zip(trained, seed))
    return {"seeds": list(eval_seeds), "primary_metric": "loss", "runs": runs,
            "summary": {src: {"loss": {"mean": sum(v) / len(v)}} for src, v in (("trained", trained), ("seed", seed))},
            "paired": {"trained>seed": {"wins": wins, "seeds": len(eval_seeds)},
                       "trained>none": {"wins": 3, "seeds": 3}, "seed>none": {"wins": 3, "seeds": 3}},
            "config": {"eval": {"eval_seeds": list(eval_seeds), "eval_num_samples": num_samples,
                                "eval_progress": True}}}


def make_run(run_dir, seed, trained, *, reward=(1.7, 1.8), influence=(0.25, 0.29), attempts=None, evaluated=True,
             **args):
    run_dir = Path(run_dir)
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "rubric_rl_args.json").write_text(json.dumps(run_args(seed, output_dir=str(run_dir), **args)))
    summ = {k: {"steps": 100, "window": 20, "first_mean": a, "last_mean": b, "delta": b - a}
            for k, (a, b) in (("reward", reward), ("influence", influence))}
    (run_dir / "run_summary.json").write_text(json.dumps({**summ, "commit": "abcdef0123456789", "dirty": False}))
    if evaluated:
        (run_dir / "eval" / "report.json").write_text(json.dumps(eval_report(trained)))
    if attempts is not None:
        (run_dir / dist.ATTEMPTS_FILE).write_text(json.dumps(attempts))
    return run_dir


TRAINED = {0: [1.0, 1.2, 1.4], 1: [0.9, 1.0, 1.1], 2: [1.3, 1.5, 1.6]}  # vs seed 1.3: 2 wins, 3 wins, a tie + 2 losses
REWARD = {0: (1.7, 1.8), 1: (1.6, 1.55), 2: (1.5, 1.8)}  # deltas 0.1, -0.05, 0.3


def three_runs(root, **args):
    return {s: make_run(root / f"seed{s}", s, TRAINED[s], reward=REWARD[s], **args) for s in TRAINED}


def build(runs, expect=None):
    return dist.build_distribution(
        {"default": {"runs": runs, "flags": [], "expect": expect or {}}}, command="python scripts/reproduce_quickstart.py",
        made_by={"commit": "0123456789abcdef", "dirty": False, "versions": {"torch": "2.13.0"}, "python": "3.12.3"},
        config="configs/quickstart.yaml", evaluate_config="configs/evaluate_quickstart.yaml")


# ---------------------------------------------------------------------------------------------- the report
def test_wins_medians_and_ranges_over_training_seeds(tmp_path):
    report = build(three_runs(tmp_path))
    c = report["conditions"]["default"]
    assert c["trained_beats_seed"] == {"wins": 5, "losses": 3, "ties": 1, "pairs": 9, "share": 5 / 9}
    assert c["trained_beats_none"]["wins"] == 9
    assert [r["versus"]["seed"]["wins"] for r in c["runs"]] == [2, 3, 0]  # per training seed, of its 3 eval seeds
    assert [(p["train_seed"], p["eval_seed"], p["result"]) for p in c["pairs"]][6:] == [
        (2, 0, "tie"), (2, 1, "loss"), (2, 2, "loss")]
    t = c["trained_mean_test_loss"]
    assert t["median"] == pytest.approx(1.2) and t["min"] == pytest.approx(1.0) and t["max"] == pytest.approx(4.4 / 3)
    assert c["seed_mean_test_loss"]["median"] == pytest.approx(1.3)
    r = c["reward_delta"]
    assert (r["median"], r["min"], r["max"]) == pytest.approx((0.1, -0.05, 0.3))
    assert c["influence_delta"]["median"] == pytest.approx(0.04)
    assert report["commit"] == "0123456789abcdef" and report["versions"] == {"torch": "2.13.0"}
    md = dist.format_markdown(report)
    assert "| default | - | 3 | 5/9 (56%, 1 tie) | 9/9 (100%) | 1.200 (1.000..1.467) | 1.300 (1.300..1.300) |" in md
    assert "| 2 | 2 | 1.600 | 1.300 | 7.000 | loss |" in md
    json.dumps(report)  # the report is plain JSON


def test_a_missing_or_unfinished_seed_is_one_loud_error_naming_each(tmp_path):
    runs = three_runs(tmp_path)
    (runs[2] / "eval" / "report.json").unlink()
    runs[3] = tmp_path / "seed3"  # never made
    with pytest.raises(DistributionError) as err:
        build(runs)
    msg = str(err.value)
    assert "2 run(s) missing or unfinished" in msg
    assert "training seed 2" in msg and "eval/report.json" in msg
    assert "training seed 3: no run folder" in msg and "seed3" in msg


def test_runs_of_other_settings_are_refused(tmp_path):
    runs = three_runs(tmp_path)
    make_run(runs[1], 1, TRAINED[1], policy="tiny:hidden=64,layers=2,heads=4,seed=0")
    with pytest.raises(DistributionError, match="seed1: settings differ from .*seed0 in policy_model_name_or_path"):
        build(runs)
    runs = three_runs(tmp_path / "b")
    make_run(runs[2], 2, TRAINED[2], threads=2)  # torch_num_threads is free for rundir: the condition checks it
    with pytest.raises(DistributionError, match="seed2: torch_num_threads=2, the condition sets 1"):
        build(runs, expect={"torch_num_threads": 1})
    make_run(runs[0], 7, TRAINED[0])
    with pytest.raises(DistributionError, match="training seed 0: .* holds a run of seed 7"):
        build(runs)


def test_wall_time_counts_the_attempts_since_the_last_start():
    attempts = [{"action": "fresh", "wall_s": 100, "rc": 1}, {"action": "overwrite", "wall_s": 300, "rc": -9},
                {"action": "resume", "wall_s": 200, "rc": 0}]
    assert dist.attempts_wall(attempts) == (500.0, True)
    assert dist.attempts_wall([{"action": "fresh", "wall_s": 42.5, "rc": 0}]) == (42.5, False)
    assert dist.attempts_wall([]) == (None, False)


# ---------------------------------------------------------------------------------------------- what to run
def test_the_resumability_decision_follows_trains_own_rules(tmp_path):
    mod = load_script()
    expect = {"torch_num_threads": 1, "policy_init_noise": 0.0}
    d = tmp_path / "seed0"
    assert mod.decide(d, 0, expect, 100)[0] == "fresh"
    (d / "warmup").mkdir(parents=True)  # caches alone are no run
    assert mod.decide(d, 0, expect, 100)[0] == "fresh"
    make_run(d, 0, TRAINED[0], evaluated=False)
    assert mod.decide(d, 0, expect, 100) == ("overwrite", "stopped before its first checkpoint")
    (d / "checkpoint-20").mkdir()
    (d / "checkpoint-40").mkdir()
    assert mod.decide(d, 0, expect, 100) == ("resume", "unfinished at checkpoint-40 of 100 steps")
    (d / "checkpoint-100").mkdir()  # trained, the evaluation never finished: train refuses a resume at max_steps
    action, why = mod.decide(d, 0, expect, 100)
    assert action == "overwrite" and "trained to step 100" in why and "evaluation did not finish" in why
    make_run(d, 0, TRAINED[0])
    assert mod.decide(d, 0, expect, 100)[0] == "done"
    with pytest.raises(DistributionError, match=r"seed=0 \(expected 1\)"):
        mod.decide(d, 1, expect, 100)
    with pytest.raises(DistributionError, match=r"torch_num_threads=1 \(expected 2\)"):
        mod.decide(d, 0, {**expect, "torch_num_threads": 2}, 100)


def test_each_condition_expects_its_flags_and_the_configs_threads():
    mod = load_script()
    fields = {"torch_num_threads": 1}
    assert mod.expectations("default", fields) == {"torch_num_threads": 1, "policy_init_noise": 0.0}
    assert mod.expectations("threads2", fields) == {"torch_num_threads": 2, "policy_init_noise": 0.0}
    assert mod.expectations("perturb", fields) == {"torch_num_threads": 1, "policy_init_noise": 1e-6}


def _fake_train(calls, trained=TRAINED):
    """A stand-in for `rubric-rl train`: records the command, writes a finished run folder."""
    lock = threading.Lock()

    def run(cmd, log):
        argv = cmd[3:]
        opt = {argv[k]: argv[k + 1] for k in range(1, len(argv) - 1) if argv[k].startswith("--")}
        with lock:
            calls.append(argv)
        log.write_text("fake train\n")
        seed = int(opt["--seed"])
        make_run(ROOT / opt["--output_dir"], seed, trained[seed],
                 threads=int(opt.get("--torch_num_threads", 1)), noise=float(opt.get("--policy_init_noise", 0.0)))
        return 0

    return run


def test_the_script_runs_each_seed_once_in_parallel_and_reuses_finished_runs(tmp_path, monkeypatch, capsys):
    mod = load_script()
    calls = []
    monkeypatch.setattr(mod, "run_subprocess", _fake_train(calls))
    runs, out = tmp_path / "runs", tmp_path / "report"
    argv = ["--seeds", "0", "1", "2", "--conditions", "default", "threads2", "--jobs", "2", "--runs", str(runs),
            "--output", str(out)]
    assert mod.main(argv) == 0
    assert len(calls) == 6
    assert sorted(shlex.join(c) for c in calls if "--torch_num_threads" not in c) == [
        f"train --config configs/quickstart.yaml --seed {s} --output_dir {runs}/default/seed{s}" for s in (0, 1, 2)]
    assert all(c[-2:] == ["--torch_num_threads", "2"] for c in calls if f"{runs}/threads2/" in " ".join(c))
    report = json.loads((out / "report.json").read_text())
    assert set(report["conditions"]) == {"default", "threads2"}
    assert report["conditions"]["threads2"]["flags"] == ["--torch_num_threads", "2"]
    run0 = report["conditions"]["default"]["runs"][0]
    assert run0["train_command"] == f"rubric-rl train --config configs/quickstart.yaml --seed 0 --output_dir {runs}/default/seed0"
    assert run0["wall_s"] is not None and run0["resumed"] is False
    assert report["command"].startswith("python scripts/reproduce_quickstart.py --seeds 0 1 2")
    assert (runs / "default" / "logs" / "seed0.log").exists()
    assert "## threads2" in (out / "report.md").read_text()
    # rerun: every run is finished, nothing is trained again
    assert mod.main(argv) == 0 and len(calls) == 6
    assert "reused" in capsys.readouterr().out
    # an interrupted run is resumed with train's own flag
    d = runs / "default" / "seed1"
    (d / "eval" / "report.json").unlink()
    (d / "checkpoint-60").mkdir()
    assert mod.main(argv) == 0
    assert calls[-1][-2:] == ["--resume_from_checkpoint", "true"] and len(calls) == 7


def test_a_failed_run_stops_before_the_report(tmp_path, monkeypatch, capsys):
    mod = load_script()
    monkeypatch.setattr(mod, "run_subprocess", lambda cmd, log: (log.write_text("Traceback: boom\n"), 1)[1])
    out = tmp_path / "report"
    assert mod.main(["--seeds", "0", "--conditions", "default", "--runs", str(tmp_path / "runs"),
                     "--output", str(out)]) == 1
    err = capsys.readouterr()
    assert "1 run(s) failed (default/seed0)" in err.err and "Traceback: boom" in err.out
    assert not (out / "report.json").exists()
    attempts = json.loads((tmp_path / "runs" / "default" / "seed0" / dist.ATTEMPTS_FILE).read_text())
    assert [(a["action"], a["rc"]) for a in attempts] == [("fresh", 1)]


def test_report_only_rebuilds_from_the_run_folders_and_runs_nothing(tmp_path, monkeypatch, capsys):
    mod = load_script()
    monkeypatch.setattr(mod, "run_subprocess", lambda *a: pytest.fail("--report_only ran something"))
    runs = tmp_path / "runs"
    three_runs(runs / "default")
    out = tmp_path / "report"
    argv = ["--seeds", "0", "1", "2", "--conditions", "default", "--runs", str(runs), "--output", str(out),
            "--report_only"]
    assert mod.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["report_only"] is True and report["conditions"]["default"]["trained_beats_seed"]["wins"] == 5
    assert "With --report_only it rebuilt the report from existing run folders" in (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "| default | - | 3 | 5/9" in printed and "report.md" in printed
    assert mod.main(argv[:-1] + ["--seeds", "0", "1", "2", "3", "--report_only"]) == 2
    assert "training seed 3: no run folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- train's line
def _committed(tmp_path):
    report = build(three_runs(tmp_path / "runs"))
    path = tmp_path / "reports" / "quickstart" / "report.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(report))
    return path


def test_the_closing_line_compares_this_run_with_the_distribution(tmp_path):
    path = _committed(tmp_path)
    committed = json.loads(path.read_text())
    this = eval_report([1.0, 1.1, 1.05])
    line = dist.closing_lines(this, run_args(5), committed, where="reports/quickstart/report.md")
    assert line == ("This run: trained 1.050 vs seed 1.300 mean test loss (3/3 paired wins)\n"
                    "The committed distribution over 3 training seeds (reports/quickstart/report.md, commit 0123456): "
                    "trained median 1.200 (1.000..1.467), seed median 1.300 (1.300..1.300), trained beats seed in "
                    "5/9 pairs")
    # a training seed of the distribution: says whether this run reproduced it
    same = dist.closing_lines(eval_report(TRAINED[1]), run_args(1, threads=2), committed, where="r.md")
    assert "; the distribution's training seed 1: trained 1.000 vs seed 1.300 (the same numbers)" in same
    other = dist.closing_lines(eval_report([1.0, 1.0, 1.1]), run_args(1), committed, where="r.md")
    assert "(other numbers)" in other.splitlines()[0] and len(other.splitlines()) == 2
    # other settings, another evaluation: nothing to compare with
    assert dist.closing_lines(this, run_args(5, policy="tiny:hidden=64,layers=2,heads=4,seed=0"), committed,
                              where="r.md") is None
    assert dist.closing_lines(eval_report([1.0, 1.1, 1.05]) | {"config": {"eval": {"eval_num_samples": 96}}},
                              run_args(5), committed, where="r.md") is None


def test_compare_says_nothing_without_a_report_and_warns_on_a_broken_one(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "rubric_rl_args.json").write_text(json.dumps(run_args(0)))
    this = eval_report([1.0, 1.1, 1.05])
    assert dist.compare_with_distribution(run, this, path=tmp_path / "absent.json") is None
    path = _committed(tmp_path)
    assert dist.compare_with_distribution(run, this, path=path).startswith("This run: trained 1.050")
    assert dist.compare_with_distribution(run, None, path=path) is None  # no evaluation report: nothing to say
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert dist.compare_with_distribution(run, this, path=path) is None
    assert "cannot compare this run" in caplog.text


def test_train_prints_the_closing_line_after_its_evaluation(tmp_path, monkeypatch, capsys):
    import rubric_rl.commands.evaluate
    import rubric_rl.train
    from rubric_rl.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "rubric_rl_args.json").write_text(json.dumps(run_args(4)))  # what train's prepare_output_dir writes
    monkeypatch.setattr(dist, "REPORT", _committed(tmp_path))
    monkeypatch.setattr(rubric_rl.train, "train", lambda *a: {
        "output_dir": str(out), "export_dir": str(out / "export"), "reward": {}})
    monkeypatch.setattr(rubric_rl.commands.evaluate, "from_argv", lambda argv, **given: eval_report([1.0, 1.1, 1.05]))
    main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(out)])
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-2] == "This run: trained 1.050 vs seed 1.300 mean test loss (3/3 paired wins)"
    assert lines[-1].startswith("The committed distribution over 3 training seeds (")
    monkeypatch.setattr(dist, "REPORT", tmp_path / "absent.json")  # no committed report: not a word
    main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(out)])
    assert "committed distribution" not in capsys.readouterr().out


def test_a_condition_can_run_fewer_seeds(tmp_path, monkeypatch, capsys):
    mod = load_script()
    calls = []
    monkeypatch.setattr(mod, "run_subprocess", _fake_train(calls))
    runs, out = tmp_path / "runs", tmp_path / "report"
    argv = ["--seeds", "0", "1", "2", "--conditions", "default", "perturb", "--condition_seeds", "perturb=1",
            "--runs", str(runs), "--output", str(out)]
    assert mod.main(argv) == 0
    assert len(calls) == 4  # three default seeds, one perturbed
    report = json.loads((out / "report.json").read_text())
    assert len(report["conditions"]["default"]["runs"]) == 3 and len(report["conditions"]["perturb"]["runs"]) == 1
    for bad in (["--condition_seeds", "threads2=0"], ["--condition_seeds", "perturb=x"], ["--condition_seeds", "perturb"]):
        assert mod.main(argv[:6] + bad + argv[8:]) == 2
        assert "--condition_seeds" in capsys.readouterr().err


def test_an_evaluation_field_newer_than_the_distribution_counts_at_its_default():
    """A run made after EvalConfig grew a field (eval_lm_eval_tasks) still compares with a distribution made
    before it, while the field is at its default; set to something else, it is a difference."""
    from rubric_rl.evaluate.distribution import settings_differ

    ref_eval = {"eval_epochs": 10}
    assert settings_differ({}, {}, ref_eval, {"eval_epochs": 10, "eval_lm_eval_tasks": []}) == []
    assert settings_differ({}, {}, ref_eval, {"eval_epochs": 10, "eval_lm_eval_tasks": ["arc_easy"]}) == [
        "eval_lm_eval_tasks"]
    assert settings_differ({}, {}, ref_eval, {"eval_epochs": 3}) == ["eval_epochs"]
