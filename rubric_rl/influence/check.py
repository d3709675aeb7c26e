"""Does the influence estimator rank samples the way training on them actually helps? Two checks.

* **Related vs unrelated** (a smoke test of direction): samples of the target task should score above
  off-domain ones; reported as the AUC (probability that a random related sample outscores a random
  unrelated one).
* **First order** (the ground truth the estimator approximates): at a warm-up checkpoint, take one real
  ``torch.optim.Adam`` step on each candidate alone, from a copy of the saved optimizer state, and measure
  how much the validation loss fell (mean within a subtask, max across subtasks, as the estimator
  aggregates). For a small learning rate this is ``lr * <g_val, Gamma(z)>``; the estimator must rank the
  candidates the same way (Spearman).

``scripts/check_influence.py`` runs both for a config, on several estimator settings, and writes a JSON
report. The Adam step here is torch's own implementation, not the engine's ``Direction``: the check is
independent of the code it checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..configs.influence import InfluenceConfig as I  # the objective and length defaults: the scorer's
from ..data.chat import IGNORE_INDEX, tokenize_chat


def auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """P(a random ``pos`` value > a random ``neg`` value), ties counted half (Mann-Whitney U / (n m))."""
    if not pos or not neg:
        raise ValueError("auc needs at least one value on each side")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@torch.no_grad()
def _losses(model, chats, pad_token_id: int, device, batch_size: int = 8) -> list[float]:
    """Mean assistant-token cross-entropy of each chat (right padding, float32 or better)."""
    out = []
    for k in range(0, len(chats), batch_size):
        batch = chats[k:k + batch_size]
        t = max(len(c.input_ids) for c in batch)
        ids = torch.full((len(batch), t), pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), t), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), t), dtype=torch.long)
        for i, c in enumerate(batch):
            ids[i, :len(c.input_ids)] = torch.as_tensor(c.input_ids)
            labels[i, :len(c.labels)] = torch.as_tensor(c.labels)
            mask[i, :len(c.input_ids)] = 1
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        tgt = labels[:, 1:]
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt.clamp_min(0), reduction="none")
        keep = (tgt != IGNORE_INDEX).to(ce.dtype)
        out.extend(((ce * keep).sum(1) / keep.sum(1)).tolist())
    return out


def objective_inputs(tokenizer, validation: Sequence[dict], *, objective: str = I.influence_objective,
                     max_length: int = I.influence_max_length) -> dict:
    """The tokenised validation set for :func:`objective_losses`, built once: the gold answers' chats (for the
    token loss), every choice as a (context ids, continuation ids) request, and per multiple-choice item
    (item, first request, K, gold); items the objective does not score (no choices under ``choices``)."""
    from .choices import choice_chats

    chats = [tokenize_chat(tokenizer, r["messages"], max_length) for r in validation] if "tokens" in objective else None
    requests, items, unscored = [], [], []
    for k, r in enumerate(validation):
        made = choice_chats(tokenizer, r, max_length) if "choices" in objective else None
        if made is None:
            if objective == "choices":
                unscored.append(k)
            continue
        choice, gold = made
        items.append((k, len(requests), len(choice), gold))
        for c in choice:
            n = c.num_loss_tokens
            requests.append((list(c.input_ids[:-n]), list(c.input_ids[-n:])))
    return {"n": len(validation), "chats": chats, "requests": requests, "items": items, "unscored": unscored}


def objective_losses(model, tokenizer, validation: Sequence[dict] | None = None, *,
                     objective: str = I.influence_objective, max_length: int = I.influence_max_length, device="cpu",
                     inputs: dict | None = None) -> list[float | None]:
    """Each validation item's value of the objective the estimator predicts (``influence_objective``): its
    answer-token loss, its choice loss over its K continuations (items without choices: 0), or their sum.
    Items that are not scored by the objective (no choices under ``choices``) get None. ``inputs``
    (:func:`objective_inputs`) replaces ``validation`` when the same set is evaluated many times."""
    from .choices import choice_losses

    if inputs is None:
        inputs = objective_inputs(tokenizer, validation, objective=objective, max_length=max_length)
    pad = tokenizer.pad_token_id
    out: list[float | None] = [0.0] * inputs["n"]
    if inputs["chats"] is not None:
        out = _losses(model, inputs["chats"], pad, device)
    for k in inputs["unscored"]:
        out[k] = None
    if inputs["requests"]:  # an item's choices share their context: one pass over it, the continuations on its KV cache
        from ..mcscore import loglikelihoods

        with torch.no_grad():
            logps = torch.tensor(loglikelihoods(model, inputs["requests"], pad_token_id=pad), dtype=torch.float64)
        for k, start, n_choices, gold in inputs["items"]:
            out[k] += float(choice_losses(logps[start:start + n_choices], gold))
    return out


def aggregate(losses: Sequence[float | None], subtasks: Sequence[str]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for x, s in zip(losses, subtasks):
        if x is not None:
            groups.setdefault(s, []).append(x)
    return {s: sum(v) / len(v) for s, v in groups.items()}


# objective "tokens", not influence_objective's default: the check's ground truth is the answer-token loss unless the
# caller names the scorer's objective (scripts/check_influence.py does).
def actual_decreases(model, tokenizer, checkpoint, candidates: Sequence[list[dict]], validation: Sequence[dict], *,
                     lr: float, max_length: int = I.influence_max_length,
                     subtask_field: str = I.influence_subtask_field, device="cpu",
                     progress: bool = False, objective: str = "tokens") -> dict:
    """Validation-loss decrease after one real Adam step on each candidate alone, at ``checkpoint``.

    ``model`` is the peft model; its trainable parameters are set to the checkpoint's adapter weights and
    restored after every trial. Returns ``{"max_subtask": [...], "max_subtask_centred": [...], "mean": [...],
    "base_loss": float}``: the max over subtasks of the per-subtask mean loss decrease (the estimator's
    aggregation); the same for the decrease beyond the one a step on a zero gradient (the momentum alone) causes,
    i.e. what adding z to the step changes (the centred estimator's quantity); and the plain mean loss decrease,
    one entry per candidate, larger = more helpful. The loss is the validation
    objective ``objective`` (:func:`objective_losses`; ``tokens``: the answer-token loss).
    """
    from peft import set_peft_model_state_dict
    from tqdm.auto import tqdm

    set_peft_model_state_dict(model, checkpoint.adapter_weights)
    model.eval()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    saved = {n: p.detach().clone() for n, p in params}
    subtasks = [str(r.get(subtask_field, "")) if r.get(subtask_field) is not None else "" for r in validation]

    inputs = objective_inputs(tokenizer, validation, objective=objective, max_length=max_length)

    def losses():
        return objective_losses(model, tokenizer, inputs=inputs, device=device)

    base = losses()
    base_sub = aggregate(base, subtasks)
    used = [k for k, x in enumerate(base) if x is not None]
    out = {"max_subtask": [], "max_subtask_centred": [], "mean": [], "base_loss": sum(base[k] for k in used) / len(used)}
    bar = tqdm([None] + list(candidates), desc=f"real Adam steps ({checkpoint.name})", disable=not progress,
               unit="sample")
    zero_sub = None
    for messages in bar:  # first a step on a zero gradient (the momentum alone), then one per candidate
        groups = {}
        for n, p in params:
            st = checkpoint.adam[n]
            groups.setdefault((st.beta1, st.beta2, st.eps), []).append((p, st))
        opt = torch.optim.Adam([{"params": [p for p, _ in v], "betas": (b1, b2), "eps": eps}
                                for (b1, b2, eps), v in groups.items()], lr=lr)
        for v in groups.values():
            for p, st in v:  # fresh copies: the saved moments must survive every trial
                opt.state[p] = {"step": torch.tensor(float(st.step)),
                                "exp_avg": st.exp_avg.to(p.device, p.dtype).clone(),
                                "exp_avg_sq": st.exp_avg_sq.to(p.device, p.dtype).clone()}
        if messages is None:
            for _, p in params:
                p.grad = torch.zeros_like(p)
        else:
            chat = tokenize_chat(tokenizer, messages, max_length)
            with torch.enable_grad():
                ids = torch.tensor([chat.input_ids], device=device)
                labels = torch.tensor([chat.labels], device=device)
                logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
                logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
                loss = torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=IGNORE_INDEX)
                model.zero_grad(set_to_none=True)
                loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        after = losses()
        after_sub = aggregate(after, subtasks)
        with torch.no_grad():
            for n, p in params:
                p.copy_(saved[n])
        if messages is None:
            zero_sub = after_sub
            continue
        out["max_subtask"].append(max(base_sub[s] - after_sub[s] for s in base_sub))
        # what z adds to the momentum-only step: the counterfactual the centred estimator predicts
        out["max_subtask_centred"].append(max(zero_sub[s] - after_sub[s] for s in base_sub))
        out["mean"].append(sum(base[k] - after[k] for k in used) / len(used))
    return out
