"""Typed configuration of a training run, read from YAML with TRL's ``TrlParser``.

One flat namespace, as in TRL's own scripts: ``--config run.yaml`` sets defaults, CLI flags
override them. The stages each own a dataclass:

* :class:`RubricRLArguments` here: policy model, data, prompts, reward shaping, warm start;
* ``GRPOConfig`` from TRL: the RL algorithm and everything ``transformers.TrainingArguments`` has
  (``output_dir``, ``max_steps``, ``seed``, ``report_to``, ``resume_from_checkpoint``, ...);
* :class:`~rubric_rl.teachers.config.TeacherConfig` (``teacher_*``);
* :class:`~rubric_rl.influence.config.InfluenceConfig` (``target_*``, ``warmup_*``, ``influence_*``).

Every field has ``help`` metadata (that is what ``--help`` prints) and bad values fail in
``__post_init__``, before any model loads, with a message naming the field.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from .data.prompts import DEFAULT_TASK

REWARD_SCALINGS = ("running", "batch_minmax", "none")
ALGORITHMS = ("grpo", "rloo")


@dataclass
class RubricRLArguments:
    algorithm: str = field(
        default="grpo",
        metadata={"help": "RL algorithm: 'grpo' (TRL GRPOTrainer; pick the loss with loss_type: dapo, grpo, "
                          "dr_grpo, bnpo, cispo, sapo) or 'rloo' (TRL RLOOTrainer, leave-one-out baseline; the "
                          "GRPO-only fields are ignored)."},
    )
    policy_model_name_or_path: str = field(
        default="tiny:hidden=64,layers=2,heads=4,seed=0",
        metadata={"help": "Rubric generator (policy): hub id or local path of an instruct model, or a 'tiny:...' "
                          "spec for an offline random model (quickstart and tests only)."},
    )
    policy_dtype: str = field(default="auto", metadata={"help": "Policy weights dtype: auto, bfloat16, float32."})
    policy_trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code (off)."})
    policy_use_peft: bool = field(default=False, metadata={"help": "Train the policy with LoRA instead of fully."})
    policy_lora_r: int = field(default=16, metadata={"help": "Policy LoRA rank (with policy_use_peft)."})
    policy_lora_alpha: int = field(default=32, metadata={"help": "Policy LoRA alpha (with policy_use_peft)."})
    policy_lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Policy LoRA target modules; default: all linear layers."}
    )
    documents: str = field(
        default="data/quickstart/documents.jsonl",
        metadata={"help": "Domain documents (jsonl/json/parquet or a datasets folder) with a 'text' field."},
    )
    document_text_field: str = field(default="text", metadata={"help": "Field of the document text."})
    task_description: str = field(
        default=DEFAULT_TASK, metadata={"help": "The target task, as the policy prompt states it."}
    )
    rubric_format: str = field(
        default="json",
        metadata={"help": "What the policy is asked to write: 'json' (OptimSyn's four-part JSON object) or 'list' "
                          "(3-5 bulleted criteria with an example; for small instruct policies such as SmolLM2-135M, "
                          "which write parseable JSON for ~1 prompt in 8 and a parseable list for ~3 in 8). The "
                          "export records it, so the generator is used with the prompt it was trained on."},
    )
    max_document_chars: int = field(
        default=4000, metadata={"help": "Documents are cut to this many characters in the policy prompt."}
    )
    seed_rubrics: str | None = field(
        default="data/quickstart/seed_rubrics.json",
        metadata={"help": "Hand-written rubrics (JSON list): the SFT warm start's targets and the baseline."},
    )
    policy_sft_warmstart: bool = field(
        default=False,
        metadata={"help": "Before RL, fine-tune the policy on (prompt, seed rubric) pairs (a LoRA fine-tune with "
                          "policy_use_peft). Needed for a tiny random policy, which cannot write JSON; it lifts a "
                          "small instruct policy (SmolLM2-135M) from about half parseable rubrics."},
    )
    policy_sft_epochs: float = field(default=3.0, metadata={"help": "Warm-start SFT epochs."})
    policy_sft_learning_rate: float = field(default=3e-3, metadata={"help": "Warm-start SFT learning rate."})
    policy_sft_batch_size: int = field(default=16, metadata={"help": "Warm-start SFT batch size."})
    policy_sft_max_documents: int = field(
        default=16, metadata={"help": "Warm-start SFT pairs every seed rubric with this many documents."}
    )
    torch_num_threads: int = field(
        default=0,
        metadata={"help": "CPU threads for torch (0 = torch's default). Tiny CPU runs are fastest with 1, "
                          "and a busy machine makes extra threads spin."},
    )
    reward_decontam_files: list[str] | None = field(
        default=None,
        metadata={"help": "Evaluation files (chat jsonl: validation, test) that no rewarded sample may copy: "
                          "n-gram decontamination rejects such samples as invalid."},
    )
    # The verifiers of the RL step: the same checks and settings as `synthesize` (synth_grounding,
    # synth_grounding_min_overlap, synth_safety, synth_blocklist_file, synth_decontam_ngram/_threshold).
    reward_grounding: bool = field(
        default=True, metadata={"help": "Reject samples whose answer is not grounded in the document (as "
                                        "synthesize's synth_grounding)."})
    reward_grounding_min_overlap: float = field(
        default=0.5, metadata={"help": "Grounding: minimum share of the answer's content words found in the "
                                       "document."})
    reward_safety: bool = field(default=True, metadata={"help": "Apply the safety blocklist to rewarded samples."})
    reward_blocklist_file: str | None = field(
        default=None, metadata={"help": "Extra blocklist patterns, one regex per line ('category: regex' allowed)."})
    reward_decontam_ngram: int = field(default=8, metadata={"help": "Decontamination n-gram size (words)."})
    reward_decontam_threshold: float = field(
        default=0.5, metadata={"help": "A sample is contaminated when it covers more than this share of an "
                                       "evaluation prompt's informative tokens."})
    reward_invalid_penalty: float = field(
        default=0.1,
        metadata={"help": "lambda in R = valid * (s(IF) + beta * novelty) - lambda * (1 - valid): the reward of an "
                          "unparseable rubric or a rejected sample."},
    )
    reward_if_scaling: str = field(
        default="running",
        metadata={"help": "Scaling s of influence before shaping. 'running' (default): sigmoid of the score "
                          "standardised by the mean and std of a window of recent valid scores (this process, "
                          "across groups and steps; reward_if_window), so s is in (0, 1) and a lone valid sample "
                          "is scored by its own influence. 'batch_minmax': the valid scores of each reward call "
                          "mapped to [0, 1] (OptimSyn's code; a lone valid sample always gets 0.5 and two close "
                          "scores become 0 and 1). 'none': raw scores."},
    )
    reward_if_window: int = field(
        default=256, metadata={"help": "Window (valid scores) of the 'running' influence scaling."}
    )
    reward_if_min_rel: float = field(
        default=0.0,
        metadata={"help": "'running' scaling: floor on the window's spread, as a share of its mean |score|, so that "
                          "a window of near-identical noisy scores is not stretched to the full range. Off (0) by "
                          "default: the exact 'dot' scores carry no projection noise, and on SmolLM2-135M they "
                          "differ by ~1-2 percent of their mean (a shared momentum part), so a 5 percent floor flattened them."},
    )
    reward_if_scale: float = field(
        default=1.0, metadata={"help": "Multiplier on the (scaled) influence score."}
    )
    preflight_rubrics: int = field(
        default=8,
        metadata={"help": "Before RL, sample this many rubrics (one per document, the GRPO sampling settings) and "
                          "report how many parse. None parsing stops the run (exit 1) with what to change "
                          "(rubric_format: list, policy_sft_warmstart, a larger policy); under 25 percent warns. 0 = skip."},
    )
    stall_steps: int = field(
        default=10,
        metadata={"help": "Stop the run (exit 1, nothing exported) when for this many consecutive logged steps every reward "
                          "was None (nothing scorable) or no GRPO group had any reward spread (zero advantage: the "
                          "policy gets no gradient). 0 turns the guard off."},
    )
    evaluate_config: str | None = field(
        default=None,
        metadata={"help": "After training and export, run `rubric-rl evaluate` with this config: the exported "
                          "generator (source 'trained') against evaluate_sources, report in OUTPUT_DIR/eval, table "
                          "printed. The quickstart sets it; real runs usually evaluate separately."},
    )
    evaluate_sources: list[str] | None = field(
        default=None,
        metadata={"help": "Sources compared with the trained generator after training, NAME=SPEC each "
                          "(SPEC: rubrics JSON, exported generator folder, or 'none')."},
    )
    reward_novelty_weight: float = field(
        default=0.5,
        metadata={"help": "beta in R = valid * (s(IF) + beta * novelty) - lambda * (1 - valid). novelty = the share "
                          "of the other valid samples of the same GRPO group (same document and prompt) that are "
                          "about a different sentence of the document. Without it the generator collapses onto "
                          "one question per document. Default 0.5: with 'running' scaling s(IF) spreads ~0.2 within "
                          "a group, and a larger weight drowns it. The quickstart (batch_minmax) uses 2.0: there "
                          "0.5 was too weak to stop the collapse (notes/evaluate.md). 0 turns it off."},
    )

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an OUTPUT_DIR that already holds a run: its checkpoints, metrics.jsonl, "
                          "rollouts.jsonl, final model, export/ and eval/ are deleted first (the reusable caches "
                          "warmup/, influence_cache/ and sft_warmstart/ stay). Without it such a folder is refused "
                          "unless the run is resumed (--resume_from_checkpoint true)."},
    )
    allow_changed_args: bool = field(
        default=False,
        metadata={"help": "Resume even though arguments that change what the run computes (models, data, reward_*, "
                          "num_generations, batch size, learning_rate, loss_type, seed, ...) differ from the run's "
                          "rubric_rl_args.json; each change is recorded in OUTPUT_DIR/args_changes.jsonl with the step "
                          "it took effect at. Note that the optimizer and scheduler state come from the checkpoint, so "
                          "a new learning_rate or scheduler does not reach them. Logging, saving and max_steps may "
                          "change without it."},
    )

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        from .rubric import RUBRIC_FORMATS

        if self.rubric_format not in RUBRIC_FORMATS:
            raise ValueError(f"rubric_format must be one of {RUBRIC_FORMATS}, got {self.rubric_format!r}")
        if self.reward_if_scaling not in REWARD_SCALINGS:
            raise ValueError(f"reward_if_scaling must be one of {REWARD_SCALINGS}, got {self.reward_if_scaling!r}")
        if self.reward_invalid_penalty < 0:
            raise ValueError(f"reward_invalid_penalty must be >= 0, got {self.reward_invalid_penalty!r}")
        if self.evaluate_config is not None:
            from .configs.evaluate import parse_sources

            if not Path(self.evaluate_config).is_file():
                raise ValueError(f"evaluate_config: no such file {self.evaluate_config!r}")
            if "trained" in parse_sources(self.evaluate_sources or []):
                raise ValueError("evaluate_sources: the name 'trained' is the generator this run trains")
        if self.preflight_rubrics < 0:
            raise ValueError(f"preflight_rubrics must be >= 0, got {self.preflight_rubrics!r}")
        if self.stall_steps < 0:
            raise ValueError(f"stall_steps must be >= 0, got {self.stall_steps!r}")
        if self.reward_if_window < 1:
            raise ValueError(f"reward_if_window must be >= 1, got {self.reward_if_window!r}")
        if self.reward_if_min_rel < 0:
            raise ValueError(f"reward_if_min_rel must be >= 0, got {self.reward_if_min_rel!r}")
        if self.reward_novelty_weight < 0:
            raise ValueError(f"reward_novelty_weight must be >= 0, got {self.reward_novelty_weight!r}")
        if not 0 < self.reward_grounding_min_overlap <= 1:
            raise ValueError(f"reward_grounding_min_overlap must be in (0, 1], got {self.reward_grounding_min_overlap!r}")
        if not 0 <= self.reward_decontam_threshold < 1:
            raise ValueError(f"reward_decontam_threshold must be in [0, 1), got {self.reward_decontam_threshold!r}")
        for name in ("policy_lora_r", "policy_lora_alpha", "max_document_chars", "policy_sft_batch_size",
                     "reward_decontam_ngram",
                     "policy_sft_max_documents"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.torch_num_threads < 0:
            raise ValueError(f"torch_num_threads must be >= 0, got {self.torch_num_threads!r}")
        if self.policy_sft_epochs <= 0:
            raise ValueError(f"policy_sft_epochs must be > 0, got {self.policy_sft_epochs!r}")
        if not self.documents:
            raise ValueError("documents must name a documents file")


def train_dataclasses():
    from trl import GRPOConfig

    from .influence.config import InfluenceConfig
    from .teachers.config import TeacherConfig

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
    try:
        from .synth.commands import SynthConfig

        types.append(SynthConfig)
    except ImportError:  # pragma: no cover
        pass
    try:
        from .configs.calibrate import CalibrateArguments
        from .configs.evaluate import EvalArguments, EvalConfig

        types += [EvalConfig, EvalArguments, CalibrateArguments]
    except ImportError:  # pragma: no cover
        pass
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


@dataclass
class RunDirArguments:
    output_dir: str = field(
        default="runs/quickstart",
        metadata={"help": "Run folder: the target warm-up goes to OUTPUT_DIR/warmup, validation-gradient caches "
                          "to OUTPUT_DIR/influence_cache (both reused by `rubric-rl train` with the same folder)."},
    )


@dataclass
class ScoreArguments:
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


@dataclass
class SynthArguments:
    rubric_source: str = field(
        default="none",
        metadata={"help": "Where rubrics come from: an exported rubric generator folder, a rubrics JSON file, "
                          "or 'none' (no rubric)."},
    )
    documents: str = field(default="data/quickstart/documents.jsonl", metadata={"help": "Documents file."})
    output: str = field(default=None, metadata={"help": "Output jsonl of chat samples with provenance."})
    num_samples: int | None = field(default=None, metadata={"help": "Samples to accept (default: one per document)."})

    def __post_init__(self):
        if not self.output:
            raise ValueError("--output is required (the jsonl to write)")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples!r}")
