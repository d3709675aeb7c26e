#!/usr/bin/env python
"""What the reward pays, by sample format: a training run's rollouts.jsonl grouped by the teacher sample's format.

    python scripts/rollout_formats.py runs/quickstart/rollouts.jsonl [--split 50]

Formats: multiple choice (an ``Options:`` block) with a step-by-step answer, multiple choice with a bare
answer, true/false, open with a step-by-step answer, open short. Per format and phase (steps < split, >= split):
share of valid samples, mean raw influence, novelty and reward; and how often, within one GRPO group, the
sample with the higher influence also has the higher reward (the share of the reward's ordering that the
influence sets).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict


def fmt(sample) -> str:
    q, a = sample[-2]["content"], sample[-1]["content"]
    mc = "\n(A)" in q or "Options:" in q
    step = "step by step" in a.lower()
    if mc:
        return "mc_stepwise" if step else "mc_other"
    if q.lower().startswith("true or false"):
        return "true_false"
    return "open_stepwise" if step else "open_other"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rollouts")
    p.add_argument("--split", type=int, default=50)
    a = p.parse_args(argv)
    rows = [json.loads(x) for x in open(a.rollouts) if x.strip()]
    stats = defaultdict(lambda: defaultdict(list))
    n_valid = defaultdict(int)
    for r in rows:
        if r["outcome"] != "valid" or r.get("influence") is None:
            continue
        ph = "early" if r["step"] < a.split else "late"
        n_valid[ph] += 1
        f = fmt(r["sample"])
        for k in ("influence", "novelty", "reward"):
            stats[(ph, f)][k].append(r[k])
    print(f"{'phase':6s} {'format':14s} {'share':>6s} {'influence':>10s} {'novelty':>8s} {'reward':>7s}")
    for (ph, f), d in sorted(stats.items()):
        n = len(d["influence"])
        print(f"{ph:6s} {f:14s} {n / n_valid[ph]:6.2f} {sum(d['influence']) / n:10.5f} "
              f"{sum(d['novelty']) / n:8.3f} {sum(d['reward']) / n:7.3f}")
    # within-group pairs: does the higher influence get the higher reward?
    groups = defaultdict(list)
    for r in rows:
        if r["outcome"] == "valid" and r.get("influence") is not None:
            groups[(r["step"], r["doc_id"])].append(r)
    agree = total = 0
    for g in groups.values():
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                di, dr = g[i]["influence"] - g[j]["influence"], g[i]["reward"] - g[j]["reward"]
                if di and dr:
                    total += 1
                    agree += (di > 0) == (dr > 0)
    print(f"within-group pairs where the higher influence has the higher reward: {agree}/{total} "
          f"({agree / max(total, 1):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
