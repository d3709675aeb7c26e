"""Held-out scoring of a causal LM on chat items: answer-token loss, and multiple-choice accuracy by
answer log-likelihood, as lm-eval-harness does it.

Multiple choice (lm-eval-harness ``output_type: multiple_choice``): every choice is a continuation of
one shared context; its score is ``sum_t log p(continuation_t | context, continuation_<t)``. ``acc`` is
1 when the gold choice has the highest score; ``acc_norm`` divides each score by the continuation's
length in characters first (the harness's ``acc_norm``), which removes the bias toward short choices.
Tokenisation follows the harness: trailing spaces of the context move to the continuation, the pair
is encoded whole and the continuation tokens are the ones after the context's.

Context and continuations of a chat item (``messages`` = user question with ``(A) ...`` option lines
and the instruction, then the gold assistant answer; ``choices``; ``answer`` letter) -- mode
``reasoning_prefix`` (default):

* continuation = each choice's *text* (``activating the KS-8 transporter``), not its letter;
* context = the chat prompt (the user turn and the assistant header, as the model sees it at inference)
  followed by the gold answer up to the first occurrence of the gold choice text
  (``Let's think step by step. Belmozaline works by``).

Why: the gold answer is a reasoning chain whose *letter* part ("This matches option (A). The answer is
(A).") comes after the fact, so a context up to "The answer is (" would hand the letter to the model,
and a bare "The answer is (" with no reasoning asks a model trained to reason for a token it never
writes in that position. The reasoning prefix *before* the fact carries no answer information (checked:
it must contain neither a choice text nor an option marker like ``(B)``; otherwise, or when the gold
choice is not in the answer, the item falls back to ``prompt`` mode) and puts the model exactly where
it has to recall the fact. Choice texts differ in length, so ``acc_norm`` is informative. Mode
``prompt``: context = the chat prompt alone, continuation = each choice text (the harness's ARC style).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from .configs.evaluate import MC_CONTEXT_MODES
from .data.chat import IGNORE_INDEX, tokenize_chat
_OPTION_MARKER = re.compile(r"\([A-Z]\)")


@dataclass
class MCItem:
    """One multiple-choice item ready to score: the context text and one continuation per choice."""

    context: str
    continuations: list[str]
    gold: int
    mode: str  # the context mode actually used (after any fallback)
    meta: dict = field(default_factory=dict)


def _letters_index(item: dict) -> int:
    answer = item.get("answer")
    choices = item["choices"]
    if isinstance(answer, int) and not isinstance(answer, bool):
        idx = answer
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha():
        idx = ord(answer.strip().upper()) - ord("A")
    elif isinstance(answer, str) and answer in choices:
        idx = choices.index(answer)
    else:
        raise ValueError(f"answer must be a letter, an index or a choice text, got {answer!r}")
    if not 0 <= idx < len(choices):
        raise ValueError(f"answer {answer!r} is out of range for {len(choices)} choices")
    return idx


def is_mc_item(item: dict) -> bool:
    return isinstance(item.get("choices"), list) and len(item["choices"]) >= 2 and item.get("answer") is not None


def build_mc_item(tokenizer, item: dict, mode: str = "reasoning_prefix") -> MCItem:
    """The context and continuations of one chat item (see the module docstring)."""
    if mode not in MC_CONTEXT_MODES:
        raise ValueError(f"mc context mode must be one of {MC_CONTEXT_MODES}, got {mode!r}")
    messages = item["messages"]
    choices = [str(c) for c in item["choices"]]
    gold = _letters_index(item)
    last_assistant = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    prompt_messages = messages[:last_assistant] if last_assistant is not None else messages
    prompt = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    used, prefix = "prompt", ""
    if mode == "reasoning_prefix" and last_assistant is not None:
        answer = messages[last_assistant]["content"]
        pos = answer.find(choices[gold])
        if pos >= 0:
            candidate = answer[:pos]
            leaks = _OPTION_MARKER.search(candidate) or any(c and c in candidate for c in choices)
            if not leaks:
                used, prefix = "reasoning_prefix", candidate
    context = prompt + prefix
    # lm-eval-harness: trailing spaces of the context belong to the continuation (" activating", as a
    # byte-level BPE tokenises running text). The chat template's own newline stays in the context.
    stripped = context.rstrip(" \t")
    space = context[len(stripped):]
    return MCItem(stripped, [space + c for c in choices], gold, used,
                  meta={"choices": choices, "subtask": item.get("subtask")})


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval-harness splits them: the pair encoded whole, the
    continuation being what follows the context's own encoding."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    if not cont:  # a merge swallowed the boundary: fall back to encoding the continuation alone
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        whole = ctx + cont
    return whole[:len(whole) - len(cont)], cont


def pad_batch(seqs: list[list[int]], pad_id: int, device, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of ``seqs`` padded to one width, on the right (or on the ``left``)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, span] = torch.tensor(s, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are scored in float32; float32/float64 ones as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _cache_kwarg(model) -> str:
    """transformers >= 5.24 names the forward's KV-cache argument ``cache``; earlier ones ``past_key_values``."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _supports_kv_cache(model) -> bool:
    """A transformers causal LM (or a PEFT wrapper of one): forward takes ``past_key_values``."""
    config = getattr(model, "config", None)
    return config is not None and hasattr(model, "get_input_embeddings") and not getattr(
        config, "is_encoder_decoder", False)


@torch.no_grad()
def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], *, batch_size: int = 32,
                   pad_token_id: int = 0, max_length: int | None = None, share_context: bool = True) -> list[float]:
    """``sum_t log p(cont_t | ctx, cont_<t)`` for each (context ids, continuation ids) pair.

    Sequences are right-padded (position ids stay those of an unpadded sequence); a pair longer than
    ``max_length`` loses tokens from the left of its context, never from its continuation.

    With ``share_context`` (and a transformers model), requests that share one context -- the choices of a
    multiple-choice item -- run the context once and its continuations on its KV cache: the same numbers
    (to float rounding) for about a quarter of the compute with four choices. Pairs that need truncation
    take the plain path.
    """
    for i, (_, cont) in enumerate(requests):
        if not cont:
            raise ValueError(f"request {i} has an empty continuation")
    out = [0.0] * len(requests)
    rest = list(range(len(requests)))
    if share_context and _supports_kv_cache(model):
        groups: dict[tuple, list[int]] = {}
        for i, (ctx, cont) in enumerate(requests):
            if ctx and (max_length is None or len(ctx) + len(cont) <= max_length):
                groups.setdefault(tuple(ctx), []).append(i)
        shared = [(list(ctx), idx) for ctx, idx in groups.items() if len(idx) > 1]
        if shared:
            done = set()
            for ctx, idx in shared:
                done.update(idx)
            _shared_context_loglikelihoods(model, requests, shared, out, batch_size=batch_size,
                                           pad_token_id=pad_token_id)
            rest = [i for i in rest if i not in done]
    if rest:
        _plain_loglikelihoods(model, requests, rest, out, batch_size=batch_size, pad_token_id=pad_token_id,
                              max_length=max_length)
    return out


def _plain_loglikelihoods(model, requests, which: list[int], out: list[float], *, batch_size: int,
                          pad_token_id: int, max_length: int | None) -> None:
    device = next(model.parameters()).device
    order = sorted(which, key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        seqs, spans = [], []
        for i in idx:
            ctx, cont = requests[i]
            seq = list(ctx) + list(cont)
            if max_length is not None and len(seq) > max_length:
                seq = seq[len(seq) - max_length:]
            if len(seq) < len(cont) + 1:
                raise ValueError(f"request {i}: continuation of {len(cont)} tokens leaves no context within "
                                 f"max_length={max_length}")
            seqs.append(seq)
            spans.append((len(seq) - len(cont), len(seq)))
        ids, mask = pad_batch(seqs, pad_token_id, device)
        logits = _upcast(model(input_ids=ids, attention_mask=mask).logits)
        logp = torch.log_softmax(logits, dim=-1)
        for row, (i, (a, b)) in enumerate(zip(idx, spans)):
            targets = ids[row, a:b]
            # logits at position t predict token t + 1
            out[i] = float(logp[row, a - 1:b - 1].gather(1, targets[:, None]).sum())


def _shared_context_loglikelihoods(model, requests, groups: list[tuple[list[int], list[int]]], out: list[float], *,
                                   batch_size: int, pad_token_id: int) -> None:
    """Contexts left-padded and run once with ``use_cache``; the cache rows repeated per continuation; the
    continuations right-padded and run on it (position ids continue each context's own)."""
    device = next(model.parameters()).device
    cache_kwarg = _cache_kwarg(model)
    groups = sorted(groups, key=lambda g: -len(g[0]))
    for start in range(0, len(groups), batch_size):
        batch = groups[start:start + batch_size]
        ids, mask = pad_batch([ctx for ctx, _ in batch], pad_token_id, device, left=True)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        res = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        first_logp = torch.log_softmax(_upcast(res.logits[:, -1]), dim=-1)  # predicts each continuation's 1st token
        rows = [(r, i) for r, (_, idx) in enumerate(batch) for i in idx]
        rep = torch.tensor([r for r, _ in rows], dtype=torch.long, device=device)
        cache = getattr(res, "cache", None) or res.past_key_values
        cache.reorder_cache(rep)
        conts = [list(requests[i][1]) for _, i in rows]
        cids, cmask = pad_batch(conts, pad_token_id, device)
        cpos = mask.sum(-1)[rep][:, None] + torch.arange(cids.shape[1], device=device)[None, :]
        logits = model(input_ids=cids, attention_mask=torch.cat([mask[rep], cmask], dim=1), position_ids=cpos,
                       use_cache=True, **{cache_kwarg: cache}).logits
        logp = torch.log_softmax(_upcast(logits), dim=-1)
        for k, ((r, i), c) in enumerate(zip(rows, conts)):
            total = first_logp[r, c[0]]
            if len(c) > 1:
                total = total + logp[k, :len(c) - 1].gather(1, cids[k, 1:len(c), None]).sum()
            out[i] = float(total)


def choose(scores: list[float], continuations: list[str]) -> tuple[int, int]:
    """(argmax of the raw scores, argmax of the scores per character) -- acc and acc_norm picks."""
    pick = max(range(len(scores)), key=lambda j: scores[j])
    norm = [s / max(len(c), 1) for s, c in zip(scores, continuations)]
    pick_norm = max(range(len(scores)), key=lambda j: norm[j])
    return pick, pick_norm


def score_multiple_choice(model, tokenizer, items: list[dict], *, mode: str = "reasoning_prefix",
                          batch_size: int = 32, max_length: int | None = None) -> dict:
    """acc / acc_norm of ``model`` on the multiple-choice chat ``items`` (see the module docstring).

    Returns ``{"acc", "acc_norm", "gold_nll" (mean NLL per token of the gold choice text given the context: how
    well the model recalls the answer, apart from the answer's format), "n", "modes": {mode: count}, "per_subtask": {s: {"acc", "acc_norm", "n"}},
    "items": [{"scores", "pick", "pick_norm", "gold"}]}``.
    """
    mc = [build_mc_item(tokenizer, it, mode) for it in items]
    requests = []
    for m in mc:
        for c in m.continuations:
            requests.append(encode_pair(tokenizer, m.context, c))
    lls = loglikelihoods(model, requests, batch_size=batch_size, pad_token_id=tokenizer.pad_token_id or 0,
                         max_length=max_length)
    per_item, modes, subtasks = [], {}, {}
    pos = 0
    for m in mc:
        scores = lls[pos:pos + len(m.continuations)]
        gold_tokens = len(requests[pos + m.gold][1])
        pos += len(m.continuations)
        pick, pick_norm = choose(scores, m.continuations)
        per_item.append({"scores": scores, "pick": pick, "pick_norm": pick_norm, "gold": m.gold,
                         "gold_nll": -scores[m.gold] / gold_tokens})
        modes[m.mode] = modes.get(m.mode, 0) + 1
        s = subtasks.setdefault(str(m.meta.get("subtask")), {"acc": 0.0, "acc_norm": 0.0, "n": 0})
        s["acc"] += pick == m.gold
        s["acc_norm"] += pick_norm == m.gold
        s["n"] += 1
    for s in subtasks.values():
        s["acc"] /= s["n"]
        s["acc_norm"] /= s["n"]
    n = len(mc)
    return {
        "acc": sum(p["pick"] == p["gold"] for p in per_item) / n if n else math.nan,
        "acc_norm": sum(p["pick_norm"] == p["gold"] for p in per_item) / n if n else math.nan,
        "gold_nll": sum(p["gold_nll"] for p in per_item) / n if n else math.nan,
        "n": n, "modes": modes, "per_subtask": dict(sorted(subtasks.items())), "items": per_item,
    }


@torch.no_grad()
def answer_loss(model, tokenizer, items: list[dict], *, batch_size: int = 32, max_length: int | None = None) -> dict:
    """Mean negative log-likelihood per assistant token over ``items`` (chat ``messages``), token-weighted
    (sum of NLL / number of assistant tokens), plus the per-item mean for reference."""
    device = next(model.parameters()).device
    chats = [tokenize_chat(tokenizer, it["messages"], max_length) for it in items]
    total, count, per_item = 0.0, 0, [math.nan] * len(chats)
    order = sorted(range(len(chats)), key=lambda i: -len(chats[i].input_ids))
    pad = tokenizer.pad_token_id or 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad_batch([chats[i].input_ids for i in idx], pad, device)
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, i in enumerate(idx):
            labels[row, :len(chats[i].labels)] = torch.tensor(chats[i].labels, dtype=torch.long)
        logits = _upcast(model(input_ids=ids, attention_mask=mask).logits)
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(shift_logits.transpose(1, 2), shift_labels,
                                                ignore_index=IGNORE_INDEX, reduction="none")
        valid = shift_labels != IGNORE_INDEX
        for row, i in enumerate(idx):
            n = int(valid[row].sum())
            if n:
                s = float(nll[row][valid[row]].sum())
                total += s
                count += n
                per_item[i] = s / n
    finite = [x for x in per_item if not math.isnan(x)]
    return {"loss": total / count if count else math.nan, "tokens": count,
            "item_mean_loss": sum(finite) / len(finite) if finite else math.nan, "per_item": per_item}
