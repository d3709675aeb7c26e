"""``rubric-rl evaluate``: synthesize with each rubric source, fine-tune the target, score held-out data."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import CommandParser
from ..configs.evaluate import EvalArguments, EvalConfig
from ..configs.influence import InfluenceConfig
from ..configs.teacher import TeacherConfig


def make_parser() -> CommandParser:
    return CommandParser(
        "evaluate", (EvalArguments, EvalConfig, TeacherConfig, InfluenceConfig), repeated=("--sources",),
        description="Compare rubric sources downstream: synthesize with each, fine-tune the target, score the "
                    "held-out test set (loss, multiple-choice acc/acc_norm), with influence, validity, diversity, "
                    "several seeds. Writes report.json, report.md and plots to --output.")


def run(args, *, teacher_cfg=None, influence_cfg=None) -> int:
    evaluate(args, teacher_cfg=teacher_cfg, influence_cfg=influence_cfg)
    return 0


def from_argv(argv: list[str] | None = None, *, teacher_cfg=None, influence_cfg=None) -> dict:
    """Parse ``argv`` (after the subcommand), evaluate, print the table; returns the report (what ``train``'s
    closing evaluation and the scripts use)."""
    return evaluate(make_parser().parse_args(argv), teacher_cfg=teacher_cfg, influence_cfg=influence_cfg)


def evaluate(args, *, teacher_cfg=None, influence_cfg=None) -> dict:
    """Run the evaluation of parsed ``args`` and print its tables; returns the report.

    ``teacher_cfg`` / ``influence_cfg`` (``train`` passes its own) replace what the config file says; a field
    the file sets differently is named in a warning."""
    ea, cfg, file_teacher, file_influence = args
    teacher_cfg = given_over_file(teacher_cfg, file_teacher)
    influence_cfg = given_over_file(influence_cfg, file_influence)
    from ..configs.evaluate import parse_sources
    from ..evaluate.report import format_number, format_paired, format_table
    from ..evaluate.run import evaluate as run_evaluation  # looked up at call time, so tests can stand in for it
    from ..preflight import check_evaluate

    check_evaluate(ea, cfg, teacher_cfg, influence_cfg)
    report = run_evaluation(cfg, teacher_cfg, influence_cfg, parse_sources(ea.sources), ea.output)
    print(format_table(report))
    print("\n" + format_paired(report))
    c = report["correlation"][f"influence_vs_{report['primary_metric']}_gain"]
    print(f"\nPearson r (mean influence vs {report['primary_metric']} gain, n={c['n']}): "
          f"{format_number(c['pearson_r'])}")
    print(f"Report: {Path(ea.output) / 'report.md'} ({report['timing']['total_s']:.0f} s)")
    return report


def given_over_file(given, parsed):
    """``given`` (the training run's settings) when there is one, else ``parsed``; warns about each field the
    evaluation's config file set to another value."""
    if given is None:
        return parsed
    from dataclasses import fields

    differ = [f"{f.name}={getattr(parsed, f.name)!r} (the run's: {getattr(given, f.name)!r})" for f in fields(given)
              if getattr(parsed, f.name) != getattr(given, f.name)]
    if differ:
        logging.getLogger("rubric_rl").warning("evaluate_config sets %s; the evaluation uses the training run's "
                                               "values", ", ".join(differ))
    return given
