"""Weights & Biases for a ``train`` run (``report_to: wandb``): what a user of rubric-rl looks for in the run.

HF's ``WandbCallback`` (which TRL's trainers add for ``report_to: wandb``) logs the GRPO series (``train/*``,
rubric-rl's ``log_metric`` values included) and TRL's completions table (``log_completions: true``; rubric-rl's
columns come from the reward's ``log_extra``, see ``reward.Rollout.table_row``). This module adds the rest, main
process only, and does nothing unless :func:`start_run` started (or adopted) this job's run:

- one run for the whole job: :func:`start_run` starts it at the start of ``train()`` (HF's callback then reuses
  it), so the stages before GRPO are in it. Project: ``WANDB_PROJECT``, else the ``project`` field if set, else
  ``rubric-rl``; name: ``run_name``, else the output folder's name.
- config: ``rubric_rl.train``, ``rubric_rl.teacher``, ``rubric_rl.influence`` (RubricRLArguments, TeacherConfig,
  InfluenceConfig, tokens blanked as in ``rubric_rl_args.json``); TRL's GRPOConfig stays flat, as HF writes it.
- one step axis: ``train/global_step``, the GRPO global step, for every key. The stages before GRPO are logged
  at step 0, the evaluation at the run's last step.
- stages (:func:`log_stage`): ``sft_warmstart/loss`` and ``warmup/loss``, the loss curve of the policy's SFT warm
  start and of the target's warm-up (a table with its line chart: their own steps are not GRPO steps), and in the
  summary ``<stage>/first_loss``, ``final_loss``, ``steps``, ``reused``.
- evaluation (:func:`log_evaluation`, when ``train`` runs ``evaluate_config``): ``eval/table`` (the report's
  table: one row per source, the untrained target first), ``eval/runs`` (one row per source and seed), each
  plot as ``eval/<plot name>`` (an image), and ``eval/<source>/<metric>`` means in the summary.
- artifacts (:func:`log_artifact`): ``rubric-generator-<run id>`` (type ``model``: the ``export/`` folder) and
  ``evaluation-<run id>`` (type ``evaluation``: the report files of ``eval/``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

STEP = "train/global_step"  # HF's WandbCallback's step metric: the GRPO global step
_RUN = None  # the run start_run chose for this job (None: report_to has no wandb, or another process)


def active_run():
    """The run :func:`start_run` chose for this job while it is still W&B's active run, else None: nothing is
    logged to a run that a job without ``report_to: wandb`` finds left over in the process, nor to a disabled
    one (``WANDB_MODE=disabled``: an artifact would still be staged under the user's home)."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    return run if run is not None and run is _RUN and not getattr(run, "disabled", False) else None


def wanted(grpo_args) -> bool:
    return "wandb" in (getattr(grpo_args, "report_to", None) or [])


def run_config(args, teacher_cfg, influence_cfg) -> dict:
    """rubric-rl's own settings for the W&B config, under one key (tokens blanked)."""
    from .rundir import run_args

    return {"rubric_rl": run_args(train=args, teacher=teacher_cfg, influence=influence_cfg)}


def start_run(args, grpo_args, teacher_cfg, influence_cfg, *, is_main_process: bool = True):
    """Start the job's W&B run (or add rubric-rl's config to one already active) and define the step axis.
    Returns the run, or None when ``report_to`` has no ``wandb`` or on another process than the main one."""
    global _RUN
    _RUN = None
    if not (wanted(grpo_args) and is_main_process):
        return None
    import wandb

    config = run_config(args, teacher_cfg, influence_cfg)
    if wandb.run is None:
        project = os.environ.get("WANDB_PROJECT") or (
            grpo_args.project if getattr(grpo_args, "project", "huggingface") != "huggingface" else "rubric-rl")
        name = grpo_args.run_name if grpo_args.run_name and grpo_args.run_name != grpo_args.output_dir \
            else Path(grpo_args.output_dir).name
        wandb.init(project=project, name=name, job_type="train", config=config)
    else:
        wandb.run.config.update(config, allow_val_change=True)
    wandb.define_metric(STEP)
    wandb.define_metric("*", step_metric=STEP, step_sync=True)
    _RUN = wandb.run
    return _RUN


def trainer_log_history(folder: str | Path) -> list[dict]:
    """The HF Trainer log history kept in ``folder``: ``log_history.json`` (the SFT warm start), else the
    ``trainer_state.json`` of its last ``checkpoint-N`` (the target's warm-up)."""
    folder = Path(folder)
    if (folder / "log_history.json").exists():
        return json.loads((folder / "log_history.json").read_text())
    ckpts = [p for p in folder.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    for ckpt in sorted(ckpts, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        if (ckpt / "trainer_state.json").exists():
            return json.loads((ckpt / "trainer_state.json").read_text()).get("log_history", [])
    return []


def log_stage(stage: str, history: list[dict], *, reused: bool) -> None:
    """A stage before GRPO (``sft_warmstart``, ``warmup``): its loss curve as a table and line chart at GRPO
    step 0, and first/final loss, steps and reused in the summary."""
    run = active_run()
    if run is None:
        return
    import wandb

    rows = [[int(h.get("step", i)), h.get("epoch"), float(h["loss"])] for i, h in enumerate(history)
            if isinstance(h.get("loss"), int | float) and math.isfinite(h["loss"])]
    summary = {f"{stage}/reused": reused, f"{stage}/steps": max((r[0] for r in rows), default=0)}
    if rows:
        table = wandb.Table(columns=["step", "epoch", "loss"], data=rows)
        title = {"sft_warmstart": "policy SFT warm start: loss per step",
                 "warmup": "target warm-up: loss per step"}.get(stage, f"{stage}: loss per step")
        run.log({f"{stage}/loss": wandb.plot.line(table, "step", "loss", title=title), STEP: 0})
        summary.update({f"{stage}/first_loss": rows[0][2], f"{stage}/final_loss": rows[-1][2]})
    run.summary.update(summary)


def _num(x):
    return x if isinstance(x, int | float) and (not isinstance(x, float) or math.isfinite(x)) else None


def log_evaluation(report: dict, eval_dir: str | Path, step: int | None = None) -> None:
    """The downstream evaluation's report: its table and per-run table (wandb.Table), its plots (wandb.Image),
    the means per source in the summary; all at GRPO step ``step`` (the run's last)."""
    run = active_run()
    if run is None:
        return
    import wandb

    from .evaluate.report import table_rows

    eval_dir = Path(eval_dir)
    columns, rows = table_rows(report)
    primary = report["primary_metric"]
    run_cols = ["source", "seed", "samples", "validity_rate", "influence_mean", "loss", "acc", "acc_norm",
                f"{primary}_gain"]
    run_rows = [[r["source"], r["seed"], r["dataset"]["samples"], _num(r["synthesis"]["validity_rate"]),
                 _num(r["influence"]["mean"]), _num(r["heldout"].get("loss")), _num(r["heldout"].get("acc")),
                 _num(r["heldout"].get("acc_norm")), _num(r["gain"].get(primary))] for r in report["runs"]]
    data = {"eval/table": wandb.Table(columns=columns, data=rows),
            "eval/runs": wandb.Table(columns=run_cols, data=run_rows)}
    for name in report.get("plots") or []:
        if (eval_dir / name).exists():
            data[f"eval/{Path(name).stem}"] = wandb.Image(str(eval_dir / name), caption=name)
    run.log({**data, STEP: step or 0})
    summary = {}
    for name, s in report["summary"].items():
        for metric in ("loss", "acc", "acc_norm", f"{primary}_gain", "influence_mean", "validity_rate"):
            if metric in s and _num(s[metric]["mean"]) is not None:
                summary[f"eval/{name}/{metric}"] = s[metric]["mean"]
    c = report.get("correlation", {}).get(f"influence_vs_{primary}_gain", {})
    if _num(c.get("pearson_r")) is not None:
        summary[f"eval/pearson_r_influence_vs_{primary}_gain"] = c["pearson_r"]
    summary["eval/ranking"] = ", ".join(report.get("ranking") or [])
    run.summary.update(summary)


def log_artifact(folder: str | Path, kind: str, *, files: list[str] | None = None,
                 metadata: dict | None = None) -> None:
    """``folder`` (or only its ``files``) as the artifact ``<kind>-<run id>``, type ``model`` for the
    ``rubric-generator``, else ``evaluation``."""
    run = active_run()
    if run is None:
        return
    import wandb

    folder = Path(folder)
    art = wandb.Artifact(f"{kind}-{run.id}", type="model" if kind == "rubric-generator" else "evaluation",
                         metadata=json.loads(json.dumps(metadata or {}, default=str)))
    if files is None:
        art.add_dir(str(folder))
    else:
        for name in files:
            if (folder / name).is_file():
                art.add_file(str(folder / name), name=name)
    run.log_artifact(art)


def finish() -> None:
    """Finish this job's run (the end of ``rubric-rl train``, after its evaluation)."""
    global _RUN
    wandb = sys.modules.get("wandb")
    if _RUN is not None and getattr(wandb, "run", None) is _RUN:
        wandb.finish()
    _RUN = None
