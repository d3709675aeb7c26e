"""The PNGs say what they show: bars start at 0 (losses are dot plots), every line has a legend entry and its own
axis, no absolute path in a title, and no curve hidden under another. Drawn from the shipped reports (real report
dicts) and a synthetic reward curve; the figures are caught at ``savefig`` and inspected."""

from __future__ import annotations

import json
from types import SimpleNamespace

import matplotlib
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from tests.conftest import ROOT

matplotlib.use("Agg")


@pytest.fixture
def figures(monkeypatch):
    """{file name: Figure} of every figure saved while the test runs."""
    saved = {}
    real = Figure.savefig

    def savefig(self, fname, *a, **kw):
        saved[str(fname).rsplit("/", 1)[-1]] = self
        return real(self, fname, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def _curve(n):
    steps = list(range(1, n + 1))
    return {"run_dir": "/home/someone/runs/quickstart", "available": True, "steps": steps,
            "reward": [0.3 + 0.01 * s for s in steps], "valid_rate": [0.5 + 0.004 * s for s in steps],
            "influence_mean": [0.003 + 1e-5 * s for s in steps]}


def _eval_report(n_steps):
    report = json.loads((ROOT / "reports" / "proof" / "calibration_quickstart" / "report.json").read_text())
    report["reward_curves"] = {"trained": _curve(n_steps)}
    return report, [SimpleNamespace(name=k) for k in report["summary"]]


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def test_heldout_bars_start_at_zero_and_losses_are_dot_plots(figures, tmp_path):
    from rubric_rl.evaluate.plots import write_plots

    write_plots(*_eval_report(60), tmp_path)
    axes = figures["heldout.png"].axes
    by_metric = {ax.get_title().split()[1]: ax for ax in axes}
    assert set(by_metric) == {"loss", "acc", "acc_norm", "gold_choice_nll"}
    for m in ("acc", "acc_norm"):
        bars = [p for p in by_metric[m].patches if isinstance(p, Rectangle)]
        assert bars and by_metric[m].get_ylim()[0] == 0 and "bars from 0" in by_metric[m].get_title()
    for m in ("loss", "gold_choice_nll"):  # no bar on an axis that does not start at 0
        assert not [p for p in by_metric[m].patches if isinstance(p, Rectangle)]
        assert by_metric[m].get_ylim()[0] > 0 and "dot plot" in by_metric[m].get_title()


@pytest.mark.parametrize("n_steps", [2, 8, 60])
def test_reward_curve_lines_have_their_axis_and_legend_and_no_path(figures, tmp_path, n_steps):
    from rubric_rl.evaluate.plots import write_plots

    write_plots(*_eval_report(n_steps), tmp_path)
    fig = figures["reward_curve_trained.png"]
    assert not [t for t in _texts(fig) if "/home/someone" in t]
    assert any("run quickstart" in t for t in _texts(fig))
    valid_axes = [ax for ax in fig.axes if ax.get_ylabel() == "valid rate"]
    assert len(valid_axes) == 1 and valid_axes[0].get_ylim() == (0, 1.05)
    assert [t.get_text() for t in valid_axes[0].get_legend().get_texts()] == ["valid rate"]
    reward_ax = next(ax for ax in fig.axes if ax.get_legend() is not None and ax is not valid_axes[0])
    labels = [t.get_text() for t in reward_ax.get_legend().get_texts()]
    assert "reward" in labels and any("raw influence" in x for x in labels)
    # a moving mean over 1 step would be drawn exactly over the reward: only with enough steps
    assert any("moving mean" in x for x in labels) == (n_steps >= 20)
    # the reward and the influence (same shape here, each on its autoscaled axis) are not drawn on one another
    import numpy as np

    def drawn(label):
        line = next(ln for a in fig.axes for ln in a.get_lines() if ln.get_label() == label)
        return line.get_transform().transform(line.get_xydata())[:, 1]

    assert not np.allclose(drawn("reward"), drawn("raw influence, batch mean (right axis)"), atol=2)


@pytest.mark.parametrize("n_steps", [8, 60])
def test_export_reward_curve_names_its_valid_rate_line(figures, tmp_path, n_steps):
    from rubric_rl.export import plot_reward_curve

    metrics = tmp_path / "metrics.jsonl"
    c = _curve(n_steps)
    metrics.write_text("".join(json.dumps({"step": s, "reward": r, "valid_rate": v}) + "\n"
                               for s, r, v in zip(c["steps"], c["reward"], c["valid_rate"])))
    plot_reward_curve(metrics, tmp_path / "reward_curve.png")
    fig = figures["reward_curve.png"]
    (ax,) = [a for a in fig.axes if a.get_legend() is not None]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "valid rate (right axis)" in labels
    assert any("moving mean" in x for x in labels) == (n_steps >= 20)
    assert any(a.get_ylabel() == "valid rate" for a in fig.axes)


def test_budget_curve_rules_differ_in_marker_and_style(figures, tmp_path):
    from rubric_rl.loop.report import write_plot

    report = json.loads((ROOT / "reports" / "closed_loop" / "report.json").read_text())["budgets"]["48"]
    write_plot(report, tmp_path)
    (ax,) = figures["budget_curve.png"].axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    rules = [r for r in report["rules"] if report["rules"][r]["rounds"] > 1]
    looks = {(lines[r].get_marker(), str(lines[r].get_linestyle())) for r in rules}
    assert len(looks) == len(rules), looks  # two rules with equal curves stay told apart
    assert labels.count("untrained target") == 1
    # the common start at 0 is drawn once, not under every rule's marker
    assert all(0 not in list(lines[r].get_xdata()) for r in rules)
