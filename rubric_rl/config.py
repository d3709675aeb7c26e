"""The command line's parser: YAML configs and flags into the typed settings of :mod:`rubric_rl.configs`.

One flat namespace, as in TRL's own scripts: ``--config run.yaml`` sets defaults, CLI flags
override them (``TrlParser``). The stages each own a dataclass, in :mod:`rubric_rl.configs`:

* :class:`~rubric_rl.configs.train.RubricRLArguments`: policy model, data, prompts, reward shaping, warm start;
* ``GRPOConfig`` from TRL: the RL algorithm and everything ``transformers.TrainingArguments`` has
  (``output_dir``, ``max_steps``, ``seed``, ``report_to``, ``resume_from_checkpoint``, ...);
* :class:`~rubric_rl.configs.teacher.TeacherConfig` (``teacher_*``);
* :class:`~rubric_rl.configs.influence.InfluenceConfig` (``target_*``, ``warmup_*``, ``influence_*``).

Every field has ``help`` metadata (that is what ``--help`` prints) and bad values fail in
``__post_init__``, before any model loads, with a message naming the field.
"""

from __future__ import annotations

import sys

from .configs.run import RunDirArguments, ScoreArguments
from .configs.synth import SynthArguments
from .configs.train import ALGORITHMS, REWARD_SCALINGS, RubricRLArguments

__all__ = ["RubricRLArguments", "RunDirArguments", "ScoreArguments", "SynthArguments", "ALGORITHMS",
           "REWARD_SCALINGS", "train_dataclasses", "make_parser", "known_config_fields", "parse_config",
           "read_config_file", "fail"]


def train_dataclasses():
    from trl import GRPOConfig

    from .configs.influence import InfluenceConfig
    from .configs.teacher import TeacherConfig

    return (RubricRLArguments, GRPOConfig, TeacherConfig, InfluenceConfig)


def make_parser(types, prog: str | None = None, description: str | None = None):
    from trl import TrlParser

    parser = TrlParser(types, prog=prog, description=description)
    # argparse's own errors (a bad int, a missing value...) are one line too, not the ~260 lines of usage.
    parser.error = lambda message: fail(prog or parser.prog, message)
    return parser


def known_config_fields() -> set[str]:
    """Every field any rubric-rl command reads, so that one run YAML can serve all commands."""
    import dataclasses as dc

    types = list(train_dataclasses()) + [RunDirArguments, ScoreArguments, SynthArguments]
    from .configs.calibrate import CalibrateArguments
    from .configs.closed_loop import ClosedLoopArguments, ClosedLoopConfig
    from .configs.evaluate import EvalArguments, EvalConfig
    from .configs.synth import SynthConfig

    types += [SynthConfig, EvalConfig, EvalArguments, CalibrateArguments, ClosedLoopConfig, ClosedLoopArguments]
    return {f.name for t in types for f in dc.fields(t)}


def _merge_repeated(argv: list[str], flag: str = "--sources") -> list[str]:
    """``--sources a=x --sources b=y c=z`` -> ``--sources a=x b=y c=z`` (argparse keeps only the last)."""
    values, rest, found = [], [], False
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == flag:
            found = True
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            continue
        if tok.startswith(flag + "="):
            found = True
            values.append(tok[len(flag) + 1:])
        else:
            rest.append(tok)
        i += 1
    return rest + ([flag, *values] if found else [])


def fail(prog: str | None, message: str):
    """Print ``PROG: error: MESSAGE`` (one line) on stderr and exit 2."""
    from .errors import EXIT_USER_ERROR, one_line

    print(f"{prog or 'rubric-rl'}: error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


def _config_path(argv: list[str]) -> str | None:
    if "--config" not in argv:
        return None
    i = argv.index("--config")
    if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        from .errors import UserError

        raise UserError("--config needs a YAML file")
    return argv[i + 1]


def read_config_file(path: str) -> tuple[dict, dict[str, int]]:
    """The YAML mapping of a config file and the line of each top-level key.

    Errors (missing file, a directory, not UTF-8, a YAML syntax error, not a mapping) are a
    :class:`~rubric_rl.errors.UserError` naming the file, and for syntax errors ``file:line:column``."""
    import yaml

    from .errors import DataFileError, UserError
    from .jsonl import read_text

    try:
        text = read_text(path)
    except DataFileError as err:
        raise UserError(f"config {err}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = " ".join(x for x in (err.context, err.problem) if x)
        raise UserError(f"{where}: invalid YAML ({what})") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML ({' '.join(str(err).split())})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a YAML mapping of field: value, got {type(data).__name__}")
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key, _ in node.value:
            lines.setdefault(str(key.value), key.start_mark.line + 1)
    return data, lines


def _unknown_fields_message(path: str, unknown: list[str], lines: dict[str, int], known) -> str:
    from .errors import did_you_mean

    parts = [f"{path}:{lines[name]}: unknown field {name!r}{did_you_mean(name, known)}" if name in lines
             else f"{path}: unknown field {name!r}{did_you_mean(name, known)}" for name in unknown]
    return "; ".join(parts)


def _unknown_flags_message(flags: list[str], known) -> str:
    from .errors import did_you_mean

    names = [f for f in flags if f.startswith("-")] or flags
    return "unrecognized argument(s): " + ", ".join(
        f"{f}{did_you_mean(f.lstrip('-').split('=')[0], known)}" if f.startswith("--") else f for f in names)


def parse_config(types, argv: list[str] | None = None, prog: str | None = None, description: str | None = None,
                 shared_config: bool = False):
    """Parse ``--config file.yaml`` plus CLI overrides into the given dataclasses.

    With ``shared_config``, keys of the YAML file that belong to another rubric-rl command are ignored
    (so ``rubric-rl score --config run.yaml`` works on the training config), while keys no command
    knows still fail. Raises ``SystemExit(2)`` with a one-line message (naming the field or file, and
    the closest known name for an unknown one) on bad input.
    """
    import dataclasses as dc

    from .errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(types, prog=prog, description=description)
    own = {f.name for t in types for f in dc.fields(t)}
    try:
        path = _config_path(argv)
        known = known_config_fields() if shared_config else own
        if path is not None:  # file errors and unknown fields first, before any value is checked
            data, lines = read_config_file(path)
            unknown = [k for k in data if k != "env" and k not in known]
            if unknown:
                raise UserError(_unknown_fields_message(path, unknown, lines, known))
        *out, from_file, from_cli = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True)
        if from_cli:
            raise UserError(_unknown_flags_message(from_cli, own))
        return tuple(out)
    except FileNotFoundError as err:
        fail(prog, f"file not found: {err.filename}")
    except (ValueError, TypeError) as err:
        fail(prog, str(err))
