"""The evaluation's plots: heldout.png, influence_vs_gain.png, reward_curve_<source>.png.

Conventions (shared with ``export.plot_reward_curve`` and ``loop.report.write_plot``): a bar starts at 0, so only a
quantity whose 0 means something is a bar (accuracy); a loss is a dot plot (mean ± std, a dot per seed) on an axis
that does not start at 0, because no dataset comes near a loss of 0 and bars from 0 would hide the differences.
Every line has a legend entry and sits on an axis labelled with its unit; series that can coincide differ in
marker and line style, not only in colour; titles name runs by folder name, never by an absolute path.
"""

from __future__ import annotations

from pathlib import Path

from ..configs.evaluate import LOWER_IS_BETTER, PRIMARY_METRICS
from .report import format_number
from .synthesis import Source

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
BAR_METRICS = ("acc", "acc_norm")  # 0 is meaningful (no item right): bars from 0; the losses are dot plots


def _seed_offsets(n: int, width: float = 0.24) -> list[float]:
    """x offsets that spread ``n`` per-seed dots around their source's position, so equal values stay visible."""
    return [0.0] if n <= 1 else [-width / 2 + width * k / (n - 1) for k in range(n)]


def moving_mean(values: list[float], w: int) -> list[float]:
    return [sum(values[max(0, i - w + 1):i + 1]) / len(values[max(0, i - w + 1):i + 1]) for i in range(len(values))]


def write_plots(report: dict, sources: list[Source], out_dir: Path) -> list[str]:
    """heldout.png, influence_vs_gain.png, reward_curve_<name>.png; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = [s.name for s in sources]
    metrics = [m for m in PRIMARY_METRICS + ("gold_choice_nll",) if report["summary"][names[0]][m]["mean"] is not None]
    lower_better = {**LOWER_IS_BETTER, "gold_choice_nll": True}
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.9 * len(metrics), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes[0], metrics):
        means = [report["summary"][n][m]["mean"] for n in names]
        stds = [report["summary"][n][m]["std"] or 0.0 for n in names]
        x = list(range(len(names)))
        cols = [colors[i % len(colors)] for i in x]
        shown = [i for i in x if means[i] is not None]
        if m in BAR_METRICS:
            ax.bar(shown, [means[i] for i in shown], yerr=[stds[i] for i in shown], capsize=5,
                   color=[cols[i] for i in shown], alpha=0.8)
        else:  # dot plot: mean ± std
            for i in shown:
                ax.errorbar([i], [means[i]], yerr=[stds[i]], fmt="D", color=cols[i], markersize=8, capsize=5,
                            zorder=2)
        # one dot per seed: over the bar, or beside the mean's marker (not hiding it) in a dot plot
        shift = 0.0 if m in BAR_METRICS else 0.25
        for i, n in enumerate(names):
            vals = [v for v in report["summary"][n][m]["values"] if v is not None]
            offsets = _seed_offsets(len(vals), width=0.24 if m in BAR_METRICS else 0.16)
            ax.scatter([i + shift + o for o in offsets], vals, facecolors="white", edgecolors="black", s=14,
                       zorder=3, label="one seed" if i == 0 else None)
        base = report["baseline"].get(m)
        if base is not None:
            ax.axhline(base, color="gray", linestyle="--", linewidth=1, label="untrained target")
        if m in BAR_METRICS:
            n_choices = report.get("choices_per_item") or []
            if n_choices:
                ax.axhline(sum(1 / k for k in n_choices) / len(n_choices), color="red", linestyle=":",
                           linewidth=1, label="chance")
            ax.set_ylim(0, 1)
        else:
            ax.margins(y=0.12)
        ax.set_xticks(x, names, rotation=30, ha="right")
        kind = "bars from 0" if m in BAR_METRICS else "dot plot, axis not from 0"
        ax.set_title(f"test {m} ({'lower' if lower_better[m] else 'higher'} is better)\n{kind}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"held-out metrics, mean ± std over seeds {report['seeds']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "heldout.png", dpi=120)
    plt.close(fig)
    written.append("heldout.png")

    primary = report["primary_metric"]
    pts = [(r["source"], r["influence"]["mean"], r["gain"][primary]) for r in report["runs"]]
    if any(i is not None and g is not None for _, i, g in pts):
        fig, ax = plt.subplots(figsize=(5, 4))
        for k, n in enumerate(names):
            xs = [i for s, i, g in pts if s == n and i is not None and g is not None]
            ys = [g for s, i, g in pts if s == n and i is not None and g is not None]
            # hollow, a marker per source: points of different sources that coincide stay visible
            ax.scatter(xs, ys, label=n, marker=MARKERS[k % len(MARKERS)], facecolors="none",
                       edgecolors=colors[k % len(colors)], s=40 + 6 * (len(names) - k), linewidths=1.3)
        c = report["correlation"][f"influence_vs_{primary}_gain"]
        ax.set_xlabel("dataset mean influence")
        ax.set_ylabel(f"held-out {primary} gain")
        ax.set_title(f"Pearson r = {format_number(c['pearson_r'])} (n = {c['n']})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "influence_vs_gain.png", dpi=120)
        plt.close(fig)
        written.append("influence_vs_gain.png")

    for name, cv in (report.get("reward_curves") or {}).items():
        if not cv.get("available"):
            continue
        fname = f"reward_curve_{name}.png"
        _reward_curve(plt, name, cv, out_dir / fname)
        written.append(fname)
    return written


def _reward_curve(plt, name: str, cv: dict, path: Path) -> None:
    """Top: the shaped reward per GRPO step (and its moving mean when there are enough steps) with the raw
    influence on its own right axis; bottom: the valid rate on its own 0-1 axis."""
    from matplotlib.ticker import MaxNLocator

    steps, rew = cv["steps"], cv["reward"]
    w = max(1, len(rew) // 10)
    vr = [(s, v) for s, v in zip(steps, cv.get("valid_rate") or []) if v is not None]
    fig, (ax, ax_v) = plt.subplots(2, 1, figsize=(6.4, 4.8), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    few = len(steps) <= 20
    ax.plot(steps, rew, alpha=0.45 if w > 1 else 1.0, marker="o" if few else None, markersize=3, label="reward")
    if w > 1:  # with under 20 steps the moving mean is the reward itself: not drawn over it
        ax.plot(steps, moving_mean(rew, w), linewidth=2, label=f"reward, moving mean of {w} steps")
    ax.set_ylabel("reward (as shaped)")
    handles, labels = ax.get_legend_handles_labels()
    im = [(st, v) for st, v in zip(steps, cv.get("influence_mean") or []) if v is not None]
    if im:
        ax2 = ax.twinx()
        ax2.plot([a for a, _ in im], [b for _, b in im], color="tab:red", alpha=0.6, linewidth=1, linestyle="--",
                 marker="s" if few else None, markersize=3, label="raw influence, batch mean (right axis)")
        ax2.set_ylabel("raw influence", fontsize=8)
        # wider margins than the reward axis: two series of the same shape (2 steps, or a reward that follows the
        # influence) would otherwise be drawn exactly on top of each other by the two autoscaled axes
        ax2.margins(y=0.3)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=7, loc="best")
    run = Path(cv["run_dir"]).name if cv.get("run_dir") else "?"
    ax.set_title(f"training reward of {name} (run {run})", fontsize=9)
    if vr:
        ax_v.plot([s for s, _ in vr], [v for _, v in vr], color="tab:green", marker="o" if few else None,
                  markersize=3, label="valid rate")
        ax_v.legend(fontsize=7, loc="lower right")
    else:
        ax_v.text(0.5, 0.5, "no valid rate logged", ha="center", va="center", transform=ax_v.transAxes, fontsize=8)
    ax_v.set_ylim(0, 1.05)
    ax_v.set_ylabel("valid rate", fontsize=8)
    ax_v.set_xlabel("GRPO step")
    ax_v.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
