"""``rubric-rl calibrate``: does the reward predict the gain, on your task? Run it before spending GPU hours.

For several rubric sources (rubric files of different formats, an exported generator, ``none``; each with
every seed of ``eval_seeds``, so seed noise is in the sample), it runs the downstream evaluation
(:func:`rubric_rl.evaluate.evaluate`, not a copy) in the **reward's regime**: each dataset's mean influence
with the reward's own estimator and warm-up (``--run_dir``: a training run's folder, whose ``warmup/`` and
``influence_cache/`` are reused), and its held-out gain after fine-tuning the **same base target** the way
the warm-up trained it (LoRA with the warm-up's rank, alpha, target modules and learning rate, AdamW;
``--calibrate_full_finetune true`` fine-tunes all weights instead). Then: Pearson r and Spearman rho between
mean influence and held-out gain over the datasets, a permutation p-value, a bootstrap 95% interval, the
scatter plot (``influence_vs_gain.png``) and the per-dataset table (``calibration.md``,
``calibration.json``; the evaluation's own report beside them).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .configs.calibrate import CalibrateArguments


def calibration_config(eval_cfg, influence_cfg, args: CalibrateArguments):
    """The evaluation config in the reward's regime (see the module docstring)."""
    over = {"eval_influence": True,
            "eval_target_model_name_or_path": influence_cfg.target_model_name_or_path,
            "eval_target_dtype": influence_cfg.target_dtype,
            "eval_influence_run_dir": args.run_dir or str(Path(args.output) / "influence")}
    if args.calibrate_full_finetune:
        over["eval_finetune"] = "full"
    else:
        over.update(eval_finetune="lora", eval_lora_r=influence_cfg.warmup_lora_r,
                    eval_lora_alpha=influence_cfg.warmup_lora_alpha,
                    eval_lora_target_modules=list(influence_cfg.warmup_lora_target_modules),
                    eval_learning_rate=influence_cfg.warmup_learning_rate,
                    eval_weight_decay=influence_cfg.warmup_weight_decay)
    return replace(eval_cfg, **over)


def calibration_summary(report: dict) -> dict:
    metric = report["primary_metric"]
    rows = [{"source": r["source"], "seed": r["seed"], "mean_influence": r["influence"]["mean"],
             "gain": r["gain"].get(metric), "heldout": r["heldout"].get(metric), "samples": r["dataset"].get("samples")}
            for r in report["runs"]]
    return {"metric": metric, "gain_means": f"untrained {metric} - fine-tuned {metric}" if metric == "loss"
            else f"fine-tuned {metric} - untrained {metric}",
            "target": report.get("target"), "num_datasets": len(rows),
            **{k: report["correlation"][f"influence_vs_{metric}_gain"].get(k)
               for k in ("pearson_r", "spearman_rho", "p_permutation", "pearson_ci95")},
            "datasets": rows, "commit": report.get("commit"), "versions": report.get("versions")}


def format_calibration(summary: dict) -> str:
    def f(x, nd=4):
        return "-" if x is None else f"{x:.{nd}f}"

    ci = summary.get("pearson_ci95")
    lines = [f"Calibration on {summary['target']}: mean influence vs held-out {summary['metric']} gain "
             f"({summary['gain_means']}), {summary['num_datasets']} datasets",
             f"Pearson r {f(summary['pearson_r'], 3)} (95% bootstrap {f(ci[0], 2) if ci else '-'} .. "
             f"{f(ci[1], 2) if ci else '-'}), Spearman rho {f(summary['spearman_rho'], 3)}, permutation p "
             f"{f(summary['p_permutation'], 4)}", "",
             "| source | seed | mean influence | gain | held-out | samples |", "|---|---|---|---|---|---|"]
    for r in summary["datasets"]:
        lines.append(f"| {r['source']} | {r['seed']} | {f(r['mean_influence'], 5)} | {f(r['gain'])} | "
                     f"{f(r['heldout'])} | {r['samples']} |")
    return "\n".join(lines)


def calibrate(args: CalibrateArguments, eval_cfg, teacher_cfg, influence_cfg) -> dict:
    from .errors import UserError
    from .configs.evaluate import parse_sources
    from .evaluate.run import evaluate  # looked up at call time, so tests can stand in for the run

    sources = parse_sources(args.sources)
    n = len(sources) * len(eval_cfg.eval_seeds)
    if n < args.calibrate_min_datasets:
        raise UserError(f"{len(sources)} sources x {len(eval_cfg.eval_seeds)} seeds = {n} datasets, fewer than "
                        f"calibrate_min_datasets={args.calibrate_min_datasets}; add sources or eval_seeds")
    cfg = calibration_config(eval_cfg, influence_cfg, args)
    from .preflight import check_evaluate

    check_evaluate(args, cfg, teacher_cfg, influence_cfg)  # every file and source, before any model loads
    report = evaluate(cfg, teacher_cfg, influence_cfg, sources, args.output)
    summary = calibration_summary(report)
    out = Path(args.output)
    (out / "calibration.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "calibration.md").write_text(format_calibration(summary) + "\n")
    return summary
