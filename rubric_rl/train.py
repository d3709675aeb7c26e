"""Build and run the RL job: (optional SFT warm start) -> target warm-up -> TRL GRPO -> export.

Everything heavy is done by the libraries it is built on: TRL's ``SFTTrainer`` and ``GRPOTrainer``
(rollouts, advantages, loss variants, vLLM, accelerate/DeepSpeed/FSDP), PEFT for LoRA, the HF
``Trainer`` for checkpoints and resume. This module wires them to the reward and keeps the run
folder in order::

    OUTPUT_DIR/
      rubric_rl_args.json     every argument of the run (secrets never stored)
      sft_warmstart/          the policy after the warm start (tiny policies only), reused on rerun
      warmup/                 target warm-up checkpoints (influence engine), reused on rerun
      influence_cache/        validation gradients per checkpoint, reused on rerun
                              (neither with reward_influence_url: `rubric-rl serve-influence` holds them)
      checkpoint-N/           GRPO checkpoints (resume with --resume_from_checkpoint)
      metrics.jsonl           one object per logging step (whatever report_to says); its outcome counts are
                              of every process
      rollouts.jsonl          every rollout: rubric, outcome, influence, reward, sample (rank 0's, under a
      rollouts.rank<K>.jsonl  launcher; each other rank K writes its own)
      model files             the final policy
      export/                 the standalone rubric generator (see rubric_rl.export)

With ``report_to: wandb`` the whole job is one W&B run (``rubric_rl.wandb_log``): rubric-rl's settings in its config,
the SFT warm start's and the warm-up's losses, the GRPO series and completions table, the export as an artifact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from . import wandb_log
from .devices import fork_rng, torch_threads
from .errors import UserError
from .jsonl import append_jsonl, filter_log, iter_log_rows, read_jsonl
from .launch import all_gather_objects, sum_counts
from .progress import phase, quiet_trainer_logs
from .provenance import provenance
from .rundir import resume_arg, prepare_output_dir
from .warmstart import policy_peft_config, sft_warmstart, warm_start_once

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- logging callbacks
class MetricsJsonlCallback(TrainerCallback):
    """Writes OUTPUT_DIR/metrics.jsonl: one object per logging step, by the main process.

    ``outcomes``: the rollouts scored since the previous line (this step's, with ``logging_steps: 1``) by outcome,
    summed over every process; ``outcomes_total``: the same since the start of this process (the run, unless it was
    resumed), over every process. Every process takes part in gathering them (one collective per logged step).
    On resume, lines past the checkpoint's step are dropped first, so the file never holds a step twice.
    """

    REQUIRED = ("reward", "reward_std", "valid_rate", "influence_mean")

    def __init__(self, path: str | Path, reward=None):
        self.path = Path(path)
        self.reward = reward

    def on_train_begin(self, args, state, control, **kwargs):
        # metrics.jsonl holds logs of finished steps (step = global_step after it); each process's rollout
        # log holds reward calls made during a step (step = global_step before it).
        if state.is_world_process_zero:
            _keep_lines(self.path, lambda step: step <= state.global_step)
        if self.reward is not None and self.reward.log_path is not None:
            _keep_lines(self.reward.log_path, lambda step: step < state.global_step)
            self.reward.restore_scaler_from_log()  # a resumed run scales influence as the uninterrupted one

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "reward" not in logs:  # the same logs on every process (TRL's metrics are gathered)
            return
        counts = outcome_counts(self.reward.stats) if self.reward is not None else {}
        if not state.is_world_process_zero:
            return
        row = {"step": state.global_step, **{k: logs.get(k) for k in self.REQUIRED}}
        row.update({k: v for k, v in logs.items() if k not in row and isinstance(v, int | float | str)})
        row.update(counts)
        append_jsonl(self.path, [row], ensure_ascii=True)


def outcome_counts(stats) -> dict:
    """``{"outcomes": since the last logged step, "outcomes_total": since the start}``, each summed over every
    process (a collective: every process calls it at the same step)."""
    mine = (stats.since_last_log(), dict(stats.outcomes))
    every = all_gather_objects(mine)
    return {"outcomes": sum_counts(c[0] for c in every), "outcomes_total": sum_counts(c[1] for c in every)}


class StallGuard(TrainerCallback):
    """Stops a run that cannot learn: ``stall_steps`` consecutive logged steps on which every reward was None
    (``unscorable_rate`` 1) or no group had reward spread (TRL's ``frac_reward_zero_std`` 1, e.g. every rubric
    unparseable, so every rollout gets the same penalty). Raises :class:`~rubric_rl.errors.TrainingStalled`
    (exit 1, nothing exported) instead of "training" for hours on zero gradients."""

    def __init__(self, steps: int):
        self.steps = steps
        self.run = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.steps or not logs or "reward" not in logs:
            return
        none = float(logs.get("unscorable_rate", 0) or 0) >= 1.0
        flat = float(logs.get("frac_reward_zero_std", 0) or 0) >= 1.0
        self.run = self.run + 1 if (none or flat) else 0
        if self.run >= self.steps:
            from .errors import TrainingStalled

            why = "every reward was None (nothing could be scored)" if none else \
                "no GRPO group had any reward spread (zero advantages, no policy gradient)"
            raise TrainingStalled(
                f"stopped at step {state.global_step}: for {self.run} consecutive steps {why}; last step: "
                f"rubric_parse_rate={logs.get('rubric_parse_rate')}, valid_rate={logs.get('valid_rate')}, "
                f"unscorable_rate={logs.get('unscorable_rate')}; see rollouts.jsonl for the outcomes (nothing was "
                "exported; stall_steps: 0 turns this guard off)")


def count_valid_rollouts(output_dir: Path) -> int:
    """Valid rollouts over the run's rollout logs (every process's file)."""
    return sum(row.get("outcome") == "valid"
               for path in Path(output_dir).glob("rollouts*.jsonl") for row in iter_log_rows(path))


def _keep_lines(path: Path, keep) -> None:
    """Rewrite a jsonl log keeping the lines whose ``step`` passes ``keep`` (used on resume)."""
    filter_log(path, lambda row: keep(row.get("step") or 0))


class InfluenceHistogramCallback(TrainerCallback):
    """With report_to=wandb: an influence histogram per logging step (TRL logs the completions table)."""

    def __init__(self, reward):
        self.reward = reward

    def on_log(self, args, state, control, logs=None, **kwargs):
        values, self.reward.recent_influences = self.reward.recent_influences, []
        if not state.is_world_process_zero or not values or "wandb" not in (args.report_to or []):
            return
        import wandb

        if wandb.run is not None:
            wandb.run.log({"influence/histogram": wandb.Histogram(values), "train/global_step": state.global_step})


# --------------------------------------------------------------------------- helpers
def reward_summary(metrics_path: Path, frac: float = 0.2, key: str = "reward") -> dict:
    """Mean of a logged metric (the reward by default) over the first vs the last ``frac`` of logged steps."""
    rows = read_jsonl(metrics_path) if metrics_path.exists() else []
    values = [r[key] for r in rows if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    if not values:
        return {"steps": 0}
    k = max(1, int(round(len(values) * frac)))
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    return {"steps": len(values), "window": k, "first_mean": first, "last_mean": last, "delta": last - first}


def rl_trainer_class(args, grpo_args):
    """The TRL trainer class and its config for ``args.algorithm`` (RLOO reuses the shared GRPO fields), the
    update run on ``policy_update_num_threads`` where that is set."""
    if args.algorithm == "grpo":
        return with_update_threads(GRPOTrainer, args.policy_update_num_threads), grpo_args
    from trl import RLOOConfig, RLOOTrainer

    kwargs = {f.name: getattr(grpo_args, f.name) for f in dataclasses.fields(RLOOConfig)
              if f.init and hasattr(grpo_args, f.name)}
    kwargs["generation_batch_size"] = None  # derived in GRPOConfig.__post_init__ from steps_per_generation
    return with_update_threads(RLOOTrainer, args.policy_update_num_threads), RLOOConfig(**kwargs)


def with_update_threads(trainer_cls, update_threads: int):
    """``trainer_cls`` whose training step (the policy's forward and backward) runs on ``update_threads`` CPU
    threads while its rollouts (``_prepare_inputs``: generation, then the reward with its influence scoring) keep
    the thread count the process has. 0: ``trainer_cls`` itself."""
    if not update_threads:
        return trainer_cls
    rollout_threads = torch.get_num_threads()

    class UpdateThreads(trainer_cls):
        def training_step(self, *a, **kw):
            with torch_threads(update_threads):
                return super().training_step(*a, **kw)

        def _prepare_inputs(self, *a, **kw):
            with torch_threads(rollout_threads):  # inside training_step: TRL's Trainer calls it there
                return super()._prepare_inputs(*a, **kw)

    UpdateThreads.__name__ = UpdateThreads.__qualname__ = trainer_cls.__name__
    return UpdateThreads


def warm_start_alone(args, grpo_args) -> None:
    """The single-process child of ``warmstart.warm_start_once`` (``python -m rubric_rl.train ARGV``): the SFT warm
    start of the run ARGV describes, made exactly as a one-process ``train`` makes it (the same set-up and
    :func:`load_policy`), written to ``OUTPUT_DIR/sft_warmstart/`` with its marker; nothing else."""
    from .data.documents import load_documents

    state, output_dir = _start_process(args, grpo_args)
    documents = load_documents(args.documents, text_field=args.document_text_field)
    load_policy(args, grpo_args, documents, output_dir, state)


def preflight_parse_rate(args, grpo_args, model, tokenizer, documents) -> dict:
    """Sample ``args.preflight_rubrics`` rubrics from the policy as GRPO will (same prompt, temperature and
    length) and count how many parse. Raises TrainingStalled when none does: GRPO would see the same
    penalty on every rollout and learn nothing."""
    from .errors import TrainingStalled
    from .generator import RubricGenerator

    n = min(args.preflight_rubrics, len(documents))
    if n == 0:
        return {}
    t0 = time.perf_counter()
    gen = RubricGenerator(model, tokenizer, task=args.task_description, max_document_chars=args.max_document_chars,
                          max_new_tokens=grpo_args.max_completion_length or 256, temperature=grpo_args.temperature,
                          top_p=grpo_args.top_p, device=model.device, rubric_format=args.rubric_format)
    import random

    was_training, py_state = model.training, random.getstate()
    # RNG-neutral: the run samples exactly what it would without the check.
    with fork_rng():
        out = gen.generate_raw([d["text"] for d in documents[:n]], seed=grpo_args.seed, batch_size=n)
    random.setstate(py_state)
    model.train(was_training)
    tokenizer.padding_side = "left"
    ok = sum(g.rubric is not None for g in out)
    reasons = dict(Counter(g.reason for g in out if g.reason))
    logger.info("pre-flight: %d/%d sampled rubrics parse (%s) in %.1f s", ok, n, reasons or "all parsed",
                time.perf_counter() - t0)
    if ok == 0:
        raise TrainingStalled(
            f"pre-flight: 0 of {n} rubrics sampled from {args.policy_model_name_or_path} parse as rubric_format="
            f"{args.rubric_format!r} ({reasons}); GRPO would give every rollout the same penalty and learn nothing. "
            "Try rubric_format: list (small models), policy_sft_warmstart: true, a lower temperature, a larger "
            "max_completion_length, or a stronger policy (preflight_rubrics: 0 skips this check)")
    if ok / n < 0.25:
        logger.warning("pre-flight: only %d/%d rubrics parse; most rollouts will get the invalid penalty", ok, n)
    return {"parsed": ok, "sampled": n, "reasons": reasons}


# --------------------------------------------------------------------------- main entry
def train_verifiers(args, eval_items: list[dict] | None) -> list:
    """The RL step's verifier chain, configured as synthesize's (the ``reward_*`` verifier fields): the chain
    ``build_reward``'s synthesis world makes."""
    from .synth.verifiers import VerifierSettings
    from .synth.world import SynthesisWorld

    world = SynthesisWorld(None, [], settings=VerifierSettings.of(args, "reward_"), eval_items=eval_items)
    return world.verifier_chain()


def train(args, grpo_args, teacher_cfg, influence_cfg, argv: list[str] | None = None) -> dict:
    """Run the whole job; returns a summary (export path, reward first vs last 20%). ``argv``: the command line the
    arguments were parsed from (a launched run's SFT warm start runs it in one process, ``warmstart.warm_start_once``).
    """
    from .data.documents import load_documents
    from .data.prompts import build_prompt_dataset

    made_by = provenance()  # at the start: the code that runs, not the HEAD at the end
    state, output_dir = _start_process(args, grpo_args)
    _prepare_run_folder(args, grpo_args, teacher_cfg, influence_cfg, state, output_dir)

    documents = load_documents(args.documents, text_field=args.document_text_field)
    dataset = build_prompt_dataset(documents, args.task_description, args.max_document_chars, args.rubric_format)
    logger.info("%d documents -> %d policy prompts", len(documents), len(dataset))
    tokenizer, model = load_policy(args, grpo_args, documents, output_dir, state, argv)
    preflight = preflight_parse_rate(args, grpo_args, model, tokenizer, documents)
    service = prepare_influence(args, influence_cfg, output_dir)
    reward = build_reward(args, teacher_cfg, influence_cfg, documents, output_dir, state, service)
    _announce_scorer(reward, service, influence_cfg)
    resume = resume_arg(grpo_args.resume_from_checkpoint)
    if resume is None:  # a fresh run: drop logs of an earlier run in the same folder
        if state.is_main_process:
            (output_dir / "metrics.jsonl").unlink(missing_ok=True)
        reward.log_path.unlink(missing_ok=True)
    state.wait_for_everyone()

    trainer = _run_trainer(args, grpo_args, model, tokenizer, dataset, reward, output_dir, resume)
    outcomes = sum_counts(all_gather_objects(dict(reward.stats.outcomes)))  # every process's rollouts
    state.wait_for_everyone()
    if state.is_main_process:
        _refuse_a_run_without_valid_rollouts(output_dir)
    summary = {"output_dir": str(output_dir), "reward": reward_summary(output_dir / "metrics.jsonl"),
               "influence": reward_summary(output_dir / "metrics.jsonl", key="influence_mean"),
               "outcomes": outcomes, "preflight": preflight,
               "global_step": trainer.state.global_step, **made_by}
    if service is not None:
        summary["influence_service"] = service.describe()  # this process's requests
        service.close()
    if state.is_main_process:
        _export(output_dir, summary)
    state.wait_for_everyone()
    return summary


def _start_process(args, grpo_args):
    """This process's accelerate state and the run folder, then the seed and the thread count: what ``train`` (and
    the warm start's single-process child, the same way) sets up before anything loads."""
    from accelerate import PartialState
    from transformers import set_seed

    _ = grpo_args.device  # let TrainingArguments set up the process group (cpu/gloo, nccl, ...) first
    state = PartialState()
    output_dir = Path(grpo_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(grpo_args.seed)
    if args.torch_num_threads:
        torch.set_num_threads(args.torch_num_threads)
    return state, output_dir


def _prepare_run_folder(args, grpo_args, teacher_cfg, influence_cfg, state, output_dir: Path) -> None:
    """Refuse to overwrite or mix runs, clean for --overwrite_output_dir, record accepted changes, save the args;
    refuse to resume a finished run; start the W&B run."""
    decision = prepare_output_dir(output_dir, state, args, grpo_args, teacher_cfg, influence_cfg)
    if decision.get("action") == "resume" and 0 < grpo_args.max_steps <= decision.get("step", 0):
        # HF Trainer resumed at max_steps still trains one more step; a finished run is not trained further
        raise UserError(f"--resume_from_checkpoint: the checkpoint is at step {decision['step']}, already "
                        f"max_steps={grpo_args.max_steps}; raise --max_steps to train on, or write the generator "
                        f"with `rubric-rl export --run {output_dir} --output {output_dir / 'export'}`")
    wandb_log.start_run(args, grpo_args, teacher_cfg, influence_cfg, is_main_process=state.is_main_process)


def load_policy(args, grpo_args, documents: list[dict], output_dir: Path, state=None, argv: list[str] | None = None):
    """The policy's tokenizer and model: loaded, with ``policy_init_noise`` added, then SFT warm-started on the seed
    rubrics (``policy_sft_warmstart``; with several processes made once, in one: ``warmstart.warm_start_once``)."""
    from .models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(args.policy_model_name_or_path, trust_remote_code=args.policy_trust_remote_code)
    made_by_child = bool(args.policy_sft_warmstart and state is not None and state.num_processes > 1
                         and warm_start_once(args, grpo_args, output_dir, state, argv))
    model = load_causal_lm(args.policy_model_name_or_path, tokenizer, dtype=args.policy_dtype,
                           trust_remote_code=args.policy_trust_remote_code)
    if args.policy_init_noise:
        from .models import add_weight_noise

        n = add_weight_noise(model, args.policy_init_noise, args.policy_init_noise_seed)
        logger.info("policy_init_noise: N(0, %g) added to %d policy weights (noise seed %d)", args.policy_init_noise,
                    n, args.policy_init_noise_seed)
    if args.policy_sft_warmstart:
        model = sft_warmstart(args, grpo_args, documents, tokenizer, model, output_dir, made_by_child=made_by_child)
    return tokenizer, model


def prepare_influence(args, influence_cfg, output_dir: Path):
    """The influence service's connected client (``reward_influence_url``), or None after the target's warm-up.

    The warm-up runs once: rank 0 trains, the other ranks wait for its completion file (no barrier, so a long
    warm-up cannot time out the process group); each process then loads it on its device. With
    ``reward_influence_url`` the service (``rubric-rl serve-influence``) holds all of it: nothing loads here."""
    if args.reward_influence_url:
        from .influence.client import InfluenceClient

        service = InfluenceClient.from_args(args)  # (preflight warned about settings that differ from the run's)
        service.connect(wait_s=args.reward_influence_wait_s)
        return service
    from .influence import run_warmup
    from .influence.warmup import warmup_finished

    warmup_reused = warmup_finished(output_dir)
    run_warmup(influence_cfg, output_dir)
    wandb_log.log_stage("warmup", wandb_log.trainer_log_history(output_dir / "warmup"), reused=warmup_reused)
    return None


def build_reward(args, teacher_cfg, influence_cfg, documents: list[dict], output_dir: Path, state, service):
    """The reward callable: the teacher and the RL step's verifiers behind a synthesizer, and the influence scorer's
    factory (the service's client, or an in-process scorer on this process's device)."""
    from .influence import InfluenceScorer
    from .reward import InfluenceReward
    from .synth.decontam import load_eval_items
    from .synth.verifiers import VerifierSettings
    from .synth.world import SynthesisWorld

    eval_items = load_eval_items(args.reward_decontam_files) if args.reward_decontam_files else None
    world = SynthesisWorld(teacher_cfg, [d["text"] for d in documents], device=state.device,
                           settings=VerifierSettings.of(args, "reward_"), eval_items=eval_items)
    world.build_teacher()
    rank_suffix = "" if state.is_main_process else f".rank{state.process_index}"
    return InfluenceReward(
        world.synthesizer(),
        (lambda: service) if service is not None else
        (lambda: InfluenceScorer.from_config(influence_cfg, output_dir, device=state.device)),
        invalid_penalty=args.reward_invalid_penalty, scaling=args.reward_if_scaling, scale=args.reward_if_scale,
        novelty_weight=args.reward_novelty_weight, novelty_center=args.reward_novelty_center,
        log_path=output_dir / f"rollouts{rank_suffix}.jsonl",
        if_window=args.reward_if_window, if_min_rel=args.reward_if_min_rel, rubric_format=args.rubric_format,
    )


def _announce_scorer(reward, service, influence_cfg) -> None:
    """Build the reward's scorer now, announced, rather than inside the first GRPO step (RNG-neutral: see
    ``InfluenceReward.scorer``)."""
    t0 = time.perf_counter()
    if service is not None:
        about = service.describe()
        logger.info("== influence: the service at %s (settings fingerprint %s, workers %s); this process loads no "
                    "target ==", service.endpoint, about["fingerprint"], about["workers"])
        _ = reward.scorer  # the factory's client, taken where the in-process path builds its scorer
        return
    logger.info("== influence: loading the target %s with its warm-up checkpoints and validation gradients ==",
                influence_cfg.target_model_name_or_path)
    scorer = reward.scorer
    logger.info("influence scorer ready in %.1f s: %d trainable parameters, %d checkpoint(s), subtasks %s",
                time.perf_counter() - t0, scorer.engine.num_params, len(scorer.checkpoints), scorer.subtasks)


def _run_trainer(args, grpo_args, model, tokenizer, dataset, reward, output_dir: Path, resume):
    """TRL's trainer (GRPO or RLOO) with the reward and the callbacks: trained, its model saved; returned."""
    if grpo_args.log_completions and grpo_args.num_completions_to_print is None:
        # TRL would print every completion of every logged step as a rich table (thousands of lines); the table
        # goes to W&B and OUTPUT_DIR/completions/ anyway. num_completions_to_print: N prints N per step.
        grpo_args.num_completions_to_print = 0
    trainer_cls, rl_args = rl_trainer_class(args, grpo_args)
    trainer = trainer_cls(
        model=model, reward_funcs=[reward], args=rl_args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=policy_peft_config(args),
        callbacks=[MetricsJsonlCallback(output_dir / "metrics.jsonl", reward), InfluenceHistogramCallback(reward),
                   StallGuard(args.stall_steps)],
    )
    quiet_trainer_logs(trainer)
    phase(f"{args.algorithm.upper()}", f"{grpo_args.max_steps} steps, {grpo_args.num_generations} generations per "
          f"prompt; numbers per step in {output_dir / 'metrics.jsonl'}")
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(output_dir))  # weights + tokenizer, main process only
    return trainer


def _refuse_a_run_without_valid_rollouts(output_dir: Path) -> None:
    if count_valid_rollouts(output_dir) == 0:
        from .errors import TrainingStalled

        raise TrainingStalled(f"no rollout of the whole run produced a valid sample (see {output_dir}/rollouts.jsonl"
                              " for the outcomes): every reward was a penalty or None, so nothing was learned "
                              "from influence; nothing was exported")


def _export(output_dir: Path, summary: dict) -> None:
    """The exported generator (and its W&B artifact), then ``run_summary.json`` (main process)."""
    from .export import export_run

    export_dir = output_dir / "export"
    phase("export", str(export_dir))
    export_run(output_dir, export_dir)
    summary["export_dir"] = str(export_dir)
    wandb_log.log_artifact(export_dir, "rubric-generator", metadata={
        "global_step": summary["global_step"], "reward": summary["reward"], "influence": summary["influence"]})
    (output_dir / "run_summary.json").write_text(json.dumps(summary, indent=1))


def format_summary(summary: dict) -> str:
    r = summary.get("reward", {})
    lines = []
    if summary.get("export_dir"):
        lines.append(f"Exported rubric generator: {summary['export_dir']}")
    if r.get("steps"):
        lines.append(
            f"Reward over {r['steps']} logged steps: first {r['window']} mean {r['first_mean']:.4f} -> "
            f"last {r['window']} mean {r['last_mean']:.4f} (delta {r['delta']:+.4f})"
        )
    f = summary.get("influence", {})
    if f.get("steps"):
        lines.append(f"Influence of the samples (unscaled): first {f['window']} mean {f['first_mean']:.4f} -> "
                     f"last {f['window']} mean {f['last_mean']:.4f} (delta {f['delta']:+.4f})")
    lines.append(f"Run folder: {summary['output_dir']} (metrics.jsonl, rollouts.jsonl, checkpoints)")
    return "\n".join(lines)


if __name__ == "__main__":  # the SFT warm start's single-process child: python -m rubric_rl.train ARGV
    from rubric_rl.commands.train import make_parser
    from rubric_rl.launch import quiet_warnings, setup_logging

    quiet_warnings()
    setup_logging()
    _parsed = make_parser().parse_args(sys.argv[1:])
    warm_start_alone(_parsed[0], _parsed[1])
