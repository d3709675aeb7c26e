"""Settings of the commands that work on a run folder without training: ``warmup``, ``score``, ``serve-influence``
(and :data:`BALANCES`, the choices of ``train``'s ``reward_influence_balance``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .checks import at_least, positive


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
        at_least("chunk_size", self.chunk_size, 1)
        if self.num_shards is not None and self.num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {self.num_shards!r}")
        if self.shard_index is not None:
            if self.num_shards is None:
                raise ValueError("--shard_index needs --num_shards")
            if not 0 <= self.shard_index < self.num_shards:
                raise ValueError(f"shard_index must be in 0..{self.num_shards - 1}, got {self.shard_index!r}")
        if self.merge and (self.num_shards is None or self.shard_index is not None):
            raise ValueError("--merge needs --num_shards N and no --shard_index (it merges all N shards)")


BALANCES = ("least_loaded", "round_robin")  # train's reward_influence_balance


@dataclass
class ServeInfluenceArguments:
    _argument_group_name = "serve-influence: the HTTP endpoint, its workers, batching and queue"

    serve_host: str = field(default="127.0.0.1", metadata={
        "help": "Address to listen on (loopback by default; another address lets anyone who reaches it use the "
                "target's GPUs: set serve_api_key_env)."})
    serve_port: int = field(default=8100, metadata={"help": "Port to listen on."})
    serve_devices: list[str] = field(default_factory=lambda: ["auto"], metadata={
        "help": "One worker per device, each with its own copy of the target (e.g. cuda:0 cuda:1). 'auto': "
                "influence_device if it names one, else every visible CUDA device, else one CPU worker."})
    serve_max_batch_samples: int = field(default=64, metadata={
        "help": "Most samples one worker scores in one scorer call: concurrent requests are merged up to this "
                "(a larger request is scored alone, never split)."})
    serve_batch_wait_ms: float = field(default=10.0, metadata={
        "help": "Micro-batching window: how long a worker waits for more concurrent requests before it scores "
                "(only when requests come concurrently; a lone sequential client never waits)."})
    serve_max_queue_samples: int = field(default=4096, metadata={
        "help": "Bound of the queue, in samples waiting for a worker. A request that would overflow it is "
                "answered 429 'busy' with Retry-After (the client backs off and retries); a request larger than "
                "this is refused with 413."})
    serve_api_key_env: str | None = field(default=None, metadata={
        "help": "Name of an environment variable whose value clients must send as a Bearer token (train: "
                "reward_influence_api_key_env). /health stays open."})
    serve_log_level: str = field(default="info", metadata={"help": "uvicorn log level."})

    def __post_init__(self):
        import re

        if not 0 <= self.serve_port <= 65535:
            raise ValueError(f"serve_port must be in 0..65535, got {self.serve_port!r}")
        if isinstance(self.serve_devices, str):
            self.serve_devices = [self.serve_devices]
        if not self.serve_devices or any(not isinstance(d, str) or not d.strip() for d in self.serve_devices):
            raise ValueError(f"serve_devices must name devices (or 'auto'), got {self.serve_devices!r}")
        if len(set(self.serve_devices)) != len(self.serve_devices):
            raise ValueError(f"serve_devices names a device twice ({self.serve_devices!r}): one worker per device")
        if "auto" in self.serve_devices and len(self.serve_devices) > 1:
            raise ValueError(f"serve_devices: 'auto' stands alone, got {self.serve_devices!r}")
        for name in ("serve_max_batch_samples", "serve_max_queue_samples"):
            at_least(name, getattr(self, name), 1)
        positive("serve_batch_wait_ms", self.serve_batch_wait_ms, allow_zero=True)
        if self.serve_api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.serve_api_key_env):
            raise ValueError("serve_api_key_env must be the NAME of an environment variable (letters, digits, "
                             "underscores), not the key itself")
