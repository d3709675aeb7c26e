"""Where models run: the one rule from a device setting (``auto``, ``cpu``, ``cuda:1``, ...) to a torch device, and
the devices an RNG fork must cover, and the CPU thread count of one phase."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def resolve_device(name: str | torch.device | None = None, *, launcher: bool = False) -> torch.device:
    """``name`` as a torch device; ``auto`` (or nothing) is CUDA when there is one, else the CPU. With ``launcher``,
    ``auto`` is first the device of an accelerate process already set up in this process (a launched run's
    ``cuda:LOCAL_RANK``), as the influence scorer wants."""
    if name and str(name) != "auto":
        return torch.device(name)
    if launcher:
        try:
            from accelerate.state import PartialState

            if PartialState._shared_state:
                return PartialState().device
        except Exception:  # pragma: no cover
            pass
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fork_rng():
    """``torch.random.fork_rng`` over the CPU and every visible CUDA device: what runs inside draws from the global
    generators and leaves them as they were."""
    return torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else [])


@contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` CPU threads for torch, then restore the count (0: leave it as it is)."""
    before = torch.get_num_threads()
    if not n or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
