"""The closed-loop report: one entry per selection rule (per-seed curves of the held-out metric vs budget spent,
final metrics over seeds, paired comparison with the baselines), its markdown, and ``budget_curve.png``."""

from __future__ import annotations

from pathlib import Path

from ..configs.closed_loop import RANDOM, REPORT_FORMAT, STATIC
from ..configs.evaluate import LOWER_IS_BETTER, PRIMARY_METRICS
from ..evaluate.report import format_number, format_mean_std
from ..evaluate.stats import summary_stats

METRICS = PRIMARY_METRICS + ("validation_loss",)


def build_report(loop_cfg, eval_cfg, runs: list[dict], baseline: dict, *, target: str) -> dict:
    primary = eval_cfg.eval_primary_metric
    lower = LOWER_IS_BETTER[primary]
    unit = loop_cfg.loop_budget_unit
    rules = {}
    for rule in loop_cfg.loop_rules:
        rs = sorted((r for r in runs if r["rule"] == rule), key=lambda r: r["seed"])
        curves = {r["seed"]: [{"spent": m[f"spent_{unit}"], "samples": m["spent_samples"],
                               "queries": m["spent_queries"], **{k: m["heldout"].get(k) for k in METRICS}}
                              for m in r["rounds"]] for r in rs}
        n_rounds = len(rs[0]["rounds"]) if rs else 0
        mean_curve = [{"spent": summary_stats([curves[s][t]["spent"] for s in curves])["mean"],
                       **{k: summary_stats([curves[s][t][k] for s in curves]) for k in METRICS}} for t in range(n_rounds)]
        rules[rule] = {
            "rounds": loop_cfg.rounds_of(rule),
            "final": {k: summary_stats([r["final"].get(k) for r in rs]) for k in METRICS},
            "accepted": summary_stats([r["accepted"] for r in rs]), "queries": summary_stats([r["queries"] for r in rs]),
            "seeds": {str(r["seed"]): {"final": {k: r["final"].get(k) for k in METRICS}, "accepted": r["accepted"],
                                       "queries": r["queries"], "dataset": r["dataset_path"]} for r in rs},
            "curve": curves, "mean_curve": mean_curve,
        }
    by = {(r["rule"], r["seed"]): r["final"].get(primary) for r in runs}
    paired = {}
    for a in loop_cfg.loop_rules:
        for b in (STATIC, RANDOM):
            if a == b or b not in loop_cfg.loop_rules:
                continue
            diffs = [(by[b, s] - by[a, s]) if lower else (by[a, s] - by[b, s]) for s in eval_cfg.eval_seeds
                     if by.get((a, s)) is not None and by.get((b, s)) is not None]
            paired[f"{a}>{b}"] = {"wins": sum(d > 0 for d in diffs), "seeds": len(diffs),
                                  "mean_advantage": summary_stats(diffs)["mean"], "advantages": diffs}
    return {"format": REPORT_FORMAT, "primary_metric": primary, "target": target, "budget": loop_cfg.loop_budget,
            "budget_unit": unit, "rounds": loop_cfg.loop_rounds, "strategy": loop_cfg.loop_strategy,
            "rubric_source": loop_cfg.loop_rubric_source, "seed_data": loop_cfg.loop_seed_data,
            "num_seeds": loop_cfg.loop_num_seeds, "seeds": list(eval_cfg.eval_seeds), "test_data": eval_cfg.eval_test_data,
            "baseline": {k: baseline.get(k) for k in METRICS}, "rules": rules, "paired": paired}


def format_table(report: dict) -> str:
    p = report["primary_metric"]
    seeds = report["seeds"]
    head = (f"| rule | rounds | test {p} (mean ± std) | " + " | ".join(f"seed {s}" for s in seeds)
            + " | acc | validation loss | samples | queries |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for rule, r in report["rules"].items():
        per = " | ".join(format_number(r["seeds"].get(str(s), {}).get("final", {}).get(p)) for s in seeds)
        lines.append(f"| {rule} | {r['rounds']} | {format_mean_std(r['final'][p], 4)} | {per} | {format_mean_std(r['final']['acc'], 4)} | "
                     f"{format_mean_std(r['final']['validation_loss'], 4)} | {format_number(r['accepted']['mean'])} | "
                     f"{format_number(r['queries']['mean'])} |")
    lines.append(f"| (untrained target) | | {format_number(report['baseline'].get(p))} | " + " | ".join("" for _ in seeds)
                 + f" | {format_number(report['baseline'].get('acc'))} | {format_number(report['baseline'].get('validation_loss'))} "
                   "| 0 | 0 |")
    return "\n".join(lines)


def format_paired(report: dict) -> str:
    p = report["primary_metric"]
    if not report["paired"]:
        return "Paired: no static or random baseline among the rules."
    out = [f"Paired by seed (test {p}; advantage > 0 = the first rule is better):"]
    for k, v in report["paired"].items():
        adv = ", ".join(f"{d:+.4f}" for d in v["advantages"])
        out.append(f"- {k.replace('>', ' vs ')}: better in {v['wins']}/{v['seeds']} seeds, mean advantage "
                   f"{format_number(v['mean_advantage'])} ({adv})")
    return "\n".join(out)


def format_markdown(report: dict) -> str:
    md = ["# Closed-loop synthesis", "",
          f"Budget {report['budget']} {report['budget_unit']} per loop; {report['rounds']} rounds (static: 1); "
          f"strategy {report['strategy']}; rubric source {report['rubric_source']}; seed questions "
          f"{report['seed_data']}; target {report['target']}; held-out test set {report['test_data']} (reported, "
          "never used to select).", "", f"Command: `{report.get('command')}`, commit {report.get('commit')}", "",
          format_table(report), "", format_paired(report), "", "Curves (mean over seeds of the held-out metric after "
          "each round) are in budget_curve.png and report.json (`rules.<rule>.curve`).", ""]
    return "\n".join(md)


def write_plot(report: dict, out_dir: Path) -> str:
    """budget_curve.png: the held-out primary metric vs budget spent, one line per rule (mean over seeds, a band
    of one std) from the untrained target at 0 (drawn once, black); a one-round rule (static) is its end point with
    a std bar. Each rule has its own marker and line style and hollow markers of decreasing size, so rules whose
    curves coincide (e.g. two rules that pick the same seeds) stay visible on top of one another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers, styles = ("o", "^", "v", "D", "P", "X", "<", ">"), ("-", "-.", ":", (0, (3, 1, 1, 1, 1, 1)))
    p = report["primary_metric"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    base = report["baseline"].get(p)
    rules = list(report["rules"].items())
    for k, (rule, r) in enumerate(rules):
        xs = [0] + [c["spent"] for c in r["mean_curve"]]
        means = [base] + [c[p]["mean"] for c in r["mean_curve"]]
        stds = [0.0] + [c[p]["std"] or 0.0 for c in r["mean_curve"]]
        size = 4 + 0.9 * (len(rules) - k)  # earlier rules bigger: identical points show as nested markers
        if len(xs) == 2:  # one round (static): its end point only, no line from the untrained target
            ax.errorbar(xs[1:], means[1:], yerr=stds[1:], fmt="s", capsize=4, markersize=size + 2, fillstyle="none",
                        markeredgewidth=1.5, label=f"{rule} (1 round)", zorder=3)
            continue
        style = "--" if rule == RANDOM else styles[k % len(styles)]
        (line,) = ax.plot(xs[1:], means[1:], linestyle=style, marker=markers[k % len(markers)], markersize=size,
                          fillstyle="none", markeredgewidth=1.3, label=rule)
        ax.plot(xs[:2], means[:2], linestyle=style, color=line.get_color())  # from the untrained target: no marker
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=line.get_color(), alpha=0.12)
    if base is not None:
        ax.plot([0], [base], "o", color="black", markersize=6, label="untrained target", zorder=4)
    ax.set_xlabel(f"budget spent ({report['budget_unit']})")
    ax.set_ylabel(f"held-out test {p}")
    ax.set_title(f"closed loop: test {p} vs budget ({len(report['seeds'])} seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = "budget_curve.png"
    fig.savefig(out_dir / name, dpi=120)
    plt.close(fig)
    return name
