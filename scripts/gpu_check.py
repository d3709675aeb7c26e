#!/usr/bin/env python
"""The one-shot GPU check that ``scripts/gpu_check.sh`` runs: figures of this code on a CUDA machine, in one JSON.

Steps, each a subprocess with its own time limit, the JSON rewritten after each (a step that fails or runs
out of time is recorded with the end of its output, and the next step still runs):

1. ``bench``: ``scripts/bench_influence.py --device cuda --dtype bfloat16 --skip-reference`` (the engine's
   samples/s and its time over one plain batched forward+backward, peak GPU memory) on SmolLM2-135M-Instruct
   when it is on this machine (``GPU_CHECK_MODEL``, ``RUBRIC_RL_REAL_MODEL`` or the folder
   ``scripts/fetch_smollm2.py`` writes), and on a larger tiny model (``TINY_BIG``); exact (d=0, the default)
   and d=8192 while time is left.
2. ``train``: a real 3-step ``rubric-rl train`` on CUDA (the quickstart's tiny models, bf16, no evaluation).
3. ``score``: one process, then ``accelerate launch`` of max(2, GPUs) processes (on one GPU they share it),
   on 288+ lines with a broken and a repeated line: seconds of each and whether the merged files are the
   one-process files byte for byte (if not: how many scores differ, and by how much).

``python scripts/gpu_check.py OUT.json``; ``--cpu`` runs steps 1 and 3 on the CPU with small sizes, to check
this script without a GPU (no training). Without CUDA (and without ``--cpu``) it writes
``{"status": "skipped", ...}``, prints ``skipped: no CUDA device`` and exits 0.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
TINY_BIG = "tiny:hidden=1024,layers=8,heads=16,seed=0"
TINY_CPU = "tiny:hidden=64,layers=2,heads=4,seed=0"
BUDGET_S = 420  # the whole check's plan; gpu_check.sh stops it at 470 s
MODULES = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "tokenizers", "safetensors", "yaml",
           "tqdm", "matplotlib", "httpx")


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(path)


def tail(text: str, n: int = 1500) -> str:
    return text[-n:] if text else ""


_CHILD: list[subprocess.Popen] = []  # the step running now (its process group is ended with this script)


_REPORT: dict = {}  # "out" and "report", once the check runs


def _stop(signum, frame):  # gpu_check.sh's `timeout`: end the running step's processes too, then exit
    for proc in _CHILD:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if _REPORT:
        _REPORT["report"]["status"] = "stopped at the time limit: the steps above finished"
        write(_REPORT["out"], _REPORT["report"])
    raise SystemExit(128 + signum)


def run(cmd: list[str], timeout: float, env: dict, log: Path) -> dict:
    """Run ``cmd`` in its own process group (killed whole on timeout); output to ``log``."""
    t = time.monotonic()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        _CHILD[:] = [proc]
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "timeout"
        finally:
            _CHILD.clear()
    out = log.read_text(errors="replace")
    return {"rc": rc, "seconds": round(time.monotonic() - t, 1), "output": out}


def last_json(text: str) -> dict | None:
    """The last top-level JSON object printed (``rubric-rl score`` prints its summary last)."""
    start = text.rfind("\n{")
    start = 0 if start < 0 and text.startswith("{") else start + 1
    end = text.rfind("\n}")
    if start < 0 or end < start:
        return None
    try:
        return json.loads(text[start:end + 2])
    except json.JSONDecodeError:
        return None


def versions() -> dict:
    import importlib

    out = {"python": platform.python_version()}
    for name in MODULES:
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "importable")
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            out[name] = f"missing: {type(exc).__name__}: {exc}"[:200]
    return out


def device_info() -> dict:
    import torch

    info = {"cuda": torch.version.cuda, "count": torch.cuda.device_count(), "devices": []}
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        info["devices"].append({"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                                "capability": f"{p.major}.{p.minor}"})
    info["bf16"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return info


def find_smollm2() -> Path | None:
    for c in filter(None, [os.environ.get("GPU_CHECK_MODEL"), os.environ.get("RUBRIC_RL_REAL_MODEL")]):
        if (Path(c) / "config.json").is_file():
            return Path(c)
    try:
        from rubric_rl.models import fetched_model_dir

        d = fetched_model_dir()
    except Exception:  # noqa: BLE001
        return None
    return d if (d / "config.json").is_file() else None


def cli_wrapper(argv: list[str]) -> int:
    """``gpu_check.py --cli STATS ARGS``: ``rubric-rl ARGS``, then this process's seconds, exit status and
    peak GPU memory to ``STATS.<rank>.json`` (under a launcher, one file per process)."""
    prefix, args = argv[0], argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    sys.path.insert(0, str(ROOT))
    import torch

    from rubric_rl.cli import main as cli_main

    t, rc = time.perf_counter(), 0
    try:
        cli_main(args)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        rc = 1
        raise
    finally:
        stats = {"rc": rc, "seconds": round(time.perf_counter() - t, 2), "rank": int(os.environ.get("RANK", "0"))}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            stats["cuda_peak_mb"] = round(max(torch.cuda.max_memory_allocated(i)
                                              for i in range(torch.cuda.device_count())) / 2**20)
        Path(f"{prefix}.{stats['rank']}.json").write_text(json.dumps(stats))
    return rc


def read_stats(prefix: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(prefix.parent.glob(prefix.name + ".*.json"))]


# ------------------------------------------------------------------------------------------------ steps


def step_bench(work: Path, env: dict, models: list[str], cpu: bool, deadline: float, reserve: float,
               gpu_memory_gb: float = 0.0) -> list[dict]:
    results = []
    # the projection may keep its matrix on the GPU (dense, else int8 signs) within 40 % of its memory
    proj_mb = str(max(1024, int(gpu_memory_gb * 1024 * 0.4)))
    dims = [0] if cpu else [0, 8192]
    for proj_dim in dims:  # every model exact first, then d=8192 while time is left
        for model in models:
            left = deadline - reserve - time.monotonic()
            if left < 40:
                results.append({"model": model, "proj_dim": proj_dim, "skipped": "no time left"})
                continue
            name = Path(model).name if not model.startswith("tiny:") else model.replace(":", "_").replace(",", "_")
            out_json = work / f"bench_{name}_d{proj_dim}.json"
            cmd = [sys.executable, str(ROOT / "scripts" / "bench_influence.py"), "--model", model,
                   "--run-dir", str(work / f"bench_{name}"), "--skip-reference", "--proj-dim", str(proj_dim),
                   "--json", str(out_json)]
            cmd += (["--device", "cpu", "--dtype", "float32", "--n", "16", "--batch-size", "8", "--repeat", "1"]
                    if cpu else ["--device", "cuda", "--dtype", "bfloat16", "--n", "256", "--batch-size", "16",
                                 "--repeat", "3", "--proj-memory-mb", proj_mb])
            res = run(cmd, min(left, 180), env, work / f"bench_{name}_d{proj_dim}.log")
            row = {"model": model, "proj_dim": proj_dim, "rc": res["rc"], "seconds": res["seconds"]}
            if res["rc"] == 0 and out_json.is_file():
                figures = json.loads(out_json.read_text())
                figures.pop("references", None)
                row.update(figures)
            else:
                row["output_tail"] = tail(res["output"])
            results.append(row)
    return results


def train_config(work: Path, bf16: bool) -> Path:
    """configs/quickstart.yaml for 3 steps on CUDA, without the downstream evaluation; output in WORK/train."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    for k in ("evaluate_config", "evaluate_sources"):
        cfg.pop(k, None)
    cfg.update(output_dir=str(work / "train"), max_steps=3, save_steps=3, logging_steps=1, use_cpu=False,
               bf16=bf16, torch_num_threads=0, report_to="none", disable_tqdm=True)
    config = work / "train.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def step_train(work: Path, env: dict, bf16: bool, timeout: float) -> dict:
    config, out = train_config(work, bf16), work / "train"
    stats = work / "train_stats"
    res = run([sys.executable, str(SCRIPT), "--cli", str(stats), "train", "--config", str(config)],
              timeout, env, work / "train.log")
    row = {"rc": res["rc"], "seconds": res["seconds"], "config": "configs/quickstart.yaml, max_steps 3, "
           f"use_cpu false, bf16 {str(bf16).lower()}, no evaluation"}
    metrics = out / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.is_file() else []
    row["steps_logged"] = len(rows)
    keep = ("step", "reward", "reward_std", "valid_rate", "influence_mean", "loss", "step_time")
    row["metrics"] = [{k: r[k] for k in keep if k in r} for r in rows]
    summary = out / "run_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        row["run_summary"] = {k: s.get(k) for k in ("reward", "influence", "outcomes", "export_dir")}
    for st in read_stats(stats):
        row["cuda_peak_mb"] = st.get("cuda_peak_mb")
    if res["rc"] != 0:
        row["output_tail"] = tail(res["output"])
    return row


def compare(a: Path, b: Path) -> dict:
    if not (a.is_file() and b.is_file()):
        return {"identical": False, "missing": [str(p) for p in (a, b) if not p.is_file()]}
    if a.read_bytes() == b.read_bytes():
        return {"identical": True}
    la, lb = a.read_text().splitlines(), b.read_text().splitlines()
    out = {"identical": False, "lines": [len(la), len(lb)]}
    diffs = []
    for x, y in zip(la, lb):
        vx, vy = json.loads(x).get("influence"), json.loads(y).get("influence")
        if vx != vy:
            diffs.append(abs(vx - vy) / max(abs(vx), abs(vy), 1e-30) if None not in (vx, vy) else float("inf"))
    out.update(scores_differing=len(diffs), max_rel_diff=max(diffs, default=0.0))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_score(work: Path, env: dict, target: str, ngpu: int, cpu: bool, timeout: float) -> dict:
    import yaml

    q = ROOT / "data" / "quickstart"
    names = ["test.jsonl"] if cpu else ["test.jsonl", "seeds_mc.jsonl", "warmup.jsonl"]
    lines = [x for n in names for x in (q / n).read_text().splitlines() if x.strip()]
    lines = lines[:40] if cpu else lines
    lines.insert(7, "{a broken line")
    lines.insert(len(lines) // 2 + 3, lines[1])  # a repeat, in another shard
    samples = work / "score_samples.jsonl"
    samples.write_text("\n".join(lines) + "\n")
    config = work / "score.yaml"
    config.write_text(yaml.safe_dump({
        "target_model_name_or_path": target, "target_dtype": "float32",
        "warmup_data": str(q / "warmup.jsonl"), "warmup_epochs": 1, "warmup_batch_size": 8,
        "influence_validation_data": str(q / "validation.jsonl"), "influence_batch_size": 16,
    }))
    chunk = 8 if cpu else 32
    procs = max(2, ngpu)
    start = time.monotonic()

    def score_cmd(name: str, stats: Path) -> list[str]:
        return [str(SCRIPT), "--cli", str(stats), "score", "--config", str(config), "--output_dir",
                str(work / "score_run"), "--samples", str(samples), "--output", str(work / f"{name}.jsonl"),
                "--select_top", "20", "--selected", str(work / f"{name}.top.jsonl"), "--chunk_size", str(chunk)]

    row = {"target": target, "lines": len(lines), "chunk_size": chunk, "processes": procs, "gpus": ngpu}
    one = run([sys.executable, *score_cmd("one", work / "one_stats")], timeout * 0.6, env, work / "score_one.log")
    row["one_process"] = {"rc": one["rc"], "seconds": one["seconds"], "summary": last_json(one["output"]),
                          "stats": read_stats(work / "one_stats")}
    if one["rc"] != 0:
        row["one_process"]["output_tail"] = tail(one["output"])
        return row
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    left = timeout - (time.monotonic() - start)
    two = run([*launch, *score_cmd("sharded", work / "sharded_stats")], left, env, work / "score_sharded.log")
    row["sharded"] = {"rc": two["rc"], "seconds": two["seconds"], "summary": last_json(two["output"]),
                      "stats": read_stats(work / "sharded_stats"), "launcher": "accelerate launch --multi_gpu"}
    if two["rc"] != 0:
        row["sharded"]["output_tail"] = tail(two["output"])
    row["output"] = compare(work / "one.jsonl", work / "sharded.jsonl")
    row["top"] = compare(work / "one.top.jsonl", work / "sharded.top.jsonl")
    row["note"] = "seconds are whole commands (start-up, model load, validation gradients); the summaries' " \
                  "samples_per_s time the scoring alone (sharded: the slowest shard)"
    return row


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--cli"]:
        return cli_wrapper(argv[1:])
    cpu = "--cpu" in argv
    trl_note = None
    if "--trl" in argv:
        i = argv.index("--trl")
        trl_note = argv[i + 1] if i + 1 < len(argv) else None
        del argv[i:i + 2]
    args = [a for a in argv if a != "--cpu"]
    out = Path(args[0] if args else "gpu_check.json").resolve()
    t0 = time.monotonic()
    report: dict = {"check": "scripts/gpu_check.sh", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "host": platform.node()}
    try:
        import torch

        has_cuda = torch.cuda.is_available()
        report["torch"] = torch.__version__
    except Exception as exc:  # noqa: BLE001
        has_cuda, report["torch"] = False, f"missing: {exc}"
    if not has_cuda and not cpu:
        report.update(status="skipped", reason="no CUDA device")
        write(out, report)
        print("skipped: no CUDA device")
        return 0

    signal.signal(signal.SIGTERM, _stop)
    sys.path.insert(0, str(ROOT))
    try:
        report["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                          capture_output=True, text=True).stdout.strip() or None
    except OSError:
        report["commit"] = None
    report["status"] = "running"
    report["mode"] = "cpu (checking the script; no training)" if cpu else "cuda"
    report["versions"] = versions()
    report["trl_wheel"] = trl_note
    report["device"] = device_info()
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    report["work_dir"] = str(work)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    deadline = t0 + BUDGET_S
    write(out, report)
    _REPORT.update(out=out, report=report)

    smol = None if cpu else find_smollm2()
    report["smollm2"] = ({"present": True, "path": str(smol)} if smol else
                         {"present": False, "note": "not looked for (--cpu)"} if cpu else
                         {"present": False, "note": "SmolLM2-135M-Instruct is not on this machine (GPU_CHECK_MODEL, "
                          "RUBRIC_RL_REAL_MODEL, or scripts/fetch_smollm2.py's folder): benchmarks on tiny models "
                          "only, score on the large tiny model"})
    if smol is None and not cpu:
        print("SmolLM2-135M-Instruct not found: using tiny models only", flush=True)
    models = [TINY_CPU] if cpu else ([str(smol)] if smol else []) + [TINY_BIG]
    steps_failed = []

    print("bench ...", flush=True)
    gpus = report["device"]["devices"]
    report["bench"] = step_bench(work, env, models, cpu, deadline, reserve=60 if cpu else 230,
                                 gpu_memory_gb=gpus[0]["memory_gb"] if gpus else 0.0)
    steps_failed += ["bench"] if any(r.get("rc") not in (0, None) for r in report["bench"]) else []
    write(out, report)

    if cpu:
        report["train"] = {"skipped": "--cpu checks the script; training runs on CUDA only"}
    else:
        print("train ...", flush=True)
        left = deadline - time.monotonic() - 100
        report["train"] = step_train(work, env, report["device"]["bf16"], min(left, 180))
        steps_failed += ["train"] if report["train"]["rc"] != 0 else []
    write(out, report)

    print("score ...", flush=True)
    left = deadline - time.monotonic()
    target = TINY_CPU if cpu else (str(smol) if smol else TINY_BIG)
    report["score"] = step_score(work, env, target, 0 if cpu else report["device"]["count"], cpu, max(left, 60))
    sc = report["score"]
    if sc.get("one_process", {}).get("rc") != 0 or sc.get("sharded", {}).get("rc") != 0:
        steps_failed.append("score")
    report["steps_failed"] = steps_failed
    report["status"] = "ok" if not steps_failed else "failed: " + ", ".join(steps_failed)
    report["seconds"] = round(time.monotonic() - t0, 1)
    write(out, report)
    shutil.rmtree(work / "score_run", ignore_errors=True)
    print(summary_line(report), flush=True)
    print(f"figures: {out} (logs in {work})")
    return 0 if not steps_failed else 1


def summary_line(report: dict) -> str:
    parts = [f"{report['status']} in {report['seconds']} s"]
    for r in report.get("bench", []):
        if r.get("rc") == 0:
            parts.append(f"bench {Path(r['model']).name} d={r['proj_dim']}: {r.get('engine_samples_per_s')} samples/s, "
                         f"{r.get('engine_over_floor')}x fwd+bwd")
    t = report.get("train", {})
    if "rc" in t:
        parts.append(f"train: rc {t['rc']}, {t.get('steps_logged')} steps, {t.get('seconds')} s")
    s = report.get("score", {})
    if "output" in s:
        parts.append(f"score x{s['processes']}: identical {s['output'].get('identical')}/{s['top'].get('identical')}, "
                     f"{s['one_process']['seconds']} s one process, {s['sharded']['seconds']} s sharded")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
