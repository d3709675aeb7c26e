#!/usr/bin/env python
"""The quickstart over training seeds (issue 19): a headline from one training seed is a coin toss, so the
README's quickstart numbers are a distribution, made by this script. Writes ``reports/quickstart/report.json``
and ``report.md``.

    python scripts/reproduce_quickstart.py --seeds 0 1 2 3 4 --jobs 2     # finished runs are reused on rerun
    python scripts/reproduce_quickstart.py --seeds 0 1 2 3 4 --report_only  # rebuild the report from the runs

Each run is ``rubric-rl train --config configs/quickstart.yaml --seed S --output_dir RUNS/CONDITION/seedS`` plus the
condition's flags, one subprocess (``python -m rubric_rl.cli``, from the repository root) with its log in
``RUNS/CONDITION/logs/seedS.log`` and its attempts (action, command, wall time, exit status) in
``RUN/reproduce_attempts.json``; ``--jobs`` of them at a time, each with its config's ``torch_num_threads``. A run is
the whole quickstart: SFT warm start, target warm-up, 100 GRPO steps, export, then its own evaluation
(``evaluate_config``: trained vs seed rubrics vs none, 3 evaluation seeds), about 10 min with two side by side on
2 cores.

Conditions (``--conditions``):

* ``default``: the quickstart as configured;
* ``threads2``: ``--torch_num_threads 2`` for training (other reduction orders, standing in for another CPU; the
  evaluation keeps its config's ``eval_torch_num_threads``; with ``--jobs 2`` on 2 cores the threads share them,
  which changes the speed, not the numbers);
* ``perturb``: ``--policy_init_noise 1e-6``: N(0, 1e-6) added to the initial policy weights (noise seed 0).

What happens to a run folder (:func:`decide`), by train's own rules (``rubric_rl/rundir.py``):

* it holds a finished run (``run_summary.json`` and an ``eval/report.json`` with trained and seed at every
  evaluation seed): reused, not rerun;
* it holds no run: trained fresh;
* it holds a run whose last checkpoint is short of ``max_steps``: ``--resume_from_checkpoint true`` (the report
  marks the run as resumed);
* it holds a run with no checkpoint yet, or trained to ``max_steps`` whose export or evaluation did not finish:
  ``--overwrite_output_dir true`` (train deletes the run's state and keeps its warm-up, influence and SFT caches);
* it holds a run of another seed or of other condition settings: an error naming it, before anything runs.

``--report_only`` runs nothing: a seed whose folder is missing or unfinished is an error naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rubric_rl.evaluate.distribution import (ATTEMPTS_FILE, DistributionError, arg_value,  # noqa: E402
                                             build_distribution, format_markdown, unfinished_reason)
from rubric_rl.rundir import ARGS_FILE, checkpoints, holds_run  # noqa: E402

CONDITIONS = {
    "default": {"flags": [], "description": "the quickstart as configured"},
    "threads2": {"flags": ["--torch_num_threads", "2"],
                 "description": "training on 2 torch threads (other reduction orders, standing in for another CPU)"},
    "perturb": {"flags": ["--policy_init_noise", "1e-6"],
                "description": "N(0, 1e-6) added to the initial policy weights (policy_init_noise_seed 0)"},
}
PRINT_LOCK = threading.Lock()


def say(*parts) -> None:
    with PRINT_LOCK:
        print(*parts, flush=True)


def config_fields(config: Path) -> dict:
    from rubric_rl.config import read_config_file

    data, _ = read_config_file(str(config))
    return data


def expectations(name: str, fields: dict) -> dict:
    """The settings each run of condition ``name`` must have (besides its seed): the config's thread count and no
    initial noise, unless the condition sets them."""
    expect = {"torch_num_threads": int(fields.get("torch_num_threads", 0) or 0), "policy_init_noise": 0.0}
    flags = CONDITIONS[name]["flags"]
    for k in range(0, len(flags), 2):
        field, value = flags[k].lstrip("-"), flags[k + 1]
        expect[field] = type(expect[field])(float(value)) if field in expect else value
    return expect


def decide(run_dir: Path, seed: int, expect: dict, max_steps: int) -> tuple[str, str]:
    """``(action, why)``: ``done``, ``fresh``, ``resume`` or ``overwrite`` (module docstring); raises
    :class:`DistributionError` for a folder holding a run of another seed or other condition settings."""
    if not run_dir.exists() or not holds_run(run_dir):
        return "fresh", "no run yet"
    args_path = run_dir / ARGS_FILE
    if args_path.exists():
        try:
            args = json.loads(args_path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise DistributionError(f"{args_path}: unreadable ({err}); move the folder away") from None
        wrong = [f"seed={arg_value(args, 'seed')!r} (expected {seed})"] if arg_value(args, "seed") != seed else []
        wrong += [f"{k}={arg_value(args, k)!r} (expected {v!r})" for k, v in expect.items() if arg_value(args, k) != v]
        if wrong:
            raise DistributionError(f"{run_dir} holds a run with {', '.join(wrong)}; move it away or choose another "
                                    "--runs folder")
        max_steps = int(arg_value(args, "max_steps") or max_steps)
    why = unfinished_reason(run_dir)
    if why is None:
        return "done", "finished (evaluation report present)"
    ckpts = checkpoints(run_dir)
    step = int(ckpts[-1].name.split("-")[1]) if ckpts else 0
    if ckpts and (max_steps <= 0 or step < max_steps):
        return "resume", f"unfinished at {ckpts[-1].name} of {max_steps} steps"
    if ckpts:
        return "overwrite", f"trained to step {step} but {why}"
    return "overwrite", "stopped before its first checkpoint"


def train_command(config: str, seed: int, run_dir: str, flags: list[str], action: str) -> list[str]:
    cmd = [sys.executable, "-m", "rubric_rl.cli", "train", "--config", config, "--seed", str(seed),
           "--output_dir", run_dir, *flags]
    if action == "resume":
        cmd += ["--resume_from_checkpoint", "true"]
    elif action == "overwrite":
        cmd += ["--overwrite_output_dir", "true"]
    return cmd


def run_subprocess(cmd: list[str], log: Path) -> int:
    """Run ``cmd`` from the repository root, appending its output to ``log`` (stood in for by tests)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n== {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(cmd)}\n")
        fh.flush()
        return subprocess.call(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)


def run_one(job: dict) -> dict:
    run_dir, log = job["run_dir"], job["log"]
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = train_command(job["config"], job["seed"], job["run_dir_arg"], job["flags"], job["action"])
    say(f"== {job['name']}: {job['action']} ({job['why']}); log: {log}")
    t0 = time.perf_counter()
    rc = run_subprocess(cmd, log)  # looked up at call time: tests stand in for it
    wall = time.perf_counter() - t0
    shown = shlex.join(["rubric-rl", *cmd[3:]])
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ATTEMPTS_FILE
    attempts = json.loads(path.read_text()) if path.exists() else []
    attempts.append({"action": job["action"], "command": shown, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "wall_s": round(wall, 1), "rc": rc, "log": str(log)})
    path.write_text(json.dumps(attempts, indent=1) + "\n")
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-12:] if log.exists() else []
        say(f"   {job['name']} FAILED (exit {rc}) after {wall:.0f} s; last lines of {log}:\n" + "\n".join(tail))
    else:
        say(f"   {job['name']} done in {wall:.0f} s")
    return {**job, "rc": rc, "wall_s": wall}


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="Training seeds.")
    ap.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS),
                    help="Conditions to run and report.")
    ap.add_argument("--jobs", type=int, default=2, help="Runs at a time (2 on a 2-core machine).")
    ap.add_argument("--config", default="configs/quickstart.yaml", help="Training config (relative to the repository).")
    ap.add_argument("--runs", default="runs/reproduce", help="Run folders: RUNS/CONDITION/seedS.")
    ap.add_argument("--output", default="reports/quickstart", help="Where report.json and report.md go.")
    ap.add_argument("--report_only", action="store_true", help="Run nothing; rebuild the report from the run folders.")
    ap.add_argument("--condition_seeds", nargs="+", default=[], metavar="CONDITION=S,S,...",
                    help="Training seeds of one condition instead of --seeds (e.g. perturb=0,1,2: a condition that "
                         "ran fewer seeds).")
    a = ap.parse_args(argv)
    if a.jobs < 1:
        ap.error("--jobs must be >= 1")
    runs_root = Path(a.runs) if Path(a.runs).is_absolute() else ROOT / a.runs
    output = Path(a.output) if Path(a.output).is_absolute() else ROOT / a.output
    config = Path(a.config) if Path(a.config).is_absolute() else ROOT / a.config
    fields = config_fields(config)
    max_steps = int(fields.get("max_steps", -1))

    from rubric_rl.provenance import provenance

    made_by = provenance()
    jobs, plan = [], {}
    seeds_of = {}
    for spec in a.condition_seeds:
        name, _, seeds = spec.partition("=")
        if name not in a.conditions or not seeds:
            print(f"reproduce_quickstart: error: --condition_seeds {spec!r}: expected CONDITION=S,S,... with CONDITION "
                  f"one of --conditions {a.conditions}", file=sys.stderr)
            return 2
        try:
            seeds_of[name] = [int(x) for x in seeds.split(",")]
        except ValueError:
            print(f"reproduce_quickstart: error: --condition_seeds {spec!r}: seeds must be integers", file=sys.stderr)
            return 2
    try:
        for name in a.conditions:
            expect = expectations(name, fields)
            plan[name] = {"runs": {}, "flags": CONDITIONS[name]["flags"], "expect": expect,
                          "description": CONDITIONS[name]["description"]}
            for seed in seeds_of.get(name, a.seeds):
                run_dir = runs_root / name / f"seed{seed}"
                plan[name]["runs"][seed] = _rel(run_dir)
                if a.report_only:
                    continue
                action, why = decide(run_dir, seed, expect, max_steps)
                if action == "done":
                    say(f"== {name}/seed{seed}: reused ({why})")
                    continue
                jobs.append({"name": f"{name}/seed{seed}", "seed": seed, "run_dir": run_dir,
                             "run_dir_arg": _rel(run_dir), "config": _rel(config), "flags": CONDITIONS[name]["flags"],
                             "action": action, "why": why, "log": runs_root / name / "logs" / f"seed{seed}.log"})
    except DistributionError as err:
        print(f"reproduce_quickstart: error: {err}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    if jobs:
        say(f"{len(jobs)} run(s) to make, {a.jobs} at a time")
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            results = list(pool.map(run_one, jobs))
        failed = [r for r in results if r["rc"] != 0]
        if failed:
            print(f"reproduce_quickstart: error: {len(failed)} run(s) failed ({', '.join(r['name'] for r in failed)}); "
                  "the report is not written; rerun the same command to resume them", file=sys.stderr)
            return 1
        say(f"all runs done in {time.perf_counter() - t0:.0f} s")

    command = shlex.join(["python", "scripts/reproduce_quickstart.py", *argv])
    try:
        report = build_distribution(plan, command=command, made_by=made_by, config=_rel(config),
                                    evaluate_config=fields.get("evaluate_config"))
    except DistributionError as err:
        print(f"reproduce_quickstart: error: {err}", file=sys.stderr)
        return 2
    report["report_only"] = a.report_only
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    md = format_markdown(report)
    (output / "report.md").write_text(md)
    print(md.split("\n## ", 1)[0].rstrip())
    print(f"\nReport: {_rel(output / 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
