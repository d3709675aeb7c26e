"""The evaluation's configuration: :class:`EvalConfig` (flat ``eval_*`` fields, parsed with the teacher and
influence configs), :class:`EvalArguments` (``--sources``, ``--output``), :func:`parse_sources` and the
metric constants. Read by ``rubric_rl.evaluate``, ``calibrate``, ``preflight`` and ``config`` (train's
``evaluate_sources``, the shared YAML's known fields)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .checks import at_least, positive

# How a multiple-choice item's context is built (rubric_rl/mcscore.py scores with it; here so this layer imports
# nothing above it)
MC_CONTEXT_MODES = ("reasoning_prefix", "prompt")
# The held-out test set as an lm-evaluation-harness task (rubric_rl/assets/lm_eval_tasks/, rubric_rl/evaluate/harness.py)
HELDOUT_TASK = "rubric_rl_heldout"


REPORT_FORMAT = 1
FINETUNE_MODES = ("full", "lora")
PRIMARY_METRICS = ("loss", "acc", "acc_norm")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
LOWER_IS_BETTER = {"loss": True, "acc": False, "acc_norm": False}
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class EvalConfig:
    """Downstream evaluation of rubric sources (flat ``eval_*`` fields, parsed with the teacher and influence
    configs)."""

    _argument_group_name = "evaluation (eval_*): documents, held-out test set, fine-tuning of the target, seeds"

    eval_documents: str = field(
        default="data/quickstart/documents.jsonl",
        metadata={"help": "Documents the samples are written from (jsonl/json/parquet or a datasets folder)."},
    )
    eval_document_text_field: str = field(default="text", metadata={"help": "Field of the document text."})
    eval_test_data: str = field(
        default="data/quickstart/test.jsonl",
        metadata={"help": "Held-out test set, chat jsonl ({'messages': [...]}); items with 'choices' and 'answer' "
                          "(a letter) are also scored as multiple choice. Never the validation set."},
    )
    eval_target_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Target model fine-tuned on each dataset (hub id, path or tiny spec). Default: "
                          "target_model_name_or_path, the target the generator was rewarded on."},
    )
    eval_target_dtype: str = field(default="float32", metadata={"help": "dtype of the fine-tuned target."})
    eval_finetune: str = field(
        default="full", metadata={"help": f"How the target is fine-tuned: one of {list(FINETUNE_MODES)}."}
    )
    eval_lora_r: int = field(default=8, metadata={"help": "LoRA rank (eval_finetune=lora)."})
    eval_lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (eval_finetune=lora)."})
    eval_lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "LoRA target modules (eval_finetune=lora), or 'all-linear'."},
    )
    eval_epochs: float = field(default=3.0, metadata={"help": "Fine-tuning epochs over each dataset."})
    eval_learning_rate: float = field(default=1e-3, metadata={"help": "Peak fine-tuning learning rate (AdamW)."})
    eval_lr_scheduler_type: str = field(
        default="linear", metadata={"help": f"Learning-rate schedule, one of {list(SCHEDULERS)}."}
    )
    eval_warmup_ratio: float = field(default=0.05, metadata={"help": "Share of steps ramping the learning rate up."})
    eval_weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    eval_max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 = off)."})
    eval_batch_size: int = field(default=16, metadata={"help": "Fine-tuning batch size (samples)."})
    eval_max_length: int = field(default=512, metadata={"help": "Samples and test items are cut to this many tokens."})
    eval_num_samples: int = field(
        default=200, metadata={"help": "Budget: accepted samples per (source, seed) dataset, the same for every source."}
    )
    eval_max_queries_per_sample: float = field(
        default=2.0,
        metadata={"help": "Items tried per wanted sample at most (an item = one rubric + one teacher query). A source "
                          "that runs out has a smaller dataset; the report says so."},
    )
    eval_seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "Seeds: each gives every source the same document order and teacher seeds, its own rubric "
                          "generations, and its own fine-tuning order (and LoRA init)."},
    )
    eval_decontaminate: bool = field(
        default=True,
        metadata={"help": "Reject samples that overlap a test item (n-gram decontamination, as `rubric-rl synthesize`)."},
    )
    eval_influence: bool = field(
        default=True, metadata={"help": "Score each dataset's mean influence (needs influence_validation_data)."}
    )
    eval_influence_run_dir: str | None = field(
        default=None,
        metadata={"help": "Folder holding (or receiving) the target warm-up and validation-gradient cache used for "
                          "influence. Default: REPORT_DIR/influence. A training run's folder reuses its warm-up if "
                          "the target_*/warmup_* arguments match (else it refuses, naming the differences)."},
    )
    eval_primary_metric: str = field(
        default="loss",
        metadata={"help": f"Held-out metric that ranks sources and defines the gain, one of {list(PRIMARY_METRICS)}."},
    )
    eval_mc_context: str = field(
        default="reasoning_prefix",
        metadata={"help": "Multiple-choice context: 'reasoning_prefix' (prompt + gold answer up to the gold choice "
                          "text, which holds no answer information) or 'prompt' (prompt only); continuations are the "
                          "choice texts. See rubric_rl/mcscore.py."},
    )
    eval_score_batch_size: int = field(default=32, metadata={"help": "Batch size of held-out scoring."})
    eval_lm_eval_tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "lm-evaluation-harness tasks every fine-tuned target and the untrained one are also scored "
                          "on (the optional 'eval' extra): installed task names, tasks of eval_lm_eval_include_path, "
                          f"or '{HELDOUT_TASK}' (the held-out test set eval_test_data as a harness task). Results in "
                          "each run's heldout['lm_eval']. Default: none."},
    )
    eval_lm_eval_include_path: list[str] = field(
        default_factory=list,
        metadata={"help": "Folders of your own harness task YAMLs (lm_eval --include_path); rubric-rl's tasks "
                          "(rubric_rl/assets/lm_eval_tasks) are always included."},
    )
    eval_lm_eval_limit: int | None = field(
        default=None, metadata={"help": "Score at most this many documents per harness task (default: all)."}
    )
    eval_lm_eval_num_fewshot: int = field(default=0, metadata={"help": "Few-shot examples per harness prompt."})
    eval_lm_eval_apply_chat_template: bool = field(
        default=True,
        metadata={"help": "Render harness prompts with the target's chat template (the fine-tuned targets are chat "
                          f"models; '{HELDOUT_TASK}' needs it to see the prompt rubric-rl's scorer sees)."},
    )
    eval_generator_batch_size: int = field(default=16, metadata={"help": "Documents per rubric-generator call."})
    eval_device: str = field(default="auto", metadata={"help": "Device for fine-tuning and scoring: auto, cpu, cuda..."})
    eval_torch_num_threads: int = field(
        default=0, metadata={"help": "CPU threads for torch (0 = torch's default; 1 is fastest for tiny models)."}
    )
    eval_save_datasets: bool = field(
        default=True, metadata={"help": "Write every dataset to REPORT_DIR/datasets/<source>/seed<k>.jsonl."}
    )
    eval_progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        if self.eval_finetune not in FINETUNE_MODES:
            raise ValueError(f"eval_finetune must be one of {list(FINETUNE_MODES)}, got {self.eval_finetune!r}")
        if self.eval_primary_metric not in PRIMARY_METRICS:
            raise ValueError(f"eval_primary_metric must be one of {list(PRIMARY_METRICS)}, got {self.eval_primary_metric!r}")
        if self.eval_lr_scheduler_type not in SCHEDULERS:
            raise ValueError(f"eval_lr_scheduler_type must be one of {list(SCHEDULERS)}, got {self.eval_lr_scheduler_type!r}")
        if self.eval_mc_context not in MC_CONTEXT_MODES:
            raise ValueError(f"eval_mc_context must be one of {list(MC_CONTEXT_MODES)}, got {self.eval_mc_context!r}")
        for name in ("eval_lora_r", "eval_batch_size", "eval_max_length", "eval_num_samples", "eval_score_batch_size",
                     "eval_generator_batch_size"):
            at_least(name, getattr(self, name), 1)
        for name in ("eval_epochs", "eval_learning_rate", "eval_lora_alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        at_least("eval_max_queries_per_sample", self.eval_max_queries_per_sample, 1)
        for name in ("eval_lm_eval_tasks", "eval_lm_eval_include_path"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, getattr(self, name).split())
        if self.eval_lm_eval_limit is not None:
            at_least("eval_lm_eval_limit", self.eval_lm_eval_limit, 1)
        positive("eval_lm_eval_num_fewshot", self.eval_lm_eval_num_fewshot, allow_zero=True)
        if not 0 <= self.eval_warmup_ratio < 1:
            raise ValueError(f"eval_warmup_ratio must be in [0, 1), got {self.eval_warmup_ratio!r}")
        for name in ("eval_weight_decay", "eval_max_grad_norm", "eval_torch_num_threads"):
            positive(name, getattr(self, name), allow_zero=True)
        if isinstance(self.eval_seeds, int):
            self.eval_seeds = [self.eval_seeds]
        if not self.eval_seeds or len(set(self.eval_seeds)) != len(self.eval_seeds):
            raise ValueError(f"eval_seeds must be a non-empty list of distinct integers, got {self.eval_seeds!r}")
        if isinstance(self.eval_lora_target_modules, str):
            self.eval_lora_target_modules = [self.eval_lora_target_modules]
        if not self.eval_documents:
            raise ValueError("eval_documents must name a documents file")
        if not self.eval_test_data:
            raise ValueError("eval_test_data must name the held-out test file")


@dataclass
class EvalArguments:
    _argument_group_name = "evaluate: rubric sources and report folder"

    sources: list[str] | None = field(
        default=None,
        metadata={"help": "Rubric sources to compare, NAME=SPEC each (repeat the flag or list them): SPEC is an "
                          "exported rubric generator folder, a rubrics JSON file, 'none' (no rubric), or a "
                          "closed-loop rule folder (OUT/<rule> of rubric-rl closed-loop: its dataset per seed)."},
    )
    output: str | None = field(default=None, metadata={"help": "Report folder (report.json, report.md, plots)."})

    def __post_init__(self):
        if isinstance(self.sources, dict):  # YAML mapping {name: spec}
            self.sources = [f"{k}={v}" for k, v in self.sources.items()]
        if isinstance(self.sources, str):
            self.sources = self.sources.split()
        if not self.sources:
            raise ValueError("--sources is required: NAME=SPEC ... (SPEC: export folder, rubrics JSON, or 'none')")
        parse_sources(self.sources)
        if not self.output:
            raise ValueError("--output is required (the report folder)")


def parse_sources(items: list[str]) -> dict[str, str]:
    """``["a=SPEC", ...]`` -> ``{"a": "SPEC"}`` (order kept); names must be unique."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = str(item).partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            raise ValueError(f"sources: {item!r} is not NAME=SPEC")
        if not _SOURCE_NAME.match(name):
            raise ValueError(f"sources: name {name!r} must be letters, digits, '_', '.', '-'")
        if name in out:
            raise ValueError(f"sources: name {name!r} is given twice")
        out[name] = spec
    return out
