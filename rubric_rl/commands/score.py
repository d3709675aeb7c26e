"""``rubric-rl score``: chat samples in, one influence score per line out (sharded or not), optional top-K file."""

from __future__ import annotations

import json

from ..config import CommandParser
from ..configs.influence import InfluenceConfig
from ..configs.run import RunDirArguments, ScoreArguments


def make_parser() -> CommandParser:
    return CommandParser("score", (RunDirArguments, ScoreArguments, InfluenceConfig),
                         description="Score chat-format samples by their influence on the validation set "
                                     "(uses OUTPUT_DIR/warmup, running it first if missing).")


def run(args) -> int:
    run_dir, sa, cfg = args
    from ..influence import score_file
    from ..preflight import check_score

    check_score(run_dir, sa, cfg)
    from ..influence.selection import merge_file
    from ..influence.shards import launch_device, launched, resolve

    num_shards, shard_index = resolve(sa.num_shards, sa.shard_index, sa.merge)
    if sa.merge:
        summary = merge_file(cfg, sa.samples, sa.output, num_shards, select_top=sa.select_top,
                             selected_path=sa.selected, chunk_size=sa.chunk_size)
    else:
        summary = score_file(cfg, run_dir.output_dir, sa.samples, sa.output, select_top=sa.select_top,
                             selected_path=sa.selected, chunk_size=sa.chunk_size, num_shards=num_shards,
                             shard_index=shard_index, device=launch_device(cfg))
    if summary.get("merged", True) or launched() is None:  # under a launcher: the process that merged
        print(json.dumps(summary, indent=1, default=str))
    return 0
