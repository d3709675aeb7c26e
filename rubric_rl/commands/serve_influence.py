"""``rubric-rl serve-influence``: the influence scorer over HTTP, for train's ``reward_influence_url``."""

from __future__ import annotations

from ..config import CommandParser
from ..configs.influence import InfluenceConfig
from ..configs.run import RunDirArguments, ServeInfluenceArguments


def make_parser() -> CommandParser:
    return CommandParser(
        "serve-influence", (RunDirArguments, ServeInfluenceArguments, InfluenceConfig),
        description="Serve the influence scorer over HTTP (POST /v1/score, GET /health, GET /metrics) for `rubric-rl "
                    "train --reward_influence_url URL`: the target, its warm-up (OUTPUT_DIR/warmup, run first if "
                    "missing) and the validation gradients (OUTPUT_DIR/influence_cache) are loaded once, one worker "
                    "per device, concurrent requests micro-batched, a full queue answered 429 with Retry-After. Give "
                    "it the training run's --config: its scores then equal the in-process reward's.")


def run(args) -> int:
    run_dir, sa, cfg = args
    from ..influence.server import serve
    from ..preflight import check_serve_influence

    check_serve_influence(run_dir, sa, cfg)
    serve(cfg, run_dir.output_dir, sa)
    return 0
