"""Configuration of the influence engine: the target model, its warm-up, and the scoring.

Every field is prefixed ``target_``, ``warmup_`` or ``influence_``: these dataclasses are parsed flat
together with TRL's ``GRPOConfig`` by ``TrlParser``, so unprefixed names (``learning_rate``, ``seed``,
``max_length``...) would collide. (``warmup_steps`` is taken by ``TrainingArguments``.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .checks import choice, positive

ESTIMATORS = ("less", "dot")
DIRECTIONS = ("adam", "adam_less", "sgd")
DTYPES = ("float32", "bfloat16", "float16", "float64", "auto")
COMPUTE_DTYPES = ("float32", "float64")
# The validation objective whose first-order decrease the score predicts (influence/choices.py).
OBJECTIVES = ("tokens+choices", "tokens", "choices")

# Rows of the projection generated from one (seed, tile) pair. Fixed, so that the projection does
# not depend on how it is chunked in memory (see projection.py).
PROJECTION_TILE_ROWS = 256


@dataclass
class InfluenceConfig:
    """Target model, warm-up fine-tune, and influence scoring (LESS-style, optimizer-aware)."""

    _argument_group_name = "target, warm-up and influence (target_*, warmup_*, influence_*): how the reward is measured"

    # ----- target -------------------------------------------------------------------------------
    target_model_name_or_path: str = field(
        default="tiny:hidden=64,layers=2,heads=4,seed=0",
        metadata={"help": "The target model whose training the synthetic data should help: a hub id, a local "
                          "path, or a tiny spec 'tiny:hidden=..,layers=..' (offline tests/quickstart)."},
    )
    target_dtype: str = field(
        default="float32",
        metadata={"help": f"dtype the target is loaded in, one of {list(DTYPES)}. Gradient features are "
                          "always accumulated in influence_dtype."},
    )
    target_trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the hub for the target (off by default)."}
    )

    # ----- warm-up ------------------------------------------------------------------------------
    warmup_data: str | None = field(
        default=None,
        metadata={"help": "Chat jsonl ({'messages': [...]} per line) the target is LoRA-warmed-up on (LESS: a small "
                          "slice of the candidate pool). Required unless RUN_DIR/warmup already holds a finished warm-up."},
    )
    warmup_epochs: int = field(default=4, metadata={"help": "Warm-up epochs (LESS uses 4)."})
    warmup_learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate of the warm-up (AdamW)."})
    warmup_lr_scheduler_type: str = field(
        default="linear", metadata={"help": "transformers scheduler name for the warm-up (linear, cosine, constant...)."}
    )
    warmup_lr_warmup_ratio: float = field(
        default=0.03, metadata={"help": "Fraction of warm-up steps spent ramping the learning rate up."}
    )
    warmup_batch_size: int = field(default=8, metadata={"help": "Per-device train batch size of the warm-up."})
    warmup_gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Gradient accumulation steps of the warm-up."}
    )
    warmup_max_length: int = field(default=1024, metadata={"help": "Warm-up samples are truncated to this many tokens."})
    warmup_lora_r: int = field(default=8, metadata={"help": "LoRA rank of the warm-up adapter."})
    warmup_lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    warmup_lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout during the warm-up (scoring runs in eval mode)."})
    warmup_lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Module names LoRA is applied to (peft target_modules), or 'all-linear'. Only linear "
                          "layers are supported by the per-sample gradient engine."},
    )
    warmup_save_every: int = field(
        default=0,
        metadata={"help": "Save a checkpoint (adapter + Adam state) every N optimizer steps; 0 = once per epoch."},
    )
    warmup_weight_decay: float = field(
        default=0.0,
        metadata={"help": "AdamW weight decay of the warm-up. The influence direction ignores it (it is the same "
                          "for every sample)."},
    )
    warmup_seed: int = field(default=0, metadata={"help": "Seed of the warm-up (data order, LoRA init)."})

    # ----- influence ----------------------------------------------------------------------------
    influence_validation_data: str | None = field(
        default=None,
        metadata={"help": "Chat jsonl of the validation set whose loss the selected data should lower; each line "
                          "{'messages': [...], 'subtask': optional str}."},
    )
    influence_subtask_field: str = field(
        default="subtask",
        metadata={"help": "Validation field naming the subtask; scores are averaged inside a subtask and the max "
                          "is taken across subtasks. Lines without it form one subtask."},
    )
    influence_objective: str = field(
        default="tokens+choices",
        metadata={"help": "The validation objective whose decrease the score predicts: 'tokens' (the mean "
                          "cross-entropy of each item's answer tokens), 'choices' (for multiple-choice items: "
                          "-log softmax over the item's answer variants, one per option, of the gold one; "
                          "format-blind, it sees only the fact and letter that tell right from wrong), or "
                          "'tokens+choices' (default: their sum, items without choices add their token loss "
                          "only). With 'tokens' alone the reward scores a wrong answer like a right one of the "
                          "same format (mislabelled-pair AUC 0.51 on SmolLM2-135M; notes/content_signal.md)."},
    )
    influence_estimator: str = field(
        default="dot",
        metadata={"help": "'dot' (default): predicted validation-loss decrease sum_i lr_i * agg_val <g_val, "
                          "Gamma_i(z)> (first-order, larger = more helpful; with the defaults it ranks 32 samples "
                          "like a real Adam step does with Spearman 0.996 on SmolLM2-135M, notes/real_models.md). "
                          "'less': sum_i w_i * "
                          "agg_val cos(P g_val, P Gamma_i(z)) with w_i the checkpoints' normalised average "
                          "learning rates (LESS)."},
    )
    influence_center: bool = field(
        default=True,
        metadata={"help": "Subtract the zero-gradient (momentum-only) step from every Adam direction, so that a "
                          "score is what adding the sample to the step changes (the counterfactual), not the "
                          "momentum every sample shares. On by default: uncentred, the momentum's share differs "
                          "between subtasks and decides the max over subtasks for every sample alike, which hides "
                          "the sample's own subtask; on SmolLM2-135M with the default objective centring raised "
                          "the mislabelled-pair AUC 0.64 -> 0.80 and the calibration r 0.80 -> 0.92 on one machine; on "
                          "another, with its own warm-up, 0.79 -> 0.75 (notes/content_signal.md). The first-order check compares it with the real step's "
                          "decrease beyond the momentum-only step's. For 'dot' without a max (one subtask) it "
                          "shifts every score by one constant."},
    )
    influence_direction: str = field(
        default="adam",
        metadata={"help": "Update direction of a candidate sample: 'adam' (one Adam step from the saved moments, "
                          "bias-corrected, exactly what torch.optim.Adam would do), 'adam_less' (as the LESS code: "
                          "no bias correction, eps inside the square root), 'sgd' (the plain gradient)."},
    )
    influence_proj_dim: int = field(
        default=0,
        metadata={"help": "Dimension d of a random (Rademacher) projection of gradient features; 0 (default) = "
                          "none: exact. Scores average the validation side within a subtask, so the engine keeps "
                          "one mean validation direction per subtask and checkpoint ([S, P], not [n_val, P]) and "
                          "exact scoring is both cheaper and noise-free. A projection (LESS uses 8192) only "
                          "adds JL noise of ~1/sqrt(d) in cosine units; keep it for storing features of large "
                          "pools."},
    )
    influence_proj_seed: int = field(default=0, metadata={"help": "Seed of the random projection."})
    influence_proj_memory_mb: int = field(
        default=1024,
        metadata={"help": "Cap (MiB) on the memory the projection may occupy. The float P x d matrix is kept "
                          "resident if it fits; else its sign bits are kept if they fit in half the cap; else "
                          "blocks are regenerated from the seed for every batch. No float block ever exceeds it."},
    )
    influence_proj_layerwise: bool = field(
        default=False,
        metadata={"help": "Project each layer's directions inside the backward pass (least memory: no [rows, P] "
                          "buffer) instead of buffering un-projected directions (up to influence_proj_memory_mb) "
                          "and projecting them in one pass (faster). Used automatically when one batch of "
                          "un-projected rows does not fit the cap. Needs the projection resident (dense); "
                          "otherwise it is ignored."},
    )
    influence_batch_size: int = field(
        default=16, metadata={"help": "Samples per backward pass when computing per-sample gradients."}
    )
    influence_max_length: int = field(
        default=1024, metadata={"help": "Samples are truncated to this many tokens (counted as truncated)."}
    )
    influence_checkpoints: list[str] = field(
        default_factory=lambda: ["all"],
        metadata={"help": "Warm-up checkpoints used: 'all', 'last', or names/steps (checkpoint-12 or 12)."},
    )
    influence_device: str = field(
        default="auto",
        metadata={"help": "Device for scoring: 'auto' (this process's accelerate device, else cuda if available, "
                          "else cpu), or a torch device string."},
    )
    influence_dtype: str = field(
        default="float32",
        metadata={"help": f"dtype of gradient features, Adam directions and projections, one of {list(COMPUTE_DTYPES)}."},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.target_model_name_or_path, str) or not self.target_model_name_or_path.strip():
            raise ValueError(f"target_model_name_or_path must be a non-empty string, got {self.target_model_name_or_path!r}")
        choice("target_dtype", self.target_dtype, list(DTYPES))
        positive("warmup_epochs", self.warmup_epochs)
        positive("warmup_learning_rate", self.warmup_learning_rate)
        if not 0 <= self.warmup_lr_warmup_ratio < 1:
            raise ValueError(f"warmup_lr_warmup_ratio must be in [0, 1), got {self.warmup_lr_warmup_ratio!r}")
        positive("warmup_batch_size", self.warmup_batch_size)
        positive("warmup_gradient_accumulation_steps", self.warmup_gradient_accumulation_steps)
        positive("warmup_max_length", self.warmup_max_length)
        positive("warmup_lora_r", self.warmup_lora_r)
        positive("warmup_lora_alpha", self.warmup_lora_alpha)
        if not 0 <= self.warmup_lora_dropout < 1:
            raise ValueError(f"warmup_lora_dropout must be in [0, 1), got {self.warmup_lora_dropout!r}")
        if isinstance(self.warmup_lora_target_modules, str):
            self.warmup_lora_target_modules = [self.warmup_lora_target_modules]
        if not self.warmup_lora_target_modules or not all(
            isinstance(m, str) and m for m in self.warmup_lora_target_modules
        ):
            raise ValueError(
                f"warmup_lora_target_modules must be a non-empty list of module names, got {self.warmup_lora_target_modules!r}"
            )
        positive("warmup_save_every", self.warmup_save_every, allow_zero=True)
        positive("warmup_weight_decay", self.warmup_weight_decay, allow_zero=True)
        if not self.influence_subtask_field:
            raise ValueError(f"influence_subtask_field must be a non-empty string, got {self.influence_subtask_field!r}")
        choice("influence_objective", self.influence_objective, list(OBJECTIVES))
        choice("influence_estimator", self.influence_estimator, list(ESTIMATORS))
        choice("influence_direction", self.influence_direction, list(DIRECTIONS))
        positive("influence_proj_dim", self.influence_proj_dim, allow_zero=True)
        positive("influence_proj_memory_mb", self.influence_proj_memory_mb)
        if self.influence_proj_dim and self.influence_proj_dim * 8 > self.influence_proj_memory_mb * 2**20:
            raise ValueError(
                f"influence_proj_memory_mb={self.influence_proj_memory_mb} cannot hold one projection row of "
                f"influence_proj_dim={self.influence_proj_dim}; raise it or lower influence_proj_dim"
            )
        positive("influence_batch_size", self.influence_batch_size)
        positive("influence_max_length", self.influence_max_length)
        if isinstance(self.influence_checkpoints, str):
            self.influence_checkpoints = [self.influence_checkpoints]
        if not self.influence_checkpoints:
            raise ValueError(f"influence_checkpoints must name 'all', 'last' or checkpoints, got {self.influence_checkpoints!r}")
        choice("influence_dtype", self.influence_dtype, list(COMPUTE_DTYPES))
        if not isinstance(self.influence_device, str) or not self.influence_device:
            raise ValueError(f"influence_device must be 'auto' or a torch device string, got {self.influence_device!r}")

    # The arguments that define a warm-up (a rerun with the same ones reuses it).
    def warmup_arguments(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k.startswith(("target_", "warmup_"))}
