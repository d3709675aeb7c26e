#!/usr/bin/env python
"""Every command the README shows, run from a fresh clone (issue 20): the newcomer's path as a check.

    python scripts/readme_commands.py --list                       # the plan: each README command, run or why not
    git clone . /tmp/fresh && python scripts/readme_commands.py --clone /tmp/fresh --report runs/readme_commands

``--list`` reads the README's ``bash`` blocks (continuation lines joined, comments dropped) and prints, for every
command, what the check does with it; it exits 1 when a README command has no step in :data:`PLAN` or a step's
command is no longer in the README, so the plan cannot drift from the README (``tests/test_readme_commands.py``).

``--clone DIR`` runs the plan in DIR, in the plan's order (an export before the synthesis that reads it), each
step with ``bash -c`` from DIR, every step after the first inside the virtual environment the first one creates
(``. .venv/bin/activate &&``, as the README's own commands chain it). Modes:

* ``run``: the README's text, verbatim;
* ``adapted``: the README's text with its placeholders filled (``C``, ``D``, ``...``, ``PATH_OR_HUB_ID``), or a
  command the README gives in prose (an extra's install line); the step says what was filled in;
* ``skip``: not run here, with the reason (a GPU, a token, hours of CPU, a user's own data).

A command that ends in ``&`` (a server) is started in the background and its step waits until its port answers;
the server is stopped when the plan ends. Each step's output goes to REPORT/logs/NN.log; REPORT/report.json and
report.md list every step with its exit status and wall time. Exit status 1 when a step that ran failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACTIVATE = ". .venv/bin/activate && "
GPU = "needs CUDA GPUs (none here); the CUDA path is checked by scripts/gpu_check.sh when a GPU is lent"
OWN_DATA = "the user's own data and models (my.yaml's paths and hub ids are the user's); the same commands run below on the quickstart's files"


@dataclass
class Step:
    readme: str | None  # the README command (normalised as extract() does); None for a command given in prose
    mode: str  # run | adapted | skip
    run: str | None = None  # what runs, for adapted steps
    why: str = ""
    timeout_s: int = 1800
    port: int | None = None  # a background server's port: its step waits until it answers


PLAN: list[Step] = [
    Step("python3 -m venv .venv && . .venv/bin/activate && pip install -c constraints.txt torch==2.13.0 && "
         "pip install -c constraints.txt -e . && rubric-rl train --config configs/quickstart.yaml", "run",
         why="the README's first command: install + the quickstart", timeout_s=3600),
    Step("rubric-rl export --run runs/quickstart --output exports/my-generator", "run"),
    Step("rubric-rl export --run runs/quickstart --output exports/my-generator --push_to_hub my-org/rubric-gen", "skip",
         why="needs HF_TOKEN and the hub (no internet here); the push is tested against a local hub stand-in in tests/test_synth_hub.py"),
    Step(None, "adapted", run="python -c \"from pathlib import Path; import json; from transformers import AutoModelForCausalLM; "
         "model = AutoModelForCausalLM.from_pretrained('exports/my-generator'); "
         "from rubric_rl.generator import RubricGenerator; "
         "document_text = json.loads(Path('data/quickstart/documents.jsonl').read_text().splitlines()[0])['text']; "
         "rubrics = RubricGenerator.from_pretrained('exports/my-generator').generate([document_text]); print(rubrics)\"",
         why="the README's python block (loading the export), with document_text the first quickstart document"),
    Step("rubric-rl synthesize --config configs/quickstart.yaml --rubric_source exports/my-generator --output data/synth.jsonl "
         "--synth_hf_dataset data/synth.hf --synth_hf_license cc-by-4.0", "run"),
    Step("HF_TOKEN=hf_... rubric-rl synthesize ... --synth_push_to_hub my-org/my-synthetic-data", "skip",
         why="needs HF_TOKEN and the hub; tested against a local hub stand-in in tests/test_synth_hub.py"),
    Step("rubric-rl evaluate --config configs/evaluate_quickstart.yaml --sources trained=runs/quickstart/export "
         "seed=data/quickstart/seed_rubrics.json none=none --output runs/quickstart/eval", "run",
         why="the quickstart already wrote runs/quickstart/eval with these arguments: the command must reuse or resume it, not fail"),
    Step(None, "adapted", run="pip install -c constraints.txt -e \".[eval]\"",
         why="the install line the README's lm-evaluation-harness section gives in prose"),
    Step("rubric-rl evaluate --config configs/evaluate_quickstart.yaml --sources seed=data/quickstart/seed_rubrics.json "
         "none=none --output runs/eval_harness --eval_lm_eval_tasks rubric_rl_heldout", "run"),
    Step("rubric-rl calibrate --config configs/evaluate_quickstart.yaml --run_dir runs/quickstart --output runs/calib "
         "--sources seed=data/quickstart/seed_rubrics.json none=none mc_stepwise=data/calibration/mc_stepwise.json "
         "mc_letter=data/calibration/mc_letter.json open_stepwise=data/calibration/open_stepwise.json "
         "open_concise=data/calibration/open_concise.json true_false=data/calibration/true_false.json "
         "cloze=data/calibration/cloze.json", "run"),
    Step("rubric-rl closed-loop --config configs/closed_loop_quickstart.yaml --output runs/closed_loop", "run"),
    Step("rubric-rl evaluate --config configs/evaluate_quickstart.yaml --eval_num_samples 96 --output runs/closed_loop/eval "
         "--sources static=runs/closed_loop/static loss_own=runs/closed_loop/loss_own influence=runs/closed_loop/influence", "run"),
    Step("accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m rubric_rl.cli train --config "
         "configs/quickstart.yaml --output_dir runs/quickstart_2proc", "run"),
    Step("accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m rubric_rl.cli score --config C --output_dir D "
         "--samples IN.jsonl --output OUT.jsonl --select_top 1000 --selected TOP.jsonl", "adapted",
         run="accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m rubric_rl.cli score --config "
             "configs/quickstart.yaml --output_dir runs/quickstart --samples data/synth.jsonl --output runs/scored.jsonl "
             "--select_top 20 --selected runs/top.jsonl",
         why="C, D, IN, OUT, TOP filled with the quickstart's config, run and synthesized file; the CPU accelerate config (2 processes) for multi_gpu.yaml"),
    Step("rubric-rl score ... --num_shards 4 --shard_index 2", "adapted",
         run="for i in 0 1 2; do rubric-rl score --config configs/quickstart.yaml --output_dir runs/quickstart "
             "--samples data/synth.jsonl --output runs/sharded.jsonl --num_shards 4 --shard_index $i || exit 1; done && "
             "mkdir -p runs/elsewhere && rubric-rl score --config configs/quickstart.yaml --output_dir runs/quickstart "
             "--samples data/synth.jsonl --output runs/elsewhere/sharded.jsonl --num_shards 4 --shard_index 3 && "
             "cp runs/elsewhere/sharded.jsonl.shard-3-of-4.* runs/ && test ! -e runs/sharded.jsonl",
         why="... filled as above; shards 0-2 here and shard 3 in another folder, copied here (were all four "
             "written to one output, the last to finish would merge them by itself)"),
    Step("rubric-rl score ... --num_shards 4 --merge", "adapted",
         run="rubric-rl score --config configs/quickstart.yaml --output_dir runs/quickstart --samples data/synth.jsonl "
             "--output runs/sharded.jsonl --num_shards 4 --merge && test $(wc -l < runs/sharded.jsonl) = "
             "$(wc -l < data/synth.jsonl)", why="... filled as above: merges the copied-in shards"),
    Step("pip install -c constraints.txt -e \".[gguf]\"", "run"),
    Step("python scripts/fetch_smollm2.py", "run"),
    Step("python scripts/check_influence.py --config configs/smollm2_cpu.yaml --output_dir runs/smollm2_check", "run",
         timeout_s=3600),
    Step("rubric-rl train --config configs/smollm2_cpu.yaml", "skip",
         why="about 55 min of 2 CPU cores for its own sake; its parts (the SmolLM2 target, teacher and policy) are the "
             "check_influence step above and the proof (scripts/proof.py, reports/proof*)"),
    Step(None, "adapted", run="pip install -c constraints.txt -e \".[serve]\" && (rubric-rl serve-teacher --model template "
         "--port 8011 & pid=$!; up=0; for i in $(seq 60); do curl -sf http://127.0.0.1:8011/v1/models && up=1 && break; "
         "sleep 1; done; kill $pid; wait $pid; test $up = 1 && ! curl -sf http://127.0.0.1:8011/v1/models)",
         why="the zero-dependency server the README names in a comment, with the offline template model for "
             "PATH_OR_HUB_ID; started, asked for its models, stopped"),
    Step("pip install -c constraints.txt -e \".[llama-cpp]\"", "run", timeout_s=1800),
    Step("python -m llama_cpp.server --model \"$(python scripts/fetch_smollm2.py --gguf)\" --model_alias "
         "SmolLM2-135M-Instruct --port 8000 --n_ctx 2048 --n_threads 2 &", "run", port=8000),
    Step("rubric-rl synthesize --config configs/teacher_llama_cpp.yaml --rubric_source data/calibration/mc_stepwise.json "
         "--num_samples 16 --output runs/llama_cpp_synth.jsonl", "run"),
    Step("python3 -m venv .venv && . .venv/bin/activate && pip install -c constraints.txt torch==2.13.0 && "
         "pip install -c constraints.txt -e \".[dev]\" && python -m pytest -q", "run",
         why="the README's second command (what .ci/run calls)", timeout_s=3600),
    Step("python scripts/reproduce_quickstart.py --seeds 0 1 2 3 4 --jobs 2", "skip",
         why="10 quickstart runs, about 2.5 h on 2 cores; its report is committed (reports/quickstart/)"),
    Step("python scripts/reproduce_quickstart.py --seeds 0 1 2 3 4 --report_only", "skip",
         why="reads the runs of the command above (runs/reproduce/), which this check does not make"),
    Step("CUDA_VISIBLE_DEVICES=6,7 vllm serve Qwen/Qwen2.5-7B-Instruct --tensor-parallel-size 2 --port 8000", "skip", why=GPU),
    Step("accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m rubric_rl.cli train --config "
         "configs/real_example.yaml", "skip", why=GPU + "; and a 7B teacher from the hub"),
    Step("CUDA_VISIBLE_DEVICES=7 rubric-rl serve-influence --config configs/real_example.yaml --serve_port 8100", "skip", why=GPU),
    Step("CUDA_VISIBLE_DEVICES=0,1,2,3,4,5 accelerate launch --config_file configs/accelerate/multi_gpu.yaml "
         "--num_processes 6 -m rubric_rl.cli train --config configs/real_example.yaml --reward_influence_url "
         "http://127.0.0.1:8100", "skip", why=GPU),
    Step("cp configs/real_example.yaml my.yaml", "skip", why=OWN_DATA),
    Step("python scripts/check_influence.py --config my.yaml --output_dir runs/my_domain --mislabelled 12", "skip", why=OWN_DATA),
    Step("rubric-rl calibrate --config my.yaml --run_dir runs/my_domain --output runs/my_calib --sources "
         "seed=data/my_domain/seed_rubrics.json none=none", "skip", why=OWN_DATA),
    Step("accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m rubric_rl.cli train --config my.yaml", "skip",
         why=OWN_DATA),
    Step("rubric-rl synthesize --config my.yaml --rubric_source runs/my_domain/export --documents "
         "data/my_domain/documents.jsonl --num_samples 5000 --output data/my_domain/synthetic.jsonl --synth_hf_dataset "
         "data/my_domain/synthetic.hf", "skip", why=OWN_DATA),
    Step("rubric-rl evaluate --config my.yaml --output runs/my_eval --sources trained=runs/my_domain/export "
         "seed=data/my_domain/seed_rubrics.json none=none", "skip", why=OWN_DATA),
]


def extract(text: str) -> list[tuple[int, str]]:
    """(line, command) for every command line of the README's ``bash`` blocks: continuation lines joined,
    comments (whole lines, or after two spaces and ``#``) dropped, whitespace collapsed."""
    out: list[tuple[int, str]] = []
    lines = text.splitlines()
    lang: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            lang = None if lang is not None else line[3:].strip()
        elif lang == "bash":
            start, cmd = i + 1, line
            while cmd.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd = cmd.rstrip()[:-1] + " " + lines[i].strip()
            cmd = re.sub(r"\s+", " ", re.sub(r"\s+#\s.*$", "", cmd)).strip()
            if cmd and not cmd.startswith("#"):
                out.append((start, cmd))
        i += 1
    return out


def check_plan(readme_text: str, plan: list[Step] = PLAN) -> list[str]:
    """What is wrong between the README and the plan: a README command without a step, a step whose command is
    gone. Empty when every README command is planned."""
    planned = {s.readme for s in plan if s.readme}
    shown = extract(readme_text)
    problems = [f"README.md:{line}: no step in scripts/readme_commands.py PLAN for: {cmd}"
                for line, cmd in shown if cmd not in planned]
    texts = {cmd for _, cmd in shown}
    problems += [f"PLAN step no longer in the README: {s.readme}" for s in plan if s.readme and s.readme not in texts]
    return problems


def _wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 180.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(1)
    return False


@dataclass
class Result:
    index: int
    mode: str
    command: str
    readme_line: int | None
    why: str
    rc: int | None = None  # None: not run
    wall_s: float | None = None
    log: str | None = None
    last_line: str = ""
    background: bool = False
    extra: dict = field(default_factory=dict)


def run_plan(clone: Path, report: Path, plan: list[Step] = PLAN, readme_text: str | None = None,
             only: set[int] | None = None) -> list[Result]:
    lines = {cmd: n for n, cmd in extract(readme_text if readme_text is not None else (clone / "README.md").read_text())}
    logs = report / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    servers: list[subprocess.Popen] = []
    try:
        for i, step in enumerate(plan):
            cmd = step.run if step.mode == "adapted" else step.readme
            r = Result(i, step.mode, cmd or "", lines.get(step.readme), step.why)
            results.append(r)
            if step.mode == "skip" or (only is not None and i not in only):
                if step.mode != "skip":
                    r.why = "not selected (--only)"
                continue
            full = cmd if i == 0 else ACTIVATE + cmd  # the first step makes the venv; every other runs inside it
            log = logs / f"{i:02d}.log"
            r.log = str(log)
            print(f"== step {i} ({step.mode}): {cmd}", flush=True)
            t0 = time.perf_counter()
            if cmd.rstrip().endswith("&"):
                fh = log.open("w")
                proc = subprocess.Popen(["bash", "-c", full.rstrip().rstrip("&")], cwd=clone, stdout=fh,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                servers.append(proc)
                up = _wait_port(step.port, proc) if step.port else proc.poll() is None
                r.background = True
                r.rc = 0 if up else (proc.poll() if proc.poll() is not None else 1)
                r.extra["listening"] = up
            else:
                with log.open("w") as fh:
                    try:
                        r.rc = subprocess.run(["bash", "-c", "set -o pipefail; " + full], cwd=clone, stdout=fh,
                                              stderr=subprocess.STDOUT, timeout=step.timeout_s).returncode
                    except subprocess.TimeoutExpired:
                        r.rc = 124
            r.wall_s = round(time.perf_counter() - t0, 1)
            tail = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
            r.last_line = tail[-1][:300] if tail else ""
            print(f"   rc {r.rc}, {r.wall_s:.0f} s: {r.last_line}", flush=True)
    finally:
        for proc in servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    return results


def format_report(results: list[Result], meta: dict) -> str:
    ran = [r for r in results if r.rc is not None]
    ok = sum(r.rc == 0 for r in ran)
    out = ["# Every README command from a fresh clone", "",
           f"`{meta['command']}` on a clone of commit {meta.get('commit')}; {meta.get('machine', '')}", "",
           f"{ok} of {len(ran)} steps that ran exited 0; {sum(r.rc is None for r in results)} not run (reasons below).", "",
           "| # | README line | mode | exit | wall | command | note |", "|---|---|---|---|---|---|---|"]
    for r in results:
        exit_ = "-" if r.rc is None else str(r.rc)
        wall = "-" if r.wall_s is None else f"{r.wall_s:.0f} s"
        note = r.why or r.last_line
        if r.rc not in (None, 0):
            note = f"**failed**: {r.last_line}"
        cmd = r.command.replace("|", "\\|")
        if len(cmd) > 160:
            cmd = cmd[:157] + "..."
        out.append(f"| {r.index} | {r.readme_line or 'prose'} | {r.mode} | {exit_} | {wall} | `{cmd}` | "
                   f"{note.replace('|', '/')} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--list", action="store_true", help="Print the plan for every README command; exit 1 on drift.")
    p.add_argument("--clone", help="A fresh clone to run the plan in (its README is the one read).")
    p.add_argument("--report", default="runs/readme_commands", help="Folder for report.json/md and the step logs.")
    p.add_argument("--only", type=int, nargs="+", help="Run only these step numbers (the others are listed as not run).")
    a = p.parse_args(argv)
    if not a.list and not a.clone:
        p.error("give --list or --clone DIR")
    readme = Path(a.clone) / "README.md" if a.clone else Path(a.readme)
    problems = check_plan(readme.read_text())
    for msg in problems:
        print(msg, file=sys.stderr)
    if a.list:
        for n, step in enumerate(PLAN):
            print(f"{n:2d} {step.mode:8s} {step.readme or step.run}\n{'':12s}{step.why}" if step.why else
                  f"{n:2d} {step.mode:8s} {step.readme or step.run}")
        return 1 if problems else 0
    if problems:
        return 1
    clone = Path(a.clone).resolve()
    report = Path(a.report).resolve()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    results = run_plan(clone, report, only=set(a.only) if a.only else None)
    meta = {"command": "python scripts/readme_commands.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "commit": commit, "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end",
            "total_s": round(time.perf_counter() - t0, 1)}
    (report / "report.json").write_text(json.dumps({**meta, "steps": [asdict(r) for r in results]}, indent=1) + "\n")
    (report / "report.md").write_text(format_report(results, meta) + "\n")
    print(format_report(results, meta))
    return 1 if any(r.rc not in (None, 0) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
