"""The validation set's multiple-choice objective: what a right answer helps and a wrong one hurts.

A validation item in the multiple-choice layout (:func:`rubric_rl.mcscore.is_mc_item`: ``choices`` and the
``answer`` letter) has K continuations, scored as the held-out evaluation scores it
(:func:`rubric_rl.mcscore.build_mc_item`, ``reasoning_prefix``): the context is the prompt and the gold answer up
to the gold choice's text ("Let's think step by step. Belmozaline is used to treat"), continuation j is choice
j's text. Its choice loss is

    L_choice(v) = -log softmax_j( log p(choice_j | context) )[gold]

(log-likelihood multiple-choice scoring, as the lm-evaluation-harness scores such items). Its gradient is

    grad L_choice = sum_j (q_j - [j = gold]) grad log p(choice_j | context)      (q = softmax of the log p's)

a combination whose weights sum to zero, over continuations that share their context: what they share (the
prompt, the reasoning prefix, the answer's format) cancels exactly, and what is left is the content, the fact
that tells the gold answer from the others. The token loss (the mean cross-entropy of the gold answer's tokens)
is dominated by the format; the choice loss is blind to it. ``influence_objective: tokens+choices`` (the default)
scores against the gradient of their sum, so that the reward pays both the format the task needs and the truth of
the answer.

:func:`choice_chats` builds the K continuations as tokenised chats (loss on the choice's tokens only);
:func:`choice_gradient` computes grad L_choice with the per-sample gradient engine from one batch of them, whose
per-row gradients of the mean token loss (g_j = -grad log p(choice_j) / n_j over n_j tokens) combine as
``sum_j ([j = gold] - q_j) n_j g_j``. :func:`answer_variants` (the gold answer rewritten for each option, letters
included) builds the mislabelled-sample check's twins (:mod:`.mislabel`); as an objective it failed (a shuffled
right twin shares its letter with a wrong variant; ``notes/content_signal.md``).
"""

from __future__ import annotations

import random
import re

import torch

LETTERS = "ABCDEFGHIJ"
OPTION_LINE = re.compile(r"^\(([A-J])\)\s*(.*?)\s*$")


def swap_letters(text: str, mapping: dict[str, str]) -> str:
    return re.sub(r"\(([A-J])\)", lambda m: f"({mapping.get(m.group(1), m.group(1))})", text)


def answer_variants(item: dict, *, rng: random.Random | None = None) -> tuple[list[list[dict]], int] | None:
    """The item with one assistant answer per option: the gold answer's text with the gold option's text and
    letter replaced by option j's (j = 0..K-1), and the gold index. ``rng`` shuffles the options first (the
    mislabelled-sample check does); None keeps the item's own order. None if the item is not multiple choice
    in this layout (``choices``, ``answer`` letter, an ``Options:`` block of ``(A) ...`` lines)."""
    choices, gold = item.get("choices"), item.get("answer")
    msgs = item.get("messages") or []
    if not choices or gold not in LETTERS[:len(choices)] or len(msgs) < 2:
        return None
    user, answer = msgs[-2]["content"], msgs[-1]["content"]
    g = LETTERS.index(gold)
    lines = user.split("\n")
    opt_lines = [i for i, line in enumerate(lines) if OPTION_LINE.match(line)]
    if len(opt_lines) != len(choices):
        return None
    order = list(range(len(choices)))
    if rng is not None:
        rng.shuffle(order)  # new position j holds old option order[j]
    new_lines = list(lines)
    for j, i in enumerate(opt_lines):
        new_lines[i] = f"({LETTERS[j]}) {choices[order[j]]}"
    question = "\n".join(new_lines)
    head = [dict(m) for m in msgs[:-2]]
    gold_text = choices[g]
    variants = []
    for j, old in enumerate(order):
        text = answer.replace(gold_text, choices[old]) if gold_text in answer else answer
        text = swap_letters(text, {gold: LETTERS[j]})
        variants.append(head + [{"role": "user", "content": question}, {"role": "assistant", "content": text}])
    return variants, order.index(g)


def choice_chats(tokenizer, item: dict, max_length: int | None = None, mode: str = "reasoning_prefix"):
    """The item's K scored continuations as tokenised chats (``input_ids`` = context + choice, loss on the
    choice's tokens only) and the gold index, or None if the item is not multiple choice
    (:func:`rubric_rl.mcscore.is_mc_item`) or a sequence exceeds ``max_length``.

    The context and continuations are the held-out scorer's (:func:`rubric_rl.mcscore.build_mc_item`,
    ``reasoning_prefix``: the prompt and the gold answer up to the gold choice's text; each choice's text is a
    continuation), so the objective is the one the evaluation's accuracy and gold-choice NLL measure."""
    from ..data.chat import IGNORE_INDEX, TokenizedChat
    from ..mcscore import build_mc_item, encode_pair, is_mc_item

    if not is_mc_item(item):
        return None
    mc = build_mc_item(tokenizer, item, mode)
    chats = []
    for cont in mc.continuations:
        ctx, tail = encode_pair(tokenizer, mc.context, cont)
        if max_length is not None and len(ctx) + len(tail) > max_length:
            return None
        chats.append(TokenizedChat(input_ids=ctx + tail, labels=[IGNORE_INDEX] * len(ctx) + tail, truncated=False))
    return chats, mc.gold


def choice_gradient(engine, chats, gold: int, direction) -> tuple[torch.Tensor, bool]:
    """grad L_choice of one item from its K tokenised answer variants (``chats``; see the module docstring) as
    a [1, D] row of ``engine``'s features (projected if the engine projects), and whether it is finite.
    ``direction`` must be the plain gradient (linear), so that the rows may be combined."""
    out = engine.features(chats, direction)
    n = torch.tensor([c.num_loss_tokens for c in chats], dtype=out.features.dtype, device=out.features.device)
    logp = -out.losses.to(n.dtype) * n  # log p(answer_j): minus the summed token cross-entropy
    w = -torch.softmax(logp, 0)
    w[gold] += 1
    row = ((w * n).unsqueeze(1) * out.features).sum(0, keepdim=True)
    return row, bool(out.finite.all()) and bool(torch.isfinite(row).all())


def choice_losses(logps: torch.Tensor, gold: int) -> torch.Tensor:
    """L_choice from the variants' log-likelihoods [K]."""
    return -torch.log_softmax(logps, 0)[gold]
