"""Warm-up of the target: a LoRA + AdamW fine-tune with the standard HF ``Trainer``.

Writes standard Trainer checkpoints under ``RUN_DIR/warmup/checkpoint-N/`` (adapter safetensors,
``optimizer.pt``, ``scheduler.pt``, ``trainer_state.json``) plus, per checkpoint, the names of the
optimizer's parameters (``rubric_rl_param_names.json``), and ``RUN_DIR/warmup/warmup_args.json`` once
the warm-up is complete (it is the completion marker).

Reuse rules: a finished warm-up made with the same arguments (and the same warm-up file contents) is
reused; one made with different arguments is refused with an error naming the differences (the
checkpoints are never silently deleted); an unfinished one (no ``warmup_args.json``) is deleted and
recomputed.

Multi-process (``accelerate launch``/``torchrun``): only global rank 0 trains, in a subprocess with the
distributed environment removed (so the Trainer runs single-process and does not join the caller's
process group); the other ranks poll for ``warmup_args.json`` (no collective with a timeout). If rank 0
fails, the launcher tears the group down. In a single process the Trainer runs in-process (RNG states
restored afterwards, the accelerate singletons it created dropped, a caller's ``PartialState`` kept) unless
an ``Accelerator`` already exists, in which case it also runs in a subprocess.

Over 500 lines because the writing of a warm-up (``_train``, the parameter-names callback, the completion
marker) and the reading of it (``load_checkpoints``: Adam state by parameter name, average learning rates)
share one on-disk format, kept in one module so that the two sides cannot drift apart; the module is also
the subprocess entry point (``python -m rubric_rl.influence.warmup``).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..data.chat import IGNORE_INDEX, tokenize_chat
from ..data.documents import load_chat_samples
from ..jsonl import write_json_atomic
from ..launch import launched, single_process_env, wait_until
from ..configs.influence import InfluenceConfig
from ..provenance import file_sha256

logger = logging.getLogger(__name__)

WARMUP_DIRNAME = "warmup"
ARGS_FILENAME = "warmup_args.json"
PARAM_NAMES_FILENAME = "rubric_rl_param_names.json"
WARMUP_FORMAT = 1
# Arguments that do not change what the warm-up computes.
_NON_DEFINING = {"target_trust_remote_code", "warmup_data"}


# ---------------------------------------------------------------------------------------------
# data


class PaddingCollator:
    """Right-pads ``input_ids``/``labels`` into a batch with an attention mask (labels padded with -100)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), length), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.tensor(f["labels"], dtype=torch.long)
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# ---------------------------------------------------------------------------------------------
# arguments / reuse


def warmup_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / WARMUP_DIRNAME


def warmup_finished(run_dir: str | Path | None) -> bool:
    """Whether ``RUN_DIR/warmup`` holds a finished warm-up (its ``warmup_args.json``, written last)."""
    return run_dir is not None and (warmup_dir(run_dir) / ARGS_FILENAME).is_file()


def _defining_arguments(cfg: InfluenceConfig) -> dict:
    args = {k: v for k, v in cfg.warmup_arguments().items() if k not in _NON_DEFINING}
    if cfg.warmup_data is not None and Path(cfg.warmup_data).exists():
        args["warmup_data_sha256"] = file_sha256(cfg.warmup_data)
    else:
        args["warmup_data_sha256"] = None
    args["format"] = WARMUP_FORMAT
    return args


def _read_args(wdir: Path) -> dict | None:
    path = wdir / ARGS_FILENAME
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _check_reusable(cfg: InfluenceConfig, saved: dict, wdir: Path) -> None:
    """Raise if a finished warm-up in ``wdir`` was made with different arguments."""
    old = saved["arguments"]
    new = _defining_arguments(cfg)
    if cfg.warmup_data is None or not Path(cfg.warmup_data).exists():
        # No warm-up data given: accept the finished warm-up as is (its data hash is recorded).
        new["warmup_data_sha256"] = old.get("warmup_data_sha256")
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diffs:
        from ..errors import UserError

        raise UserError(
            f"{wdir} holds a warm-up made with different arguments ({'; '.join(diffs)}). "
            f"Delete {wdir} to recompute it, or use another run directory."
        )


def _accelerate_states() -> tuple[bool, bool]:
    """(a PartialState exists, an AcceleratorState exists) in this process."""
    try:
        from accelerate.state import AcceleratorState, PartialState

        return bool(PartialState._shared_state), bool(AcceleratorState._shared_state)
    except Exception:  # pragma: no cover
        return False, False


def run_warmup(cfg: InfluenceConfig, run_dir: str | Path, *, progress: bool = True) -> Path:
    """Run (or reuse) the LoRA + Adam warm-up of the target; returns ``RUN_DIR/warmup``.

    Args:
        cfg: the influence config; ``target_*`` and ``warmup_*`` fields define the warm-up
            (``warmup_data`` is required unless a finished warm-up is already there).
        run_dir: the run directory; the warm-up goes to ``run_dir/warmup`` as standard HF Trainer
            checkpoints (``checkpoint-N/`` with adapter safetensors, ``optimizer.pt``, ``trainer_state.json``).
        progress: show the Trainer's progress bar.

    A finished warm-up with the same arguments is reused; with different arguments this raises
    ``ValueError`` naming the differences (delete the folder to recompute). An unfinished one is recomputed.
    Under ``accelerate launch`` only rank 0 trains; the other ranks wait for it. A log line names the folder and
    says whether its warm-up is reused or trained.
    """
    wdir = warmup_dir(run_dir)
    saved = _read_args(wdir)
    if saved is not None:
        _check_reusable(cfg, saved, wdir)
        logger.info("warm-up: reusing the finished warm-up in %s (same target_* and warmup_* settings; another "
                    "output_dir, or deleting the folder, trains a new one)", wdir)
        return wdir

    distributed = launched()  # (world, rank, local rank) under a launcher, else None
    if distributed and distributed[1] != 0:
        return _wait_for_warmup(cfg, wdir)

    if cfg.warmup_data is None:
        raise ValueError(f"warmup_data is not set and {wdir} holds no finished warm-up; set warmup_data to a chat jsonl")
    load_chat_samples(cfg.warmup_data)  # fail early, in this process, on a bad file
    logger.info("warm-up: %s holds no finished warm-up; training one on %s (%d epochs)", wdir, cfg.warmup_data,
                cfg.warmup_epochs)
    had_partial, had_accelerator = _accelerate_states()
    if distributed or had_accelerator:
        # The Trainer would join the process group / reuse the caller's Accelerator settings: isolate it.
        _run_warmup_subprocess(cfg, run_dir)
    else:
        with _preserved_global_state(keep_partial_state=had_partial):
            _train(cfg, wdir, progress=progress)
    saved = _read_args(wdir)
    if saved is None:  # pragma: no cover - _train writes it
        raise RuntimeError(f"warm-up finished without writing {wdir / ARGS_FILENAME}")
    return wdir


def wait_for_warmup(cfg: InfluenceConfig, run_dir: str | Path) -> Path:
    """Wait until ``RUN_DIR/warmup`` holds a finished warm-up (another process runs it: shard 0 of a sharded
    ``score``); returns the folder. A finished warm-up made with other arguments is refused."""
    return _wait_for_warmup(cfg, warmup_dir(run_dir))


def _wait_for_warmup(cfg: InfluenceConfig, wdir: Path, poll_s: float = 2.0) -> Path:
    saved = wait_until(lambda: _read_args(wdir), f"rank 0 (or shard 0) to finish the warm-up in {wdir}",
                       poll_s=poll_s, logger=logger)
    _check_reusable(cfg, saved, wdir)
    return wdir


def _run_warmup_subprocess(cfg: InfluenceConfig, run_dir: str | Path) -> None:
    env = single_process_env()
    cmd = [sys.executable, "-m", "rubric_rl.influence.warmup", "--config-json", json.dumps(asdict(cfg)),
           "--run-dir", str(run_dir)]
    logger.info("running the warm-up in a single-process subprocess")
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"warm-up subprocess failed with exit code {result.returncode} (command: {cmd[:3]} ...)")


class _ParamNamesCallback(TrainerCallback):
    """Writes the optimizer's parameter names, group by group, into every checkpoint."""

    def __init__(self, model, output_dir: Path):
        self.model = model
        self.output_dir = output_dir

    def on_save(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None:
            return
        names = {id(p): n for n, p in self.model.named_parameters()}
        groups = [[names.get(id(p)) for p in g["params"]] for g in optimizer.param_groups]
        ckpt = self.output_dir / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            (ckpt / PARAM_NAMES_FILENAME).write_text(json.dumps({"param_groups": groups}, indent=1))


def build_lora_config(cfg: InfluenceConfig):
    from peft import LoraConfig

    targets = cfg.warmup_lora_target_modules
    target_modules = targets[0] if targets == ["all-linear"] else list(targets)
    return LoraConfig(
        r=cfg.warmup_lora_r,
        lora_alpha=cfg.warmup_lora_alpha,
        lora_dropout=cfg.warmup_lora_dropout,
        target_modules=target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _train(cfg: InfluenceConfig, wdir: Path, *, progress: bool = True) -> None:
    from peft import get_peft_model
    from transformers import Trainer

    from ..models import load_model_and_tokenizer

    if wdir.exists():
        logger.warning("%s holds an unfinished warm-up (no %s); recomputing it", wdir, ARGS_FILENAME)
        shutil.rmtree(wdir)
    wdir.mkdir(parents=True)

    rows = load_chat_samples(cfg.warmup_data)
    model, tok = load_model_and_tokenizer(
        cfg.target_model_name_or_path, dtype=cfg.target_dtype, trust_remote_code=cfg.target_trust_remote_code,
        padding_side="right",
    )
    train, skipped, truncated = _training_rows(cfg, rows, tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.warmup_seed)
        model = get_peft_model(model, build_lora_config(cfg))
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()

    trainer = Trainer(
        model=model,
        args=_training_arguments(cfg, wdir, progress=progress),
        train_dataset=train,
        data_collator=PaddingCollator(tok.pad_token_id),
        callbacks=[_ParamNamesCallback(model, wdir)],
    )
    from ..progress import phase, quiet_trainer_logs

    quiet_trainer_logs(trainer)
    phase("target warm-up", f"{cfg.target_model_name_or_path}, {len(train)} samples, {cfg.warmup_epochs} epochs "
          f"(LoRA r={cfg.warmup_lora_r}), checkpoints in {wdir}")
    trainer.train()
    checkpoints = sorted((p.name for p in wdir.glob("checkpoint-*") if p.is_dir()), key=_ckpt_step)
    if not checkpoints:
        raise RuntimeError(f"the warm-up wrote no checkpoint under {wdir}")
    tok.save_pretrained(wdir / "tokenizer")
    record = {
        "arguments": _defining_arguments(cfg),
        "warmup_data": str(cfg.warmup_data),
        "num_samples": len(train),
        "skipped_no_assistant_tokens": skipped,
        "truncated": truncated,
        "checkpoints": checkpoints,
        "global_step": trainer.state.global_step,
    }
    write_json_atomic(wdir / ARGS_FILENAME, record, indent=2, ensure_ascii=True)


def _training_rows(cfg: InfluenceConfig, rows: list[dict], tok) -> tuple[list[dict], int, int]:
    """The warm-up's tokenised samples (those with assistant tokens within ``warmup_max_length``), how many were
    skipped for having none, how many were truncated."""
    train, skipped, truncated = [], 0, 0
    for row in rows:
        chat = tokenize_chat(tok, row["messages"], cfg.warmup_max_length)
        truncated += chat.truncated
        if chat.num_loss_tokens == 0:
            skipped += 1
            continue
        train.append({"input_ids": chat.input_ids, "labels": chat.labels})
    if not train:
        raise ValueError(f"{cfg.warmup_data}: no sample has assistant tokens within warmup_max_length={cfg.warmup_max_length}")
    if skipped or truncated:
        logger.warning("warm-up data: %d sample(s) skipped (no assistant tokens), %d truncated", skipped, truncated)
    return train, skipped, truncated


def _training_arguments(cfg: InfluenceConfig, wdir: Path, *, progress: bool):
    """The HF ``TrainingArguments`` of the warm-up: AdamW, a checkpoint per epoch (or every ``warmup_save_every``
    steps) with the optimizer state the scorer reads, on the GPU when there is one."""
    from transformers import TrainingArguments

    save_kwargs = (
        {"save_strategy": "steps", "save_steps": cfg.warmup_save_every} if cfg.warmup_save_every
        else {"save_strategy": "epoch"}
    )
    use_cpu = not torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(wdir),
        num_train_epochs=cfg.warmup_epochs,
        learning_rate=cfg.warmup_learning_rate,
        lr_scheduler_type=cfg.warmup_lr_scheduler_type,
        warmup_steps=cfg.warmup_lr_warmup_ratio,  # < 1: a ratio of the total steps
        per_device_train_batch_size=cfg.warmup_batch_size,
        gradient_accumulation_steps=cfg.warmup_gradient_accumulation_steps,
        weight_decay=cfg.warmup_weight_decay,
        optim="adamw_torch",
        logging_steps=1,
        report_to=[],
        seed=cfg.warmup_seed,
        remove_unused_columns=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        save_only_model=False,
        use_cpu=use_cpu,
        bf16=(cfg.target_dtype == "bfloat16" and not use_cpu),
        **save_kwargs,
    )


@contextmanager
def _preserved_global_state(keep_partial_state: bool):
    """Run the Trainer in-process without side effects on the caller: RNG states are restored and the
    accelerate singletons the Trainer created are dropped (a caller's PartialState is kept)."""
    import random

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            try:
                from accelerate.state import AcceleratorState, GradientState

                AcceleratorState._reset_state(reset_partial_state=not keep_partial_state)
                GradientState._reset_state()
            except Exception:  # pragma: no cover
                pass


# ---------------------------------------------------------------------------------------------
# loading checkpoints


def _ckpt_step(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


@dataclass
class AdamState:
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: float
    beta1: float
    beta2: float
    eps: float


@dataclass
class WarmupCheckpoint:
    """One warm-up checkpoint: adapter weights, Adam moments per parameter name, and its learning rate."""

    name: str
    path: Path | None  # None: current_weights
    step: int
    learning_rate: float  # average learning rate over the steps since the previous checkpoint
    adapter_weights: dict[str, torch.Tensor] | None  # file keys, as saved by peft; None: the model as it is
    adam: dict[str, AdamState]  # keyed by the peft model's parameter names
    adapter_sha256: str = ""  # of adapter_model.safetensors: part of the validation cache's key


def current_weights(name: str = "current") -> WarmupCheckpoint:
    """A checkpoint that is the model's weights as the scorer is handed them, with plain gradients (no optimizer
    state) and learning rate 1: the closed loop's student, scored where it stands."""
    return WarmupCheckpoint(name, None, 0, 1.0, None, {})


def list_checkpoints(wdir: Path, selection: list[str]) -> list[Path]:
    all_ckpts = sorted((p for p in Path(wdir).glob("checkpoint-*") if p.is_dir()), key=lambda p: _ckpt_step(p.name))
    if not all_ckpts:
        raise FileNotFoundError(f"no checkpoint-N folder under {wdir}")
    if selection == ["all"]:
        return all_ckpts
    if selection == ["last"]:
        return all_ckpts[-1:]
    by_name = {p.name: p for p in all_ckpts}
    out = []
    for item in selection:
        key = item if item.startswith("checkpoint-") else f"checkpoint-{item}"
        if key not in by_name:
            raise ValueError(f"influence_checkpoints names {item!r}, not among {sorted(by_name)} in {wdir}")
        out.append(by_name[key])
    return out


def _average_learning_rates(ckpts: list[Path], optimizer_lrs: list[float]) -> list[float]:
    """Average logged learning rate over the steps each checkpoint covers (LESS's checkpoint weights)."""
    last_state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    history = [(h["step"], h["learning_rate"]) for h in last_state.get("log_history", []) if "learning_rate" in h]
    # Steps of *all* checkpoints define the intervals, even those not selected.
    all_steps = sorted(_ckpt_step(p.name) for p in ckpts[0].parent.glob("checkpoint-*") if p.is_dir())
    lrs = []
    for ckpt, fallback in zip(ckpts, optimizer_lrs):
        step = _ckpt_step(ckpt.name)
        prev = max([s for s in all_steps if s < step], default=0)
        window = [lr for s, lr in history if prev < s <= step]
        lrs.append(float(sum(window) / len(window)) if window else float(fallback))
    return lrs


def _optimizer_param_names(ckpt: Path, model, state_dict: dict) -> list[list[str]]:
    """Parameter names of each saved optimizer param group, in the optimizer's order."""
    sizes = [len(g["params"]) for g in state_dict["param_groups"]]
    names_file = ckpt / PARAM_NAMES_FILENAME
    if names_file.exists():
        groups = json.loads(names_file.read_text())["param_groups"]
        if [len(g) for g in groups] == sizes and all(n is not None for g in groups for n in g):
            return groups
        logger.warning("%s does not match optimizer.pt; reconstructing the parameter order", names_file)
    # The HF Trainer builds two groups from model.named_parameters(): decay params, then the others.
    from transformers.trainer_pt_utils import get_parameter_names

    forbidden = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], forbidden))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    candidates = [[n for n in trainable if n in decay], [n for n in trainable if n not in decay]]
    groups = [g for g in candidates if g] if len(sizes) != 2 else candidates
    if [len(g) for g in groups] != sizes:
        raise ValueError(
            f"{ckpt / 'optimizer.pt'}: cannot map its param groups (sizes {sizes}) onto the model's trainable "
            f"parameters (decay/no-decay sizes {[len(g) for g in candidates]})"
        )
    return groups


def load_checkpoints(wdir: str | Path, model, selection: list[str], device=None) -> list[WarmupCheckpoint]:
    """Load the selected checkpoints' adapter weights and Adam moments (mapped to ``model``'s parameter names).

    ``model`` is the peft model the moments are mapped onto (its trainable parameters must be the LoRA factors
    the warm-up trained); every moment's shape is checked against its parameter.
    """
    from safetensors.torch import load_file

    wdir = Path(wdir)
    params = dict(model.named_parameters())
    ckpts = list_checkpoints(wdir, selection)
    out, opt_lrs = [], []
    for ckpt in ckpts:
        opt_path = ckpt / "optimizer.pt"
        if not opt_path.exists():
            raise FileNotFoundError(f"{opt_path} missing: the warm-up must save optimizer state (save_only_model=False)")
        sd = torch.load(opt_path, map_location="cpu", weights_only=True)
        groups = _optimizer_param_names(ckpt, model, sd)
        adam: dict[str, AdamState] = {}
        for group, names in zip(sd["param_groups"], groups):
            b1, b2 = (float(b) for b in group.get("betas", (0.9, 0.999)))
            eps = float(group.get("eps", 1e-8))
            if group.get("amsgrad"):
                raise ValueError(f"{opt_path}: amsgrad optimizers are not supported")
            for idx, name in zip(group["params"], names):
                if name not in params:
                    raise ValueError(f"{opt_path}: parameter {name!r} is not in the model")
                p = params[name]
                st = sd["state"].get(idx)
                if st is None:  # never stepped
                    zeros = torch.zeros_like(p, device="cpu")
                    adam[name] = AdamState(zeros, zeros.clone(), 0.0, b1, b2, eps)
                    continue
                m, v = st["exp_avg"], st["exp_avg_sq"]
                if tuple(m.shape) != tuple(p.shape) or tuple(v.shape) != tuple(p.shape):
                    raise ValueError(
                        f"{opt_path}: Adam moments of {name!r} have shape {tuple(m.shape)}, parameter has {tuple(p.shape)}"
                    )
                step = float(st["step"].item() if torch.is_tensor(st["step"]) else st["step"])
                adam[name] = AdamState(m, v, step, b1, b2, eps)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        missing = [n for n in trainable if n not in adam]
        if missing:
            raise ValueError(f"{opt_path}: no optimizer entry for trainable parameters {missing[:3]}...")
        adapter_file = ckpt / "adapter_model.safetensors"
        if not adapter_file.exists():
            raise FileNotFoundError(f"{adapter_file} missing")
        opt_lrs.append(float(sd["param_groups"][0].get("lr", 0.0)))
        out.append(WarmupCheckpoint(ckpt.name, ckpt, _ckpt_step(ckpt.name), 0.0, load_file(str(adapter_file)), adam,
                                    adapter_sha256=file_sha256(adapter_file)))
    for c, lr in zip(out, _average_learning_rates(ckpts, opt_lrs)):
        c.learning_rate = lr
    return out


def _main(argv=None) -> None:  # the subprocess entry point
    import argparse

    ap = argparse.ArgumentParser(description="rubric-rl warm-up (internal single-process entry point)")
    ap.add_argument("--config-json", required=True)
    ap.add_argument("--run-dir", required=True)
    ns = ap.parse_args(argv)
    from ..launch import quiet_warnings, setup_logging

    quiet_warnings()
    setup_logging()  # the parent's console format
    cfg = InfluenceConfig(**json.loads(ns.config_json))
    wdir = warmup_dir(ns.run_dir)
    saved = _read_args(wdir)
    if saved is not None:
        _check_reusable(cfg, saved, wdir)
        return
    _train(cfg, wdir)


if __name__ == "__main__":
    _main()
