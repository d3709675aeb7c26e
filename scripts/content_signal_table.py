#!/usr/bin/env python
"""Scores of many estimator variants from scripts/content_signal.py's products, and their checks.

    python scripts/content_signal_table.py runs/content_signal/content_signal.json \
        --gains reports/proof/calibration_smollm2/calibration.json

Per variant: AUC (right > wrong) and paired wins for restated validation items and for outside (test)
items, and the Pearson r of per-dataset mean score vs the calibration's measured held-out gains.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def variants(ck: dict, subtasks: list[str], choice: dict | None = None) -> dict[str, torch.Tensor]:
    """[N] score of every variant at one checkpoint (before the checkpoint weighting); with ``choice`` (the same
    checkpoint's products with the choice-loss gradients) also the choice and tokens+choices objectives."""
    AG, SG = torch.tensor(ck["A_G"], dtype=torch.float64), torch.tensor(ck["S_G"], dtype=torch.float64)
    nA, nS = torch.tensor(ck["nA"], dtype=torch.float64), torch.tensor(ck["nS"], dtype=torch.float64)
    AZ = torch.tensor(ck["A_Z"], dtype=torch.float64)
    GG = torch.tensor(ck["G_G"], dtype=torch.float64)
    ZG = torch.tensor(ck["Z_G"], dtype=torch.float64)
    nZ = ck["nZ"]
    nG = GG.diag().sqrt()
    names = sorted(set(subtasks))
    member = torch.tensor([[s == n for s in subtasks] for n in names], dtype=torch.float64)  # [S, V]
    member = member / member.sum(1, keepdim=True)

    def sub_max(x):  # max over subtasks of the mean within a subtask
        return (x @ member.T).max(1).values

    out = {}
    for dname, D, n in (("adam", AG, nA), ("sgd", SG, nS), ("adamc", AG - ZG, (nA**2 - 2 * AZ + nZ**2).clamp_min(0).sqrt())):
        out[f"{dname}/dot/subtask"] = sub_max(D)
        out[f"{dname}/dot/mean"] = D.mean(1)
        out[f"{dname}/dot/item_max"] = D.max(1).values
        cos = D / (n.unsqueeze(1) * nG.unsqueeze(0))
        out[f"{dname}/cos/subtask"] = sub_max(cos)
        out[f"{dname}/cos/item_max"] = cos.max(1).values
        out[f"{dname}/cos/mean"] = cos.mean(1)
        # validation side centred: g_v - mean_u g_u (the part shared by every validation item removed)
        Dc = D - D.mean(1, keepdim=True)
        GGc = GG - GG.mean(0, keepdim=True) - GG.mean(1, keepdim=True) + GG.mean()
        nGc = GGc.diag().clamp_min(0).sqrt()
        out[f"{dname}/dot_vc/item_max"] = Dc.max(1).values
        out[f"{dname}/cos_vc/item_max"] = (Dc / (n.unsqueeze(1) * nGc.unsqueeze(0))).max(1).values
        out[f"{dname}/dot/mean+vc_item_max"] = D.mean(1) + Dc.max(1).values
        # each item against its own subtask's mean removed
        sub_mean = (D @ member.T)  # [N, S]
        idx = torch.tensor([names.index(s) for s in subtasks])
        out[f"{dname}/dot_sc/item_max"] = (D - sub_mean[:, idx]).max(1).values
        # softmax-ish: log-sum-exp over items (a smooth max) at a few temperatures, in units of the item spread
        for q in (0.9, 0.75):
            out[f"{dname}/dot/item_q{int(q * 100)}"] = D.quantile(q, dim=1)
    if choice is not None:
        AC = torch.tensor(choice["A_C"], dtype=torch.float64)
        out["choices: adam/dot/subtask"] = sub_max(AC)
        out["choices: adam/dot/mean"] = AC.mean(1)
        out["choices: adam/dot/item_max"] = AC.max(1).values
        out["tokens+choices: adam/dot/subtask"] = sub_max(AG + AC)
        out["tokens+choices: adam/dot/mean"] = (AG + AC).mean(1)
        out["tokens+choices: adam/dot/item_max"] = (AG + AC).max(1).values
        # centred (influence_center): minus the zero-gradient step's products
        ACc = AC - torch.tensor(choice["Z_C"], dtype=torch.float64)
        AGc = AG - ZG
        nAc = (nA**2 - 2 * AZ + nZ**2).clamp_min(0).sqrt()
        out["choices: adamc/dot/subtask"] = sub_max(ACc)
        out["choices: adamc/dot/item_max"] = ACc.max(1).values
        out["tokens+choices: adamc/dot/subtask (default)"] = sub_max(AGc + ACc)
        out["tokens+choices: adamc/dot/mean"] = (AGc + ACc).mean(1)
        out["tokens+choices: adamc/dot/item_max"] = (AGc + ACc).max(1).values
        for lam in (0.5, 2.0, 4.0):
            out[f"tokens+{lam:g}*choices: adamc/dot/subtask"] = sub_max(AGc + lam * ACc)
        out["tokens+choices: adamc/cos_sample/subtask"] = sub_max(AGc + ACc) / nAc
        if "A_K" in choice:  # the contrast ("binding") choice loss: beyond the relation's other subjects
            AKc = torch.tensor(choice["A_K"], dtype=torch.float64) - torch.tensor(choice["Z_K"], dtype=torch.float64)
            AK = torch.tensor(choice["A_K"], dtype=torch.float64)
            out["binding: adamc/dot/subtask"] = sub_max(AKc)
            out["binding: adamc/dot/mean"] = AKc.mean(1)
            out["tokens+binding: adam/dot/subtask"] = sub_max(AG + AK)
            out["tokens+binding: adamc/dot/subtask"] = sub_max(AGc + AKc)
            out["tokens+binding: adamc/dot/mean"] = (AGc + AKc).mean(1)
            out["tokens+binding: adamc/dot/item_max"] = (AGc + AKc).max(1).values
            out["tokens+choices+binding: adamc/dot/subtask"] = sub_max(AGc + ACc + AKc)
    return out


def pearson(x, y):
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x @ y) / (x.norm() * y.norm()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("products")
    p.add_argument("--gains", default="reports/proof/calibration_smollm2/calibration.json")
    p.add_argument("--checkpoints", default="all", choices=["all", "last"])
    p.add_argument("--filter", default="", help="Only variants containing this substring.")
    p.add_argument("--choices", default=None, help="content_signal_choices.json of the same run (choice objective).")
    a = p.parse_args(argv)
    from rubric_rl.influence.mislabel import pair_summary

    rep = json.load(open(a.products))
    cks = rep["checkpoints"] if a.checkpoints == "all" else rep["checkpoints"][-1:]
    chk = [None] * len(cks)
    if a.choices:
        ch = json.load(open(a.choices))["checkpoints"]
        chk = ch if a.checkpoints == "all" else ch[-1:]
        assert [c["name"] for c in chk] == [c["name"] for c in cks]
    total = None
    lrs = [c["lr"] for c in cks]
    for ck, cc in zip(cks, chk):
        v = variants(ck, rep["subtasks"], cc)
        for k in v:  # dot: weighted by lr (first-order); cosines: by normalised lr
            w = ck["lr"] if ("/dot" in k or "dot_" in k) and "cos_sample" not in k else ck["lr"] / sum(lrs)
            v[k] = v[k] * w
        total = v if total is None else {k: total[k] + v[k] for k in total}
    spans = rep["spans"]
    gains = {d["source"]: (d["gain"], d["mean_influence"]) for d in json.load(open(a.gains))["datasets"]}
    if not all(f"cal_{src}" in spans for src in gains):  # a pilot run: restated pairs only
        gains = {}
    rows = []
    for k, s in total.items():
        if a.filter and a.filter not in k:
            continue
        def part(name):
            lo, hi = spans[name]
            return s[lo:hi].tolist()
        r_in = pair_summary(part("restated_right"), part("restated_wrong"))
        r_out = (pair_summary(part("outside_right"), part("outside_wrong")) if "outside_right" in spans
                 else {"auc": float("nan"), "paired_wins": 0, "pairs": 0})
        means = {src: sum(part(f"cal_{src}")) / len(part(f"cal_{src}")) for src in gains}
        r = pearson([means[x] for x in gains], [gains[x][0] for x in gains]) if gains else float("nan")
        rows.append((k, r_in, r_out, r, means))
    print(f"{'variant':44s} {'AUC in':>7s} {'wins':>6s} {'AUC out':>7s} {'wins':>6s} {'cal r':>6s}")
    for k, r_in, r_out, r, means in rows:
        print(f"{k:44s} {r_in['auc']:7.3f} {r_in['paired_wins']:3d}/{r_in['pairs']:<2d} {r_out['auc']:7.3f} "
              f"{r_out['paired_wins']:3d}/{r_out['pairs']:<2d} {r:6.3f}")
    base = next(m for k, *_, m in rows if k == "adam/dot/subtask") if any(k == "adam/dot/subtask" for k, *_ in rows) else None
    if base:
        print("reproduction of the stored calibration means (adam/dot/subtask):",
              ", ".join(f"{s} {base[s]:.5f}/{gains[s][1]:.5f}" for s in gains))
    return 0


if __name__ == "__main__":
    sys.exit(main())
