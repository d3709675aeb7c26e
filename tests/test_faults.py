"""Fault injection: kill -9 mid-run and a full disk, then a rerun of the same command. Each case asserts
that nothing is lost, nothing is duplicated, and the exit code tells the truth.

(The teacher endpoint failing with 500s, timeouts and resets, then recovering, is in
tests/test_teacher_unavailable.py against a real local HTTP server.)
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rubric_rl import jsonl as jsonl_mod

N = 400


def _argv(q, out):
    return ["synthesize", "--rubric_source", str(q / "seed_rubrics.json"), "--documents", str(q / "documents.jsonl"),
            "--output", str(out), "--num_samples", str(N), "--synth_eval_files", str(q / "validation.jsonl"),
            str(q / "test.jsonl"), "--no_synth_progress", "--synth_batch_size", "8"]


def _rows(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _key(rows):
    """What a sample is: its messages and its place in the plan (not timings)."""
    return [(json.dumps(r["messages"]), r["provenance"]["item"], r["provenance"]["seed"]) for r in rows]


@pytest.fixture(scope="module")
def reference(quickstart_dir, tmp_path_factory):
    from rubric_rl.cli import main

    out = tmp_path_factory.mktemp("ref") / "o.jsonl"
    main(_argv(quickstart_dir, out))
    rows = _rows(out)
    assert len(rows) == N
    return _key(rows)


def _run_cli(argv, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "rubric_rl.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_kill9_synthesize_then_rerun_neither_loses_nor_duplicates(quickstart_dir, tmp_path, reference):
    """SIGKILL once the output has begun (no chance to flush or close), at two points of two runs; each
    rerun of the same command resumes, and the final file equals an uninterrupted run's, line for line."""
    interrupted = 0
    for point in (1, 150):
        out = tmp_path / f"kill{point}" / "o.jsonl"
        proc = _run_cli(_argv(quickstart_dir, out))
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and out.stat().st_size > 0 and len(out.read_bytes().splitlines()) >= point:
                break
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
            interrupted += len(_rows(out)) < N if out.exists() else 1
        else:
            proc.communicate()
        rerun = _run_cli(_argv(quickstart_dir, out))
        _, err = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, err[-2000:]
        assert _key(_rows(out)) == reference
    assert interrupted >= 1, "no kill landed mid-run: the case was not exercised"


def test_disk_full_mid_synthesize_exits_4_with_one_line_and_resumes(quickstart_dir, tmp_path, reference,
                                                                     monkeypatch, capsys):
    """ENOSPC on the 120th sample: exit 4 and one line naming the file; the lines up to the last checkpoint
    stay; once space is back, the same command finishes with exactly the uninterrupted run's samples."""
    from rubric_rl.cli import main

    out = tmp_path / "o.jsonl"
    real_write = jsonl_mod.JsonlAppender.write
    count = {"n": 0}

    def full_disk_write(self, row):
        count["n"] += 1
        if count["n"] >= 120:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        real_write(self, row)

    monkeypatch.setattr(jsonl_mod.JsonlAppender, "write", full_disk_write)
    with pytest.raises(SystemExit) as exc:
        main(_argv(quickstart_dir, out))
    assert exc.value.code == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk full" in err[0] and str(out) in err[0] and "rerun" in err[0]
    kept = _rows(out)
    assert 0 < len(kept) < 120 and _key(kept) == reference[:len(kept)]  # a prefix: nothing out of order

    monkeypatch.setattr(jsonl_mod.JsonlAppender, "write", real_write)
    main(_argv(quickstart_dir, out))
    assert _key(_rows(out)) == reference


def test_other_os_errors_keep_their_traceback(quickstart_dir, tmp_path, monkeypatch):
    """Only a full disk is turned into a one-line exit 4; a permission error is a bug report, not advice."""
    from rubric_rl.cli import main

    def denied(self, row):
        raise PermissionError(errno.EACCES, "Permission denied", str(self.path))

    monkeypatch.setattr(jsonl_mod.JsonlAppender, "write", denied)
    with pytest.raises(PermissionError):
        main(_argv(quickstart_dir, tmp_path / "o.jsonl"))


@pytest.mark.slow
def test_kill9_train_then_resume_logs_every_step_once(quickstart_dir, tmp_path):
    """SIGKILL of `train` after its second checkpoint; `--resume_from_checkpoint true` finishes the run with
    every step in metrics.jsonl exactly once and every step's rollouts in rollouts.jsonl exactly once."""
    from tests.test_train_e2e import SEEDS

    seeds = tmp_path / "seeds.json"
    seeds.write_text(json.dumps(SEEDS))
    out = tmp_path / "run"
    q = quickstart_dir
    argv = ["train", "--output_dir", str(out), "--policy_model_name_or_path", "tiny:hidden=32,layers=2,heads=4,seed=0",
            "--policy_sft_warmstart", "true", "--seed_rubrics", str(seeds), "--policy_sft_epochs", "80",
            "--policy_sft_max_documents", "2", "--policy_sft_batch_size", "4", "--policy_sft_learning_rate", "0.02",
            "--max_document_chars", "120", "--documents", str(q / "documents.jsonl"), "--teacher_backend", "template",
            "--target_model_name_or_path", "tiny:hidden=32,layers=2,heads=4,seed=1",
            "--warmup_data", str(q / "warmup.jsonl"), "--warmup_epochs", "1", "--warmup_learning_rate", "0.001",
            "--influence_validation_data", str(q / "validation.jsonl"), "--influence_proj_dim", "256",
            "--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "64",
            "--learning_rate", "0.001", "--logging_steps", "1", "--save_steps", "2", "--report_to", "none",
            "--use_cpu", "true", "--seed", "0", "--gradient_checkpointing", "false", "--torch_num_threads", "1",
            "--disable_tqdm", "true", "--max_steps", "8", "--stall_steps", "0"]
    proc = _run_cli(argv)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and not (out / "checkpoint-4").exists():
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(1.0)  # into step 5: rows past the checkpoint exist and must be dropped on resume
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = _run_cli(argv + ["--resume_from_checkpoint", "true"])
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-2000:]
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert steps == list(range(1, 9))
    per_step = {}
    for row in _rows(out / "rollouts.jsonl"):
        per_step[row["step"]] = per_step.get(row["step"], 0) + 1
    assert sorted(per_step) == list(range(8)) and set(per_step.values()) == {8}


@pytest.mark.slow
def test_kill9_evaluate_then_rerun_gives_the_uninterrupted_report(quickstart_dir, tmp_path):
    """evaluate keeps no partial state: SIGKILL once its first dataset is written, and the same command rerun
    over the half-written folder gives the uninterrupted run's numbers (every dataset rewritten whole)."""
    from tests.conftest import ROOT

    def argv(out):
        return ["evaluate", "--config", str(ROOT / "configs" / "evaluate_quickstart.yaml"), "--eval_seeds", "0", "1",
                "--eval_num_samples", "48", "--eval_epochs", "2", "--eval_progress", "false", "--output", str(out),
                "--sources", f"seed={quickstart_dir / 'seed_rubrics.json'}", "none=none"]

    def numbers(out):
        report = json.loads((out / "report.json").read_text())
        return [(r["source"], r["seed"], r["dataset"]["samples"], round(r["heldout"]["loss"], 6),
                 r["heldout"]["acc"]) for r in report["runs"]]

    ref = tmp_path / "ref"
    done = _run_cli(argv(ref), cwd=ROOT)
    _, err = done.communicate(timeout=900)
    assert done.returncode == 0, err[-2000:]

    out = tmp_path / "killed"
    proc = _run_cli(argv(out), cwd=ROOT)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and not list((out / "datasets").glob("*/seed0.jsonl")):
        time.sleep(0.05)
    assert proc.poll() is None, "evaluate ended before the kill: the case was not exercised"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists()  # nothing claims to be a finished report
    rerun = _run_cli(argv(out), cwd=ROOT)
    _, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err[-2000:]
    assert numbers(out) == numbers(ref)
