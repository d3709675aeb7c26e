"""The value checks every settings dataclass runs in ``__post_init__``: one wording for each kind of bad value,
naming the field (the CLI turns the ValueError into one line and exit 2). Values only: files are checked by
:mod:`rubric_rl.preflight`."""

from __future__ import annotations


def positive(name: str, value, allow_zero: bool = False) -> None:
    """``value > 0`` (``>= 0`` with ``allow_zero``)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def at_least(name: str, value, bound) -> None:
    if value < bound:
        raise ValueError(f"{name} must be >= {bound}, got {value!r}")


def choice(name: str, value, choices) -> None:
    """``value`` is one of ``choices`` (the message shows ``choices`` as given)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
