"""``rubric-rl calibrate``: does the reward predict the gain? Mean influence vs held-out gain over sources x seeds."""

from __future__ import annotations

from pathlib import Path

from ..config import CommandParser
from ..configs.calibrate import CalibrateArguments
from ..configs.evaluate import EvalConfig
from ..configs.influence import InfluenceConfig
from ..configs.teacher import TeacherConfig


def make_parser() -> CommandParser:
    return CommandParser(
        "calibrate", (CalibrateArguments, EvalConfig, TeacherConfig, InfluenceConfig), repeated=("--sources",),
        description="Does the reward predict the gain? Mean influence (the reward's estimator and warm-up) vs "
                    "held-out gain after fine-tuning the same base target in the warm-up's regime, over rubric "
                    "sources x seeds: Pearson, Spearman, permutation p, bootstrap interval, scatter plot.")


def run(args) -> int:
    args_, cfg, teacher_cfg, influence_cfg = args
    from ..calibrate import calibrate, format_calibration

    summary = calibrate(args_, cfg, teacher_cfg, influence_cfg)
    print(format_calibration(summary))
    print(f"\nReport: {Path(args_.output) / 'calibration.md'}")
    return 0
