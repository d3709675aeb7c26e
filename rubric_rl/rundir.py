"""A training run's folder is never silently overwritten or mixed.

``prepare_output_dir`` runs at the start of ``train()``, before any model loads:

* a folder that holds a run (``rubric_rl_args.json`` or ``checkpoint-*``) is refused unless the run is
  resumed (``--resume_from_checkpoint true``) or replaced (``--overwrite_output_dir true``: the old run's
  state -- checkpoints, logs, final model, export, evaluation -- is deleted; the reusable caches
  ``warmup/``, ``influence_cache/`` and ``sft_warmstart/`` stay, each keyed by its own arguments);
* a resume whose arguments change what the run computes (models, data, reward, GRPO group shape,
  learning rate, seed...) is refused with the list of changed fields, unless ``--allow_changed_args
  true``: then each change is appended to ``OUTPUT_DIR/args_changes.jsonl`` with the step it took
  effect at. Fields that only say how long, how often or where to log and save (``FREE_FIELDS``,
  ``FREE_PREFIXES``) may change freely.

Then ``rubric_rl_args.json`` is (re)written with the arguments of this run.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

from .errors import UserError
from .jsonl import append_jsonl

ARGS_FILE = "rubric_rl_args.json"
CHANGES_FILE = "args_changes.jsonl"
KEEP = ("warmup", "influence_cache", "sft_warmstart")  # reusable caches, keyed by their own arguments
# What a run writes besides checkpoints (removed by --overwrite_output_dir); completions/: TRL's log_completions.
RUN_FILES = (ARGS_FILE, CHANGES_FILE, "metrics.jsonl", "run_summary.json", "export", "eval", "completions",
             "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors",
             "adapter_config.json", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json",
             "training_args.bin", "README.md")
RUN_GLOBS = ("checkpoint-*", "rollouts*.jsonl", "model-*.safetensors")

# Fields that do not change what the run computes: how long it runs, how often and where it logs and saves,
# performance knobs, and where the teacher and the influence service are reached.
FREE_FIELDS = frozenset({
    "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "allow_changed_args", "max_steps",
    "num_train_epochs", "run_name", "project", "report_to", "disable_tqdm", "num_completions_to_print",
    "local_rank", "ddp_timeout", "skip_memory_metrics", "torch_num_threads", "policy_update_num_threads",
    "push_to_hub",
    "teacher_base_url", "teacher_api_key_env", "teacher_concurrency", "teacher_timeout_s", "teacher_max_retries",
    "teacher_backoff_s", "teacher_max_backoff_s", "teacher_breaker_window", "teacher_breaker_max_failure_rate",
    "teacher_batch_size", "influence_device", "influence_batch_size", "influence_proj_memory_mb",
    "influence_proj_layerwise", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id",
    "preflight_rubrics", "stall_steps",  # guards: they stop a run, they do not change what it computes
})
# reward_influence_*: where and how the influence service is reached (its scores equal the in-process ones)
FREE_PREFIXES = ("logging_", "log_", "save_", "hub_", "evaluate_", "dataloader_", "eval_", "reward_influence_")


def is_free(name: str) -> bool:
    return name in FREE_FIELDS or name.startswith(FREE_PREFIXES)


def checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def holds_run(output_dir: Path) -> bool:
    return (output_dir / ARGS_FILE).exists() or bool(checkpoints(output_dir))


def changed_fields(saved: dict, current: dict) -> dict[str, dict]:
    """``{field: {"old", "new"}}`` for every field present in both whose value differs and that changes the
    computation (sections of rubric_rl_args.json are flattened; field names are unique across them)."""
    changes = {}
    for section, fields in current.items():
        old_fields = saved.get(section)
        if not isinstance(old_fields, dict):
            continue
        for name, value in fields.items():
            if name in old_fields and old_fields[name] != value and not is_free(name):
                changes[name] = {"old": old_fields[name], "new": value}
    return changes


def _resume_step(output_dir: Path, resume) -> int:
    ckpt = checkpoints(output_dir)[-1] if resume is True else Path(str(resume))
    state = ckpt / "trainer_state.json"
    if state.exists():
        return int(json.loads(state.read_text()).get("global_step", 0))
    m = re.search(r"checkpoint-(\d+)$", str(ckpt).rstrip("/"))
    return int(m.group(1)) if m else 0


def remove_run_state(output_dir: Path) -> list[str]:
    """Delete what a run wrote in ``output_dir`` (not the reusable caches); returns the names removed."""
    removed = []
    targets = [output_dir / n for n in RUN_FILES] + [p for g in RUN_GLOBS for p in output_dir.glob(g)]
    for p in targets:
        if p.name in KEEP or not (p.exists() or p.is_symlink()):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed.append(p.name)
    return sorted(removed)


def check_output_dir(output_dir: Path, current: dict, *, resume, overwrite: bool, allow_changed: bool) -> dict:
    """Decide what to do with ``output_dir`` (no side effects); raises :class:`UserError` when refused.

    Returns ``{"action": "fresh" | "overwrite" | "resume", "changes": {...}, "step": N}``."""
    if not holds_run(output_dir):
        if resume is True:
            raise UserError(f"--resume_from_checkpoint: {output_dir} holds no run to resume")
        return {"action": "fresh", "changes": {}, "step": 0}
    if resume is None:
        if overwrite:
            return {"action": "overwrite", "changes": {}, "step": 0}
        ckpts = checkpoints(output_dir)
        what = f"a run (last checkpoint: {ckpts[-1].name})" if ckpts else "a run (no checkpoint yet)"
        raise UserError(f"{output_dir} already holds {what}; pass --resume_from_checkpoint true to continue it, "
                        "or --overwrite_output_dir true to delete it and start over (warmup/, influence_cache/ "
                        "and sft_warmstart/ are kept), or choose another --output_dir")
    if overwrite:
        raise UserError("--overwrite_output_dir and --resume_from_checkpoint exclude each other: resume the run, or "
                        "replace it")
    if resume is True and not checkpoints(output_dir):
        raise UserError(f"--resume_from_checkpoint: {output_dir} holds no checkpoint-N (the run stopped before its "
                        "first save); pass --overwrite_output_dir true instead of --resume_from_checkpoint to start "
                        "over")
    saved_path = output_dir / ARGS_FILE
    changes = {}
    if saved_path.exists():
        try:
            saved = json.loads(saved_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{saved_path}: unreadable ({err}); cannot check the resumed run's arguments") from None
        changes = changed_fields(saved, current)
    if changes and not allow_changed:
        listed = ", ".join(f"{k} ({v['old']!r} -> {v['new']!r})" for k, v in sorted(changes.items()))
        raise UserError(f"resuming {output_dir} with arguments that change what the run computes: {listed}; rerun "
                        "with the original values, or pass --allow_changed_args true to accept them (recorded in "
                        f"{CHANGES_FILE})")
    return {"action": "resume", "changes": changes, "step": _resume_step(output_dir, resume)}


def _jsonable(obj):
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj) if not hasattr(obj, "to_dict") else obj.to_dict()
    return json.loads(json.dumps(obj, default=str))


def blank_secrets(fields: dict) -> dict:
    """``fields`` (one config section) with every token field set to None: never stored, never logged."""
    return {key: None if "token" in key and key.endswith(("_token", "hub_token")) else value
            for key, value in fields.items()}


def run_args(**configs) -> dict:
    """``{section: {field: value}}`` of the given configs, JSON-safe, tokens blanked (``rubric_rl_args.json``,
    the W&B run config)."""
    return {name: blank_secrets(_jsonable(cfg)) for name, cfg in configs.items()}


def save_run_args(output_dir: Path, **configs) -> None:
    data = run_args(**configs)
    (output_dir / "rubric_rl_args.json").write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")


def resume_arg(value):
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.lower() in ("true", "last", "latest", "1", "yes"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no", ""):
        return None
    return value


def prepare_output_dir(output_dir: Path, state, args, grpo_args, teacher_cfg, influence_cfg) -> dict:
    """Check (every process), then on the main process clean / record / save the arguments; see the module doc."""
    configs = {"rubric_rl": args, "grpo": grpo_args, "teacher": teacher_cfg, "influence": influence_cfg}
    current = {name: _jsonable(cfg) for name, cfg in configs.items()}
    decision = check_output_dir(output_dir, current, resume=resume_arg(grpo_args.resume_from_checkpoint),
                                overwrite=bool(getattr(args, "overwrite_output_dir", False)),
                                allow_changed=bool(getattr(args, "allow_changed_args", False)))
    state.wait_for_everyone()  # every process has read the folder before the main one changes it
    if state.is_main_process:
        if decision["action"] == "overwrite":
            decision["removed"] = remove_run_state(output_dir)
        if decision["changes"]:
            append_jsonl(output_dir / CHANGES_FILE, [{"step": decision["step"],
                                                      "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                      "changes": decision["changes"]}], ensure_ascii=True, default=str)
        save_run_args(output_dir, **configs)
    state.wait_for_everyone()
    return decision
