"""The evaluation's plots: heldout.png, influence_vs_gain.png, reward_curve_<source>.png."""

from __future__ import annotations

from pathlib import Path

from ..configs.evaluate import LOWER_IS_BETTER, PRIMARY_METRICS
from .report import _fmt
from .synthesis import Source


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
        means = [report["summary"][n][m]["mean"] or 0.0 for n in names]
        stds = [report["summary"][n][m]["std"] or 0.0 for n in names]
        x = range(len(names))
        ax.bar(x, means, yerr=stds, capsize=5, color=[colors[i % len(colors)] for i in x], alpha=0.8)
        for i, n in enumerate(names):
            vals = [v for v in report["summary"][n][m]["values"] if v is not None]
            ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
        base = report["baseline"].get(m)
        if base is not None:
            ax.axhline(base, color="gray", linestyle="--", linewidth=1, label="untrained target")
        if m in ("acc", "acc_norm"):
            n_choices = report.get("choices_per_item") or []
            if n_choices:
                ax.axhline(sum(1 / k for k in n_choices) / len(n_choices), color="red", linestyle=":",
                           linewidth=1, label="chance")
            ax.set_ylim(0, 1)
        else:
            lo = min(min(v for v in report["summary"][n][m]["values"] if v is not None) for n in names)
            hi = max([max(v for v in report["summary"][n][m]["values"] if v is not None) for n in names]
                     + ([base] if base is not None else []))
            ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo + 1e-9)), hi + 0.1 * (hi - lo + 1e-9))
        ax.set_xticks(list(x), names, rotation=20)
        ax.set_title(f"test {m} ({'lower' if lower_better[m] else 'higher'} is better)", fontsize=10)
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
            ax.scatter(xs, ys, label=n, color=colors[k % len(colors)])
        c = report["correlation"][f"influence_vs_{primary}_gain"]
        ax.set_xlabel("dataset mean influence")
        ax.set_ylabel(f"held-out {primary} gain")
        ax.set_title(f"Pearson r = {_fmt(c['pearson_r'])} (n = {c['n']})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "influence_vs_gain.png", dpi=120)
        plt.close(fig)
        written.append("influence_vs_gain.png")

    for name, cv in (report.get("reward_curves") or {}).items():
        if not cv.get("available"):
            continue
        steps, rew = cv["steps"], cv["reward"]
        w = max(1, len(rew) // 10)
        smooth = [sum(rew[max(0, i - w + 1):i + 1]) / len(rew[max(0, i - w + 1):i + 1]) for i in range(len(rew))]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot(steps, rew, alpha=0.35, label="reward")
        ax.plot(steps, smooth, label=f"reward (moving mean, {w})")
        vr = [v for v in cv["valid_rate"] if v is not None]
        if len(vr) == len(steps):
            ax.plot(steps, vr, alpha=0.6, linestyle=":", label="valid rate")
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("reward (as shaped in training)")
        ax.set_title(f"training reward of {name} ({cv['run_dir']})", fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        im = [(st, v) for st, v in zip(steps, cv["influence_mean"]) if v is not None]
        if im:
            ax2 = ax.twinx()
            ax2.plot([a for a, _ in im], [b for _, b in im], color="tab:red", alpha=0.5, linewidth=1,
                     label="raw influence, batch mean")
            ax2.set_ylabel("raw influence", fontsize=8)
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, fontsize=7, loc="upper left")
        fig.tight_layout()
        fname = f"reward_curve_{name}.png"
        fig.savefig(out_dir / fname, dpi=120)
        plt.close(fig)
        written.append(fname)
    return written
