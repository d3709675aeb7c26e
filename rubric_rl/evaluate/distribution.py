"""The quickstart over training seeds: each run's numbers read from its folder, a summary per condition
(``scripts/reproduce_quickstart.py`` writes it to ``reports/quickstart/report.json`` / ``report.md``), and the
line ``train`` prints after its evaluation to compare its run with that committed distribution.

What a run folder of ``rubric-rl train`` with ``evaluate_config`` holds, and what is read from it:

* ``rubric_rl_args.json``: the run's settings (its seed; the runs of one condition must agree on every field
  that changes what a run computes, :func:`rubric_rl.rundir.changed_fields`, the seed aside);
* ``run_summary.json``: reward and influence, mean of the first vs the last 20 % of logged steps
  (``train.reward_summary``: 20 steps each of the quickstart's 100);
* ``eval/report.json``: the downstream evaluation, per evaluation seed the test loss of ``trained``, ``seed``
  and ``none`` (lower is better; a pair is a win when trained's loss is strictly lower);
* ``reproduce_attempts.json`` (the script's, optional): each attempt's action, command, wall time and exit status.

"The same config" (:func:`settings_differ`): this run's settings equal the reference run's of the condition
``default`` on every field that changes the computation (the free fields of :mod:`rubric_rl.rundir`, such as
``output_dir`` and ``torch_num_threads``, and the seed may differ), and its evaluation settings equal theirs
(progress bars, device, threads and dataset saving aside).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

from ..errors import UserError
from ..rundir import ARGS_FILE, changed_fields

logger = logging.getLogger(__name__)

FORMAT = 1
ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "reports" / "quickstart" / "report.json"  # the committed distribution train compares with
ATTEMPTS_FILE = "reproduce_attempts.json"
SUMMARY_FILE = "run_summary.json"
EVAL_REPORT = Path("eval") / "report.json"
BASELINES = ("seed", "none")  # what the trained generator is compared with, in the quickstart's evaluation
VARYING = frozenset({"seed"})  # differs between a condition's runs by design
FREE_EVAL_FIELDS = frozenset({"eval_progress", "eval_device", "eval_torch_num_threads", "eval_save_datasets",
                              "eval_influence_run_dir"})  # where, not what: a warm-up refuses other settings


class DistributionError(UserError):
    """A run folder the distribution needs is missing, unfinished, or made with other settings."""


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise DistributionError(f"{path}: unreadable ({err})") from None


# --------------------------------------------------------------------------- one run
def eval_numbers(report: dict) -> dict:
    """From an evaluation report: the test loss per evaluation seed of every source, their means, and the
    trained-vs-baseline pairs (``wins``/``losses``/``ties``/``pairs``, a missing loss counted in none)."""
    seeds = list(report["seeds"])
    loss: dict[str, dict] = {}
    for r in report["runs"]:
        loss.setdefault(r["source"], {})[r["seed"]] = _finite(r["heldout"].get("loss"))
    test_loss = {src: [by.get(s) for s in seeds] for src, by in loss.items()}
    out = {"eval_seeds": seeds, "test_loss": test_loss,
           "mean_test_loss": {src: _mean(v) for src, v in test_loss.items()}, "versus": {}}
    for base in BASELINES:
        if "trained" in test_loss and base in test_loss:
            out["versus"][base] = _count([_result(a, b) for a, b in zip(test_loss["trained"], test_loss[base])])
    return out


def _finite(x):
    return x if isinstance(x, int | float) and math.isfinite(x) else None


def _mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _result(trained, other) -> str | None:
    if trained is None or other is None:
        return None
    return "win" if trained < other else "loss" if trained > other else "tie"


def _count(results: list) -> dict:
    done = [r for r in results if r is not None]
    wins = done.count("win")
    return {"wins": wins, "losses": done.count("loss"), "ties": done.count("tie"), "pairs": len(done),
            "share": wins / len(done) if done else None}


def unfinished_reason(run_dir: Path) -> str | None:
    """None when ``run_dir`` holds a finished run (summary + an evaluation report with trained and the seed
    rubrics at every evaluation seed), else what is missing."""
    run_dir = Path(run_dir)
    try:
        report = _read_json(run_dir / EVAL_REPORT)
        summary = _read_json(run_dir / SUMMARY_FILE)
    except DistributionError as err:
        return str(err)
    if report is None:
        return f"no {EVAL_REPORT} (the evaluation did not finish)"
    if summary is None:
        return f"no {SUMMARY_FILE}"
    try:
        numbers = eval_numbers(report)
    except (KeyError, TypeError) as err:
        return f"{EVAL_REPORT} lacks {err} (not a rubric-rl evaluate report)"
    for src in ("trained", "seed"):
        losses = numbers["test_loss"].get(src)
        if not losses or any(v is None for v in losses):
            return f"{EVAL_REPORT} has no test loss of '{src}' for every evaluation seed {numbers['eval_seeds']}"
    return None


def attempts_wall(attempts: list[dict]) -> tuple[float | None, bool]:
    """Wall time of the attempts that made the run's numbers (since the last fresh start or overwrite) and
    whether that chain includes a resume."""
    wall, resumed = None, False
    for a in attempts:
        if a.get("action") in ("fresh", "overwrite"):
            wall, resumed = 0.0, False
        elif a.get("action") == "resume":
            resumed = True
        else:
            continue
        wall = (wall or 0.0) + float(a.get("wall_s") or 0.0)
    return wall, resumed


def collect_run(run_dir: Path, seed: int) -> dict:
    """The numbers of one finished training run; :class:`DistributionError` naming the seed and the folder when
    it is missing, unfinished or of another seed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DistributionError(f"training seed {seed}: no run folder {run_dir}")
    why = unfinished_reason(run_dir)
    if why:
        raise DistributionError(f"training seed {seed}: {run_dir} is not a finished run: {why}")
    args = _read_json(run_dir / ARGS_FILE)
    if args is None:
        raise DistributionError(f"training seed {seed}: {run_dir} has no {ARGS_FILE}")
    if arg_value(args, "seed") != seed:
        raise DistributionError(f"training seed {seed}: {run_dir} holds a run of seed {arg_value(args, 'seed')!r}")
    summary = _read_json(run_dir / SUMMARY_FILE)
    report = _read_json(run_dir / EVAL_REPORT)
    attempts = _read_json(run_dir / ATTEMPTS_FILE) or []
    wall, resumed = attempts_wall(attempts)
    return {"seed": seed, "run_dir": str(run_dir),
            "reward": summary.get("reward", {}), "influence": summary.get("influence", {}),
            **eval_numbers(report),
            "report_paired": {k: {"wins": v["wins"], "seeds": v["seeds"]}
                              for k, v in (report.get("paired") or {}).items() if k.startswith("trained>")},
            "primary_metric": report.get("primary_metric"),
            "commit": summary.get("commit"), "dirty": summary.get("dirty"),
            "wall_s": None if wall is None else round(wall, 1), "resumed": resumed, "attempts": len(attempts),
            "train_command": attempts[-1].get("command") if attempts else None,
            "args": args, "eval_config": (report.get("config") or {}).get("eval")}


def arg_value(args: dict, name: str):
    """A field of a ``rubric_rl_args.json`` (its sections flattened; field names are unique across them)."""
    for fields in args.values():
        if isinstance(fields, dict) and name in fields:
            return fields[name]
    return None


def settings_differ(ref_args: dict, args: dict, ref_eval: dict | None, eval_cfg: dict | None) -> list[str]:
    """The fields on which a run's settings differ from the reference run's in what they compute (the seed and
    the free fields aside); empty = the same config."""
    fields = sorted(set(changed_fields(ref_args, args)) - VARYING)
    ref_eval, eval_cfg = ref_eval or {}, eval_cfg or {}
    default = eval_defaults()  # a field one side predates counts as its default there
    fields += sorted(k for k in set(ref_eval) | set(eval_cfg)
                     if k not in FREE_EVAL_FIELDS and ref_eval.get(k, default.get(k)) != eval_cfg.get(k, default.get(k)))
    return fields


def eval_defaults() -> dict:
    """``EvalConfig``'s default of each field, as a report's ``config.eval`` writes it (``asdict``)."""
    from dataclasses import asdict

    from ..configs.evaluate import EvalConfig

    return asdict(EvalConfig())


# --------------------------------------------------------------------------- the distribution
def spread(values) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "values": list(values)}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals),
            "values": list(values)}


def summarize_condition(name: str, records: list[dict], *, flags: list[str], expect: dict,
                        description: str = "") -> dict:
    """One condition's section of the report from its runs' records (:func:`collect_run`); refuses runs whose
    ``expect``-ed fields or whose settings differ from the first run's."""
    if not records:
        raise DistributionError(f"condition {name}: no training seed")
    problems = []
    for r in records:
        for field, value in expect.items():
            if arg_value(r["args"], field) != value:
                problems.append(f"{r['run_dir']}: {field}={arg_value(r['args'], field)!r}, the condition sets "
                                f"{value!r}")
    ref = records[0]
    for r in records[1:]:
        differ = settings_differ(ref["args"], r["args"], ref["eval_config"], r["eval_config"])
        if differ:
            problems.append(f"{r['run_dir']}: settings differ from {ref['run_dir']} in {', '.join(differ)}")
    if problems:
        raise DistributionError(f"condition {name}: " + "; ".join(problems))
    pairs = []
    for r in records:
        for k, es in enumerate(r["eval_seeds"]):
            row = {"train_seed": r["seed"], "eval_seed": es,
                   **{src: r["test_loss"].get(src, [None] * len(r["eval_seeds"]))[k] for src in ("trained",) + BASELINES}}
            row["result"] = _result(row["trained"], row["seed"])
            row["result_vs_none"] = _result(row["trained"], row["none"])
            pairs.append(row)
    runs = [{k: v for k, v in r.items() if k not in ("args", "eval_config")} for r in records]
    return {
        "description": description, "flags": list(flags), "training_seeds": [r["seed"] for r in records],
        "eval_seeds": ref["eval_seeds"], "runs": runs, "pairs": pairs,
        "trained_beats_seed": _count([p["result"] for p in pairs]),
        "trained_beats_none": _count([p["result_vs_none"] for p in pairs]),
        "trained_mean_test_loss": spread([r["mean_test_loss"].get("trained") for r in records]),
        "seed_mean_test_loss": spread([r["mean_test_loss"].get("seed") for r in records]),
        "none_mean_test_loss": spread([r["mean_test_loss"].get("none") for r in records]),
        "reward_delta": spread([r["reward"].get("delta") for r in records]),
        "influence_delta": spread([r["influence"].get("delta") for r in records]),
        "wall_s": spread([r["wall_s"] for r in records]),
        "args": ref["args"], "eval_config": ref["eval_config"],  # what "the same config" is checked against
    }


def build_distribution(conditions: dict[str, dict], *, command: str, made_by: dict, config: str,
                       evaluate_config: str | None) -> dict:
    """``conditions``: ``{name: {"runs": {seed: run_dir}, "flags": [...], "expect": {field: value},
    "description": str}}``. Every seed of every condition must be a finished run: one
    :class:`DistributionError` names each one that is not."""
    records, missing = {}, []
    for name, cond in conditions.items():
        records[name] = []
        for seed, run_dir in cond["runs"].items():
            try:
                records[name].append(collect_run(Path(run_dir), seed))
            except DistributionError as err:
                missing.append(f"{name}: {err}")
    if missing:
        raise DistributionError(f"{len(missing)} run(s) missing or unfinished (rerun without --report_only to make "
                                "them): " + "; ".join(missing))
    return {
        "format": FORMAT, "config": config, "evaluate_config": evaluate_config, "command": command,
        "commit": made_by.get("commit"), "dirty": made_by.get("dirty"), "versions": made_by.get("versions"),
        "python": made_by.get("python"),
        "conditions": {name: summarize_condition(name, records[name], flags=cond.get("flags", []),
                                                 expect=cond.get("expect", {}),
                                                 description=cond.get("description", ""))
                       for name, cond in conditions.items()},
    }


# --------------------------------------------------------------------------- markdown
def _f(x, digits: int = 3, sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _range(st: dict, digits: int = 3, sign: bool = False) -> str:
    if st["median"] is None:
        return "-"
    return f"{_f(st['median'], digits, sign)} ({_f(st['min'], digits, sign)}..{_f(st['max'], digits, sign)})"


def _wins(c: dict) -> str:
    if not c["pairs"]:
        return "-"
    ties = f", {c['ties']} tie{'s' if c['ties'] != 1 else ''}" if c["ties"] else ""
    return f"{c['wins']}/{c['pairs']} ({100 * c['share']:.0f}%{ties})"


def _commit(report: dict) -> str:
    c = report.get("commit")
    return f"commit {c[:7]}{' (dirty)' if report.get('dirty') else ''}" if c else "commit unknown"


def format_markdown(report: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in (report.get("versions") or {}).items() if v)
    out = ["# The quickstart over training seeds", "",
           f"`{report['command']}` ({_commit(report)}; python {report.get('python')}; {versions})."
           + (" With --report_only it rebuilt the report from existing run folders; each run's own command is in "
              "report.json." if report.get("report_only") else ""), "",
           f"Each run is `rubric-rl train --config {report['config']} --seed S --output_dir "
           "runs/reproduce/CONDITION/seedS` plus the condition's flags: SFT warm start, GRPO, export, then its "
           f"evaluation ({report.get('evaluate_config')}): the trained generator vs the seed rubrics vs no rubric, "
           "the same evaluation seeds for all. A pair is one (training seed, evaluation seed); trained wins it when "
           "its test loss is strictly lower. Ranges are median (min..max) over training seeds.", "",
           "| condition | flags | training seeds | trained beats seed (pairs) | trained beats none | trained mean test "
           "loss | seed mean test loss | reward delta (last 20 - first 20) | influence delta |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name, c in report["conditions"].items():
        out.append(f"| {name} | {' '.join(c['flags']) or '-'} | {len(c['training_seeds'])} | "
                   f"{_wins(c['trained_beats_seed'])} | {_wins(c['trained_beats_none'])} | "
                   f"{_range(c['trained_mean_test_loss'])} | {_range(c['seed_mean_test_loss'])} | "
                   f"{_range(c['reward_delta'], 4, True)} | {_range(c['influence_delta'], 4, True)} |")
    for name, c in report["conditions"].items():
        out += ["", f"## {name}" + (f": {c['description']}" if c.get("description") else ""), "",
                "| training seed | reward first 20 -> last 20 | influence first 20 -> last 20 | trained | seed | none "
                "| trained beats seed | trained beats none | wall | run |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in c["runs"]:
            rw, inf = r["reward"], r["influence"]
            m = r["mean_test_loss"]
            wall = "-" if r["wall_s"] is None else f"{r['wall_s'] / 60:.1f} min" + (" (resumed)" if r["resumed"] else "")
            vs = r["versus"]
            out.append(f"| {r['seed']} | {_f(rw.get('first_mean'), 4)} -> {_f(rw.get('last_mean'), 4)} | "
                       f"{_f(inf.get('first_mean'), 4)} -> {_f(inf.get('last_mean'), 4)} | {_f(m.get('trained'))} | "
                       f"{_f(m.get('seed'))} | {_f(m.get('none'))} | "
                       + " | ".join(f"{vs[b]['wins']}/{vs[b]['pairs']}" if b in vs else "-" for b in BASELINES)
                       + f" | {wall} | `{r['run_dir']}` |")
        out += ["", f"Every pair (test loss; {_wins(c['trained_beats_seed'])} won against the seed rubrics):", "",
                "| training seed | evaluation seed | trained | seed | none | trained vs seed |", "|---|---|---|---|---|---|"]
        for p in c["pairs"]:
            out.append(f"| {p['train_seed']} | {p['eval_seed']} | {_f(p['trained'])} | {_f(p['seed'])} | "
                       f"{_f(p['none'])} | {p['result'] or '-'} |")
        commits = sorted({(r.get("commit") or "unknown")[:7] + (" (dirty)" if r.get("dirty") else "")
                          for r in c["runs"]})
        out += ["", f"Runs made at {', '.join(commits)}; wall time per run {_range(c['wall_s'], 0)} s."]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- train's closing line
def closing_lines(run_report: dict, run_args: dict, dist: dict, *, where: str, condition: str = "default") -> str | None:
    """One or two lines comparing this run's evaluation with the distribution's ``condition``; None when the
    distribution has no such condition or was made with other settings, or this run has no trained-vs-seed."""
    cond = (dist.get("conditions") or {}).get(condition)
    if not cond or settings_differ(cond["args"], run_args, cond.get("eval_config"),
                                   (run_report.get("config") or {}).get("eval")):
        return None
    this = eval_numbers(run_report)
    m, vs = this["mean_test_loss"], this["versus"].get("seed")
    if m.get("trained") is None or m.get("seed") is None or not vs:
        return None
    first = f"This run: trained {m['trained']:.3f} vs seed {m['seed']:.3f} mean test loss ({vs['wins']}/{vs['pairs']} " \
            "paired wins)"
    seed = arg_value(run_args, "seed")
    same = next((r for r in cond["runs"] if r["seed"] == seed), None)
    if same is not None:
        rm = same["mean_test_loss"]
        identical = all(a is not None and b is not None and abs(a - b) <= 1e-6
                        for src in ("trained", "seed")
                        for a, b in zip(this["test_loss"][src], same["test_loss"].get(src, [])))
        first += (f"; the distribution's training seed {seed}: trained {_f(rm.get('trained'))} vs seed "
                  f"{_f(rm.get('seed'))}" + (" (the same numbers)" if identical else " (other numbers)"))
    n = len(cond["training_seeds"])
    second = (f"The committed distribution over {n} training seed{'s' if n != 1 else ''} ({where}, {_commit(dist)}): "
              f"trained median {_range(cond['trained_mean_test_loss'])}, seed median "
              f"{_range(cond['seed_mean_test_loss'])}, trained beats seed in {cond['trained_beats_seed']['wins']}/"
              f"{cond['trained_beats_seed']['pairs']} pairs")
    return f"{first}\n{second}"


def compare_with_distribution(output_dir, run_report: dict | None, path: Path | None = None) -> str | None:
    """:func:`closing_lines` for the run in ``output_dir`` against the committed report (``path``, default
    :data:`REPORT`); None (say nothing) when there is no report, or it does not apply. A broken report file is a
    warning, never an error: the run it would comment on has finished."""
    path = Path(path) if path is not None else REPORT
    if not run_report or not path.exists():
        return None
    try:
        dist = _read_json(path)
        run_args = _read_json(Path(output_dir) / ARGS_FILE)
        if not isinstance(dist, dict) or dist.get("format") != FORMAT or not run_args:
            return None
        md = path.with_suffix(".md")
        try:
            where = str(md.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            where = str(md)
        return closing_lines(run_report, run_args, dist, where=where)
    except (DistributionError, KeyError, TypeError, ValueError, AttributeError) as err:
        logger.warning("%s: cannot compare this run with it (%s)", path, err)
        return None
