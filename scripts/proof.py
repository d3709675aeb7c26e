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
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CALIBRATION_SOURCES = [
    "seed=data/quickstart/seed_rubrics.json", "none=none",
    "mc_stepwise=data/calibration/mc_stepwise.json", "mc_letter=data/calibration/mc_letter.json",
    "open_stepwise=data/calibration/open_stepwise.json", "open_concise=data/calibration/open_concise.json",
    "true_false=data/calibration/true_false.json", "cloze=data/calibration/cloze.json",
]
METRICS = (("loss", -1), ("acc", +1), ("gold_choice_nll", -1))  # (metric, +1 if higher is better)


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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/proof", help="Folder for every stage's runs (reused on rerun).")
    ap.add_argument("--output", default="reports/proof", help="Where report.json / report.md / plots go.")
    ap.add_argument("--train_seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval_seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max_steps", type=int, default=60, help="GRPO steps per training seed.")
    ap.add_argument("--skip_calibration", action="store_true", help="Leave stage 2 out (the report says so).")
    ap.add_argument("--stop_after", choices=["train"], default=None, help="Stop after the training stage.")
    ap.add_argument("--quick", action="store_true",
                    help="Miniature: one training seed, 4 steps, 2 evaluation seeds, 16 samples per dataset.")
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

    for t in a.train_seeds:
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
    calibration = None
    if not a.skip_calibration:
        cal_dir = work / "calibration"
        if not (cal_dir / "calibration.json").exists():
            run_stage("calibration", rr + ["calibrate", "--config", "configs/calibrate_smollm2.yaml", "--run_dir",
                                           str(influence), "--output", str(cal_dir), "--sources",
                                           *CALIBRATION_SOURCES], work)
        calibration = json.loads((cal_dir / "calibration.json").read_text())

    rl_dir = work / "rl_eval"
    if not (rl_dir / "calibration.json").exists():
        trained = [f"trained_s{t}={work / f'train_seed{t}' / 'export'}" for t in a.train_seeds]
        run_stage("rl_eval", rr + ["calibrate", "--config", "configs/calibrate_smollm2.yaml", "--run_dir",
                                   str(influence), "--output", str(rl_dir), "--eval_seeds",
                                   *map(str, a.eval_seeds), "--calibrate_min_datasets", "1", *small,
                                   "--sources", *trained, "seed=data/quickstart/seed_rubrics.json", "none=none"],
                  work)
    rl_report = json.loads((rl_dir / "report.json").read_text())
    rl_cal = json.loads((rl_dir / "calibration.json").read_text())

    train_runs = []
    for t in a.train_seeds:
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
    rl = {"paired": {"trained>seed": paired(rl_report["runs"], "trained_s", "seed"),
                     "trained>none": paired(rl_report["runs"], "trained_s", "none"),
                     "seed>none": paired(rl_report["runs"], "seed", "none")},
          "train_seeds": a.train_seeds, "eval_seeds": a.eval_seeds, "training": train_runs,
          "summary": rl_report.get("summary"),
          "runs": [{"source": r["source"], "seed": r["seed"], "mean_influence": r["influence"]["mean"],
                    **{m: r["heldout"].get(m) for m, _ in METRICS}} for r in rl_report["runs"]],
          "influence_vs_gain": {k: rl_cal.get(k) for k in ("pearson_r", "spearman_rho", "p_permutation",
                                                          "pearson_ci95", "num_datasets")}}
    report = {"format": 1, "command": "python scripts/proof.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "commit": prov.get("commit"), "dirty": prov.get("dirty"), "versions": prov.get("versions"),
              "target": rl_report.get("target"), "quick": a.quick,
              "policy": "tiny in-process stand-in (configs/proof_smollm2.yaml)", "teacher": "template (offline)",
              "calibration": None if calibration is None else
              {k: calibration.get(k) for k in ("pearson_r", "spearman_rho", "p_permutation", "pearson_ci95",
                                               "num_datasets", "metric", "datasets")},
              "rl": rl, "total_s": round(time.perf_counter() - t_start, 1)}
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (output / "report.md").write_text(format_report(report) + "\n")
    for src, name in ((work / "calibration" / "influence_vs_gain.png", "calibration_influence_vs_gain.png"),
                      (rl_dir / "influence_vs_gain.png", "rl_influence_vs_gain.png"),
                      (rl_dir / "heldout.png", "rl_heldout.png")):
        if src.exists():
            shutil.copyfile(src, output / name)
    print(format_report(report))
    print(f"\nReport: {output / 'report.md'}")


def format_report(r: dict) -> str:
    def f(x, nd=3):
        return "-" if x is None else f"{x:.{nd}f}"

    v = r["versions"] or {}
    lines = ["# The proof on a real target", "",
             f"Command `{r['command']}` at commit {r['commit']}{' (dirty)' if r.get('dirty') else ''}; "
             + ", ".join(f"{k} {v[k]}" for k in sorted(v)) + f". Total {r['total_s'] / 60:.0f} min.", "",
             f"Target: `{r['target']}`. Policy: {r['policy']}. Teacher: {r['teacher']}.", ""]
    c = r["calibration"]
    if c:
        ci = c.get("pearson_ci95") or [None, None]
        lines += ["## Does the reward predict the gain? (`rubric-rl calibrate`, 8 rubric sources)", "",
                  f"Pearson r **{f(c['pearson_r'])}** (95% bootstrap {f(ci[0], 2)} .. {f(ci[1], 2)}), Spearman "
                  f"{f(c['spearman_rho'])}, permutation p {f(c['p_permutation'], 4)}, {c['num_datasets']} datasets "
                  f"(mean influence vs held-out {c['metric']} gain).", "",
                  "| source | seed | mean influence | gain | held-out |", "|---|---|---|---|---|"]
        lines += [f"| {d['source']} | {d['seed']} | {f(d['mean_influence'], 5)} | {f(d['gain'], 4)} | "
                  f"{f(d['heldout'], 4)} |" for d in c["datasets"]]
        lines.append("")
    else:
        lines += ["Calibration stage skipped (`--skip_calibration` or `--quick`).", ""]
    rl = r["rl"]
    lines += ["## Trained rubric generators vs the hand-written seed rubrics", "",
              f"{len(rl['train_seeds'])} training seeds x {len(rl['eval_seeds'])} evaluation seeds; "
              "a pair is trained_sT vs seed (or none) at the same evaluation seed.", "",
              "| comparison | metric | wins | losses | ties | runs | mean advantage | sign test p |",
              "|---|---|---|---|---|---|---|---|"]
    for name, per in rl["paired"].items():
        for metric, s in per.items():
            lines.append(f"| {name} | {metric} | {s['wins']} | {s['losses']} | {s['ties']} | {s['runs']} | "
                         f"{f(s['mean_advantage'], 4)} | {f(s['p_sign_test'], 3)} |")
    ivg = rl["influence_vs_gain"]
    lines += ["", f"Mean influence vs loss gain over these {ivg['num_datasets']} datasets: Pearson "
                  f"{f(ivg['pearson_r'])}, Spearman {f(ivg['spearman_rho'])}, p {f(ivg['p_permutation'], 4)}.", "",
              "### Every run", "", "| source | eval seed | mean influence | loss | acc | gold-choice NLL |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {x['source']} | {x['seed']} | {f(x['mean_influence'], 5)} | {f(x['loss'], 4)} | {f(x['acc'])} | "
              f"{f(x['gold_choice_nll'], 4)} |" for x in rl["runs"]]
    lines += ["", "### Training runs (means over the first and last third of the logged steps)", "",
              "| training seed | steps | reward | influence | valid rate |", "|---|---|---|---|---|"]
    lines += [f"| {t['seed']} | {t['steps']} | {f(t['reward_first'])} -> {f(t['reward_last'])} | "
              f"{f(t['influence_mean_first'], 4)} -> {f(t['influence_mean_last'], 4)} | "
              f"{f(t['valid_rate_first'], 2)} -> {f(t['valid_rate_last'], 2)} |" for t in rl["training"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
