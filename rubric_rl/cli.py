"""The ``rubric-rl`` command: find the subcommand in :data:`rubric_rl.commands.COMMANDS`, parse its arguments with its
``make_parser()``, ``run`` it, and turn its exit status and exceptions into exit codes. No logic lives here."""

from __future__ import annotations

import logging
import os
import sys

from .commands import COMMANDS

USAGE = """usage: rubric-rl COMMAND [--config FILE.yaml] [--field value ...]

Train rubric generators with RL, rewarded by the influence of their synthetic data on a target model.

commands:
  train            RL-train a rubric generator (TRL GRPO), then export it          (rubric-rl train --help)
  export           write a trained run's rubric generator as a standalone model    (rubric-rl export --help)
  warmup           warm up the target model (LoRA + Adam checkpoints) for influence (rubric-rl warmup --help)
  score            score an SFT dataset by influence on the validation set         (rubric-rl score --help)
  synthesize       write a synthetic dataset with a rubric source and a teacher    (rubric-rl synthesize --help)
  serve-teacher    serve a local HF model as an OpenAI-compatible teacher endpoint (rubric-rl serve-teacher --help)
  serve-influence  serve the influence scorer over HTTP for train's reward_influence_url (rubric-rl serve-influence --help)
  evaluate         synthesize with each rubric source, fine-tune the target, score held-out data (rubric-rl evaluate --help)
  calibrate        does the reward predict the gain? influence vs held-out gain over sources x seeds (rubric-rl calibrate --help)
  closed-loop      student-guided synthesis in rounds, per selection rule, vs static generation (rubric-rl closed-loop --help)

Every command but export and serve-teacher takes --config FILE.yaml, a YAML file of flat fields (see configs/);
flags override it. `rubric-rl COMMAND --help` lists the options by stage; `rubric-rl train --help-all` adds the
fields train inherits from TRL's GRPOConfig (transformers' TrainingArguments).
A user error is one line on stderr and exit status 2 (an unavailable teacher or influence service: 3); --debug (or
RUBRIC_RL_DEBUG=1) shows the traceback instead.
"""


def _setup_logging():
    from .launch import setup_logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    setup_logging()  # under a launcher: rank 0 logs; the other ranks only their warnings and errors, marked
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    from .launch import quiet_warnings

    quiet_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"rubric-rl {__version__}")
        return
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"rubric-rl: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    previous = os.environ.get("RUBRIC_RL_DEBUG")
    if "--debug" in argv[1:]:  # show tracebacks (as RUBRIC_RL_DEBUG=1 does), for this command only
        argv = [a for a in argv if a != "--debug"]
        os.environ["RUBRIC_RL_DEBUG"] = "1"
    _setup_logging()
    try:
        run_command(argv[0], lambda rest: command.run(command.make_parser().parse_args(rest)), argv[1:])
    finally:
        if previous is None:
            os.environ.pop("RUBRIC_RL_DEBUG", None)
        else:
            os.environ["RUBRIC_RL_DEBUG"] = previous


def run_command(name: str, command, argv: list[str]) -> None:
    """Run one subcommand (``command(argv)`` returns its exit status, or None for 0); a nonzero status is the exit
    code; user errors and an unavailable teacher or influence service become one line on stderr and an exit code
    (2: user error, 3: teacher or influence service unavailable, 1: nothing produced, 4: disk full), unless
    --debug / RUBRIC_RL_DEBUG=1."""
    from .errors import (EXIT_DISK_FULL, EXIT_NOTHING_PRODUCED, EXIT_SERVICE_UNAVAILABLE, EXIT_USER_ERROR,
                         InfluenceUnavailable, TrainingStalled, UserError, debug_enabled, is_disk_full, one_line)
    from .launch import rank_prefix
    from .teachers.base import TeacherUnavailable

    who = f"{rank_prefix()}rubric-rl {name}"  # "[rank K] rubric-rl CMD: error: ..." on a launch's other ranks

    try:
        status = command(argv)
    except UserError as err:
        if debug_enabled():
            raise
        print(f"{who}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except (TeacherUnavailable, InfluenceUnavailable) as err:
        if debug_enabled():
            raise
        print(f"{who}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_SERVICE_UNAVAILABLE) from None
    except TrainingStalled as err:
        if debug_enabled():
            raise
        print(f"{who}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_NOTHING_PRODUCED) from None
    except OSError as err:
        if debug_enabled() or not is_disk_full(err):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(f"{who}: error: disk full{where} ({one_line(err.strerror or err)}); what was written up to "
              "the last checkpoint is kept: free space and rerun the same command to resume", file=sys.stderr)
        raise SystemExit(EXIT_DISK_FULL) from None
    if status:  # a command's own exit status (synthesize with nothing accepted: 1)
        raise SystemExit(status)


if __name__ == "__main__":
    main()
