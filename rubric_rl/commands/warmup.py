"""``rubric-rl warmup``: warm up the target (LoRA + Adam) and keep its checkpoints in OUTPUT_DIR/warmup."""

from __future__ import annotations

from ..config import CommandParser
from ..configs.influence import InfluenceConfig
from ..configs.run import RunDirArguments


def make_parser() -> CommandParser:
    return CommandParser("warmup", (RunDirArguments, InfluenceConfig),
                         description="Warm up the target (LoRA + Adam) and keep HF Trainer checkpoints with "
                                     "optimizer state in OUTPUT_DIR/warmup.")


def run(args) -> int:
    run_dir, cfg = args
    from ..influence import run_warmup
    from ..preflight import check_warmup

    check_warmup(run_dir, cfg)
    path = run_warmup(cfg, run_dir.output_dir)
    print(f"Warm-up checkpoints: {path}")
    return 0
