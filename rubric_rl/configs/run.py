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
    chunk_size: int = field(default=512, metadata={
        "help": "Lines handed to the scorer at a time (its batches are length-sorted within a chunk). A shard is "
                "a run of whole chunks: sharded runs equal one process's output with the same chunk_size, and "
                "a file of fewer than N chunks leaves some of N shards empty."})
    num_shards: int | None = field(default=None, metadata={
        "help": "Score in N shards, run separately (other machines or devices, sharing OUTPUT_DIR's warm-up): "
                "each writes OUTPUT.shard-K-of-N.jsonl/.json and the last to finish merges them into --output. "
                "Under accelerate launch / torchrun the processes are the shards: leave this out."})
    shard_index: int | None = field(default=None, metadata={
        "help": "The shard this run scores (0 to N-1), with --num_shards. Shard 0 runs a missing warm-up; the "
                "others wait for it."})
    merge: bool = field(default=False, metadata={
        "help": "With --num_shards N: score nothing, merge the finished shards into --output (and --selected); "
                "a missing, stale or partial shard is an error naming it."})

    def __post_init__(self):
        if not self.samples:
            raise ValueError("--samples is required (a jsonl file of chat samples)")
        if not self.output:
            raise ValueError("--output is required (the scored jsonl to write)")
        if self.select_top is not None and self.select_top < 1:
            raise ValueError(f"select_top must be >= 1, got {self.select_top!r}")
        if self.select_top is not None and not self.selected:
            raise ValueError("--select_top needs --selected (where to write the selected samples)")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size!r}")
        if self.num_shards is not None and self.num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {self.num_shards!r}")
        if self.shard_index is not None:
            if self.num_shards is None:
                raise ValueError("--shard_index needs --num_shards")
            if not 0 <= self.shard_index < self.num_shards:
                raise ValueError(f"shard_index must be in 0..{self.num_shards - 1}, got {self.shard_index!r}")
        if self.merge and (self.num_shards is None or self.shard_index is not None):
            raise ValueError("--merge needs --num_shards N and no --shard_index (it merges all N shards)")
