"""The log-likelihood multiple-choice scorer and the answer-token loss (rubric_rl/mcscore.py)."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from rubric_rl.mcscore import (answer_loss, build_mc_item, choose, encode_pair, loglikelihoods,
                               score_multiple_choice)


class Bigram(torch.nn.Module):
    """logits[t] = log P[input_ids[t]]: log p(next | previous) is exactly log P[prev, next]."""

    def __init__(self, probs):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(probs, dtype=torch.float64).log())

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


P = [[0.5, 0.25, 0.25],
     [0.1, 0.6, 0.3],
     [0.2, 0.2, 0.6]]


def test_loglikelihood_hand_computed():
    model = Bigram(P)
    requests = [([0], [1, 2]),        # log P(1|0) + log P(2|1) = log .25 + log .3
                ([0], [2, 2]),        # log .25 + log .6
                ([2, 0, 1], [1]),     # log .6   (longer context, padded batch)
                ([1], [0, 0, 2])]     # log .1 + log .5 + log .25
    expected = [math.log(.25) + math.log(.3), math.log(.25) + math.log(.6), math.log(.6),
                math.log(.1) + math.log(.5) + math.log(.25)]
    for bs in (1, 2, 4):  # batching and right padding change nothing
        got = loglikelihoods(model, requests, batch_size=bs, pad_token_id=0)
        assert got == pytest.approx(expected, abs=1e-12)
    # truncation drops context from the left, never the continuation: ([2, 0, 1], [1]) keeps [1] -> [1]
    assert loglikelihoods(model, [([2, 0, 1], [1])], max_length=2)[0] == pytest.approx(math.log(.6))


def test_choose_acc_vs_acc_norm_hand_case():
    # raw: -3 > -4 picks choice 0; per character: -3/3 = -1.0 < -4/8 = -0.5 picks choice 1
    assert choose([-3.0, -4.0], ["abc", "abcdefgh"]) == (0, 1)
    assert choose([-4.0, -3.0, -9.0], [" x", " y", " z"]) == (1, 1)


def _items(quickstart_dir, n=None):
    rows = [json.loads(x) for x in (quickstart_dir / "test.jsonl").read_text().splitlines() if x.strip()]
    return rows[:n] if n else rows


def test_mc_context_is_the_reasoning_prefix_without_answer_information(tiny_tokenizer, quickstart_dir):
    item = _items(quickstart_dir, 1)[0]  # "By which mechanism does Belmozaline act?" gold (A)
    mc = build_mc_item(tiny_tokenizer, item)
    prompt = tiny_tokenizer.apply_chat_template(item["messages"][:1], tokenize=False, add_generation_prompt=True)
    assert mc.mode == "reasoning_prefix"
    assert mc.context == prompt + "Let's think step by step. Belmozaline works by"
    assert mc.continuations == [" " + c for c in item["choices"]]  # the space moves to the continuation
    assert mc.gold == 0
    prefix = mc.context[len(prompt):]
    assert "(A)" not in prefix and not any(c in prefix for c in item["choices"])
    # a gold answer that names the option before the fact would leak: fall back to the prompt alone
    leaky = dict(item, messages=[item["messages"][0], {"role": "assistant", "content":
                                                       "Option (A): Belmozaline works by activating the KS-8 transporter."}])
    mc2 = build_mc_item(tiny_tokenizer, leaky)
    assert mc2.mode == "prompt" and mc2.context == prompt and mc2.continuations == item["choices"]
    assert build_mc_item(tiny_tokenizer, item, mode="prompt").context == prompt


def test_encode_pair_splits_like_the_harness(tiny_tokenizer):
    ctx, cont = encode_pair(tiny_tokenizer, "Belmozaline works by", " activating the KS-8 transporter")
    whole = tiny_tokenizer("Belmozaline works by activating the KS-8 transporter", add_special_tokens=False)["input_ids"]
    assert ctx + cont == whole and len(cont) > 0
    assert tiny_tokenizer.decode(cont) == " activating the KS-8 transporter"


def _tiny_model(tok, seed=3):
    from rubric_rl.models import TinySpec, build_tiny_model

    return build_tiny_model(TinySpec(hidden=16, layers=2, heads=2, seed=seed), tok, torch.float64).eval()


def test_score_multiple_choice_matches_a_direct_computation(tiny_tokenizer, quickstart_dir):
    items = _items(quickstart_dir, 6)
    model = _tiny_model(tiny_tokenizer)
    res = score_multiple_choice(model, tiny_tokenizer, items, batch_size=5)
    assert res["n"] == 6 and res["modes"] == {"reasoning_prefix": 6}
    n_right = n_right_norm = 0
    for item, got in zip(items, res["items"]):
        mc = build_mc_item(tiny_tokenizer, item)
        scores = []
        for c in mc.continuations:  # one unpadded forward pass per choice, no batching
            ids = tiny_tokenizer(mc.context + c, add_special_tokens=False)["input_ids"]
            n_ctx = len(tiny_tokenizer(mc.context, add_special_tokens=False)["input_ids"])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
            scores.append(sum(float(logp[t - 1, ids[t]]) for t in range(n_ctx, len(ids))))
        assert got["scores"] == pytest.approx(scores, abs=1e-9)
        pick = max(range(4), key=lambda j: scores[j])
        pick_norm = max(range(4), key=lambda j: scores[j] / len(mc.continuations[j]))
        n_right += pick == mc.gold
        n_right_norm += pick_norm == mc.gold
        ntok = len(encode_pair(tiny_tokenizer, mc.context, mc.continuations[mc.gold])[1])
        assert got["gold_nll"] == pytest.approx(-scores[mc.gold] / ntok)
    assert res["acc"] == pytest.approx(n_right / 6) and res["acc_norm"] == pytest.approx(n_right_norm / 6)


def test_answer_loss_equals_the_models_own_loss(tiny_tokenizer, quickstart_dir):
    from rubric_rl.data.chat import tokenize_chat

    items = _items(quickstart_dir, 5)
    model = _tiny_model(tiny_tokenizer)
    res = answer_loss(model, tiny_tokenizer, items, batch_size=2)
    total = count = 0.0
    for it in items:
        chat = tokenize_chat(tiny_tokenizer, it["messages"])
        with torch.no_grad():  # float64 throughout (HF's own loss upcasts to float32 only)
            logp = torch.log_softmax(model(input_ids=torch.tensor([chat.input_ids])).logits[0], -1)
        for t, label in enumerate(chat.labels):
            if label != -100:  # position t is predicted by the logits at t - 1
                total -= float(logp[t - 1, label])
                count += 1
    assert res["tokens"] == count
    assert res["loss"] == pytest.approx(total / count, rel=1e-9)


def test_shared_context_path_matches_the_plain_path(tiny_tokenizer):
    """Choices sharing a context run it once on a KV cache: the same log-likelihoods as full sequences,
    whatever the batching, with mixed group sizes, unshared requests and a truncated pair in the mix."""
    from rubric_rl.mcscore import _supports_kv_cache
    from rubric_rl.models import load_causal_lm

    model = load_causal_lm("tiny:hidden=32,layers=2,heads=4,seed=3", tiny_tokenizer).eval()
    assert _supports_kv_cache(model) and not _supports_kv_cache(Bigram(P))
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(5, 200, (n,), generator=g).tolist()

    c1, c2, c3 = ids(9), ids(4), ids(13)
    requests = [(c1, ids(3)), (c1, ids(1)), (c1, ids(5)), (c1, ids(2)),   # 4 choices of one item
                (c2, ids(2)), (c2, ids(6)),                             # 2 choices, a shorter context
                (c3, ids(3)),                                           # a lone request: plain path
                (c3 + [7], ids(2)), (c3 + [7], ids(2))]                 # a longer context
    plain = loglikelihoods(model, requests, batch_size=32, share_context=False)
    for bs in (1, 2, 32):
        shared = loglikelihoods(model, requests, batch_size=bs)
        assert shared == pytest.approx(plain, abs=1e-4)
    # max_length=12: c1 + its 5-token choice (14) and both c3 contexts are truncated: those pairs take the
    # plain path, the rest of c1's choices still share their context
    trunc_plain = loglikelihoods(model, requests, max_length=12, share_context=False)
    assert loglikelihoods(model, requests, max_length=12) == pytest.approx(trunc_plain, abs=1e-4)
    assert trunc_plain != pytest.approx(plain, abs=1e-4)  # truncation did change something: the case is live
