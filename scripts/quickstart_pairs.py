#!/usr/bin/env python
"""Paired wins of the trained generator over the seed rubrics on every held-out metric, per training seed.

reports/quickstart/ (scripts/reproduce_quickstart.py) counts the primary metric (test loss); this counts test loss,
gold-choice NLL (lower is better) and accuracy (higher) from each run's eval/report.json:

    python scripts/quickstart_pairs.py runs/reproduce/default
"""

import glob
import json
import sys

METRICS = {"loss": "test loss", "gold_choice_nll": "gold-choice NLL", "acc": "accuracy"}


def main(root: str) -> int:
    total = {m: [0, 0] for m in METRICS}
    for path in sorted(glob.glob(f"{root}/seed*/eval/report.json")):
        report = json.load(open(path))
        held = {(r["source"], r["seed"]): r["heldout"] for r in report["runs"]}
        row = []
        for m in METRICS:
            wins = 0
            for e in report["seeds"]:
                t, b = held[("trained", e)][m], held[("seed", e)][m]
                wins += (t > b) if m == "acc" else (t < b)
            total[m][0] += wins
            total[m][1] += len(report["seeds"])
            row.append(f"{METRICS[m]} {wins}/{len(report['seeds'])}")
        print(f"{path.split('/')[-3]}: trained beats seed on " + ", ".join(row))
    print("all pairs: " + ", ".join(f"{METRICS[m]} {a}/{b}" for m, (a, b) in total.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/reproduce/default"))
