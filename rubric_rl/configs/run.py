"""Settings of the commands that work on a run folder without training: ``warmup``, ``score``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunDirArguments:
    _argument_group_name = "run folder"

    output_dir: str = field(
        default="runs/quickstart",
        metadata={"help": "Run folder: the target warm-up goes to OUTPUT_DIR/warmup, validation-gradient caches "
                          "to OUTPUT_DIR/influence_cache (both reused by `rubric-rl train` with the same folder)."},
    )


@dataclass
class ScoreArguments:
    _argument_group_name = "score: samples in, scores out, top-K selection"

    samples: str = field(default=None, metadata={"help": "Chat-format samples to score (jsonl, {'messages': [...]})."})
    output: str = field(default=None, metadata={"help": "Where to write one scored line per input line, in order."})
    select_top: int | None = field(default=None, metadata={"help": "Also write the K most influential samples."})
    selected: str | None = field(default=None, metadata={"help": "Where --select_top writes its samples."})

    def __post_init__(self):
        if not self.samples:
            raise ValueError("--samples is required (a jsonl file of chat samples)")
        if not self.output:
            raise ValueError("--output is required (the scored jsonl to write)")
        if self.select_top is not None and self.select_top < 1:
            raise ValueError(f"select_top must be >= 1, got {self.select_top!r}")
        if self.select_top is not None and not self.selected:
            raise ValueError("--select_top needs --selected (where to write the selected samples)")
