#!/usr/bin/env python
"""What hides the content signal? Per-item gradient products on a real target, many aggregations at once.

For the config's target and warm-up (reused from RUN_DIR/warmup or made there), this computes, at every
warm-up checkpoint, the products of each candidate's update direction (Adam and plain gradient) with each
validation item's own gradient, and from those products the scores of many estimator variants without
rerunning the model:

* **mislabelled pairs** (`rubric_rl.influence.mislabel`): every validation item restated with its options
  shuffled, once with the right answer and once with a wrong option's fact and letter (same question, same
  step-by-step format), and the same for test items (facts outside the validation set);
* **calibration datasets**: the 64-sample datasets of `configs/calibrate_smollm2.yaml`'s sources (template
  teacher, seed 0, regenerated here), whose held-out gains were measured by `rubric-rl calibrate`
  (`--gains`, a calibration.json). The regenerated datasets are checked against it: the current default's
  mean influence must reproduce the stored one.

Prints, per variant: AUC right > wrong (restated / outside), paired wins, and the calibration Pearson r.
Writes OUTPUT/content_signal.json. Research tool behind notes/content_signal.md.

    python scripts/content_signal.py --config configs/calibrate_smollm2.yaml --run_dir runs/smollm2_check \
        --output runs/content_signal
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

CONTRAST_NEIGHBOURS = 2  # other items of the subtask whose contexts make the contrast

CAL_SOURCES = {"seed": "data/quickstart/seed_rubrics.json", "none": "none",
               "mc_stepwise": "data/calibration/mc_stepwise.json", "mc_letter": "data/calibration/mc_letter.json",
               "open_stepwise": "data/calibration/open_stepwise.json",
               "open_concise": "data/calibration/open_concise.json",
               "true_false": "data/calibration/true_false.json", "cloze": "data/calibration/cloze.json"}


def calibration_datasets(config: str, seed: int = 0) -> dict[str, list[dict]]:
    from rubric_rl.config import parse_config
    from rubric_rl.configs.evaluate import EvalConfig
    from rubric_rl.configs.influence import InfluenceConfig
    from rubric_rl.configs.teacher import TeacherConfig
    from rubric_rl.data.documents import load_documents
    from rubric_rl.evaluate.synthesis import resolve_source, synthesize_dataset
    from rubric_rl.synth.decontam import load_eval_items
    from rubric_rl.synth.engine import SampleSynthesizer
    from rubric_rl.synth.verifiers import default_verifiers
    from rubric_rl.teachers.factory import build_teacher

    ecfg, tcfg, _ = parse_config((EvalConfig, TeacherConfig, InfluenceConfig), ["--config", config])
    docs = [d for d in load_documents(ecfg.eval_documents, text_field=ecfg.eval_document_text_field) if d["text"].strip()]
    teacher = build_teacher(tcfg, documents=[d["text"] for d in docs], device=torch.device("cpu"))
    items = load_eval_items([ecfg.eval_test_data]) if ecfg.eval_decontaminate else None
    out = {}
    for name, spec in CAL_SOURCES.items():
        synth = SampleSynthesizer(teacher, default_verifiers(eval_items=items),
                                  max_document_chars=tcfg.teacher_max_document_chars)
        samples, _ = synthesize_dataset(resolve_source(name, spec), docs, synth, num_samples=ecfg.eval_num_samples,
                                        max_items=math.ceil(ecfg.eval_max_queries_per_sample * ecfg.eval_num_samples),
                                        seed=seed)
        out[name] = [s["messages"] for s in samples]
    return out


def products(scorer, samples: list[list[dict]], val_rows: list[dict]) -> dict:
    """Per checkpoint: Adam and SGD directions of ``samples`` times each validation item's gradient, and norms."""
    from rubric_rl.influence.grads import Direction

    chats_val = [scorer._tokenize(r["messages"], scorer.cfg.influence_max_length)[0] for r in val_rows]
    chats = [scorer._tokenize(m, scorer.cfg.influence_max_length)[0] for m in samples]
    out = []
    sgd = Direction("sgd")
    bs = scorer.cfg.influence_batch_size
    with scorer._grad_context():
        for i, ck in enumerate(scorer.checkpoints):
            scorer._use_checkpoint(i)
            g_val = torch.cat([scorer.engine.features(chats_val[k:k + bs], sgd).features
                               for k in range(0, len(chats_val), bs)])
            adam = scorer._directions[i]
            zero = torch.cat([adam._step(e.name, torch.zeros(1, e.numel, dtype=scorer.dtype))[0]
                              for e in scorer.engine.entries])
            rows = {"A_G": [], "S_G": [], "nA": [], "nS": [], "A_Z": []}
            t0 = time.perf_counter()
            for k in range(0, len(chats), bs):
                batch = chats[k:k + bs]
                a = scorer.engine.features(batch, adam).features
                s = scorer.engine.features(batch, sgd).features
                rows["A_G"].append(a @ g_val.T)
                rows["S_G"].append(s @ g_val.T)
                rows["nA"].append(a.norm(dim=1))
                rows["nS"].append(s.norm(dim=1))
                rows["A_Z"].append(a @ zero)
                print(f"  {ck.name}: {min(k + bs, len(chats))}/{len(chats)} samples ({time.perf_counter() - t0:.0f} s)",
                      end="\r", flush=True)
            print()
            entry = {k: torch.cat(v).tolist() for k, v in rows.items()}
            entry.update(lr=ck.learning_rate, G_G=(g_val @ g_val.T).tolist(), Z_G=(zero @ g_val.T).tolist(),
                         nZ=float(zero.norm()), name=ck.name)
            out.append(entry)
    return out


def contrast_chats(tokenizer, val_rows: list[dict], i: int, max_length: int, field: str = "subtask"):
    """Item i's choices continued from the *other* items of its subtask: each neighbour k's context (its
    question, its reasoning prefix: "... Ritenlol is used to treat") with its options block replaced by item
    i's. [(chats, k)] per usable neighbour: what the target says of these options for another subject of the
    same relation."""
    from rubric_rl.data.chat import IGNORE_INDEX, TokenizedChat
    from rubric_rl.influence.choices import OPTION_LINE
    from rubric_rl.mcscore import build_mc_item, encode_pair, is_mc_item

    def options_block(item):
        lines = [ln for ln in item["messages"][-2]["content"].split("\n") if OPTION_LINE.match(ln)]
        return "\n".join(lines)

    me = val_rows[i]
    mine = build_mc_item(tokenizer, me)
    block_i = options_block(me)
    out = []
    same = [k for k, other in enumerate(val_rows) if other.get(field) == me.get(field)]
    pos = same.index(i)
    for k in same[pos + 1:] + same[:pos]:  # the next items of the subtask, cyclically
        other = val_rows[k]
        if len(out) == CONTRAST_NEIGHBOURS:
            break
        if not is_mc_item(other):
            continue
        mc = build_mc_item(tokenizer, other)
        block_k = options_block(other)
        if mc.mode != "reasoning_prefix" or not block_k or block_k not in mc.context:
            continue
        ctx = mc.context.replace(block_k, block_i)
        prefix = ctx[ctx.rfind(block_i) + len(block_i):]
        if any(c in prefix for c in me["choices"]):
            continue
        chats = []
        for cont in mine.continuations:
            c_ids, tail = encode_pair(tokenizer, ctx, cont)
            if len(c_ids) + len(tail) > max_length:
                chats = None
                break
            chats.append(TokenizedChat(input_ids=c_ids + tail, labels=[IGNORE_INDEX] * len(c_ids) + tail,
                                       truncated=False))
        if chats:
            out.append((chats, k))
    return out


def contrast_gradient(engine, own, gold: int, neighbours, direction):
    """grad of L = -log softmax_j(s_j - mean_k s_kj)[gold], s_j = log p(choice_j | own context), s_kj the same
    choice after neighbour k's context: the choice loss beyond what the relation's other subjects get."""
    out = engine.features(own, direction)
    n = torch.tensor([c.num_loss_tokens for c in own], dtype=out.features.dtype, device=out.features.device)
    s = -out.losses.to(n.dtype) * n
    grads_own = n.unsqueeze(1) * out.features  # = -grad s_j
    null_s = torch.zeros_like(s)
    null_g = torch.zeros_like(grads_own)
    if neighbours:  # all neighbours' continuations in one batch: [M * K] rows, neighbour-major
        flat = [c for chats, _ in neighbours for c in chats]
        o = engine.features(flat, direction)
        nk = torch.tensor([c.num_loss_tokens for c in flat], dtype=n.dtype, device=n.device)
        m = len(neighbours)
        null_s = (-o.losses.to(n.dtype) * nk).view(m, -1).mean(0)
        null_g = (nk.unsqueeze(1) * o.features).view(m, len(own), -1).mean(0)
    w = -torch.softmax(s - null_s, 0)
    w[gold] += 1
    row = (w.unsqueeze(1) * (grads_own - null_g)).sum(0, keepdim=True)
    return row


def choice_products(scorer, samples: list[list[dict]], val_rows: list[dict]) -> list[dict]:
    """Per checkpoint: Adam directions of ``samples`` times each validation item's gradient of the choice
    loss (rubric_rl.influence.choices: -log softmax over the item's choices of the gold one, the held-out
    scorer's context and continuations)."""
    from rubric_rl.influence.choices import choice_chats, choice_gradient
    from rubric_rl.influence.grads import Direction

    ml = scorer.cfg.influence_max_length
    sgd = Direction("sgd")
    bs = scorer.cfg.influence_batch_size
    chats = [scorer._tokenize(m, ml)[0] for m in samples]
    items = [choice_chats(scorer.tokenizer, r, ml) for r in val_rows]
    contrast = [contrast_chats(scorer.tokenizer, val_rows, v, ml) for v in range(len(val_rows))]
    print(f"contrast neighbours per item: {sorted(set(len(c) for c in contrast))}", flush=True)
    out = []
    with scorer._grad_context():
        for i, ck in enumerate(scorer.checkpoints):
            scorer._use_checkpoint(i)
            C = torch.cat([choice_gradient(scorer.engine, c, g, sgd)[0] for c, g in items])
            t0 = time.perf_counter()
            K = torch.cat([contrast_gradient(scorer.engine, c, g, contrast[v], sgd) for v, (c, g) in enumerate(items)])
            print(f"  {ck.name}: contrast gradients in {time.perf_counter() - t0:.0f} s", flush=True)
            adam = scorer._directions[i]
            zero = torch.cat([adam._step(e.name, torch.zeros(1, e.numel, dtype=scorer.dtype))[0]
                              for e in scorer.engine.entries])
            A_C, A_K = [], []
            t0 = time.perf_counter()
            for k in range(0, len(chats), bs):
                f = scorer.engine.features(chats[k:k + bs], adam).features
                A_C.append(f @ C.T)
                A_K.append(f @ K.T)
                print(f"  {ck.name}: {min(k + bs, len(chats))}/{len(chats)} samples ({time.perf_counter() - t0:.0f} s)",
                      end="\r", flush=True)
            print()
            out.append({"name": ck.name, "A_C": torch.cat(A_C).tolist(), "C_C": (C @ C.T).tolist(),
                        "Z_C": (zero @ C.T).tolist(), "A_K": torch.cat(A_K).tolist(), "Z_K": (zero @ K.T).tolist(),
                        "K_K": (K @ K.T).tolist()})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/calibrate_smollm2.yaml")
    p.add_argument("--run_dir", default="runs/smollm2_check")
    p.add_argument("--output", default="runs/content_signal")
    p.add_argument("--gains", default="reports/proof/calibration_smollm2/calibration.json")
    p.add_argument("--test_pairs", type=int, default=36, help="Test items made into outside pairs.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--choices", action="store_true",
                   help="Products with the multiple-choice objective's validation gradients instead "
                        "(content_signal_choices.json).")
    p.add_argument("--pilot", action="store_true",
                   help="Restated pairs only, token and choice products in one run (content_signal_pilot*.json).")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from rubric_rl.config import RunDirArguments, parse_config
    from rubric_rl.configs.influence import InfluenceConfig
    from rubric_rl.data.documents import load_chat_samples
    from rubric_rl.influence import InfluenceScorer
    from rubric_rl.influence.mislabel import mislabelled_pairs
    from rubric_rl.provenance import provenance

    _, cfg = parse_config((RunDirArguments, InfluenceConfig), ["--config", a.config, "--output_dir", a.run_dir],
                          shared_config=True)
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    val_rows = load_chat_samples(cfg.influence_validation_data)
    test_rows = load_chat_samples("data/quickstart/test.jsonl")[:a.test_pairs]
    restated = mislabelled_pairs(val_rows, seed=0)
    outside = mislabelled_pairs(test_rows, seed=0)
    groups = {"restated_right": [p.right for p in restated], "restated_wrong": [p.wrong for p in restated]}
    if not a.pilot:
        cal = calibration_datasets(a.config)
        groups.update({"outside_right": [p.right for p in outside], "outside_wrong": [p.wrong for p in outside],
                       **{f"cal_{k}": v for k, v in cal.items()}})
    flat, spans = [], {}
    for k, v in groups.items():
        spans[k] = (len(flat), len(flat) + len(v))
        flat.extend(v)
    print(f"{len(flat)} samples: " + ", ".join(f"{k} {b - a_}" for k, (a_, b) in spans.items()), flush=True)
    t0 = time.perf_counter()
    scorer = InfluenceScorer.from_config(cfg, a.run_dir, progress=True)
    print(f"scorer built in {time.perf_counter() - t0:.0f} s; {scorer.engine.num_params:,} parameters", flush=True)
    t0 = time.perf_counter()
    if a.pilot:
        for name, fn in (("content_signal_pilot.json", products), ("content_signal_pilot_choices.json", choice_products)):
            t0 = time.perf_counter()
            report = {"config": a.config, "spans": spans, "subtasks": [r.get("subtask") for r in val_rows],
                      "checkpoints": fn(scorer, flat, val_rows), "seconds": round(time.perf_counter() - t0, 1),
                      **provenance()}
            (out / name).write_text(json.dumps(report))
            print(out / name, flush=True)
        return 0
    if a.choices:
        prods = choice_products(scorer, flat, val_rows)
        report = {"config": a.config, "spans": spans, "checkpoints": prods,
                  "seconds": round(time.perf_counter() - t0, 1), **provenance()}
        (out / "content_signal_choices.json").write_text(json.dumps(report))
        print(out / "content_signal_choices.json")
        return 0
    prods = products(scorer, flat, val_rows)
    report = {"config": a.config, "spans": spans, "subtasks": [r.get("subtask") for r in val_rows],
              "checkpoints": prods, "seconds": round(time.perf_counter() - t0, 1), **provenance()}
    (out / "content_signal.json").write_text(json.dumps(report))
    print(out / "content_signal.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
