"""The validation objective (influence_objective): the choice loss over the item's choices, its gradient against
an autograd reference, its first-order ground truth, and the mislabelled-sample check on a tiny target."""

from __future__ import annotations

import random

import pytest
import torch

from test_influence import (DRUGS, USES, _facts, build_scorer, ckpt_lrs, lora_params, make_cfg, ref_model,  # noqa: F401
                            saved_adam, sample_loss, spearman, val_rows, world, write_jsonl, _one_thread)

LET = "ABCD"


def make_mc_validation(n: int, seed: int) -> list[dict]:
    """Multiple-choice items in the shipped layout: an Options block, a step-by-step answer naming the fact and
    the letter, ``choices`` and ``answer``."""
    rng = random.Random(seed)
    facts = _facts()
    out = []
    for i in range(n):
        d = DRUGS[i % len(DRUGS)]
        use = facts[d][0]
        opts = [use] + rng.sample([u for u in USES if u != use], 3)
        rng.shuffle(opts)
        g = opts.index(use)
        q = (f"Which condition is {d} used to treat?\nOptions:\n" + "\n".join(f"({LET[k]}) {o}" for k, o in enumerate(opts))
             + "\nThink step by step, then give the letter of the correct option.")
        a = f"Let's think step by step. {d} is used to treat {use}. This matches option ({LET[g]}). The answer is ({LET[g]})."
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                    "subtask": "indication" if i % 2 == 0 else "indication2", "choices": opts, "answer": LET[g]})
    return out


@pytest.fixture(scope="module")
def mc(world):
    rows = make_mc_validation(8, 5)
    return {"rows": rows, "path": write_jsonl(world["base"] / "validation_mc.jsonl", rows)}


def _objective(model, tok, row, objective):
    """An item's objective value, computed here from its own forward passes (float64, batch size 1)."""
    from rubric_rl.data.chat import tokenize_chat

    value = torch.zeros((), dtype=torch.float64)
    if "tokens" in objective:
        value = value + sample_loss(model, tokenize_chat(tok, row["messages"], 128))
    if "choices" in objective:
        # lm-eval-harness style, written out here: the prompt and the gold answer up to the gold choice's text as
        # the context, each choice's text as a continuation, log p summed over the continuation's tokens
        prompt = tok.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
        gold = LET.index(row["answer"])
        answer = row["messages"][-1]["content"]
        context = prompt + answer[:answer.index(row["choices"][gold])]
        ctx = tok(context.rstrip(" "), add_special_tokens=False)["input_ids"]
        logps = []
        for c in row["choices"]:
            ids = tok(context.rstrip(" ") + " " + c, add_special_tokens=False)["input_ids"]
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
            lp = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
            logps.append(lp[len(ctx) - 1:].sum())
        value = value - torch.log_softmax(torch.stack(logps), 0)[gold]
    return value


def reference_dot(world, samples, val, objective):
    """sum_ckpt lr * max_subtask mean_item <grad objective(item), Adam direction(sample)>, unbatched, float64."""
    from test_influence import ref_grad

    run_dir = world["run_dir"]
    ckpts = sorted((run_dir / "warmup").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    lrs = ckpt_lrs(run_dir)
    groups: dict[str, list[int]] = {}
    for j, r in enumerate(val):
        groups.setdefault(r["subtask"], []).append(j)
    out = torch.zeros(len(samples), dtype=torch.float64)
    for ckpt in ckpts:
        model, tok = ref_model(world, ckpt)
        params = [p for _, p in lora_params(model)]
        m, v, step, b1, b2, eps, _ = saved_adam(ckpt, model)
        gv = []
        for r in val:
            grads = torch.autograd.grad(_objective(model, tok, r, objective), params)
            gv.append(torch.cat([g.reshape(-1) for g in grads]))
        gv = torch.stack(gv)
        rows = []
        for s in samples:
            g = ref_grad(model, tok, s)
            m1, v1 = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            rows.append((m1 / (1 - b1 ** (step + 1))) / (torch.sqrt(v1 / (1 - b2 ** (step + 1))) + eps))
        sims = torch.stack(rows) @ gv.T
        out += lrs[ckpt.name] * torch.stack([sims[:, idx].mean(1) for idx in groups.values()], 1).max(1).values
    return out


def test_answer_variants_and_pairs():
    from rubric_rl.influence.choices import answer_variants
    from rubric_rl.influence.mislabel import mislabelled_pairs

    row = make_mc_validation(1, 0)[0]
    variants, gold = answer_variants(row)
    assert [v[-1]["content"] for v in variants][gold] == row["messages"][-1]["content"]
    for j, v in enumerate(variants):
        assert row["choices"][j] in v[-1]["content"] and f"The answer is ({LET[j]})." in v[-1]["content"]
        assert v[0] == row["messages"][0]  # the question is kept
    (pair,) = mislabelled_pairs([row], seed=3)
    use = row["choices"][LET.index(row["answer"])]
    assert use in pair.right[-1]["content"] and use not in pair.wrong[-1]["content"]
    assert f"({pair.right_letter}) {use}" in pair.right[0]["content"]  # the letter follows the shuffled options
    assert pair.right[0] == pair.wrong[0] and pair.right_letter != pair.wrong_letter
    assert answer_variants({"messages": row["messages"]}) is None  # no choices: not multiple choice


@pytest.mark.parametrize("objective", ["choices", "tokens+choices"])
def test_objective_scores_equal_autograd_reference(world, mc, objective):
    from test_influence import make_samples

    samples = [s["messages"] for s in make_samples(5, 41)] + [mc["rows"][1]["messages"]]
    scorer = build_scorer(world, influence_estimator="dot", influence_direction="adam",
                          influence_objective=objective, influence_validation_data=str(mc["path"]))
    got = torch.tensor([r.value for r in scorer.score(samples)], dtype=torch.float64)
    ref = reference_dot(world, samples, mc["rows"], objective)
    # Not 1e-7 as the token-loss proofs: Llama's RMSNorm computes in float32 even in a float64 model, so every
    # backward is rounded to float32 there; the reference weights the variants before its backward, the engine
    # after, and the choice gradient is a difference of near-equal gradients (measured: 4e-6 relative here; a
    # wrong weight or sign is off by O(1)).
    torch.testing.assert_close(got, ref, rtol=5e-5, atol=1e-12)


def test_tokens_objective_ignores_choices(world, mc):
    """'tokens' is today's objective: the same scores as a validation file without choice fields."""
    flat = [{k: v for k, v in r.items() if k not in ("choices", "answer")} for r in mc["rows"]]
    path = write_jsonl(world["base"] / "validation_mc_flat.jsonl", flat)
    msgs = [r["messages"] for r in mc["rows"][:3]]
    a = [r.value for r in build_scorer(world, influence_estimator="dot", influence_objective="tokens",
                                       influence_validation_data=str(mc["path"])).score(msgs)]
    b = [r.value for r in build_scorer(world, influence_estimator="dot", influence_objective="tokens+choices",
                                       influence_validation_data=str(path)).score(msgs)]
    assert a == pytest.approx(b, rel=1e-12)


def test_first_order_decrease_of_the_objective(world, mc):
    """One real Adam step (check.actual_decreases, torch's optimizer) lowers the objective as `dot` predicts."""
    from test_influence import make_samples

    from rubric_rl.influence.check import actual_decreases
    from rubric_rl.influence.mislabel import mislabelled_pairs
    from rubric_rl.influence.warmup import load_checkpoints, warmup_dir

    pairs = mislabelled_pairs(mc["rows"], seed=1)
    msgs = [s["messages"] for s in make_samples(12, 43)] + [p.right for p in pairs] + [p.wrong for p in pairs]
    dot = {}
    for center in (False, True):
        scorer = build_scorer(world, influence_estimator="dot", influence_checkpoints=["last"],
                              influence_validation_data=str(mc["path"]), influence_center=center)
        dot[center] = [r.value for r in scorer.score(msgs)]
    ckpt = load_checkpoints(warmup_dir(world["run_dir"]), scorer.model, ["last"])[0]
    truth = actual_decreases(scorer.model, scorer.tokenizer, ckpt, msgs, mc["rows"], lr=1e-6, max_length=128,
                             objective="tokens+choices")
    # uncentred: the whole step's decrease; centred: what z adds to the momentum-only step's
    rho = spearman(dot[False], truth["max_subtask"]), spearman(dot[True], truth["max_subtask_centred"])
    assert min(rho) >= 0.95, rho


def test_mislabelled_samples_score_below_their_right_twins(world, mc):
    """The default objective ranks a right answer above a wrong one of the same question and format."""
    from rubric_rl.influence.mislabel import mislabelled_pairs, pair_summary

    pairs = mislabelled_pairs(mc["rows"], seed=2)
    msgs = [p.right for p in pairs] + [p.wrong for p in pairs]
    from rubric_rl.influence import InfluenceConfig

    out = {}
    for objective in ("tokens+choices", "tokens"):
        scorer = build_scorer(world, influence_estimator="dot", influence_objective=objective, influence_center=True,
                              influence_validation_data=str(mc["path"]))
        v = [r.value for r in scorer.score(msgs)]
        out[objective] = pair_summary(v[:len(pairs)], v[len(pairs):])
    defaults = InfluenceConfig()
    assert (defaults.influence_objective, defaults.influence_center, defaults.influence_estimator) == (
        "tokens+choices", True, "dot")  # the defaults this test measures
    # every right answer above its own wrong twin; over all pairs (other items too) well above chance; the token
    # loss alone is near chance on this tiny target
    assert out["tokens+choices"]["paired_wins"] == len(pairs), out
    assert out["tokens+choices"]["auc"] >= 0.8, out
    assert out["tokens"]["auc"] < 0.7, out
