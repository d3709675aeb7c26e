"""``train``'s own settings (:class:`RubricRLArguments`: policy, data, prompts, reward shaping, warm start, pre-flight,
the downstream evaluation); TRL's ``GRPOConfig``, :class:`~rubric_rl.configs.teacher.TeacherConfig` and
:class:`~rubric_rl.configs.influence.InfluenceConfig` complete a training run's namespace."""

from __future__ import annotations

from dataclasses import dataclass, field

from .checks import at_least, choice, positive
from .synth import SynthConfig  # the verifier defaults: reward_* are the twins of synthesize's synth_* ones

DEFAULT_TASK = (
    "Answer multiple-choice questions about the domain with step-by-step reasoning and a final answer letter."
)
RUBRIC_FORMATS = ("json", "list")
REWARD_SCALINGS = ("running", "batch_minmax", "none")
ALGORITHMS = ("grpo", "rloo")


@dataclass
class RubricRLArguments:
    _argument_group_name = "train: policy, documents, prompts, reward, warm start, pre-flight, downstream evaluation"

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
    policy_init_noise: float = field(
        default=0.0,
        metadata={"help": "Add N(0, std) noise with this std to every policy weight after loading, before the SFT warm "
                          "start, drawn from its own generator (policy_init_noise_seed), so no other random draw of "
                          "the run changes. A tiny value (1e-6) stands in for another CPU's numerics "
                          "(scripts/reproduce_quickstart.py, condition perturb). 0 = off."},
    )
    policy_init_noise_seed: int = field(default=0, metadata={"help": "Seed of the policy_init_noise draw."})
    torch_num_threads: int = field(
        default=0,
        metadata={"help": "CPU threads for torch (0 = torch's default). Tiny CPU runs are fastest with 1, "
                          "and a busy machine makes extra threads spin."},
    )
    policy_update_num_threads: int = field(
        default=0,
        metadata={"help": "CPU threads for the policy's own forward and backward passes (the SFT warm start and "
                          "each RL update; 0 = torch_num_threads). Those batched matrices gain from a second "
                          "thread where token-by-token generation and influence scoring, which keep "
                          "torch_num_threads, do not. On the quickstart's CPU the run is bit-identical with 1 or 2 "
                          "(notes/quickstart.md)."},
    )
    reward_decontam_files: list[str] | None = field(
        default=None,
        metadata={"help": "Evaluation files (chat jsonl: validation, test) that no rewarded sample may copy: "
                          "n-gram decontamination rejects such samples as invalid."},
    )
    # The verifiers of the RL step: the same checks and settings as `synthesize` (synth_grounding,
    # synth_grounding_min_overlap, synth_grounding_min_claim_overlap, synth_safety, synth_blocklist_file, synth_decontam_ngram/_threshold).
    reward_grounding: bool = field(
        default=SynthConfig.synth_grounding,
        metadata={"help": "Reject samples whose answer is not grounded in the document (as synthesize's "
                          "synth_grounding)."})
    reward_grounding_min_overlap: float = field(
        default=SynthConfig.synth_grounding_min_overlap,
        metadata={"help": "Grounding: minimum share of the answer's content words found in the document."})
    reward_grounding_min_claim_overlap: float = field(
        default=SynthConfig.synth_grounding_min_claim_overlap,
        metadata={"help": "Grounding: minimum share of the answer's claim (its content words the question stem does not hold, plus the words of the option its letter names) found in the document; 0 turns the claim check off."})
    reward_safety: bool = field(default=SynthConfig.synth_safety,
                                metadata={"help": "Apply the safety blocklist to rewarded samples."})
    reward_blocklist_file: str | None = field(
        default=SynthConfig.synth_blocklist_file,
        metadata={"help": "Extra blocklist patterns, one regex per line ('category: regex' allowed)."})
    reward_decontam_ngram: int = field(default=SynthConfig.synth_decontam_ngram,
                                       metadata={"help": "Decontamination n-gram size (words)."})
    reward_decontam_threshold: float = field(
        default=SynthConfig.synth_decontam_threshold,
        metadata={"help": "A sample is contaminated when it covers more than this share of an evaluation prompt's "
                          "informative tokens."})
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
    reward_novelty_center: bool = field(
        default=True,
        metadata={"help": "Centre the novelty term within its GRPO group (novelty minus the mean novelty of the "
                          "group's valid samples): it orders a group's samples by novelty without adding a positive "
                          "offset that only valid rubrics get (uncentred, that offset paid validity over influence: "
                          "notes/quickstart.md). false: the uncentred term."},
    )
    # The influence service (`rubric-rl serve-influence`): the reward's influence computed elsewhere.
    reward_influence_url: list[str] | None = field(
        default=None,
        metadata={"help": "Score influence with `rubric-rl serve-influence` at this URL (or several, e.g. "
                          "http://gpu0:8100 http://gpu1:8100) instead of in this process: the training processes "
                          "then load no target, run no warm-up and compute no validation gradients (the service "
                          "does, once). The service's scores equal the in-process ones for the same settings: "
                          "start it with the same --config (its target_*/warmup_*/influence_* fields); a field "
                          "that differs is named in a warning, and endpoints with different settings are refused. "
                          "Unset (default): influence is computed in process."},
    )
    reward_influence_balance: str = field(
        default="least_loaded",
        metadata={"help": "With several reward_influence_url endpoints: 'least_loaded' (ask each one's /metrics "
                          "and send to the one with the fewest samples queued and in flight, across all training "
                          "processes) or 'round_robin'. A reward call is one request to one endpoint."},
    )
    reward_influence_timeout_s: float = field(
        default=600.0, metadata={"help": "Influence service: per-request timeout (s), queueing included."}
    )
    reward_influence_max_retries: int = field(
        default=5,
        metadata={"help": "Influence service: retries on 429 busy, 5xx, timeouts, connection errors and malformed "
                          "answers, with backoff (the next endpoint when there are several)."},
    )
    reward_influence_backoff_s: float = field(
        default=1.0,
        metadata={"help": "Influence service: first retry delay (s), doubled on every retry (with jitter); a "
                          "Retry-After header takes precedence."},
    )
    reward_influence_max_backoff_s: float = field(
        default=30.0, metadata={"help": "Influence service: upper bound on one retry delay, Retry-After included (s)."}
    )
    reward_influence_breaker_window: int = field(
        default=8,
        metadata={"help": "Influence service: circuit breaker window, in requests (one per reward call), the "
                          "teacher's rule: when more than reward_influence_breaker_max_failure_rate of the last "
                          "this-many requests failed for infrastructure reasons after their retries, the run stops "
                          "with 'influence service unavailable' (exit 3) instead of training on rewards it does "
                          "not have. 0 disables it."},
    )
    reward_influence_breaker_max_failure_rate: float = field(
        default=0.5,
        metadata={"help": "Influence service: share of the breaker window that may fail for infrastructure "
                          "reasons before the run stops (in [0, 1]; 0 disables the breaker)."},
    )
    reward_influence_api_key_env: str | None = field(
        default=None,
        metadata={"help": "Influence service: name of the environment variable holding the key the service "
                          "wants (its serve_api_key_env); the key itself never goes in a config or a log."},
    )
    reward_influence_wait_s: float = field(
        default=0.0,
        metadata={"help": "Influence service: how long the pre-flight check waits for every endpoint to answer "
                          "/health (a service listens once its warm-up and validation gradients are loaded). "
                          "0: it must answer at once."},
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
        choice("algorithm", self.algorithm, ALGORITHMS)
        choice("rubric_format", self.rubric_format, RUBRIC_FORMATS)
        choice("reward_if_scaling", self.reward_if_scaling, REWARD_SCALINGS)
        positive("reward_invalid_penalty", self.reward_invalid_penalty, allow_zero=True)
        if self.evaluate_config is not None:
            from .evaluate import parse_sources

            if "trained" in parse_sources(self.evaluate_sources or []):
                raise ValueError("evaluate_sources: the name 'trained' is the generator this run trains")
        positive("preflight_rubrics", self.preflight_rubrics, allow_zero=True)
        positive("stall_steps", self.stall_steps, allow_zero=True)
        at_least("reward_if_window", self.reward_if_window, 1)
        positive("reward_if_min_rel", self.reward_if_min_rel, allow_zero=True)
        positive("reward_novelty_weight", self.reward_novelty_weight, allow_zero=True)
        if not 0 <= self.reward_grounding_min_claim_overlap <= 1:
            raise ValueError("reward_grounding_min_claim_overlap must be in [0, 1], got "
                             f"{self.reward_grounding_min_claim_overlap!r}")
        if not 0 < self.reward_grounding_min_overlap <= 1:
            raise ValueError(f"reward_grounding_min_overlap must be in (0, 1], got {self.reward_grounding_min_overlap!r}")
        if not 0 <= self.reward_decontam_threshold < 1:
            raise ValueError(f"reward_decontam_threshold must be in [0, 1), got {self.reward_decontam_threshold!r}")
        for name in ("policy_lora_r", "policy_lora_alpha", "max_document_chars", "policy_sft_batch_size",
                     "reward_decontam_ngram",
                     "policy_sft_max_documents"):
            at_least(name, getattr(self, name), 1)
        if not 0 <= self.policy_init_noise < float("inf"):
            raise ValueError(f"policy_init_noise must be a finite std >= 0, got {self.policy_init_noise!r}")
        positive("torch_num_threads", self.torch_num_threads, allow_zero=True)
        positive("policy_update_num_threads", self.policy_update_num_threads, allow_zero=True)
        positive("policy_sft_epochs", self.policy_sft_epochs)
        if not self.documents:
            raise ValueError("documents must name a documents file")
        self._check_influence_service()

    def _check_influence_service(self):
        import re

        from .run import BALANCES

        urls = self.reward_influence_url
        if isinstance(urls, str):
            urls = [urls]
        if urls is not None:  # "a,b" and ["a", "b"] alike; an empty list is unset
            urls = [u.strip() for item in urls for u in str(item).split(",") if u.strip()] or None
        self.reward_influence_url = urls
        for url in urls or []:
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"reward_influence_url: {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8100)")
        if self.reward_influence_balance not in BALANCES:
            raise ValueError(f"reward_influence_balance must be one of {BALANCES}, got "
                             f"{self.reward_influence_balance!r}")
        positive("reward_influence_timeout_s", self.reward_influence_timeout_s)
        for name in ("reward_influence_max_retries", "reward_influence_backoff_s", "reward_influence_breaker_window",
                     "reward_influence_wait_s"):
            positive(name, getattr(self, name), allow_zero=True)
        if self.reward_influence_max_backoff_s < self.reward_influence_backoff_s:
            raise ValueError(f"reward_influence_max_backoff_s must be >= reward_influence_backoff_s "
                             f"({self.reward_influence_backoff_s!r}), got {self.reward_influence_max_backoff_s!r}")
        if not 0 <= self.reward_influence_breaker_max_failure_rate <= 1:
            raise ValueError("reward_influence_breaker_max_failure_rate must be in [0, 1] (0 disables the breaker), "
                             f"got {self.reward_influence_breaker_max_failure_rate!r}")
        env = self.reward_influence_api_key_env
        if env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
            raise ValueError("reward_influence_api_key_env must be the NAME of an environment variable (letters, "
                             "digits, underscores), not the key itself")
