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

``--help`` (:func:`help_parser`) is built by the same ``HfArgumentParser`` machinery from the same dataclasses, one
section per dataclass (its ``_argument_group_name``), rubric-rl's own first. It imports neither torch nor TRL:
``train_dataclasses(lazy=True)`` names TRL's ``GRPOConfig`` as a string that only a real parse or ``--help-all``
imports; plain ``--help`` shows a pointer to ``--help-all`` instead of its ~190 inherited fields.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .configs.run import RunDirArguments, ScoreArguments, ServeInfluenceArguments
from .configs.synth import SynthArguments
from .configs.train import ALGORITHMS, REWARD_SCALINGS, RubricRLArguments

__all__ = ["RubricRLArguments", "RunDirArguments", "ScoreArguments", "ServeInfluenceArguments", "SynthArguments",
           "ALGORITHMS", "REWARD_SCALINGS", "GRPO_CONFIG", "train_dataclasses", "resolve_types", "make_parser",
           "help_parser", "help_requested", "known_config_fields", "settings_classes", "parse_config", "read_config_file",
           "fail", "merge_repeated", "CommandParser", "ParsedArgs"]

GRPO_CONFIG = "trl:GRPOConfig"  # TRL's class by name: imported only to parse a run or for --help-all
HELP_FLAGS = ("-h", "--help", "--help-all")
# What plain --help says about an inherited dataclass instead of listing its fields (--help-all lists them): its
# name, its section title and the fields a run sets most often (tests/test_cli.py checks that they exist).
INHERITED = {
    GRPO_CONFIG: ("TRL's GRPOConfig", "TRL's GRPOConfig (inherited): the RL algorithm, transformers' TrainingArguments",
                  ("output_dir", "max_steps", "learning_rate", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "num_generations", "max_completion_length", "temperature", "beta",
                   "loss_type", "seed", "bf16", "logging_steps", "save_steps", "report_to",
                   "resume_from_checkpoint")),
}


def train_dataclasses(lazy: bool = False):
    """The settings of a training run, in parse order: ``(RubricRLArguments, GRPOConfig, TeacherConfig,
    InfluenceConfig)``. With ``lazy``, GRPOConfig is :data:`GRPO_CONFIG` (a name), so that nothing imports TRL (and
    torch) until :func:`parse_config` parses a real run."""
    from .configs.influence import InfluenceConfig
    from .configs.teacher import TeacherConfig

    types = (RubricRLArguments, GRPO_CONFIG, TeacherConfig, InfluenceConfig)
    return types if lazy else resolve_types(types)


def resolve_types(types) -> tuple:
    """``types`` with each ``"module:Class"`` name replaced by the class it names."""
    import importlib

    out = []
    for t in types:
        if isinstance(t, str):
            module, _, name = t.partition(":")
            t = getattr(importlib.import_module(module), name)
        out.append(t)
    return tuple(out)


def _type_key(t) -> str:
    return t if isinstance(t, str) else f"{t.__module__.split('.')[0]}:{t.__name__}"


def help_requested(argv: list[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv)


def _help_formatter():
    import argparse

    class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
        """``--field TYPE`` instead of ``--field FIELD, --field-name FIELD`` (the dashed alias still parses)."""

        def _format_action_invocation(self, action):
            if not action.option_strings or action.nargs == 0:
                return ", ".join(action.option_strings) or super()._format_action_invocation(action)
            if action.metavar is not None:
                return f"{action.option_strings[0]} {action.metavar}"
            if action.choices:
                name = "{" + ",".join(str(c) for c in action.choices) + "}"
            else:
                name = {"string_to_bool": "BOOL", "str": "STR", "int": "INT", "float": "FLOAT"}.get(
                    getattr(action.type, "__name__", ""), "VALUE")
            shape = {"?": f"[{name}]", "+": f"{name} [{name} ...]", "*": f"[{name} ...]"}.get(action.nargs, name)
            return f"{action.option_strings[0]} {shape}"

    return HelpFormatter


def help_parser(types, prog: str | None = None, description: str | None = None, *, full: bool = False,
                shared_config: bool = False):
    """The parser whose help ``--help`` prints (it parses nothing): the options of ``types`` as
    :func:`make_parser` builds them (``HfArgumentParser``), one section per dataclass titled by its
    ``_argument_group_name``, rubric-rl's own first. An inherited dataclass (TRL's GRPOConfig) comes last: its
    fields with ``full`` (``--help-all``, which imports it), else a section that names the common ones and points
    to ``--help-all``. Plus ``--config``, ``--debug`` (and ``--help-all``); ``--no_FIELD`` complements are hidden
    (``--FIELD false`` does the same). Without ``full`` this imports neither torch nor TRL."""
    import argparse

    from transformers.hf_argparser import HfArgumentParser

    prog = prog or "rubric-rl"
    own = [t for t in types if not isinstance(t, str) and t.__module__.startswith("rubric_rl.")]
    inherited = [t for t in types if t not in own]
    shown = list(own)
    if full:
        for key, cls in zip(map(_type_key, inherited), resolve_types(inherited)):
            title = INHERITED[key][1] if key in INHERITED else f"{cls.__name__} (inherited from {key.split(':')[0]})"
            shown.append(type(cls.__name__, (cls,), {"_argument_group_name": title}))
    # conflict_handler: rubric-rl's --debug replaces TrainingArguments' (cli.main takes --debug off the command line)
    parser = HfArgumentParser(shown, prog=prog, description=description, formatter_class=_help_formatter(),
                              usage=f"{prog} [--config FILE.yaml] [--FIELD VALUE ...]", conflict_handler="resolve")
    options = parser._optionals
    if inherited:
        names = " and ".join(INHERITED[k][0] if k in INHERITED else k for k in map(_type_key, inherited))
        options.add_argument("--help-all", action="store_true", default=argparse.SUPPRESS,
                             help=f"show this help with every option, the fields inherited from {names} included.")
    unknown = ("Fields of other rubric-rl commands are ignored (one run YAML serves train, warmup, score, "
               "serve-influence, synthesize and evaluate); a field no command knows" if shared_config
               else "A field this command does not know")
    options.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                         help="YAML file of flat `field: value` lines, one per option below (see configs/); flags "
                              f"override it. {unknown} is an error naming the file and line.")
    options.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of an error instead of its one line (or RUBRIC_RL_DEBUG=1).")
    if not full:
        for t in inherited:
            key = _type_key(t)
            _, title, common = INHERITED.get(key, (key, f"{key} (inherited)", ()))
            named = f" The ones a run sets most often: {', '.join('--' + n for n in common)}." if common else ""
            parser.add_argument_group(title, f"Not listed here: `{prog} --help-all` lists them all.{named}")
    fields = {a.dest for a in parser._actions if a.option_strings and a.option_strings[0] == f"--{a.dest}"}
    for action in parser._actions:  # the --no_FIELD complement of a field that defaults to true
        if isinstance(action, argparse._StoreFalseAction) and action.dest in fields:
            action.help = argparse.SUPPRESS
    return parser


def _help(types, argv: list[str], prog, description, shared_config: bool):
    """Print ``--help`` (``--help-all``) and exit 0; with ``--config FILE`` the defaults shown are the file's."""
    parser = help_parser(types, prog, description, full="--help-all" in argv, shared_config=shared_config)
    path = _config_path(argv)
    if path is not None:
        data, _ = read_config_file(path)
        dests = {a.dest for a in parser._actions}
        parser.set_defaults(**{k: v for k, v in data.items() if k in dests})
    parser.print_help()
    raise SystemExit(0)


def make_parser(types, prog: str | None = None, description: str | None = None):
    from trl import TrlParser

    parser = TrlParser(types, prog=prog, description=description)
    # argparse's own errors (a bad int, a missing value...) are one line too, not the ~260 lines of usage.
    parser.error = lambda message: fail(prog or parser.prog, message)
    return parser


def settings_classes() -> list[type]:
    """Every settings dataclass of :mod:`rubric_rl.configs` (each command's own live there: ``make_parser()`` of a
    :mod:`rubric_rl.commands` module names no other but TRL's GRPOConfig, which tests/test_cli.py checks)."""
    import dataclasses as dc
    import importlib
    import pkgutil

    from . import configs

    out = []
    for info in sorted(pkgutil.iter_modules(configs.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{configs.__name__}.{info.name}")
        out += [c for c in vars(module).values()
                if isinstance(c, type) and dc.is_dataclass(c) and c.__module__ == module.__name__]
    return out


def known_config_fields() -> set[str]:
    """Every field any rubric-rl command reads, so that one run YAML can serve all commands: the fields of every
    class of :func:`settings_classes` and of TRL's GRPOConfig. (Not read off the command registry, which sits above
    this parser: :mod:`rubric_rl.commands` imports it, so asking the registry would be an import cycle;
    tests/test_cli.py checks that the two give the same set.)"""
    import dataclasses as dc

    types = [*resolve_types([GRPO_CONFIG]), *settings_classes()]
    return {f.name for t in types for f in dc.fields(t)}


class ParsedArgs(tuple):
    """A command's parsed dataclasses, in its parser's order (unpack it), and ``argv``: the command line they came
    from (``synthesize`` and ``closed-loop`` record it)."""

    argv: list[str]

    def __new__(cls, values, argv):
        self = super().__new__(cls, values)
        self.argv = list(argv)
        return self


@dataclass(frozen=True)
class CommandParser:
    """What a ``rubric-rl`` command parses (the ``make_parser()`` of a :mod:`rubric_rl.commands` module): its
    dataclasses, in order (a ``"module:Class"`` name is imported only to parse a run, or for ``--help-all``), and
    how. :meth:`parse_args` gives a :class:`ParsedArgs`; ``--help`` prints :func:`help_parser`'s help and exits 0."""

    command: str
    types: tuple
    description: str
    shared_config: bool = True  # one run YAML serves every command: another command's fields are ignored
    repeated: tuple[str, ...] = ()  # flags whose values add up when given several times (``--sources``)

    @property
    def prog(self) -> str:
        return f"rubric-rl {self.command}"

    def parse_args(self, argv: list[str] | None = None) -> ParsedArgs:
        argv = list(sys.argv[1:] if argv is None else argv)
        for flag in self.repeated:
            argv = merge_repeated(argv, flag)
        return ParsedArgs(parse_config(self.types, argv, prog=self.prog, description=self.description,
                                       shared_config=self.shared_config), argv)

    def help_parser(self, *, full: bool = False):
        return help_parser(self.types, self.prog, self.description, full=full, shared_config=self.shared_config)


def merge_repeated(argv: list[str], flag: str = "--sources") -> list[str]:
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
    """Parse ``--config file.yaml`` plus CLI overrides into the given dataclasses (a ``"module:Class"`` name among
    ``types`` is imported first); ``-h``/``--help``/``--help-all`` print :func:`help_parser`'s help and exit 0.

    With ``shared_config``, keys of the YAML file that belong to another rubric-rl command are ignored
    (so ``rubric-rl score --config run.yaml`` works on the training config), while keys no command
    knows still fail. Raises ``SystemExit(2)`` with a one-line message (naming the field or file, and
    the closest known name for an unknown one) on bad input.
    """
    import dataclasses as dc

    from .errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if help_requested(argv):
            _help(types, argv, prog, description, shared_config)
    except (ValueError, TypeError) as err:  # a bad --config file
        fail(prog, str(err))
    types = resolve_types(types)
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
