"""``rubric-rl closed-loop``: student-guided synthesis in rounds, per selection rule, against static generation."""

from __future__ import annotations

from pathlib import Path

from ..config import CommandParser
from ..configs.closed_loop import ClosedLoopArguments, ClosedLoopConfig
from ..configs.evaluate import EvalConfig
from ..configs.influence import InfluenceConfig
from ..configs.teacher import TeacherConfig


def make_parser() -> CommandParser:
    return CommandParser(
        "closed-loop", (ClosedLoopArguments, ClosedLoopConfig, EvalConfig, TeacherConfig, InfluenceConfig),
        description="Closed-loop synthesis (arXiv:2512.00884): per round the current student scores the seed "
                    "questions, a selection rule picks seeds, the teacher writes one sample per picked seed, a fresh "
                    "target is fine-tuned on all samples so far. One loop per rule and seed; resumable; writes "
                    "report.json, report.md and budget_curve.png to --output. Fine-tuning and held-out settings are "
                    "the evaluation's eval_* fields.")


def run(args) -> int:
    closed_loop(args)
    return 0


def from_argv(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (after the subcommand), run the loops, print the tables; returns the report (the scripts')."""
    return closed_loop(make_parser().parse_args(argv))


def closed_loop(args) -> dict:
    la, loop_cfg, eval_cfg, teacher_cfg, influence_cfg = args
    from ..loop import closed_loop as job
    from ..loop.report import format_paired, format_table
    from ..preflight import check_closed_loop

    check_closed_loop(loop_cfg, eval_cfg, teacher_cfg, influence_cfg)
    report = job(loop_cfg, eval_cfg, teacher_cfg, influence_cfg, la.output, argv=args.argv)
    print(format_table(report))
    print("\n" + format_paired(report))
    print(f"Report: {Path(la.output) / 'report.md'} ({report['seconds']:.0f} s)")
    return report
