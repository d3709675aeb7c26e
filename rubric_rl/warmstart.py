"""The policy's SFT warm start (``policy_sft_warmstart``): TRL's ``SFTTrainer`` on (policy prompt, seed rubric)
pairs, so that GRPO starts from a policy that writes rubrics. It goes to ``OUTPUT_DIR/sft_warmstart/`` with its
marker ``warmstart_args.json`` (:func:`warmstart_spec`, written last), and a finished one with the same spec is
reused.

Under a launcher (several processes) it is made once, as one process makes it (:func:`warm_start_once`): rank 0
runs ``python -m rubric_rl.train ARGV`` (the run's own command line) in a single-process child, the launcher's
environment removed; the other ranks wait for the marker; then every process loads it through the reuse path.
Trained under DDP instead, each process would see its share of every batch (half the optimizer steps with two
processes): another, worse policy than the one-process run's.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import torch

from . import wandb_log
from .devices import torch_threads
from .jsonl import write_json_atomic
from .launch import single_process_env, wait_until
from .progress import phase, quiet_trainer_logs

logger = logging.getLogger(__name__)


def policy_peft_config(args):
    """The policy's LoRA config (``policy_use_peft``; the SFT warm start's and GRPO's), or None."""
    if not args.policy_use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(r=args.policy_lora_r, lora_alpha=args.policy_lora_alpha, lora_dropout=0.0,
                      target_modules=args.policy_lora_target_modules or "all-linear", task_type="CAUSAL_LM")


def warmstart_spec(args, grpo_args) -> dict:
    """What the SFT warm start depends on: a finished one whose ``warmstart_args.json`` equals it is reused."""
    spec = {"policy": args.policy_model_name_or_path, "seed_rubrics": args.seed_rubrics,
            "epochs": args.policy_sft_epochs, "lr": args.policy_sft_learning_rate,
            "batch_size": args.policy_sft_batch_size, "max_documents": args.policy_sft_max_documents,
            "max_document_chars": args.max_document_chars, "seed": grpo_args.seed, "task": args.task_description,
            "documents": args.documents, "rubric_format": args.rubric_format,
            "lora": [args.policy_lora_r, args.policy_lora_alpha] if args.policy_use_peft else None}
    if args.policy_init_noise:  # only when set: warm starts made before the field existed stay reusable
        spec["init_noise"] = [args.policy_init_noise, args.policy_init_noise_seed]
    return spec


WARMSTART_MARKER = "warmstart_args.json"  # in OUTPUT_DIR/sft_warmstart/, written last: the spec it was made with


def finished_warmstart(target: Path, spec: dict) -> bool:
    """Whether ``target`` holds a finished SFT warm start made with ``spec`` (its marker, written last, equals it)."""
    try:
        return json.loads((target / WARMSTART_MARKER).read_text()) == spec
    except (OSError, ValueError):
        return False


def sft_warmstart(args, grpo_args, documents, tokenizer, model, output_dir: Path, *, made_by_child: bool = False):
    """Fine-tune the policy on (policy prompt, seed rubric) pairs; reuses a finished warm start (``made_by_child``:
    the one this process's single-process child has just made, :func:`warm_start_once`)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from .data.documents import load_rubric_file
    from .data.prompts import policy_messages
    from .models import load_causal_lm

    target = output_dir / "sft_warmstart"
    spec = warmstart_spec(args, grpo_args)
    marker = target / WARMSTART_MARKER
    if finished_warmstart(target, spec):
        logger.info("loading the SFT warm start made (once, in one process) in %s" if made_by_child else
                    "reusing SFT warm start in %s", target)
        wandb_log.log_stage("sft_warmstart", wandb_log.trainer_log_history(target), reused=not made_by_child)
        return load_causal_lm(str(target), tokenizer, dtype=torch.float32)
    if not args.seed_rubrics:
        raise ValueError("policy_sft_warmstart needs seed_rubrics (a JSON list of rubrics)")
    rubrics = load_rubric_file(args.seed_rubrics)
    rows = [
        {"prompt": policy_messages(d["text"], args.task_description, args.max_document_chars, args.rubric_format),
         "completion": [{"role": "assistant", "content": r.as_completion(args.rubric_format)}]}
        for d in documents[: args.policy_sft_max_documents] for r in rubrics
    ]
    sft_args = SFTConfig(
        output_dir=str(target), num_train_epochs=args.policy_sft_epochs,
        learning_rate=args.policy_sft_learning_rate, per_device_train_batch_size=args.policy_sft_batch_size,
        lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=10, save_strategy="no", report_to="none",
        seed=grpo_args.seed, use_cpu=grpo_args.use_cpu, bf16=grpo_args.bf16, max_length=None,
        disable_tqdm=grpo_args.disable_tqdm, dataloader_num_workers=0,
    )
    # With policy_use_peft the warm start is a LoRA fine-tune too (merged into the weights afterwards, so that
    # GRPO starts its own adapter on top); without it, a full fine-tune.
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=policy_peft_config(args))
    quiet_trainer_logs(trainer)
    phase("policy SFT warm start", f"{len(rows)} (prompt, seed rubric) pairs, {args.policy_sft_epochs} epochs"
          f"{', LoRA' if args.policy_use_peft else ''}")
    with torch_threads(args.policy_update_num_threads):
        trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainer.accelerator.is_main_process:
        model.save_pretrained(str(target))
        tokenizer.save_pretrained(str(target))
        (target / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        write_json_atomic(marker, spec, ensure_ascii=True)  # last, at once: waiting ranks read it
        wandb_log.log_stage("sft_warmstart", trainer.state.log_history, reused=False)
    trainer.accelerator.wait_for_everyone()
    del trainer
    return model


def warm_start_once(args, grpo_args, output_dir: Path, state, argv: list[str] | None) -> bool:
    """The SFT warm start of a launched run (several processes), made once and as one process makes it: unless a
    finished one with this run's spec is there, rank 0 runs it in a single-process child (``python -m
    rubric_rl.train ARGV``: this command line, the launcher's environment removed, ``train.warm_start_alone``) while
    the other ranks wait for its marker (no collective: a long warm start cannot time out the process group). Every
    process then loads it (:func:`sft_warmstart`'s reuse). Returns True on the process whose child made it now.

    Under DDP each process would train on its share of every batch: half the steps with two processes, another
    policy. Without ``argv`` (``train()`` called with no command line) it falls back to that, with a warning."""
    target = output_dir / "sft_warmstart"
    spec = warmstart_spec(args, grpo_args)
    if finished_warmstart(target, spec):
        return False
    if argv is None:
        logger.warning("policy SFT warm start under %d processes without the command line to start it in one: each "
                       "process trains on its share of the batches (another policy than one process makes)",
                       state.num_processes)
        return False
    if state.is_main_process:
        logger.info("policy SFT warm start: made once, in a single-process child of rank 0 (as one process makes "
                    "it); the other %d processes wait for %s", state.num_processes - 1, target / WARMSTART_MARKER)
        cmd = [sys.executable, "-m", "rubric_rl.train", *argv]
        done = subprocess.run(cmd, env=single_process_env())
        if done.returncode != 0 or not finished_warmstart(target, spec):
            raise RuntimeError(f"the SFT warm start's single-process child failed (exit code {done.returncode}; "
                               f"command: python -m rubric_rl.train ...): its output is above")
        return True
    wait_until(lambda: finished_warmstart(target, spec), f"rank 0 to finish the SFT warm start in {target}",
               logger=logger)
    return False
