"""Held-out scoring of a target: answer loss, and multiple-choice acc / acc_norm (:mod:`rubric_rl.mcscore`); with
``eval_lm_eval_tasks``, lm-evaluation-harness tasks too (:mod:`rubric_rl.evaluate.harness`)."""

from __future__ import annotations

from ..configs.evaluate import EvalConfig
from .harness import harness_metrics


def heldout_metrics(model, tokenizer, test_items: list[dict], cfg: EvalConfig) -> dict:
    from ..mcscore import answer_loss, is_mc_item, score_multiple_choice

    loss = answer_loss(model, tokenizer, test_items, batch_size=cfg.eval_score_batch_size,
                       max_length=cfg.eval_max_length)
    out = {"loss": loss["loss"], "item_mean_loss": loss["item_mean_loss"], "answer_tokens": loss["tokens"]}
    mc_items = [it for it in test_items if is_mc_item(it)]
    if mc_items:
        mc = score_multiple_choice(model, tokenizer, mc_items, mode=cfg.eval_mc_context,
                                   batch_size=cfg.eval_score_batch_size, max_length=cfg.eval_max_length)
        out.update(acc=mc["acc"], acc_norm=mc["acc_norm"], gold_choice_nll=mc["gold_nll"], mc_items=mc["n"],
                   mc_context_modes=mc["modes"],
                   per_subtask=mc["per_subtask"])
    else:
        out.update(acc=None, acc_norm=None, gold_choice_nll=None, mc_items=0)
    out.update(harness_metrics(model, tokenizer, cfg))
    return out
