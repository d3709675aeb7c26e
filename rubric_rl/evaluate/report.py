"""The evaluation report: the report dict (summary, ranking, paired wins, correlations, reward curves) and its
markdown tables."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from ..configs.evaluate import HELDOUT_TASK, LOWER_IS_BETTER, PRIMARY_METRICS, REPORT_FORMAT
from ..jsonl import iter_log_rows
from ..provenance import package_versions
from .stats import summary_stats, correlation
from .synthesis import Source


def build_report(cfg, teacher_cfg, influence_cfg, sources: list[Source], runs: list[dict], baseline: dict, *,
                 target: str, influence_dir, choices_per_item: list[int] | None = None) -> dict:
    primary = cfg.eval_primary_metric
    summary: dict[str, dict] = {}
    for src in sources:
        rs = [r for r in runs if r["source"] == src.name]
        summary[src.name] = {
            **{m: summary_stats([r["heldout"].get(m) for r in rs]) for m in PRIMARY_METRICS + ("gold_choice_nll",)},
            **{f"{m}_gain": summary_stats([r["gain"][m] for r in rs]) for m in PRIMARY_METRICS},
            "influence_mean": summary_stats([r["influence"]["mean"] for r in rs]),
            "validity_rate": summary_stats([r["synthesis"]["validity_rate"] for r in rs]),
            "samples": summary_stats([r["dataset"]["samples"] for r in rs]),
            "tokens": summary_stats([r["dataset"]["tokens"] for r in rs]),
            "answer_tokens": summary_stats([r["dataset"]["answer_tokens"] for r in rs]),
            "distinct_1": summary_stats([r["dataset"]["distinct_1"] for r in rs]),
            "distinct_2": summary_stats([r["dataset"]["distinct_2"] for r in rs]),
            "distinct_3": summary_stats([r["dataset"]["distinct_3"] for r in rs]),
        }
        if cfg.eval_lm_eval_tasks:
            summary[src.name]["lm_eval"] = harness_summary(rs)
    lower = LOWER_IS_BETTER[primary]

    def key(name):
        m = summary[name][primary]["mean"]
        return (m is None, (m if lower else -m) if m is not None else 0.0)

    ranking = sorted(summary, key=key)
    # paired comparison: the same seed gives every source the same documents, teacher seeds and target init
    by = {(r["source"], r["seed"]): r for r in runs}
    paired = {}
    for a in summary:
        for b in summary:
            if a == b:
                continue
            diffs, wins = [], 0
            for seed in cfg.eval_seeds:
                va, vb = by[(a, seed)]["heldout"].get(primary), by[(b, seed)]["heldout"].get(primary)
                if va is None or vb is None:
                    continue
                d = (vb - va) if lower else (va - vb)  # > 0: a better than b
                diffs.append(d)
                wins += d > 0
            paired[f"{a}>{b}"] = {"wins": wins, "seeds": len(diffs), "mean_advantage": summary_stats(diffs)["mean"],
                                  "advantages": diffs}
    corr = {}
    for m in PRIMARY_METRICS:
        corr[f"influence_vs_{m}_gain"] = correlation([r["influence"]["mean"] for r in runs],
                                                     [r["gain"][m] for r in runs])
    curves = {}
    for src in sources:
        if src.kind == "generator":
            curves[src.name] = reward_curve(src.run_dir)
    harness = {"lm_eval_version": package_versions(("lm_eval",))["lm_eval"]} if cfg.eval_lm_eval_tasks else {}
    return {
        "format": REPORT_FORMAT,
        "target": target,
        **harness,
        "primary_metric": primary,
        "sources": {s.name: s.to_dict() for s in sources},
        "seeds": list(cfg.eval_seeds),
        "config": {"eval": asdict(cfg), "teacher": asdict(teacher_cfg), "influence": asdict(influence_cfg)},
        "influence_run_dir": str(influence_dir) if influence_dir else None,
        "baseline": baseline,
        "choices_per_item": choices_per_item or [],
        "runs": runs,
        "summary": summary,
        "ranking": ranking,
        "paired": paired,
        "correlation": corr,
        "reward_curves": curves,
    }


def harness_summary(runs: list[dict]) -> dict:
    """``{task: {metric: summary_stats over the runs}}`` of the runs' lm-evaluation-harness numbers
    (``heldout["lm_eval"]``; the stderr and document counts left out)."""
    values: dict[str, dict[str, list]] = {}
    for r in runs:
        for task, metrics in (r["heldout"].get("lm_eval") or {}).items():
            for m, v in metrics.items():
                if m != "n" and "_stderr" not in m:
                    values.setdefault(task, {}).setdefault(m, []).append(v)
    return {task: {m: summary_stats(v) for m, v in ms.items()} for task, ms in values.items()}


def reward_curve(run_dir: str | None) -> dict:
    """The reward per step of the run that produced a generator (RUN_DIR/metrics.jsonl)."""
    if not run_dir:
        return {"run_dir": None, "available": False, "why": "the export names no run_dir"}
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return {"run_dir": run_dir, "available": False, "why": f"{path} not found"}
    rows = [row for row in iter_log_rows(path) if "reward" in row and "step" in row]
    if not rows:
        return {"run_dir": run_dir, "available": False, "why": f"{path} holds no reward rows"}
    w = max(1, len(rows) // 5)
    first = [r["reward"] for r in rows[:w]]
    last = [r["reward"] for r in rows[-w:]]
    return {"run_dir": run_dir, "available": True, "steps": [r["step"] for r in rows],
            "reward": [r["reward"] for r in rows], "valid_rate": [r.get("valid_rate") for r in rows],
            "influence_mean": [r.get("influence_mean") for r in rows],
            "first_20pct_mean": sum(first) / len(first), "last_20pct_mean": sum(last) / len(last)}


def format_number(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def format_mean_std(st: dict, digits: int = 3) -> str:
    if st["mean"] is None:
        return "-"
    return f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f}" if st["n"] > 1 else f"{st['mean']:.{digits}f}"


def jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def format_table(report: dict) -> str:
    """The main table (markdown): one row per source, mean ± std over seeds, and the untrained target."""
    primary = report["primary_metric"]
    head = ("| source | kind | test loss ↓ | acc ↑ | acc_norm ↑ | gold-choice NLL ↓ | " + f"{primary} gain | "
            "mean influence | validity | distinct-2 | samples | tokens |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    b = report["baseline"]
    lines.append(f"| (untrained target) | - | {format_number(b['loss'])} | {format_number(b.get('acc'))} | {format_number(b.get('acc_norm'))} "
                 f"| {format_number(b.get('gold_choice_nll'))} | 0 | - | - | - | 0 | 0 |")
    for name in report["ranking"]:
        s = report["summary"][name]
        kind = report["sources"][name]["kind"]
        lines.append(f"| **{name}** | {kind} | {format_mean_std(s['loss'])} | {format_mean_std(s['acc'])} | {format_mean_std(s['acc_norm'])} | "
                     f"{format_mean_std(s['gold_choice_nll'])} | "
                     f"{format_mean_std(s[primary + '_gain'])} | {format_mean_std(s['influence_mean'], 4)} | {format_mean_std(s['validity_rate'], 2)} | "
                     f"{format_mean_std(s['distinct_2'])} | {format_mean_std(s['samples'], 0)} | {format_mean_std(s['tokens'], 0)} |")
    return "\n".join(lines)


def table_rows(report: dict) -> tuple[list[str], list[list]]:
    """:func:`format_table`'s table as numbers (columns, rows): the untrained target, then each source in rank
    order; a metric is its mean and std over seeds (None where there is none)."""
    primary = report["primary_metric"]
    metrics = ("loss", "acc", "acc_norm", "gold_choice_nll", f"{primary}_gain", "influence_mean", "validity_rate",
               "distinct_2", "samples", "tokens")
    columns = ["source", "kind", "rank"] + [c for m in metrics for c in (m, f"{m}_std")]
    b = report["baseline"]
    base = {"loss": b.get("loss"), "acc": b.get("acc"), "acc_norm": b.get("acc_norm"),
            "gold_choice_nll": b.get("gold_choice_nll"), f"{primary}_gain": 0.0, "samples": 0, "tokens": 0}
    rows = [["(untrained target)", "-", None] + [v for m in metrics for v in (base.get(m), None)]]
    for rank, name in enumerate(report["ranking"], 1):
        s = report["summary"][name]
        rows.append([name, report["sources"][name]["kind"], rank]
                    + [v for m in metrics for v in (s[m]["mean"], s[m]["std"])])
    return columns, rows


def format_markdown(report: dict) -> str:
    """report.md: the table, then one section each (per seed, paired wins, influence vs gain, datasets, subtasks,
    lm-evaluation-harness tasks, reward curves, plots, timing)."""
    out = (_md_header(report) + _md_per_seed(report) + _md_paired(report) + _md_correlation(report)
           + _md_datasets(report) + _md_subtasks(report) + _md_harness(report) + _md_closing(report))
    return "\n".join(out) + "\n"


def _md_header(report: dict) -> list[str]:
    primary, seeds, cfg = report["primary_metric"], report["seeds"], report["config"]["eval"]
    return [
        "# rubric-rl evaluate",
        "",
        f"Target `{report['target']}` fine-tuned ({cfg['eval_finetune']}, {cfg['eval_epochs']} epochs, lr "
        f"{cfg['eval_learning_rate']}, batch {cfg['eval_batch_size']}) on {cfg['eval_num_samples']} accepted samples "
        f"per source and seed; teacher `{report['config']['teacher']['teacher_backend']}`; seeds {seeds}; "
        f"held-out test `{cfg['eval_test_data']}`. Sources ranked by mean test **{primary}** "
        f"({'lower' if LOWER_IS_BETTER[primary] else 'higher'} is better); ± is the std over seeds.",
        "",
        format_table(report),
    ]


def _md_per_seed(report: dict) -> list[str]:
    primary, seeds = report["primary_metric"], report["seeds"]
    out = ["", "## Per seed", "",
           "| source | " + " | ".join(f"seed {s}: {primary} / acc / influence" for s in seeds) + " |",
           "|---|" + "---|" * len(seeds)]
    by = {(r["source"], r["seed"]): r for r in report["runs"]}
    for name in report["ranking"]:
        cells = []
        for s in seeds:
            r = by[(name, s)]
            cells.append(f"{format_number(r['heldout'].get(primary))} / {format_number(r['heldout'].get('acc'))} / "
                         f"{format_number(r['influence']['mean'], 4)}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def _md_paired(report: dict) -> list[str]:
    primary, names = report["primary_metric"], report["ranking"]
    out = ["", f"## Paired wins on {primary} (same seed = same documents, teacher seeds, target init)", ""]
    out.append("| A beats B in k/n seeds | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for a in names:
        cells = []
        for b in names:
            if a == b:
                cells.append("-")
            else:
                p = report["paired"][f"{a}>{b}"]
                cells.append(f"{p['wins']}/{p['seeds']} ({format_number(p['mean_advantage'], 4)})")
        out.append(f"| {a} | " + " | ".join(cells) + " |")
    return out


def _md_correlation(report: dict) -> list[str]:
    primary = report["primary_metric"]
    c = report["correlation"][f"influence_vs_{primary}_gain"]
    out = ["", "## Influence vs held-out gain", "",
           f"Pearson r between a dataset's mean influence and its {primary} gain over {c['n']} (source, seed) "
           f"datasets: **{format_number(c['pearson_r'])}** (Spearman {format_number(c['spearman_rho'])}, permutation p "
           f"{format_number(c['p_permutation'])}); OptimSyn reports r = 0.71."]
    for m in PRIMARY_METRICS:
        if m != primary:
            cm = report["correlation"][f"influence_vs_{m}_gain"]
            out.append(f"- vs {m} gain: r = {format_number(cm['pearson_r'])} (n = {cm['n']})")
    return out


def _md_datasets(report: dict) -> list[str]:
    out = ["", "## Datasets", "", "| source | validity | rejected (all seeds) | formats (all seeds) | distinct-1/2/3 |",
           "|---|---|---|---|---|"]
    for name in report["ranking"]:
        rs = [r for r in report["runs"] if r["source"] == name]
        rej, fm = Counter(), Counter()
        for r in rs:
            rej.update(r["synthesis"]["rejected"])
            fm.update(r["dataset"]["formats"])
        s = report["summary"][name]
        out.append(f"| {name} | {format_mean_std(s['validity_rate'], 2)} | "
                   f"{', '.join(f'{k} {v}' for k, v in rej.most_common(4)) or '-'} | "
                   f"{', '.join(f'{k} {v}' for k, v in fm.most_common(4))} | "
                   f"{format_number(s['distinct_1']['mean'])} / {format_number(s['distinct_2']['mean'])} / {format_number(s['distinct_3']['mean'])} |")
    return out


def _md_subtasks(report: dict) -> list[str]:
    subt = {}
    for r in report["runs"]:
        for st, v in (r["heldout"].get("per_subtask") or {}).items():
            subt.setdefault(r["source"], {}).setdefault(st, []).append(v["acc"])
    if not subt:
        return []
    sts = sorted({st for v in subt.values() for st in v})
    out = ["", "## Test accuracy per subtask (mean over seeds)", "",
           "| source | " + " | ".join(sts) + " |", "|---|" + "---|" * len(sts)]
    base_sub = report["baseline"].get("per_subtask") or {}
    out.append("| (untrained) | " + " | ".join(format_number(base_sub.get(st, {}).get("acc")) for st in sts) + " |")
    for name in report["ranking"]:
        vals = subt.get(name, {})
        out.append(f"| {name} | " + " | ".join(format_number(sum(vals[st]) / len(vals[st])) if st in vals else "-"
                                               for st in sts) + " |")
    return out


def _md_harness(report: dict) -> list[str]:
    """The lm-evaluation-harness tasks (eval_lm_eval_tasks): one column per task and metric, the untrained target
    first, then the sources in rank order."""
    cfg = report["config"]["eval"]
    if not cfg.get("eval_lm_eval_tasks"):
        return []
    base = report["baseline"].get("lm_eval") or {}
    cols = [(t, m) for t, ms in base.items() for m in ms if m != "n" and "_stderr" not in m]
    docs = ", ".join(f"{t} {ms.get('n')}" for t, ms in base.items())
    out = ["", "## lm-evaluation-harness tasks (mean over seeds)", "",
           f"`lm_eval.simple_evaluate` {report.get('lm_eval_version') or ''} on each in-memory target: chat template "
           f"{'on' if cfg['eval_lm_eval_apply_chat_template'] else 'off'}, {cfg['eval_lm_eval_num_fewshot']}-shot, "
           f"documents per task: {docs or '-'}. The ranking's acc is rubric-rl's scorer; the harness's "
           f"`{HELDOUT_TASK}` is the same test set in its `prompt` context mode (rubric_rl/evaluate/harness.py).",
           "", "| source | " + " | ".join(f"{t} {m}" for t, m in cols) + " |", "|---|" + "---|" * len(cols)]
    out.append("| (untrained target) | " + " | ".join(format_number(base[t].get(m)) for t, m in cols) + " |")
    for name in report["ranking"]:
        s = report["summary"][name].get("lm_eval") or {}
        out.append(f"| {name} | " + " | ".join(format_mean_std(s[t][m]) if m in s.get(t, {}) else "-"
                                               for t, m in cols) + " |")
    return out


def _md_closing(report: dict) -> list[str]:
    """The generators' reward curves, the plots and the timing."""
    out = []
    curves = report.get("reward_curves") or {}
    if curves:
        out += ["", "## Reward curves of the generators' training runs", ""]
        for name, cv in curves.items():
            if cv.get("available"):
                out.append(f"- {name}: `{cv['run_dir']}`, {len(cv['steps'])} steps, mean reward first 20% "
                           f"{format_number(cv['first_20pct_mean'])} -> last 20% {format_number(cv['last_20pct_mean'])} "
                           f"(reward_curve_{name}.png)")
            else:
                out.append(f"- {name}: not available ({cv.get('why')})")
    plots = report.get("plots") or []
    if plots:
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    t = report.get("timing") or {}
    if t:
        out += ["", "Timing (s): " + ", ".join(f"{k} {v}" for k, v in t.items())]
    return out


def format_paired(report: dict) -> str:
    """One line: how often each source beats each lower-ranked one on the primary metric, seed by seed."""
    names, paired = report["ranking"], report["paired"]
    return f"Paired wins on test {report['primary_metric']} (same seed): " + ", ".join(
        f"{a} > {b} in {paired[f'{a}>{b}']['wins']}/{paired[f'{a}>{b}']['seeds']}"
        for k, a in enumerate(names) for b in names[k + 1:])
