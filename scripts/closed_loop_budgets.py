#!/usr/bin/env python
"""Closed loop vs static generation vs random selection at several budgets, on the offline world.

    python scripts/closed_loop_budgets.py [--budgets 48 192] [--seeds 0 1 2] [--output reports/closed_loop]

Runs ``rubric-rl closed-loop --config configs/closed_loop_quickstart.yaml --loop_budget B --eval_seeds ...`` once
per budget (every rule of the config; run folders ``runs/closed_loop_budgets/budget<B>``, resumable), then writes
``OUTPUT/report.json`` (each budget's report, without the per-round curves' raw rows) and ``OUTPUT/report.md`` (one
table: per budget and rule, the final held-out test loss over seeds, every seed's value, and the paired comparison
with static and random) and copies each budget's ``budget_curve.png``. The test set is only reported: nothing here
selects or tunes on it. Extra arguments after ``--`` go to every ``rubric-rl closed-loop`` call.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/closed_loop_quickstart.yaml")
    ap.add_argument("--budgets", type=int, nargs="+", default=[48, 192])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", default="runs/closed_loop_budgets", help="Parent folder of the run folders.")
    ap.add_argument("--output", default="reports/closed_loop")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    os.chdir(ROOT)

    from rubric_rl.commands.closed_loop import from_argv as cmd_closed_loop
    from rubric_rl.evaluate.report import format_number
    from rubric_rl.provenance import provenance

    made_by = provenance()
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    reports = {}
    for budget in a.budgets:
        run = Path(a.runs) / f"budget{budget}"
        reports[budget] = cmd_closed_loop(["--config", a.config, "--output", str(run), "--loop_budget", str(budget),
                                           "--eval_seeds", *map(str, a.seeds), "--loop_progress", "false", *extra])
        shutil.copy(run / "budget_curve.png", out / f"budget_curve_{budget}.png")
    first = reports[a.budgets[0]]
    p = first["primary_metric"]
    md = ["# Closed loop vs static vs random on the offline world", "",
          f"Command: `python scripts/closed_loop_budgets.py {' '.join(argv)}`, commit {made_by.get('commit')} "
          f"(dirty: {made_by.get('dirty')}); versions {made_by.get('versions')}.", "",
          f"Config {a.config}: {first['rounds']} rounds (static: 1), strategy {first['strategy']}, rubric source "
          f"{first['rubric_source']}, seed questions {first['seed_data']}, target {first['target']}. Held-out test "
          f"{p} after the last round (lower is better), {len(a.seeds)} seeds; paired = same seed.", "",
          "| budget (samples) | rule | test loss (mean ± std) | " + " | ".join(f"seed {s}" for s in a.seeds)
          + " | vs static (wins, mean advantage) | vs random (wins, mean advantage) |",
          "|---|---|---|" + "---|" * len(a.seeds) + "---|---|"]
    for budget, rep in reports.items():
        for rule, r in rep["rules"].items():
            st = r["final"][p]
            per = " | ".join(format_number(r["seeds"][str(s)]["final"][p]) for s in a.seeds)
            cells = []
            for base in ("static", "random"):
                pr = rep["paired"].get(f"{rule}>{base}")
                cells.append(f"{pr['wins']}/{pr['seeds']}, {pr['mean_advantage']:+.4f}" if pr else "-")
            md.append(f"| {budget} | {rule} | {st['mean']:.4f} ± {st['std']:.4f} | {per} | {cells[0]} | {cells[1]} |")
    md += ["", f"Untrained target: test {p} {format_number(first['baseline'][p])}. Curves: "
           + ", ".join(f"budget_curve_{b}.png" for b in a.budgets) + ".", ""]
    slim = {b: {k: v for k, v in rep.items() if k != "rules"} | {
        "rules": {rule: {k: v for k, v in r.items() if k != "curve"} for rule, r in rep["rules"].items()}}
        for b, rep in reports.items()}
    (out / "report.json").write_text(json.dumps({"command": f"python scripts/closed_loop_budgets.py {' '.join(argv)}",
                                                 **made_by, "budgets": slim}, indent=1, default=str) + "\n")
    (out / "report.md").write_text("\n".join(md))
    print("\n".join(md))
    return reports


if __name__ == "__main__":
    main()
