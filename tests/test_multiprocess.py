"""A run of several processes (`accelerate launch`) as one user sees it (issue 20, "Multi-process correctness"): the
log says each thing once (rank 0's; the other ranks' warnings and errors marked `[rank K]`), the policy's SFT warm
start is the one a single process makes (rank 0 makes it in a single-process child), and metrics.jsonl counts the
outcomes of every process, per logged step. Unit tests here; a real 2-process launch at the end (slow)."""

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from rubric_rl import launch
from rubric_rl.reward import RewardStats

ROOT = Path(__file__).resolve().parents[1]

LAUNCHED_ENV = {
    "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
    "ROLE_RANK": "1", "ROLE_NAME": "default", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_RESTART_COUNT": "0", "ACCELERATE_MIXED_PRECISION": "no",
    "ACCELERATE_USE_DEEPSPEED": "true", "FSDP_SHARDING_STRATEGY": "1", "OMPI_COMM_WORLD_RANK": "1", "PMI_RANK": "1",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    # what a single process keeps
    "PATH": "/usr/bin", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0,1", "OMP_NUM_THREADS": "1",
    "PYTHONPATH": "/elsewhere", "RUBRIC_RL_DEBUG": "1",
}


# ------------------------------------------------------------------------------------------ the launcher's environment
def test_a_single_process_child_gets_no_launcher_variable():
    env = launch.single_process_env(LAUNCHED_ENV)
    assert set(env) == {"PATH", "HOME", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "PYTHONPATH", "RUBRIC_RL_DEBUG"}
    assert env["PYTHONPATH"] == os.pathsep.join([str(ROOT), "/elsewhere"])  # this clone's code first
    assert launch.launched(env) is None and launch.process_rank(env) == 0
    assert launch.single_process_env({})["PYTHONPATH"] == str(ROOT)


def test_the_rank_is_read_off_the_launchers_environment():
    assert launch.launched({}) is None and launch.process_rank({}) == 0 and launch.rank_prefix({}) == ""
    assert launch.launched(LAUNCHED_ENV) == (2, 1, 1)
    assert launch.process_rank({"RANK": "3"}) == 3 and launch.rank_prefix({"RANK": "3"}) == "[rank 3] "
    assert launch.process_rank({"OMPI_COMM_WORLD_RANK": "2"}) == 2  # mpirun
    assert launch.process_rank({"RANK": "0", "PMI_RANK": "5"}) == 0  # torchrun's own first


# ---------------------------------------------------------------------------------------------------------- logging
def test_other_ranks_log_warnings_only_and_marked():
    assert launch.replica_level("INFO", 0) == logging.INFO and launch.replica_level("debug", 0) == logging.DEBUG
    assert launch.replica_level("INFO", 1) == logging.WARNING and launch.replica_level("ERROR", 2) == logging.ERROR
    assert "[rank" not in launch.log_format(0) and "%(asctime)s [rank 2] %(levelname)s" in launch.log_format(2)


LOG_SCRIPT = """
import logging
from rubric_rl.launch import setup_logging
setup_logging()
logging.getLogger("rubric_rl").info("== GRPO: a banner ==")
logging.getLogger("rubric_rl.train").info("48 documents -> 48 policy prompts")
logging.getLogger("rubric_rl.train").warning("only 1/8 rubrics parse")
logging.getLogger("somelib").info("a library's info")
logging.getLogger("rubric_rl.reward").error("a failure")
import os
print(os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"))
"""


@pytest.mark.parametrize("rank", [None, "0", "1"])
def test_a_launched_run_logs_once(rank):
    """A fake rank through the launcher's variable: rank 0 (or no launcher) logs everything as before; rank 1 only
    its warnings and errors, each marked."""
    env = {k: v for k, v in os.environ.items() if k not in launch.DIST_ENV_NAMES}
    env.update({"PYTHONPATH": str(ROOT), **({"RANK": rank, "WORLD_SIZE": "2"} if rank else {})})
    env.pop("RUBRIC_RL_LOG_LEVEL", None)
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    res = subprocess.run([sys.executable, "-c", LOG_SCRIPT], env=env, capture_output=True, text=True, timeout=60,
                         check=True)
    err = res.stderr.splitlines()
    assert res.stdout.strip() == ("1" if rank == "1" else "None")  # no hub/transformers bars on the other ranks
    if rank == "1":
        assert [line.split(" ", 1)[1] for line in err] == [
            "[rank 1] WARNING rubric_rl.train: only 1/8 rubrics parse", "[rank 1] ERROR rubric_rl.reward: a failure"]
    else:
        assert [line.split(" ", 1)[1] for line in err] == [
            "INFO rubric_rl: == GRPO: a banner ==", "INFO rubric_rl.train: 48 documents -> 48 policy prompts",
            "WARNING rubric_rl.train: only 1/8 rubrics parse", "INFO somelib: a library's info",
            "ERROR rubric_rl.reward: a failure"]


def test_an_error_line_names_the_rank_it_came_from(monkeypatch, capsys):
    from rubric_rl.cli import run_command
    from rubric_rl.errors import UserError

    def fails(argv):
        raise UserError("no such file: x.jsonl")

    monkeypatch.delenv("RUBRIC_RL_DEBUG", raising=False)
    for rank, prefix in ((None, ""), ("1", "[rank 1] ")):
        if rank:
            monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit):
            run_command("train", fails, [])
        assert capsys.readouterr().err == f"{prefix}rubric-rl train: error: no such file: x.jsonl\n"


# ---------------------------------------------------------------------------------------- outcome counts per step
def test_outcomes_since_the_last_log_and_summed_over_processes():
    stats = RewardStats()
    stats.outcomes.update({"valid": 3, "rubric_invalid_json": 1})
    assert stats.since_last_log() == {"valid": 3, "rubric_invalid_json": 1}
    stats.outcomes.update({"valid": 2, "ungrounded": 1})
    assert stats.since_last_log() == {"valid": 2, "ungrounded": 1}  # no zero count; the run's order of keys
    assert stats.since_last_log() == {}
    assert launch.sum_counts([{"valid": 2, "b": 1}, {"c": 4, "valid": 1}, {}]) == {"valid": 3, "b": 1, "c": 4}
    assert list(launch.sum_counts([{"valid": 2, "b": 1}, {"c": 4, "valid": 1}])) == ["valid", "b", "c"]
    assert launch.all_gather_objects({"valid": 1}) == [{"valid": 1}]  # no process group: this process's


def _log_step(callback, step, *, main=True):
    state = SimpleNamespace(global_step=step, is_world_process_zero=main)
    callback.on_log(None, state, None, logs={"reward": 0.5, "reward_std": 0.1, "valid_rate": 0.5,
                                             "influence_mean": 0.07, "loss": 0.1})


def test_metrics_jsonl_counts_each_step_of_every_process(tmp_path, monkeypatch):
    """outcomes: the step's, summed over the processes (here rank 0 and a stand-in rank 1 gathered beside it);
    outcomes_total: since the start, over the processes. Every process gathers; only rank 0 writes."""
    import rubric_rl.train as train_mod

    rank1 = [({"valid": 10, "rubric_stuttering": 6}, {"valid": 10, "rubric_stuttering": 6}),
             ({"valid": 16}, {"valid": 26, "rubric_stuttering": 6})]
    gathered = []

    def all_gather(obj):  # what torch.distributed.all_gather_object gives rank 0: rank 0's, then rank 1's
        gathered.append(obj)
        return [obj, rank1[len(gathered) - 1]]

    monkeypatch.setattr(train_mod, "all_gather_objects", all_gather)
    reward = SimpleNamespace(stats=RewardStats(), log_path=None)
    callback = train_mod.MetricsJsonlCallback(tmp_path / "metrics.jsonl", reward)
    reward.stats.outcomes.update({"valid": 14, "rubric_invalid_json": 2})
    _log_step(callback, 1)
    reward.stats.outcomes.update({"valid": 15, "rubric_invalid_json": 1})
    _log_step(callback, 2)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["outcomes"] for r in rows] == [{"valid": 24, "rubric_invalid_json": 2, "rubric_stuttering": 6},
                                             {"valid": 31, "rubric_invalid_json": 1}]
    assert [sum(r["outcomes"].values()) for r in rows] == [32, 32]  # 16 rollouts a process a step
    assert rows[1]["outcomes_total"] == {"valid": 55, "rubric_invalid_json": 3, "rubric_stuttering": 6}
    assert list(rows[0])[:5] == ["step", "reward", "reward_std", "valid_rate", "influence_mean"]
    assert list(rows[0])[-2:] == ["outcomes", "outcomes_total"]


def test_a_non_main_process_gathers_its_counts_and_writes_nothing(tmp_path, monkeypatch):
    import rubric_rl.train as train_mod

    sent = []
    monkeypatch.setattr(train_mod, "all_gather_objects", lambda obj: sent.append(obj) or [obj])
    reward = SimpleNamespace(stats=RewardStats(), log_path=None)
    callback = train_mod.MetricsJsonlCallback(tmp_path / "metrics.jsonl", reward)
    reward.stats.outcomes.update({"valid": 16})
    _log_step(callback, 1, main=False)
    callback.on_log(None, SimpleNamespace(global_step=1, is_world_process_zero=False), None,
                    logs={"train_runtime": 3.0})  # the closing log: no reward, no collective
    assert sent == [({"valid": 16}, {"valid": 16})] and not (tmp_path / "metrics.jsonl").exists()


def test_one_process_keeps_its_cumulative_counts_as_outcomes_total(tmp_path):
    """No process group: ``outcomes_total`` is what ``outcomes`` held before (the counts since the start)."""
    from rubric_rl.train import MetricsJsonlCallback

    reward = SimpleNamespace(stats=RewardStats(), log_path=None)
    callback = MetricsJsonlCallback(tmp_path / "metrics.jsonl", reward)
    total = Counter()
    for step, new in enumerate([{"valid": 14, "rubric_invalid_json": 2}, {"valid": 15, "rubric_invalid_json": 1}], 1):
        reward.stats.outcomes.update(new)
        total.update(new)
        _log_step(callback, step)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["outcomes_total"] == dict(total) and rows[-1]["outcomes"] == {"valid": 15, "rubric_invalid_json": 1}


# ------------------------------------------------------------------------------------- the SFT warm start, made once
def _warmstart_args(tmp_path):
    from rubric_rl.config import RubricRLArguments

    args = RubricRLArguments(policy_sft_warmstart=True, seed_rubrics=str(ROOT / "data/quickstart/seed_rubrics.json"))
    return args, SimpleNamespace(seed=0)


def test_rank0_makes_the_warm_start_in_a_single_process_child_of_the_same_command_line(tmp_path, monkeypatch):
    from rubric_rl import warmstart

    args, grpo_args = _warmstart_args(tmp_path)
    target = tmp_path / "sft_warmstart"
    calls = []

    def child(cmd, env):
        calls.append((cmd, env))
        target.mkdir()
        (target / "warmstart_args.json").write_text(json.dumps(warmstart.warmstart_spec(args, grpo_args)))
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(warmstart.subprocess, "run", child)
    for name, value in LAUNCHED_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RANK", "0")
    state = SimpleNamespace(num_processes=2, is_main_process=True)
    argv = ["--config", "q.yaml", "--output_dir", str(tmp_path)]
    assert warmstart.warm_start_once(args, grpo_args, tmp_path, state, argv) is True
    (cmd, env), = calls
    assert cmd == [sys.executable, "-m", "rubric_rl.train", *argv]
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"} & set(env)
    assert not [k for k in env if k.startswith(("ACCELERATE_", "TORCHELASTIC_"))]
    # made: the next launch (or a resume) reuses it without a child
    assert warmstart.warm_start_once(args, grpo_args, tmp_path, state, argv) is False and len(calls) == 1


def test_a_failed_child_stops_rank0(tmp_path, monkeypatch):
    from rubric_rl import warmstart

    args, grpo_args = _warmstart_args(tmp_path)
    monkeypatch.setattr(warmstart.subprocess, "run", lambda cmd, env: SimpleNamespace(returncode=1))
    with pytest.raises(RuntimeError, match="single-process child failed"):
        warmstart.warm_start_once(args, grpo_args, tmp_path, SimpleNamespace(num_processes=2, is_main_process=True),
                                  ["--config", "q.yaml"])


def test_the_other_ranks_wait_for_the_marker_of_this_runs_spec(tmp_path, monkeypatch):
    from rubric_rl import warmstart

    args, grpo_args = _warmstart_args(tmp_path)
    target = tmp_path / "sft_warmstart"
    target.mkdir()
    (target / "warmstart_args.json").write_text(json.dumps({"epochs": 1}))  # an older warm start: not this one
    monkeypatch.setattr(warmstart.subprocess, "run", lambda *a, **k: pytest.fail("only rank 0 starts the child"))

    def rank0_finishes():
        time.sleep(1.0)
        (target / "warmstart_args.json").write_text(json.dumps(warmstart.warmstart_spec(args, grpo_args)))

    monkeypatch.setattr(warmstart, "wait_until", lambda check, what, **kw: launch.wait_until(check, what, poll_s=0.05))
    th = threading.Thread(target=rank0_finishes)
    start = time.monotonic()
    th.start()
    try:
        state = SimpleNamespace(num_processes=2, is_main_process=False)
        assert warmstart.warm_start_once(args, grpo_args, tmp_path, state, ["--config", "q.yaml"]) is False
    finally:
        th.join()
    assert time.monotonic() - start >= 1.0


def test_without_a_command_line_the_warm_start_falls_back_to_ddp_and_says_so(tmp_path, caplog):
    from rubric_rl import warmstart

    args, grpo_args = _warmstart_args(tmp_path)
    with caplog.at_level(logging.WARNING, logger="rubric_rl.warmstart"):
        state = SimpleNamespace(num_processes=2, is_main_process=True)
        assert warmstart.warm_start_once(args, grpo_args, tmp_path, state, None) is False
    assert "without the command line" in caplog.text


# ------------------------------------------------------------------------------------- a real 2-process launch
BANNERS = ("== policy SFT warm start:", "== target warm-up:", "== influence: loading", "== GRPO:", "== export:",
           "documents -> ", "pre-flight:")
# The quickstart with a small, fast SFT warm start that still writes parseable rubrics (5/8 at the pre-flight).
SMALL_SFT = ["--policy_model_name_or_path", "tiny:hidden=32,layers=2,heads=4,seed=0", "--policy_sft_max_documents",
             "2", "--policy_sft_batch_size", "4", "--policy_sft_learning_rate", "0.02", "--policy_sft_epochs", "30",
             "--max_steps", "2", "--disable_tqdm", "true"]


@pytest.mark.slow
def test_two_processes_warm_start_like_one_log_once_and_count_every_rollout(tmp_path):
    """`accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m rubric_rl.cli train` on the quickstart
    (no evaluation; a small SFT warm start, 2 GRPO steps) beside a one-process run with the same arguments: the SFT
    warm start's weights are equal tensor for tensor; each banner is printed once; metrics.jsonl's ``outcomes`` of
    a step add up to the rollouts both ranks logged for it."""
    import torch
    from safetensors.torch import load_file

    config = tmp_path / "quick.yaml"
    config.write_text("".join(line for line in (ROOT / "configs" / "quickstart.yaml").read_text().splitlines(True)
                              if not line.startswith("evaluate_")))
    env = {k: v for k, v in os.environ.items() if k not in launch.DIST_ENV_NAMES and k != "RUBRIC_RL_LOG_LEVEL"}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})

    def run(launcher, out):
        cmd = [*launcher, "-m", "rubric_rl.cli", "train", "--config", str(config), "--output_dir", str(out), *SMALL_SFT]
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
        return res.stdout + res.stderr

    t0 = time.monotonic()
    run([sys.executable], tmp_path / "one")
    t1 = time.monotonic()
    two_log = run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml")], tmp_path / "two")
    print(f"one process: {t1 - t0:.0f} s; accelerate launch, 2 processes: {time.monotonic() - t1:.0f} s")

    one_w, two_w = (load_file(str(tmp_path / d / "sft_warmstart" / "model.safetensors")) for d in ("one", "two"))
    assert one_w.keys() == two_w.keys() and all(torch.equal(one_w[k], two_w[k]) for k in one_w)
    marker = "sft_warmstart/warmstart_args.json"
    assert (tmp_path / "one" / marker).read_bytes() == (tmp_path / "two" / marker).read_bytes()

    lines = two_log.splitlines()
    for banner in BANNERS:
        assert sum(banner in line for line in lines) == 1, (banner, [x for x in lines if banner in x])
    assert not [x for x in lines if "[rank 1] INFO" in x]

    two = tmp_path / "two"
    rollouts = [json.loads(x) for name in ("rollouts.jsonl", "rollouts.rank1.jsonl")
                for x in (two / name).read_text().splitlines()]
    per_step = Counter(r["step"] for r in rollouts)  # a rollout's step: global_step before the step
    rows = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        n = sum(r["outcomes"].values())
        assert n == per_step[r["step"] - 1] == 32  # 16 rollouts on each of the 2 ranks
        assert r["outcomes"].get("valid", 0) / n == pytest.approx(r["valid_rate"])
    assert Counter(rows[-1]["outcomes_total"]) == Counter(r["outcome"] for r in rollouts)
    summary = json.loads((two / "run_summary.json").read_text())
    assert Counter(summary["outcomes"]) == Counter(r["outcome"] for r in rollouts)
