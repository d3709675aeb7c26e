#!/usr/bin/env python
"""The proof on a real target (issue 13): does the reward predict held-out gain, and do trained rubric
generators beat the hand-written seed rubrics? Writes ``reports/proof/report.json`` and ``report.md``.

    python scripts/fetch_smollm2.py          # once: the real target, SmolLM2-135M-Instruct
    python scripts/proof.py                  # all stages; a finished stage is reused on rerun

Stages (each one ``rubric-rl`` command, logged to WORK/logs/STAGE.log):

1. ``warmup``: the target's LoRA + Adam warm-up, shared by every stage (WORK/influence).
2. ``train``: one rubric generator per training seed (configs/proof_smollm2.yaml: tiny policy, template
   teacher, the real target's influence as the reward).
3. ``calibration``: ``rubric-rl calibrate`` over 8 rubric sources of visibly different quality
   (configs/calibrate_smollm2.yaml): Pearson / Spearman of mean influence vs held-out loss gain.
4. ``rl_eval``: ``rubric-rl calibrate`` again (the same regime) over trained_sT (one per training seed),
   ``seed`` and ``none``, each with every evaluation seed. Training seeds and evaluation seeds are
   disjoint in role: nothing is chosen on the evaluation seeds or the test set.
5. ``report``: paired comparisons, trained_sT vs seed at the same evaluation seed (same documents,
   teacher seed and target init), on held-out loss (lower wins), multiple-choice accuracy (higher wins;
   a tie is not a win) and gold-choice NLL, with a one-sided sign test; every run is listed.

``--quick`` is the miniature kept as a ``slow`` test (one training seed, few steps, small budgets).

The teacher condition (``--teachers template real``). Stages 3-4 run once per teacher: ``template`` (the offline
stand-in, whose behaviour this project wrote) and ``real``, a real LLM behind an OpenAI-compatible endpoint
(``teacher_backend: openai``, real HTTP). With ``--real_teacher_url`` the proof uses that endpoint (a ``vllm serve``,
llama.cpp's server, ...); without it, it starts ``rubric-rl serve-teacher --model REAL_TEACHER_MODEL`` (by default
SmolLM2-135M-Instruct, the registry's real model, on the CPU) on a free local port, and stops it at the end. The
generators are trained once, with the template teacher writing the samples the reward scores (RL with a real
teacher is hours per seed on a CPU); the real condition evaluates the same generators with the real teacher's
samples. ``--real_teacher_samples`` / ``--real_teacher_queries_per_sample`` / ``--real_teacher_eval_seeds`` size it.
Its stages are ``calibration_real`` and ``rl_eval_real``; the report has one section per teacher.

The mislabelled-sample check (stage ``mislabelled``, ``--mislabelled N``, as influence papers check their
estimators): ``scripts/check_influence.py --mislabelled N`` on the proof's target and warm-up. For each of the first
N validation items, a right and a wrong twin with the same question and answer text, options shuffled, differing
only in the stated fact and letter (``rubric_rl.influence.mislabel``); the report gives the AUC of the reward's
influence score (right above wrong) and the paired wins. The twins restate validation items: the in-sample case,
the easiest (``notes/content_signal.md`` has the restated and outside-the-set cases).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from gpu_check import free_port  # noqa: E402  (one free-port helper for the scripts)

CALIBRATION_SOURCES = [
    "seed=data/quickstart/seed_rubrics.json", "none=none",
    "mc_stepwise=data/calibration/mc_stepwise.json", "mc_letter=data/calibration/mc_letter.json",
    "open_stepwise=data/calibration/open_stepwise.json", "open_concise=data/calibration/open_concise.json",
    "true_false=data/calibration/true_false.json", "cloze=data/calibration/cloze.json",
]
METRICS = (("loss", -1), ("acc", +1), ("gold_choice_nll", -1))  # (metric, +1 if higher is better)
REAL_TEACHER_MODEL = Path.home() / ".cache/rubric_rl/models/SmolLM2-135M-Instruct"
REAL_TEACHER_GGUF = Path.home() / ".cache/rubric_rl/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"


def run_stage(name: str, cmd: list[str], work: Path) -> None:
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    print(f"== {name}: {' '.join(cmd)}  (log: {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        sys.exit(f"stage {name} failed (exit {rc}); last lines of {log}:\n" + "\n".join(tail))
    print(f"   {name} done in {time.perf_counter() - t0:.0f} s", flush=True)


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test P(X >= wins) for X ~ Binomial(wins + losses, 1/2); ties are dropped."""
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def paired(runs: list[dict], a_prefix: str, b: str) -> dict:
    """A (every source named a_prefix*) vs B at the same evaluation seed, per metric."""
    by = {(r["source"], r["seed"]): r["heldout"] for r in runs}
    out = {}
    for metric, sign in METRICS:
        pairs = []
        for (src, seed), h in sorted(by.items()):
            if not src.startswith(a_prefix) or (b, seed) not in by:
                continue
            va, vb = h.get(metric), by[(b, seed)].get(metric)
            if va is None or vb is None:
                continue
            pairs.append({"source": src, "seed": seed, metric: va, f"{b}_{metric}": vb,
                          "advantage": sign * (va - vb)})
        wins = sum(p["advantage"] > 0 for p in pairs)
        losses = sum(p["advantage"] < 0 for p in pairs)
        out[metric] = {"wins": wins, "losses": losses, "ties": len(pairs) - wins - losses, "runs": len(pairs),
                       "mean_advantage": (sum(p["advantage"] for p in pairs) / len(pairs)) if pairs else None,
                       "p_sign_test": sign_test_p(wins, losses), "pairs": pairs}
    return out


@contextlib.contextmanager
def teacher_endpoint(a, work: Path):
    """Yield (base_url, served model name) of the real teacher: ``--real_teacher_url``, or a server started here
    (``--real_teacher_server``: ``serve-teacher`` on REAL_TEACHER_MODEL, or llama.cpp's server on REAL_TEACHER_GGUF;
    its log in WORK/logs/SERVER.log) and stopped on exit."""
    if a.real_teacher_url:
        yield a.real_teacher_url.rstrip("/"), a.real_teacher_name or str(a.real_teacher_model)
        return
    port = free_port()
    name = a.real_teacher_name or "real-teacher"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    if a.real_teacher_server == "llama_cpp":  # llama.cpp's OpenAI-compatible server on the GGUF (README)
        log_name = "llama_cpp.log"
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(a.real_teacher_gguf), "--model_alias", name,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
               "--n_threads", str(a.real_teacher_threads)]
    else:
        log_name = "serve_teacher.log"
        cmd = [sys.executable, "-m", "rubric_rl.cli", "serve-teacher", "--model", str(a.real_teacher_model),
               "--served_model_name", name, "--port", str(port), "--device", "cpu", "--dtype", "float32",
               "--batch_size", str(a.real_teacher_batch_size),
               "--max_new_tokens", str(a.real_teacher_max_new_tokens)]
    log = open(work / "logs" / log_name, "w")
    print(f"== real teacher: {' '.join(cmd)}  (log: {log.name})", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": str(a.real_teacher_threads)})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                sys.exit(f"{a.real_teacher_server} exited with {proc.returncode} before it answered; see {log.name}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"{a.real_teacher_server} did not answer {url}/models within 300 s; see {log.name}")
            time.sleep(2)
        yield url, name
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def synthesis_totals(report: dict) -> dict:
    """Teacher queries, accepted samples and rejection reasons summed over an evaluation report's datasets."""
    queries = accepted = 0
    rejected: dict[str, int] = {}
    for r in report.get("runs", []):
        syn = r.get("synthesis") or {}
        queries += syn.get("teacher_queries") or 0
        accepted += syn.get("accepted") or 0
        for k, v in (syn.get("rejected") or {}).items():
            rejected[k] = rejected.get(k, 0) + v
    return {"teacher_queries": queries, "accepted": accepted,
            "acceptance": accepted / queries if queries else None,
            "rejected": dict(sorted(rejected.items(), key=lambda kv: -kv[1]))}


def evaluate_teacher(a, rr, work: Path, influence: Path, suffix: str, extra: list[str], eval_seeds) -> dict:
    """Stages 3-4 for one teacher: the calibration (unless skipped) and trained vs seed vs none."""
    calibration = None
    cal_synthesis = None
    if not a.skip_calibration:
        cal_dir = work / f"calibration{suffix}"
        if not (cal_dir / "calibration.json").exists():
            run_stage(f"calibration{suffix}", rr + ["calibrate", "--config", "configs/calibrate_smollm2.yaml",
                                                     "--run_dir", str(influence), "--output", str(cal_dir),
                                                     *extra,
                                                     "--sources", *CALIBRATION_SOURCES], work)
        calibration = json.loads((cal_dir / "calibration.json").read_text())
        cal_synthesis = synthesis_totals(json.loads((cal_dir / "report.json").read_text()))

    if a.skip_rl:
        return {"calibration": _calibration_summary(calibration, cal_synthesis), "rl": None,
                "target": calibration.get("target") if calibration else None}
    rl_dir = work / f"rl_eval{suffix}"
    if not (rl_dir / "calibration.json").exists():
        trained = [f"trained_s{t}={work / f'train_seed{t}' / 'export'}" for t in a.train_seeds]
        run_stage(f"rl_eval{suffix}", rr + ["calibrate", "--config", "configs/calibrate_smollm2.yaml", "--run_dir",
                                            str(influence), "--output", str(rl_dir), "--eval_seeds",
                                            *map(str, eval_seeds), *extra, "--calibrate_min_datasets", "1",
                                            "--sources", *trained, "seed=data/quickstart/seed_rubrics.json",
                                            "none=none"], work)
    rl_report = json.loads((rl_dir / "report.json").read_text())
    rl_cal = json.loads((rl_dir / "calibration.json").read_text())
    rl = {"paired": {"trained>seed": paired(rl_report["runs"], "trained_s", "seed"),
                     "trained>none": paired(rl_report["runs"], "trained_s", "none"),
                     "seed>none": paired(rl_report["runs"], "seed", "none")},
          "train_seeds": a.train_seeds, "eval_seeds": list(eval_seeds),
          "summary": rl_report.get("summary"),
          "runs": [{"source": r["source"], "seed": r["seed"], "mean_influence": r["influence"]["mean"],
                    "samples": (r.get("synthesis") or {}).get("accepted"),
                    "teacher_queries": (r.get("synthesis") or {}).get("teacher_queries"),
                    **{m: r["heldout"].get(m) for m, _ in METRICS}} for r in rl_report["runs"]],
          "synthesis": synthesis_totals(rl_report),
          "influence_vs_gain": {k: rl_cal.get(k) for k in ("pearson_r", "spearman_rho", "p_permutation",
                                                          "pearson_ci95", "num_datasets")}}
    return {"calibration": _calibration_summary(calibration, cal_synthesis), "rl": rl, "target": rl_report.get("target")}


def _calibration_summary(calibration: dict | None, synthesis: dict | None) -> dict | None:
    if calibration is None:
        return None
    return dict({k: calibration.get(k) for k in ("pearson_r", "spearman_rho", "p_permutation", "pearson_ci95",
                                                 "num_datasets", "metric", "datasets")}, synthesis=synthesis)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/proof", help="Folder for every stage's runs (reused on rerun).")
    ap.add_argument("--output", default="reports/proof", help="Where report.json / report.md / plots go.")
    ap.add_argument("--train_seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval_seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max_steps", type=int, default=60, help="GRPO steps per training seed.")
    ap.add_argument("--skip_calibration", action="store_true", help="Leave stage 2 out (the report says so).")
    ap.add_argument("--stop_after", choices=["train"], default=None, help="Stop after the training stage.")
    ap.add_argument("--skip_rl", action="store_true",
                    help="No training and no trained-vs-seed stage: the calibration (and the mislabelled check) only; "
                         "a later run without it adds them, reusing what is done.")
    ap.add_argument("--quick", action="store_true",
                    help="Miniature: one training seed, 4 steps, 2 evaluation seeds, 16 samples per dataset.")
    ap.add_argument("--mislabelled", type=int, default=36,
                    help="Validation items whose right/wrong twins the mislabelled-sample check scores (0: skip).")
    ap.add_argument("--teachers", nargs="+", choices=["template", "real"], default=["template"],
                    help="Teacher conditions of stages 3-4 (module docstring); 'real' needs a real teacher endpoint "
                         "or starts serve-teacher.")
    ap.add_argument("--real_teacher_url", default=None,
                    help="OpenAI-compatible base URL of the real teacher (e.g. http://host:8000/v1); default: start "
                         "`rubric-rl serve-teacher --model REAL_TEACHER_MODEL` here.")
    ap.add_argument("--real_teacher_model", default=str(REAL_TEACHER_MODEL),
                    help="Model serve-teacher loads (a local path or hub id) when no --real_teacher_url is given.")
    ap.add_argument("--real_teacher_name", default=None,
                    help="Model name sent in requests (default: 'real-teacher' for the started server, else "
                         "--real_teacher_model).")
    ap.add_argument("--real_teacher_samples", type=int, default=32, help="Accepted samples per dataset (real).")
    ap.add_argument("--real_teacher_queries_per_sample", type=float, default=3.0,
                    help="Teacher queries allowed per requested sample (real): a weak teacher's budget.")
    ap.add_argument("--real_teacher_eval_seeds", type=int, nargs="+", default=None,
                    help="Evaluation seeds of the real condition (default: --eval_seeds).")
    ap.add_argument("--real_teacher_server", choices=["serve-teacher", "llama_cpp"], default="serve-teacher",
                    help="Server started when no --real_teacher_url is given: rubric-rl serve-teacher (transformers, "
                         "the zero-dependency fallback) or llama.cpp's (llama-cpp-python[server], on the GGUF).")
    ap.add_argument("--real_teacher_gguf", default=str(REAL_TEACHER_GGUF),
                    help="GGUF file llama.cpp's server loads (scripts/fetch_smollm2.py --gguf).")
    ap.add_argument("--real_teacher_temperature", type=float, default=None,
                    help="Teacher sampling temperature of the real condition (default: the config's).")
    ap.add_argument("--real_teacher_grammar", default=None,
                    help="A GBNF grammar sent as llama.cpp's `grammar` with every request (--teacher_grammar: a "
                         "file, or a shipped name such as question_answer): the reply format, enforced.")
    ap.add_argument("--real_teacher_max_new_tokens", type=int, default=192)
    ap.add_argument("--real_teacher_batch_size", type=int, default=8, help="serve-teacher's batch (started server).")
    ap.add_argument("--real_teacher_threads", type=int, default=1, help="OMP threads of the started server.")
    a = ap.parse_args(argv)
    if a.quick:
        a.train_seeds, a.eval_seeds, a.max_steps, a.skip_calibration = a.train_seeds[:1], a.eval_seeds[:2], 4, True
    work, output = Path(a.work), Path(a.output)
    if not work.is_absolute():
        work = ROOT / work
    if not output.is_absolute():
        output = ROOT / output
    rr = [sys.executable, "-m", "rubric_rl.cli"]
    small = ["--eval_num_samples", "16"] if a.quick else []
    t_start = time.perf_counter()

    from rubric_rl.provenance import provenance

    prov = provenance()
    influence = work / "influence"
    if not (influence / "warmup" / "warmup_args.json").exists():
        run_stage("warmup", rr + ["warmup", "--config", "configs/proof_smollm2.yaml", "--output_dir",
                                  str(influence)], work)

    mislabelled = None
    if a.mislabelled:
        n_mis = min(a.mislabelled, 4) if a.quick else a.mislabelled
        check = work / "mislabelled" / "influence_check.json"
        if not check.exists():  # in the shared folder: its validation gradients are the later stages' cache too
            run_stage("mislabelled", [sys.executable, "scripts/check_influence.py", "--config",
                                      "configs/calibrate_smollm2.yaml", "--output_dir", str(influence),
                                      "--mislabelled", str(n_mis), "--variants", "default", "--no_first_order"], work)
            check.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(influence / "influence_check.json", check)
        found = json.loads(check.read_text())
        row = found["variants"]["default"]
        mislabelled = {"items": n_mis, **row["mislabelled"], "related_vs_unrelated_auc": row["auc"],
                       "objective": found.get("objective")}

    for t in [] if a.skip_rl else a.train_seeds:
        tdir = work / f"train_seed{t}"
        if (tdir / "export" / "config.json").exists() and (tdir / "run_summary.json").exists():
            continue
        tdir.mkdir(parents=True, exist_ok=True)
        for cache in ("warmup", "influence_cache"):  # the same warm-up as every other stage, computed once
            if (influence / cache).exists() and not (tdir / cache).exists():
                shutil.copytree(influence / cache, tdir / cache)
        run_stage(f"train_seed{t}", rr + ["train", "--config", "configs/proof_smollm2.yaml", "--output_dir", str(tdir),
                                          "--seed", str(t), "--max_steps", str(a.max_steps),
                                          "--overwrite_output_dir", "true"], work)

    if a.stop_after == "train":
        return

    train_runs = []
    for t in [] if a.skip_rl else a.train_seeds:
        s = json.loads((work / f"train_seed{t}" / "run_summary.json").read_text())
        rows = [json.loads(x) for x in (work / f"train_seed{t}" / "metrics.jsonl").read_text().splitlines() if x]
        rows = [x for x in rows if "valid_rate" in x]
        third = max(1, len(rows) // 3)

        def mean(key, part):
            vals = [x[key] for x in part if x.get(key) is not None]
            return sum(vals) / len(vals) if vals else None

        train_runs.append({"seed": t, "steps": len(rows), "window": third,
                           **{f"{k}_{w}": mean(k, part) for k in ("reward", "influence_mean", "valid_rate")
                              for w, part in (("first", rows[:third]), ("last", rows[-third:]))},
                           "outcomes": s.get("outcomes")})

    teachers = {}
    for cond in a.teachers:  # in the order given (a failing real endpoint shows before the long template stages)
        if cond == "template":
            teachers["template"] = evaluate_teacher(a, rr, work, influence, "", small, a.eval_seeds)
            teachers["template"]["teacher"] = "template (offline)"
            continue
        with teacher_endpoint(a, work) as (url, name):
            extra = ["--teacher_backend", "openai", "--teacher_base_url", url, "--teacher_model_name_or_path", name,
                     "--teacher_timeout_s", "900", "--calibrate_min_datasets", "3",
                     "--teacher_max_new_tokens", str(a.real_teacher_max_new_tokens),
                     "--eval_num_samples", str(16 if a.quick else a.real_teacher_samples),
                     "--eval_max_queries_per_sample", str(a.real_teacher_queries_per_sample)]
            if a.real_teacher_temperature is not None:
                extra += ["--teacher_temperature", str(a.real_teacher_temperature)]
            if a.real_teacher_grammar:
                extra += ["--teacher_grammar", a.real_teacher_grammar]
            teachers["real"] = evaluate_teacher(a, rr, work, influence, "_real", extra,
                                                a.real_teacher_eval_seeds or a.eval_seeds)
        if a.real_teacher_url:
            label = f"{name} at {a.real_teacher_url} (OpenAI-compatible HTTP)"
        elif a.real_teacher_server == "llama_cpp":
            label = (f"{Path(a.real_teacher_gguf).name} through llama.cpp's server (llama-cpp-python, "
                     "OpenAI-compatible HTTP, CPU)")
        else:
            label = f"{a.real_teacher_model} through `rubric-rl serve-teacher` (OpenAI-compatible HTTP, CPU)"
        if a.real_teacher_grammar:
            label += f", reply format enforced by the grammar {a.real_teacher_grammar}"
        if a.real_teacher_temperature is not None:
            label += f", temperature {a.real_teacher_temperature:g}"
        teachers["real"]["teacher"] = label
        teachers["real"]["sizes"] = {"samples_per_dataset": 16 if a.quick else a.real_teacher_samples,
                                     "queries_per_sample": a.real_teacher_queries_per_sample}
    for cond in teachers.values():
        if cond["rl"] is not None:
            cond["rl"]["training"] = train_runs
    first = teachers.get("template") or teachers["real"]  # the top-level fields: the template condition
    target = first["target"] or next((c["target"] for c in teachers.values() if c["target"]), None)
    report = {"format": 2, "command": "python scripts/proof.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "commit": prov.get("commit"), "dirty": prov.get("dirty"), "versions": prov.get("versions"),
              "target": target, "quick": a.quick,
              "policy": "tiny in-process stand-in (configs/proof_smollm2.yaml), trained with the template teacher",
              "teacher": first["teacher"], "calibration": first["calibration"], "rl": first["rl"],
              "mislabelled": mislabelled,
              "teachers": {k: {x: v[x] for x in ("teacher", "calibration", "rl", "sizes") if x in v}
                           for k, v in sorted(teachers.items(), key=lambda kv: kv[0] != "template")},
              "total_s": round(time.perf_counter() - t_start, 1)}
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (output / "report.md").write_text(format_report(report) + "\n")
    for suffix in ("", "_real"):
        for src, name in ((work / f"calibration{suffix}" / "influence_vs_gain.png", "calibration_influence_vs_gain"),
                          (work / f"rl_eval{suffix}" / "influence_vs_gain.png", "rl_influence_vs_gain"),
                          (work / f"rl_eval{suffix}" / "heldout.png", "rl_heldout")):
            if src.exists():
                shutil.copyfile(src, output / f"{name}{suffix}.png")
    print(format_report(report))
    print(f"\nReport: {output / 'report.md'}")


def _f(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def format_report(r: dict) -> str:
    f = _f
    v = r["versions"] or {}
    teachers = r.get("teachers") or {"template": {"teacher": r["teacher"], "calibration": r["calibration"],
                                                  "rl": r["rl"]}}
    lines = ["# The proof on a real target", "",
             f"Command `{r['command']}` at commit {r['commit']}{' (dirty)' if r.get('dirty') else ''}; "
             + ", ".join(f"{k} {v[k]}" for k in sorted(v)) + f". Total {r['total_s'] / 60:.0f} min.", "",
             f"Target: `{r['target']}`. Policy: {r['policy']}.", "",
             "| teacher | samples accepted / teacher queries | calibration Pearson r (datasets) | "
             "trained > seed, held-out loss (pairs) |", "|---|---|---|---|"]
    for name, t in teachers.items():
        c, rl = t["calibration"], t["rl"]
        syn = (rl or {}).get("synthesis") or {}
        acc = [x for x in ((c or {}).get("synthesis"), syn) if x]
        q = sum(x["teacher_queries"] for x in acc)
        n = sum(x["accepted"] for x in acc)
        loss = rl["paired"]["trained>seed"]["loss"] if rl else None
        lines.append(f"| {name}: {t['teacher']} | " + (f"{n} / {q} ({n / q:.0%})" if q else "-") + " | "
                     + (f"{f(c['pearson_r'])} ({c['num_datasets']})" if c else "not run") + " | "
                     + (f"{loss['wins']} wins, {loss['losses']} losses, {loss['ties']} ties of {loss['runs']}"
                        if loss else "not run") + " |")
    lines.append("")
    m = r.get("mislabelled")
    if m:
        lines += ["## Does the reward prefer a right answer to a wrong one of the same form? (mislabelled twins)", "",
                  f"{m['pairs']} pairs from the first {m['items']} validation items (same question and answer text, "
                  "only the fact and the letter differ; `scripts/check_influence.py --mislabelled`, objective "
                  f"`{m.get('objective')}`): AUC **{f(m['auc'])}**, right > wrong in {m['paired_wins']}/{m['pairs']} "
                  f"pairs; mean influence right {m['mean_right']:.4g}, wrong {m['mean_wrong']:.4g}. (Related vs "
                  f"unrelated candidates: AUC {f(m['related_vs_unrelated_auc'])}.)", ""]
    for name, t in teachers.items():
        lines += [f"## Teacher: {name}", "", f"{t['teacher']}."
                  + (f" Sized for 2 cores: up to {t['sizes']['samples_per_dataset']} accepted samples per dataset, at most "
                     f"{t['sizes']['queries_per_sample']:g} teacher queries per requested sample." if t.get("sizes")
                     else ""), ""]
        lines += format_condition(t)
    return "\n".join(lines)


def synthesis_lines(syn: dict | None) -> list[str]:
    """What the teacher's queries gave (:func:`synthesis_totals`), as a report line; nothing without it."""
    if not syn:
        return []
    return [f"Teacher: {syn['accepted']} samples accepted of {syn['teacher_queries']} queries; rejections: "
            + (", ".join(f"{k} {v}" for k, v in syn["rejected"].items()) or "none") + ".", ""]


def format_condition(t: dict) -> list[str]:
    f = _f
    lines = []
    c = t["calibration"]
    if c:
        ci = c.get("pearson_ci95") or [None, None]
        lines += [f"### Does the reward predict the gain? (`rubric-rl calibrate`, {len(CALIBRATION_SOURCES)} rubric sources)",
                  "", f"Pearson r **{f(c['pearson_r'])}** (95% bootstrap {f(ci[0], 2)} .. {f(ci[1], 2)}), Spearman "
                  f"{f(c['spearman_rho'])}, permutation p {f(c['p_permutation'], 4)}, {c['num_datasets']} datasets "
                  f"(mean influence vs held-out {c['metric']} gain).", ""]
        lines += synthesis_lines(c.get("synthesis"))
        lines += ["| source | seed | samples | mean influence | gain | held-out |", "|---|---|---|---|---|---|"]
        lines += [f"| {d['source']} | {d['seed']} | {d.get('samples', '-')} | {f(d['mean_influence'], 5)} | "
                  f"{f(d['gain'], 4)} | {f(d['heldout'], 4)} |" for d in c["datasets"]]
        lines.append("")
    else:
        lines += ["Calibration stage skipped (`--skip_calibration` or `--quick`).", ""]
    rl = t["rl"]
    if rl is None:
        return lines + ["Trained vs seed rubrics: not run (`--skip_rl`).", ""]
    lines += ["### Trained rubric generators vs the hand-written seed rubrics", "",
              f"{len(rl['train_seeds'])} training seeds x {len(rl['eval_seeds'])} evaluation seeds; "
              "a pair is trained_sT vs seed (or none) at the same evaluation seed.", ""]
    lines += synthesis_lines(rl.get("synthesis"))
    lines += ["| comparison | metric | wins | losses | ties | runs | mean advantage | sign test p |",
              "|---|---|---|---|---|---|---|---|"]
    for name, per in rl["paired"].items():
        for metric, s in per.items():
            lines.append(f"| {name} | {metric} | {s['wins']} | {s['losses']} | {s['ties']} | {s['runs']} | "
                         f"{f(s['mean_advantage'], 4)} | {f(s['p_sign_test'], 3)} |")
    ivg = rl["influence_vs_gain"]
    lines += ["", f"Mean influence vs loss gain over these {ivg['num_datasets']} datasets: Pearson "
                  f"{f(ivg['pearson_r'])}, Spearman {f(ivg['spearman_rho'])}, p {f(ivg['p_permutation'], 4)}.", "",
              "#### Every run", "", "| source | eval seed | samples | mean influence | loss | acc | gold-choice NLL |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {x['source']} | {x['seed']} | {x.get('samples', '-')} | {f(x['mean_influence'], 5)} | "
              f"{f(x['loss'], 4)} | {f(x['acc'])} | {f(x['gold_choice_nll'], 4)} |" for x in rl["runs"]]
    lines += ["", "#### Training runs (means over the first and last third of the logged steps)", "",
              "| training seed | steps | reward | influence | valid rate |", "|---|---|---|---|---|"]
    lines += [f"| {t['seed']} | {t['steps']} | {f(t['reward_first'])} -> {f(t['reward_last'])} | "
              f"{f(t['influence_mean_first'], 4)} -> {f(t['influence_mean_last'], 4)} | "
              f"{f(t['valid_rate_first'], 2)} -> {f(t['valid_rate_last'], 2)} |" for t in rl["training"]]
    lines.append("")
    return lines

if __name__ == "__main__":
    main()
