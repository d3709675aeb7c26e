"""The ``rubric-rl`` commands, one module each (TRL's ``trl/scripts/*.py`` shape): ``make_parser()`` names what the
command parses once (a :class:`rubric_rl.config.CommandParser` over its dataclasses, or an ``argparse`` parser for
``export`` and ``serve-teacher``), and ``run(args) -> int`` (the exit status) runs the preflight check, calls one
job and prints. :mod:`rubric_rl.cli` looks a command up here, parses, runs it and maps exceptions to exit codes.

A command module imports only settings (:mod:`rubric_rl.configs`, :mod:`rubric_rl.config`) at import time: the
job it runs (and with it torch and TRL) is imported inside ``run``, so ``--help`` stays fast.
"""

from __future__ import annotations

from . import (calibrate, closed_loop, evaluate, export, score, serve_influence, serve_teacher, synthesize, train,
               warmup)

COMMANDS = {
    "train": train,
    "export": export,
    "warmup": warmup,
    "score": score,
    "synthesize": synthesize,
    "serve-teacher": serve_teacher,
    "serve-influence": serve_influence,
    "evaluate": evaluate,
    "calibrate": calibrate,
    "closed-loop": closed_loop,
}


def parsed_types(name: str) -> tuple:
    """The dataclasses command ``name`` parses (none for an argparse command)."""
    parser = COMMANDS[name].make_parser()
    return tuple(getattr(parser, "types", ()))
