#!/usr/bin/env python
"""Throughput of the ``openai`` teacher backend against ``serve-teacher``, at concurrency 1 vs 8, in one run.

Starts ``python -m rubric_rl.teachers.server`` (the same server as ``rubric-rl serve-teacher``) in a
subprocess on 127.0.0.1 with a free port, sends the same teacher prompts (new-question prompts built
from the quickstart documents) through ``OpenAITeacher`` at each concurrency, and reports samples/s
and the speed-up ratio. The server micro-batches concurrent requests into one ``generate`` call, which
is where the speed-up comes from.

Usage:
  python scripts/bench_teacher.py [--model tiny:hidden=64,layers=2,heads=4,seed=0] [--requests 48]
                                  [--max_new_tokens 32] [--concurrency 1 8] [--server_threads 1]
                                  [--output bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rubric_rl.data.documents import load_documents, load_rubric_file  # noqa: E402
from rubric_rl.synth.engine import teacher_messages  # noqa: E402
from rubric_rl.teachers.base import TeacherRequest  # noqa: E402
from rubric_rl.teachers.openai_backend import OpenAITeacher  # noqa: E402


def start_server(args) -> tuple[subprocess.Popen, str, list[str]]:
    cmd = [sys.executable, "-m", "rubric_rl.teachers.server", "--model", args.model, "--host", "127.0.0.1",
           "--port", "0", "--max_new_tokens", str(args.max_new_tokens), "--batch_size", str(args.batch_size),
           "--batch_wait_ms", str(args.batch_wait_ms), "--device", "cpu", "--log_level", "info"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.server_threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.server_threads)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    found: dict[str, str] = {}
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            log.append(line.rstrip())
            m = re.search(r"Uvicorn running on (http://\S+)", line)
            if m:
                found["url"] = m.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(args.startup_timeout) or "url" not in found:
        proc.kill()
        raise RuntimeError("serve-teacher did not start:\n" + "\n".join(log[-30:]))
    return proc, found["url"] + "/v1", log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny:hidden=64,layers=2,heads=4,seed=0")
    ap.add_argument("--requests", type=int, default=48, help="Requests per concurrency level.")
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--batch_size", type=int, default=8, help="Server micro-batch size.")
    ap.add_argument("--batch_wait_ms", type=float, default=20.0, help="Server micro-batch wait.")
    ap.add_argument("--repeats", type=int, default=2, help="Timed passes per level (alternating levels); best kept.")
    ap.add_argument("--server_threads", type=int, default=1,
                    help="CPU threads of the server's torch (OMP_NUM_THREADS); 0 = torch's own choice. 1 keeps a "
                         "CPU run stable on a shared machine (OpenMP spin-waiting collapses under contention).")
    ap.add_argument("--startup_timeout", type=float, default=180.0)
    ap.add_argument("--output", default=None, help="Also write the results as JSON here.")
    args = ap.parse_args()

    docs = load_documents(ROOT / "data" / "quickstart" / "documents.jsonl")
    rubrics = load_rubric_file(ROOT / "data" / "quickstart" / "seed_rubrics.json")
    requests = [TeacherRequest(messages=teacher_messages(docs[i % len(docs)]["text"], rubrics[i % len(rubrics)]),
                               seed=i) for i in range(args.requests)]

    proc, base_url, log = start_server(args)
    results = {c: [] for c in args.concurrency}
    tokens, batch_sizes = {}, {}
    try:
        for c in args.concurrency:  # warm-up (first-call costs, connection set-up)
            with OpenAITeacher(base_url, args.model, concurrency=c, max_new_tokens=args.max_new_tokens,
                               temperature=0.7, timeout_s=600, max_retries=0) as t:
                t.generate(requests[: max(c, 2)])
        for _ in range(args.repeats):
            for c in args.concurrency:
                with OpenAITeacher(base_url, args.model, concurrency=c, max_new_tokens=args.max_new_tokens,
                                   temperature=0.7, timeout_s=600, max_retries=0) as t:
                    before = httpx.get(base_url[:-3] + "/health").json()
                    start = time.perf_counter()
                    res = t.generate(requests)
                    elapsed = time.perf_counter() - start
                    after = httpx.get(base_url[:-3] + "/health").json()
                batch_sizes.setdefault(c, []).append((after["batched_requests"] - before["batched_requests"])
                                                     / max(1, after["batches"] - before["batches"]))
                failed = [r.error for r in res if r.text is None and r.error != "empty"]
                if failed:
                    raise RuntimeError(f"concurrency {c}: {len(failed)} failed requests: {failed[:5]}")
                results[c].append(len(requests) / elapsed)
                tokens[c] = sum(r.completion_tokens for r in res)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    best = {c: max(v) for c, v in results.items()}
    lo, hi = min(args.concurrency), max(args.concurrency)
    report = {
        "model": args.model, "requests": args.requests, "max_new_tokens": args.max_new_tokens,
        "server_batch_size": args.batch_size, "server_batch_wait_ms": args.batch_wait_ms,
        "server_threads": args.server_threads,
        "samples_per_s": {str(c): round(v, 3) for c, v in best.items()},
        "all_passes_samples_per_s": {str(c): [round(x, 3) for x in v] for c, v in results.items()},
        "completion_tokens": {str(c): n for c, n in tokens.items()},
        "mean_server_batch": {str(c): round(sum(v) / len(v), 2) for c, v in batch_sizes.items()},
        f"ratio_c{hi}_over_c{lo}": round(best[hi] / best[lo], 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, python "
                   f"{platform.python_version()}",
    }
    print(f"openai backend -> serve-teacher ({args.model}), {args.requests} requests, "
          f"max_new_tokens={args.max_new_tokens}")
    print(f"{'concurrency':>11} | {'samples/s':>9} | {'mean server batch':>17}")
    for c in args.concurrency:
        print(f"{c:>11} | {best[c]:>9.2f} | {report['mean_server_batch'][str(c)]:>17.2f}")
    print(f"ratio c{hi}/c{lo}: {report[f'ratio_c{hi}_over_c{lo}']:.2f}x")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
