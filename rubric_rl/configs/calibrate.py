"""The arguments of ``rubric-rl calibrate`` (the evaluation's ``eval_*`` fields come from
:class:`rubric_rl.configs.evaluate.EvalConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CalibrateArguments:
    _argument_group_name = "calibrate: rubric sources, report folder, the reward's run folder"

    sources: list[str] = field(
        default=None, metadata={"help": "NAME=SPEC rubric sources (rubrics JSON, exported generator folder, or "
                                        "'none'); each is evaluated with every seed of eval_seeds."})
    output: str = field(default=None, metadata={"help": "Report folder (calibration.json/md, report.*, plots)."})
    run_dir: str | None = field(
        default=None, metadata={"help": "A training run's folder whose warmup/ and influence_cache/ the reward used "
                                        "(default: OUTPUT/influence, made there)."})
    calibrate_full_finetune: bool = field(
        default=False, metadata={"help": "Fine-tune all weights instead of the warm-up's LoRA regime."})
    calibrate_min_datasets: int = field(
        default=8, metadata={"help": "Refuse fewer (source x seed) datasets than this: a correlation over a "
                                     "handful of points says little."})

    def __post_init__(self):
        from ..errors import UserError

        if not self.sources:
            raise UserError("--sources is required (NAME=SPEC ...)")
        if not self.output:
            raise UserError("--output is required (the report folder)")
