"""Selection rules of the closed loop: a score per seed question from the current student; the loop picks the
highest-scoring seeds (:func:`select`).

After Kessler et al., "Towards Active Synthetic Data Generation for Finetuning Language Models" (arXiv:2512.00884):

* ``loss_own``: the student answers the seed question greedily; the score is its mean token NLL on that answer
  (its uncertainty; the rule the paper found best);
* ``loss_reference``: the student's mean token NLL on the seed's reference answer;
* ``random``: a uniform draw, seeded by the run seed and the round;
* ``influence``: the reward's own scorer (``InfluenceScorer``) on the current student, with one checkpoint (the
  student itself) and plain gradients (it has no optimizer state to precondition with): ``dot``:
  ``max_s <g(seed), mean_{v in s} g(v)>`` with ``g(v)`` the gradient of v's validation objective
  (``influence_objective``), ``less``: LESS's cosine form; ``g`` over the student's ``nn.Linear`` weights (LoRA
  factors for a LoRA student), projected when ``influence_proj_dim`` is set. Larger = a step on the seed lowers
  the validation objective more;
* ``badge`` (Ash et al., 2020, arXiv:1906.03671; an LLM-agnostic baseline of the paper): the gradient embedding of
  a seed is the last layer's gradient of the loss on the student's own greedy answer,
  ``g = 1/n sum_t (softmax(z_t) - e_{y_t}) h_t^T`` (``h_t`` the output layer's input, ``y_t`` the generated token);
  k-means++ seeding over those embeddings (the largest norm first, then each next seed drawn with probability
  proportional to its squared distance to the nearest one picked) orders the seeds, and the score is the reverse
  of that order. The embeddings are never built: their inner products are ``1/(n_i n_j) sum_{t,s} (a_t . a_s)
  (h_t . h_s)``, from the answer tokens' ``[M, V]`` and ``[M, d]`` matrices;
* ``static`` has no scores: the whole budget in one round, spread evenly over the seeds.

Every score is "larger = pick first"; a seed whose score is not finite is picked last.
"""

from __future__ import annotations

import math
import random

import torch

from ..configs.closed_loop import BADGE, INFLUENCE, LOSS_OWN, LOSS_REFERENCE, RANDOM, STATIC

__all__ = ["seed_scores", "select", "own_answers", "badge_kernel", "kmeans_pp_order"]


def _prompt(messages: list[dict]) -> list[dict]:
    """The messages before the last assistant turn (what the student is asked)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


@torch.no_grad()
def own_answers(model, tokenizer, seeds: list[dict], *, max_new_tokens: int, batch_size: int = 16,
                return_ids: bool = False) -> tuple:
    """The student's greedy answer to each seed question and its mean token NLL on it (the end-of-turn token
    included). The NLL is read from the logits of the generation itself, so no re-tokenisation shifts it. With
    ``return_ids`` also each prompt's and answer's token ids."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    texts = [tokenizer.apply_chat_template(_prompt(s["messages"]), tokenize=False, add_generation_prompt=True)
             for s in seeds]
    answers, losses = [""] * len(seeds), [math.nan] * len(seeds)
    prompt_ids: list[list[int]] = [[] for _ in seeds]
    answer_ids: list[list[int]] = [[] for _ in seeds]
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
                prompt_ids[i] = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
                answer_ids[i] = ids[:n]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return (answers, losses, prompt_ids, answer_ids) if return_ids else (answers, losses)


@torch.no_grad()
def badge_kernel(model, tokenizer, prompt_ids: list[list[int]], answer_ids: list[list[int]], *,
                 batch_size: int = 16) -> torch.Tensor:
    """``[N, N]`` inner products of the seeds' BADGE gradient embeddings (module docstring), float64."""
    from ..mcscore import pad_batch

    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    captured: dict = {}
    hook = head.register_forward_hook(lambda _m, inputs, _out: captured.__setitem__("h", inputs[0]))
    a_rows, h_rows, owner = [], [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompt_ids), batch_size):
            idx = [i for i in range(start, min(start + batch_size, len(prompt_ids))) if answer_ids[i]]
            if not idx:
                continue
            ids, mask = pad_batch([prompt_ids[i] + answer_ids[i] for i in idx], tokenizer.pad_token_id or 0, device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            for row, i in enumerate(idx):
                p0, n = len(prompt_ids[i]), len(answer_ids[i])
                a = torch.softmax(logits[row, p0 - 1:p0 - 1 + n].double(), dim=-1)  # position t predicts token t+1
                a[torch.arange(n), torch.tensor(answer_ids[i], device=a.device)] -= 1.0
                a_rows.append(a)
                h_rows.append(captured["h"][row, p0 - 1:p0 - 1 + n].double())
                owner += [i] * n
    finally:
        hook.remove()
        model.train(was_training)
    kernel = torch.zeros(len(prompt_ids), len(prompt_ids), dtype=torch.float64)
    if not a_rows:
        return kernel
    a, h = torch.cat(a_rows), torch.cat(h_rows)  # [M, V], [M, d]
    gram = ((a @ a.T) * (h @ h.T)).cpu()  # [M, M]: <a_t, a_s> <h_t, h_s>
    own = torch.tensor(owner)
    weights = torch.zeros(len(prompt_ids), len(owner), dtype=torch.float64)
    weights[own, torch.arange(len(owner))] = 1.0 / torch.bincount(own, minlength=len(prompt_ids)).double()[own]
    return weights @ gram @ weights.T


def kmeans_pp_order(kernel: torch.Tensor, rng: random.Random) -> list[int]:
    """Every index in k-means++ seeding order over points given by their inner products: the largest norm first,
    then each next one drawn with probability proportional to its squared distance to the nearest one picked (in
    index order once every distance is zero)."""
    n = kernel.shape[0]
    diag = kernel.diag()
    order = [int(torch.argmax(diag))]
    d2 = (diag + diag[order[0]] - 2 * kernel[:, order[0]]).clamp_min(0)
    while len(order) < n:
        d2[order] = 0.0
        total = float(d2.sum())
        if total <= 1e-12 * max(float(diag.max()), 1e-300):
            order += [i for i in range(n) if i not in set(order)]
            break
        r, acc, pick = rng.random() * total, 0.0, None
        for i in range(n):
            acc += float(d2[i])
            if d2[i] > 0 and acc >= r:
                pick = i
                break
        if pick is None:  # rounding at the end of the cumulative sum
            pick = int(torch.argmax(d2))
        order.append(pick)
        d2 = torch.minimum(d2, (diag + diag[pick] - 2 * kernel[:, pick]).clamp_min(0))
    return order


def _influence(model, tokenizer, seeds: list[dict], validation: list[dict], influence_cfg, max_length: int
               ) -> list[float]:
    """The project's scorer (``InfluenceScorer``, the reward's estimator: the validation objective, the max over
    subtasks) on the student as it stands: one checkpoint, its current weights, plain gradients over its
    ``nn.Linear`` weights (LoRA factors for a LoRA student)."""
    from dataclasses import replace

    from ..influence import InfluenceScorer
    from ..influence.task import InfluenceTask
    from ..influence.warmup import current_weights

    cfg = replace(influence_cfg, influence_direction="sgd", influence_center=False, influence_max_length=max_length)
    was_training = model.training
    model.eval()
    scorer = None
    try:  # the task tracks the student's nn.Linear weights; close() restores every requires_grad flag
        scorer = InfluenceScorer(cfg, model, tokenizer, [current_weights("student")],
                                 device=next(model.parameters()).device, task=InfluenceTask.of(cfg, tracked="linear"))
        scorer.set_validation(validation, source="influence_validation_data")
        results = scorer.score([s["messages"] for s in seeds])
        return [r.value if r.value is not None else math.nan for r in results]
    finally:
        if scorer is not None:
            scorer.close()
        model.train(was_training)


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
    if rule == BADGE:
        answers, _, prompts, ids = own_answers(model, tokenizer, seeds, max_new_tokens=max_new_tokens,
                                               batch_size=batch_size, return_ids=True)
        order = kmeans_pp_order(badge_kernel(model, tokenizer, prompts, ids, batch_size=batch_size),
                                random.Random(f"loop:badge:{seed}:{round_index}"))
        scores = [0.0] * len(seeds)
        for pos, i in enumerate(order):
            scores[i] = float(len(seeds) - pos)
        return scores, {"answers": answers}
    if rule == INFLUENCE:
        if not validation:
            raise ValueError("the influence rule needs influence_validation_data (the validation chat jsonl)")
        return _influence(model, tokenizer, seeds, validation, influence_cfg, max_length), {}
    raise ValueError(f"unknown selection rule {rule!r}")


def select(scores: list[float], n: int) -> list[int]:
    """Indices of the ``n`` highest scores, highest first (ties by index; non-finite scores last)."""
    key = [(-s if math.isfinite(s) else math.inf, i) for i, s in enumerate(scores)]
    return [i for _, i in sorted(key)[:n]]
