"""Selection rules of the closed loop: a score per seed question from the current student; the loop picks the
highest-scoring seeds (:func:`select`).

After Kessler et al., "Towards Active Synthetic Data Generation for Finetuning Language Models" (arXiv:2512.00884):

* ``loss_own``: the student answers the seed question greedily; the score is its mean token NLL on that answer
  (its uncertainty; the rule the paper found best);
* ``loss_reference``: the student's mean token NLL on the seed's reference answer;
* ``random``: a uniform draw, seeded by the run seed and the round;
* ``influence``: the project's estimator on the current student, with one checkpoint (the student itself) and
  plain gradients (it has no optimizer state to precondition with): ``dot``: ``<g(seed), mean_v g(v)>``, ``less``:
  its cosine; ``g`` over the student's ``nn.Linear`` weights (LoRA factors for a LoRA student), projected when
  ``influence_proj_dim`` is set. Larger = a step on the seed lowers the validation loss more;
* ``static`` has no scores: the whole budget in one round, spread evenly over the seeds.

Every score is "larger = pick first"; a seed whose score is not finite is picked last.
"""

from __future__ import annotations

import math
import random

import torch

from ..configs.closed_loop import INFLUENCE, LOSS_OWN, LOSS_REFERENCE, RANDOM, STATIC

__all__ = ["seed_scores", "select", "own_answers"]


def _prompt(messages: list[dict]) -> list[dict]:
    """The messages before the last assistant turn (what the student is asked)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


@torch.no_grad()
def own_answers(model, tokenizer, seeds: list[dict], *, max_new_tokens: int, batch_size: int = 16
                ) -> tuple[list[str], list[float]]:
    """The student's greedy answer to each seed question and its mean token NLL on it (the end-of-turn token
    included). The NLL is read from the logits of the generation itself, so no re-tokenisation shifts it."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    texts = [tokenizer.apply_chat_template(_prompt(s["messages"]), tokenize=False, add_generation_prompt=True)
             for s in seeds]
    answers, losses = [""] * len(seeds), [math.nan] * len(seeds)
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues every row from its last prompt token
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=pad, eos_token_id=eos)
            new = out.sequences[:, enc["input_ids"].shape[1]:]  # [B, T']
            logp = torch.stack([torch.log_softmax(x.float(), dim=-1) for x in out.logits], dim=1)  # [B, T', V]
            nll = -logp.gather(-1, new[:, :logp.shape[1]].unsqueeze(-1)).squeeze(-1)
            for row in range(new.shape[0]):
                ids = new[row].tolist()
                n = ids.index(eos) + 1 if eos in ids else len(ids)  # the end-of-turn token counts, as in training
                i = start + row
                answers[i] = tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
                losses[i] = float(nll[row, :n].mean())  # an empty answer: the NLL of its end-of-turn token
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers, losses


def _influence(model, tokenizer, seeds: list[dict], validation: list[dict], influence_cfg, max_length: int
               ) -> list[float]:
    from ..data.chat import tokenize_chat
    from ..influence.grads import Direction, PerSampleGradients
    from ..influence.projection import RademacherProjector

    device = next(model.parameters()).device
    linear = {name for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():  # gradients of the nn.Linear weights the student trains
        p.requires_grad_(saved[n] and n.rpartition(".")[0] in linear)
    engine = None
    try:
        num = sum(p.numel() for p in model.parameters() if p.requires_grad)
        projector = None
        if influence_cfg.influence_proj_dim:
            projector = RademacherProjector(num, influence_cfg.influence_proj_dim, influence_cfg.influence_proj_seed,
                                            influence_cfg.influence_proj_memory_mb, device, torch.float32)
        engine = PerSampleGradients(model, pad_token_id=tokenizer.pad_token_id or 0, device=device,
                                    projector=projector)
        direction = Direction("sgd")
        bs = influence_cfg.influence_batch_size

        def feats(rows):
            chats = [tokenize_chat(tokenizer, r["messages"], max_length) for r in rows]
            keep = [i for i, c in enumerate(chats) if c.num_loss_tokens > 0]
            out = torch.zeros(len(rows), engine.dim)
            ok = torch.zeros(len(rows), dtype=torch.bool)
            for s in range(0, len(keep), bs):
                idx = keep[s:s + bs]
                f = engine.features([chats[i] for i in idx], direction)
                out[idx], ok[idx] = f.features.cpu(), f.finite.cpu()
            return out, ok

        was_training = model.training
        model.eval()
        val, vok = feats(validation)
        target = val[vok].mean(0)
        g, ok = feats(seeds)
        model.train(was_training)
        scores = g @ target
        if influence_cfg.influence_estimator == "less":
            scores = scores / (g.norm(dim=1) * target.norm()).clamp_min(1e-30)
        return [float(v) if good else math.nan for v, good in zip(scores.tolist(), ok.tolist())]
    finally:
        if engine is not None:
            engine.close()
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])


def seed_scores(rule: str, model, tokenizer, seeds: list[dict], *, seed: int, round_index: int, max_new_tokens: int,
                max_length: int, batch_size: int = 16, validation: list[dict] | None = None,
                influence_cfg=None) -> tuple[list[float] | None, dict]:
    """``(scores, extra)``: one score per seed (larger = pick first; None for ``static``) and what to keep in the
    round's selection file (``loss_own``: the student's answers)."""
    if rule == STATIC:
        return None, {}
    if rule == RANDOM:
        rng = random.Random(f"loop:random:{seed}:{round_index}")
        return [rng.random() for _ in seeds], {}
    if rule == LOSS_OWN:
        answers, losses = own_answers(model, tokenizer, seeds, max_new_tokens=max_new_tokens, batch_size=batch_size)
        return losses, {"answers": answers}
    if rule == LOSS_REFERENCE:
        from ..mcscore import answer_loss

        return answer_loss(model, tokenizer, seeds, batch_size=batch_size, max_length=max_length)["per_item"], {}
    if rule == INFLUENCE:
        if not validation:
            raise ValueError("the influence rule needs influence_validation_data (the validation chat jsonl)")
        return _influence(model, tokenizer, seeds, validation, influence_cfg, max_length), {}
    raise ValueError(f"unknown selection rule {rule!r}")


def select(scores: list[float], n: int) -> list[int]:
    """Indices of the ``n`` highest scores, highest first (ties by index; non-finite scores last)."""
    key = [(-s if math.isfinite(s) else math.inf, i) for i, s in enumerate(scores)]
    return [i for _, i in sorted(key)[:n]]
