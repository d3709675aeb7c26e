#!/usr/bin/env python
"""Check the influence estimator on your own target before spending GPU hours on RL.

For the config's target (warm-up reused from OUTPUT_DIR/warmup or made there) and validation set:

1. related vs unrelated AUC: ``--related`` samples (default: the first 16 lines of ``--test_data``, the
   target task on other facts) should outscore ``--unrelated`` ones (default: data/checks/off_domain.jsonl,
   general-knowledge QA);
2. first order: one real torch.optim.Adam step (lr ``--lr``) on each candidate at the last warm-up
   checkpoint; the estimator's scores must rank candidates like the actual decrease of the validation
   objective (``influence_objective``; Spearman, over all candidates and within the related ones).
   ``--mislabelled`` adds the right/wrong twins of the first validation items as candidates.

Each estimator setting in ``--variants`` is scored (``default`` = the config as given; others as
``estimator/direction/center/proj_dim/checkpoints[/objective]``, e.g. ``less/adam/nocenter/2048/all`` or
``dot/adam/nocenter/0/all/tokens``). Writes
OUTPUT_DIR/influence_check.json and prints a table.

    python scripts/check_influence.py --config configs/smollm2_cpu.yaml --output_dir runs/smollm2_check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from rubric_rl.data.documents import load_chat_samples
from rubric_rl.provenance import provenance

DEFAULT_VARIANTS = ["default", "dot/adam/center/0/last", "dot/adam/nocenter/0/all", "less/adam/center/0/all",
                    "less/adam/nocenter/0/all", "less/adam/nocenter/2048/all", "dot/adam/nocenter/2048/all",
                    "dot/adam/center/2048/all", "dot/sgd/nocenter/0/all"]


def parse_variant(spec: str, base) -> object:
    if spec == "default":
        return base
    try:
        est, direction, center, dim, ckpts, *objective = spec.split("/")
        return dataclasses.replace(base, influence_estimator=est, influence_direction=direction,
                                   influence_center=center == "center", influence_proj_dim=int(dim),
                                   influence_checkpoints=[ckpts],
                                   influence_objective=objective[0] if objective else base.influence_objective)
    except (ValueError, TypeError) as err:
        raise SystemExit(f"check_influence: bad variant {spec!r} (estimator/direction/center|nocenter/dim/"
                         f"all|last): {err}") from None


def read_chat(path, limit=None):
    rows = load_chat_samples(path)
    return [r["messages"] for r in rows][:limit]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", required=True, help="Run YAML (target_*, warmup_*, influence_* fields are read).")
    p.add_argument("--output_dir", required=True, help="Run folder: warm-up, validation cache and the report.")
    p.add_argument("--test_data", default="data/quickstart/test.jsonl", help="Source of the default related samples.")
    p.add_argument("--related", default=None, help="Chat jsonl of related candidates (default: 16 of --test_data).")
    p.add_argument("--unrelated", default="data/checks/off_domain.jsonl", help="Chat jsonl of unrelated candidates.")
    p.add_argument("--num_related", type=int, default=16)
    p.add_argument("--num_unrelated", type=int, default=0, help="Use only the first N unrelated candidates (0: all).")
    p.add_argument("--lr", type=float, default=1e-5, help="Learning rate of the real Adam steps (small: first order).")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    p.add_argument("--no_first_order", action="store_true", help="Only the AUC (no real Adam steps).")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    p.add_argument("--validation_per_subtask", type=int, default=0,
                   help="Use only the first N validation items of each subtask (written to OUTPUT_DIR/validation_subset.jsonl "
                        "and used for the scores and the truth alike): each real step is followed by a pass over the "
                        "validation objective, so this bounds the check's time.")
    p.add_argument("--mislabelled", type=int, default=0,
                   help="Add the right and wrong twins (rubric_rl.influence.mislabel) of the first N validation "
                        "items as candidates, and report their AUC.")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    from rubric_rl.config import RunDirArguments, parse_config
    from rubric_rl.influence import InfluenceScorer
    from rubric_rl.influence.build import load_validation
    from rubric_rl.influence.check import actual_decreases, auc
    from rubric_rl.influence.warmup import load_checkpoints, warmup_dir
    from rubric_rl.stats import spearman
    from rubric_rl.configs.influence import InfluenceConfig

    _, cfg = parse_config((RunDirArguments, InfluenceConfig), ["--config", a.config, "--output_dir", a.output_dir],
                          shared_config=True)
    if a.validation_per_subtask:
        rows, seen = [], {}
        for r in load_chat_samples(cfg.influence_validation_data):
            key = str(r.get(cfg.influence_subtask_field))
            if seen.get(key, 0) < a.validation_per_subtask:
                seen[key] = seen.get(key, 0) + 1
                rows.append(r)
        Path(a.output_dir).mkdir(parents=True, exist_ok=True)
        subset = Path(a.output_dir) / "validation_subset.jsonl"
        subset.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = dataclasses.replace(cfg, influence_validation_data=str(subset))
        print(f"validation: {len(rows)} items ({a.validation_per_subtask} per subtask) in {subset}", flush=True)
    related = read_chat(a.related, a.num_related) if a.related else read_chat(a.test_data, a.num_related)
    unrelated = read_chat(a.unrelated, a.num_unrelated or None)
    candidates = related + unrelated
    is_related = [True] * len(related) + [False] * len(unrelated)
    twins = []
    if a.mislabelled:
        from rubric_rl.influence.mislabel import mislabelled_pairs

        twins = mislabelled_pairs(load_chat_samples(cfg.influence_validation_data)[:a.mislabelled], seed=0)
        candidates = candidates + [p.right for p in twins] + [p.wrong for p in twins]
        is_related = is_related + [True] * (2 * len(twins))
    t0 = time.perf_counter()
    base = InfluenceScorer.from_config(cfg, a.output_dir, progress=True)
    print(f"scorer built in {time.perf_counter() - t0:.1f} s: {base.engine.num_params:,} trainable parameters, "
          f"{len(base.checkpoints)} checkpoint(s)", flush=True)
    model, tok, device = base.model, base.tokenizer, base.device
    ckpts_all = base.checkpoints
    base.close()

    report = {"config": a.config, "target": cfg.target_model_name_or_path, "num_params": base.engine.num_params,
              "objective": cfg.influence_objective,
              "num_related": len(related), "num_unrelated": len(unrelated), "lr": a.lr, "variants": {},
              **provenance()}
    truth = None
    if not a.no_first_order:
        t0 = time.perf_counter()
        val_rows = load_chat_samples(cfg.influence_validation_data)
        truth = actual_decreases(model, tok, ckpts_all[-1], candidates, val_rows, lr=a.lr,
                                 max_length=cfg.influence_max_length, subtask_field=cfg.influence_subtask_field,
                                 device=device, progress=True, objective=cfg.influence_objective)
        report["first_order"] = {"checkpoint": ckpts_all[-1].name, "seconds": round(time.perf_counter() - t0, 1),
                                 **truth}
    for spec in a.variants:
        vcfg = parse_variant(spec, cfg)
        t0 = time.perf_counter()
        ckpts = load_checkpoints(warmup_dir(a.output_dir), model, vcfg.influence_checkpoints)
        scorer = InfluenceScorer(vcfg, model, tok, ckpts, device=device)
        load_validation(scorer, vcfg.influence_validation_data, cache_dir=Path(a.output_dir) / "influence_cache")
        scores = [r.value for r in scorer.score(candidates)]
        scorer.close()
        n0 = len(related) + len(unrelated)
        rel = [s for s, r in zip(scores[:n0], is_related) if r]
        unr = [s for s, r in zip(scores[:n0], is_related) if not r]
        row = {"estimator": vcfg.influence_estimator, "direction": vcfg.influence_direction,
               "center": vcfg.influence_center, "proj_dim": vcfg.influence_proj_dim,
               "checkpoints": vcfg.influence_checkpoints, "auc": auc(rel, unr), "scores": scores,
               "seconds": round(time.perf_counter() - t0, 1)}
        if truth is not None:
            # a centred score predicts what z adds to the momentum-only step; an uncentred one the whole step
            key = "max_subtask_centred" if vcfg.influence_center else "max_subtask"
            row["truth"] = key
            row["spearman_all"] = spearman(scores, truth[key])
            row["spearman_related"] = spearman(rel, truth[key][:len(rel)])
            if twins:
                row["spearman_mislabelled"] = spearman(scores[n0:], truth[key][n0:])
            row["spearman_all_mean_loss"] = spearman(scores, truth["mean"])
        if twins:
            from rubric_rl.influence.mislabel import pair_summary

            k = len(twins)
            row["mislabelled"] = pair_summary(scores[n0:n0 + k], scores[n0 + k:])
        report["variants"][spec] = row
        def fmt(x):
            return "-" if x is None else f"{x:+.3f}"

        print(f"{spec:32s} AUC {row['auc']:.3f}" + (f"  Spearman all {fmt(row['spearman_all'])}  related "
              f"{fmt(row['spearman_related'])}" if truth else "")
              + (f"  mislabelled AUC {row['mislabelled']['auc']:.3f} wins {row['mislabelled']['paired_wins']}/{k}"
                 if twins else "") + f"  ({row['seconds']} s)", flush=True)
    if truth is not None:
        rel_t = truth["max_subtask"][:len(related)]
        unr_t = truth["max_subtask"][len(related):len(related) + len(unrelated)]
        print(f"actual decrease (max over subtasks): related mean {sum(rel_t) / len(rel_t):.3e}, unrelated mean "
              f"{sum(unr_t) / len(unr_t):.3e}; AUC of the truth itself {auc(rel_t, unr_t):.3f}")
        if twins:
            from rubric_rl.influence.mislabel import pair_summary

            n0, k = len(related) + len(unrelated), len(twins)
            for key in ("max_subtask", "max_subtask_centred"):
                t = truth[key]
                own = pair_summary(t[n0:n0 + k], t[n0 + k:])
                report["first_order"][f"mislabelled_{key}"] = own
                print(f"the real step itself ({key}) on the mislabelled twins: AUC {own['auc']:.3f}, right > wrong "
                      f"{own['paired_wins']}/{k}")
    out = Path(a.output_dir) / "influence_check.json"
    out.write_text(json.dumps(report, indent=1))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
