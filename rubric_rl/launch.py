"""A rubric-rl process and the others of its launch (``accelerate launch``, ``torchrun``): its place in the launch,
read off the launcher's environment before any process group exists; its console (:func:`setup_logging`: a launched
run's log says each thing once, rank 0's, and the other ranks show their warnings and errors, marked ``[rank K]``;
:func:`quiet_warnings`); the environment of a single-process child (a stage that must run once, exactly as in a
one-process run, while the launched processes wait: the target's warm-up, the policy's SFT warm start); waiting for
the file such a child writes (no collective, so a long stage cannot time out the process group); counts summed over
the processes (:func:`all_gather_objects`, :func:`sum_counts`).

The bottom floor: imports nothing of the package.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

# What a launcher sets for its processes (torchrun / accelerate / DeepSpeed / MPI): a child without them is a plain
# single process that joins no group and picks no rank's device.
DIST_ENV_NAMES = frozenset({"WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                            "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT"})
DIST_ENV_PREFIXES = ("TORCHELASTIC_", "ACCELERATE_", "FSDP_", "DEEPSPEED_", "TORCH_NCCL_", "NCCL_ASYNC",
                     "OMPI_COMM_WORLD_", "PMI_", "MV2_COMM_WORLD_")
# The global rank as the launchers name it: torchrun/accelerate/DeepSpeed, then MPI's
_RANK_NAMES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def launched(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(world size, rank, local rank)`` under a launcher that started more than one process, else None."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    rank = int(env.get("RANK", "0") or 0)
    return world, rank, int(env.get("LOCAL_RANK", str(rank)) or rank)


def process_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's global rank in a launch (0 in a plain process), from the launcher's environment."""
    env = os.environ if environ is None else environ
    for name in _RANK_NAMES:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                continue
    return 0


def rank_prefix(environ: Mapping[str, str] | None = None) -> str:
    """``"[rank K] "`` on a process other than rank 0 of a launch (what its warnings and errors start with), else
    ``""``."""
    rank = process_rank(environ)
    return f"[rank {rank}] " if rank else ""


def log_format(rank: int = 0) -> str:
    """The console's log line: ``HH:MM:SS LEVEL logger: message``, with ``[rank K]`` after the time on rank K > 0."""
    return f"%(asctime)s {f'[rank {rank}] ' if rank else ''}%(levelname)s %(name)s: %(message)s"


def replica_level(level: int | str, rank: int) -> int:
    """The log level of rank ``rank`` for the configured ``level``: ``level`` on rank 0, at least WARNING on the
    others."""
    number = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    number = number if isinstance(number, int) else logging.INFO
    return number if not rank else max(number, logging.WARNING)


def setup_logging(level: int | str | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The console of a rubric-rl process (``level``: ``RUBRIC_RL_LOG_LEVEL``, INFO by default; the lines of
    :func:`log_format`). On a rank other than 0 of a launch, rubric-rl's loggers (the phase banners of
    :mod:`rubric_rl.progress` included) and the root logger show warnings and errors only, and the hub's and
    transformers' progress bars are off (``HF_HUB_DISABLE_PROGRESS_BARS``, unless set; before they are imported),
    so that each line of a launched run is printed once. Returns this process's rank."""
    env = os.environ if environ is None else environ
    rank = process_rank(env)
    level = replica_level(level or env.get("RUBRIC_RL_LOG_LEVEL", "INFO"), rank)
    logging.basicConfig(level=level, format=log_format(rank), datefmt="%H:%M:%S")
    if rank and environ is None:  # the hub's and transformers' bars (loading weights...): rank 0's are enough
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if rank:  # also where the root logger was configured before (basicConfig then does nothing)
        package = logging.getLogger("rubric_rl")
        package.setLevel(max(package.getEffectiveLevel(), level))
    return rank


def quiet_warnings() -> None:
    """Warnings a user can do nothing about, off in every rubric-rl process (the command and its single-process
    children): transformers' rename of gradient_checkpointing (TRL passes the old name), and runpy's note when
    ``python -m rubric_rl.cli`` is used under accelerate launch."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*found in sys.modules after import of package",
                            category=RuntimeWarning)


def single_process_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (this process's by default) without the launcher's variables (:data:`DIST_ENV_NAMES`,
    :data:`DIST_ENV_PREFIXES`), with this package's folder first on ``PYTHONPATH``: the environment of a child that
    must run as one plain process, on this clone's code."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items()
           if k not in DIST_ENV_NAMES and not k.startswith(DIST_ENV_PREFIXES)}
    pkg_parent = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    return env


def wait_until(check: Callable[[], object], what: str, *, poll_s: float = 2.0, log_every_s: float = 60.0,
               logger: logging.Logger | None = None):
    """Poll ``check()`` every ``poll_s`` seconds until it returns something truthy, and return that; a log line
    ``waiting for WHAT (N s)`` every ``log_every_s``."""
    log = logger or logging.getLogger("rubric_rl")
    start = last_log = time.monotonic()
    while not (found := check()):
        time.sleep(poll_s)
        if time.monotonic() - last_log > log_every_s:
            last_log = time.monotonic()
            log.info("waiting for %s (%.0f s)", what, last_log - start)
    return found


def all_gather_objects(obj) -> list:
    """``obj`` of every process of the launch's process group, in rank order (``torch.distributed``; a collective:
    every process calls it, in the same order); ``[obj]`` in a process without a group of several."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def sum_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Counts (``{key: n}``, one per process) summed key by key; keys in the order first seen."""
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    return dict(total)
