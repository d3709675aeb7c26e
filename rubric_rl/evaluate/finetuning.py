"""Fine-tuning a fresh target on one dataset: a plain AdamW loop (full or LoRA).

Why not TRL's ``SFTTrainer`` (what users fine-tune their target with): the loss is the same one, the token-mean
cross-entropy over the assistant tokens of a padded batch (``SFTConfig(assistant_only_loss=True)``), but this
loop is the measuring instrument of ``evaluate``, ``calibrate`` and the closed loop, which fine-tune one fresh
student per (source, seed) dataset, dozens per run. It must give the same student for the same dataset wherever
it runs: its batch order comes from ``random.Random(f"finetune:{seed}")`` and its initialisation from a forked
torch RNG, so nothing a previous dataset did (a dataloader worker, a Trainer's global seeding, an accelerate
state) reaches the next, and no Trainer/Accelerator is set up per dataset. Its result is a comparison between rubric sources at
equal budgets, not a recipe: fine-tune the final target on the synthesized dataset with ``SFTTrainer``.
"""

from __future__ import annotations

import math
import random
import time

import torch

from ..configs.evaluate import EvalConfig
from ..devices import fork_rng


def load_target(cfg: EvalConfig, target: str, tokenizer, device, seed: int, trust_remote_code: bool = False):
    """A fresh target: the base model, plus a LoRA adapter (initialised from ``seed``) for eval_finetune=lora."""
    from ..models import load_causal_lm

    model = load_causal_lm(target, tokenizer, dtype=cfg.eval_target_dtype, trust_remote_code=trust_remote_code)
    if cfg.eval_finetune == "lora":
        from peft import LoraConfig, get_peft_model

        mods = cfg.eval_lora_target_modules
        lora = LoraConfig(r=cfg.eval_lora_r, lora_alpha=cfg.eval_lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules="all-linear" if mods == ["all-linear"] else mods)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_peft_model(model, lora)
    return model.to(device)


def finetune_fresh(cfg: EvalConfig, target: str, tokenizer, device, samples: list[dict], *, seed: int,
                   trust_remote_code: bool = False):
    """``(model, stats)``: a fresh target (:func:`load_target`) fine-tuned on ``samples`` with torch's global RNG
    seeded by ``seed`` inside a fork (nothing leaks to what runs next): the evaluation's protocol, which the closed
    loop shares, so a dataset gives the same student in both."""
    model = load_target(cfg, target, tokenizer, device, seed=seed, trust_remote_code=trust_remote_code)
    with fork_rng():
        torch.manual_seed(seed)
        return model, finetune(model, tokenizer, samples, cfg, seed=seed, progress=False)


def finetune(model, tokenizer, samples: list[dict], cfg: EvalConfig, *, seed: int, progress: bool = False) -> dict:
    """Plain AdamW fine-tuning on the assistant tokens of ``samples`` (token-mean loss per batch)."""
    from transformers import get_scheduler

    from ..data.chat import IGNORE_INDEX, tokenize_chat
    from ..mcscore import pad_batch

    chats = [tokenize_chat(tokenizer, s["messages"], cfg.eval_max_length) for s in samples]
    chats = [c for c in chats if c.num_loss_tokens > 0]
    if not chats:
        return {"steps": 0, "train_loss_first": None, "train_loss_last": None, "seconds": 0.0}
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.eval_learning_rate, weight_decay=cfg.eval_weight_decay)
    per_epoch = math.ceil(len(chats) / cfg.eval_batch_size)
    total = max(1, math.ceil(cfg.eval_epochs * per_epoch))
    sched = get_scheduler(cfg.eval_lr_scheduler_type, opt, num_warmup_steps=int(cfg.eval_warmup_ratio * total),
                          num_training_steps=total)
    rng = random.Random(f"finetune:{seed}")
    pad = tokenizer.pad_token_id or 0
    losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    step = 0
    order: list[int] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="fine-tune", leave=False, disable=not progress, dynamic_ncols=True)
    while step < total:
        if not order:
            order = list(range(len(chats)))
            rng.shuffle(order)
        batch = [chats[i] for i in order[:cfg.eval_batch_size]]
        order = order[cfg.eval_batch_size:]
        ids, mask = pad_batch([c.input_ids for c in batch], pad, device)
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, c in enumerate(batch):
            labels[row, :len(c.labels)] = torch.tensor(c.labels, dtype=torch.long)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:],
                                                 ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.eval_max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.eval_max_grad_norm)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        step += 1
        bar.update(1)
    bar.close()
    model.eval()
    k = max(1, min(5, len(losses)))
    return {"steps": total, "train_loss_first": sum(losses[:k]) / k, "train_loss_last": sum(losses[-k:]) / k,
            "seconds": round(time.perf_counter() - t0, 3)}
