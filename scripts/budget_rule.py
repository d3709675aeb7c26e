#!/usr/bin/env python
"""Where does answer augmentation stop beating new questions? The budget rule of Chan et al. (2024,
arXiv:2409.19759), measured on the offline world.

    python scripts/budget_rule.py [--seed_sizes 12 48] [--ratios 1 2 4 8 16] [--seeds 0 1 2] \\
        [--output reports/budget_rule]

For each seed-set size S (S chat samples drawn per seed from ``data/quickstart/warmup.jsonl``; never the
validation or test set), each budget ratio BR (``round(BR * S)`` teacher queries) and each strategy
(``augment_answer``: new answers to the seed questions; ``new_question``: new questions from the seeds'
documents), the script synthesizes with the template teacher and the seed rubrics through the shared pipeline
(``rubric_rl.synth.pipeline``), fine-tunes a fresh target on seed set + synthetic samples with the evaluation's
fine-tuning (the ``eval_*`` settings of ``configs/evaluate_quickstart.yaml``: the tiny target, full fine-tune,
10 epochs), and measures the answer loss on the **validation** set. The crossover (the smallest BR from which
``new_question`` has the lower mean validation loss) is read on validation; the held-out test loss is reported
beside it and never used to choose. Writes ``OUTPUT/report.json`` and ``OUTPUT/report.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRATEGIES = ("augment_answer", "new_question")


def synthesize(strategy: str, docs, seed_set, rubric_file: str, teacher, eval_items, seed: int, budget: int,
               max_document_chars: int) -> tuple[list[dict], dict]:
    from rubric_rl.synth.engine import SampleSynthesizer
    from rubric_rl.synth.pipeline import ItemPlanner, MemorySink, RubricSource, RubricStream, run_items
    from rubric_rl.synth.verifiers import default_verifiers

    stream = RubricStream(RubricSource.resolve(rubric_file), docs, seed)
    planner = ItemPlanner(docs, stream, seed=seed, strategy=strategy, seed_samples=seed_set)
    engine = SampleSynthesizer(teacher, default_verifiers(eval_items=eval_items), max_document_chars=max_document_chars)
    sink = MemorySink(budget)
    stopped, cursor = run_items(planner, engine, sink, num_samples=budget, budget=budget, max_idle=100)
    return sink.samples, {"queries": cursor.queries, "accepted": sink.accepted, "stopped": stopped,
                          "rejected": dict(sink.reasons)}


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds, as the evaluation reports them."""
    from rubric_rl.evaluate.stats import summary_stats

    st = summary_stats(xs)
    return st["mean"], st["std"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "evaluate_quickstart.yaml"),
                    help="Evaluation config: target, fine-tuning and teacher settings.")
    ap.add_argument("--seed_pool", default=str(ROOT / "data" / "quickstart" / "warmup.jsonl"),
                    help="Chat jsonl with doc_id the seed sets are drawn from (not validation or test).")
    ap.add_argument("--validation", default=str(ROOT / "data" / "quickstart" / "validation.jsonl"))
    ap.add_argument("--test", default=str(ROOT / "data" / "quickstart" / "test.jsonl"))
    ap.add_argument("--rubrics", default=str(ROOT / "data" / "quickstart" / "seed_rubrics.json"))
    ap.add_argument("--seed_sizes", type=int, nargs="+", default=[12, 48])
    ap.add_argument("--ratios", type=float, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--output", default=str(ROOT / "reports" / "budget_rule"))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    os.chdir(ROOT)  # the config names data/quickstart/... relative to the repository

    import torch

    from rubric_rl.config import parse_config
    from rubric_rl.configs.evaluate import EvalConfig
    from rubric_rl.configs.influence import InfluenceConfig
    from rubric_rl.configs.teacher import TeacherConfig
    from rubric_rl.data.documents import load_chat_samples, load_documents
    from rubric_rl.evaluate.finetuning import finetune_fresh
    from rubric_rl.evaluate.heldout import heldout_metrics
    from rubric_rl.models import load_tokenizer
    from rubric_rl.provenance import provenance
    from rubric_rl.synth.decontam import load_eval_items
    from rubric_rl.teachers.factory import build_teacher

    torch.set_num_threads(a.threads)
    made_by = provenance()
    cfg, teacher_cfg, influence_cfg = parse_config((EvalConfig, TeacherConfig, InfluenceConfig),
                                                   ["--config", a.config], shared_config=True)
    docs = [d for d in load_documents(cfg.eval_documents) if d["text"].strip()]
    pool = load_chat_samples(a.seed_pool)
    val, test = load_chat_samples(a.validation), load_chat_samples(a.test)
    eval_items = load_eval_items([a.validation, a.test])
    target = cfg.eval_target_model_name_or_path or influence_cfg.target_model_name_or_path
    tokenizer = load_tokenizer(target, padding_side="right")
    teacher = build_teacher(teacher_cfg, documents=[d["text"] for d in docs])
    device = torch.device("cpu")

    runs = []
    t_start = time.perf_counter()
    for size in a.seed_sizes:
        for seed in a.seeds:
            seed_set = random.Random(f"budget:{seed}:{size}").sample(pool, size)
            for ratio in a.ratios:
                budget = max(1, round(ratio * size))
                for strategy in STRATEGIES:
                    t0 = time.perf_counter()
                    samples, syn = synthesize(strategy, docs, seed_set, a.rubrics, teacher, eval_items, seed, budget,
                                              teacher_cfg.teacher_max_document_chars)
                    train = [{"messages": s["messages"]} for s in seed_set] + samples
                    model, ft = finetune_fresh(cfg, target, tokenizer, device, train, seed=seed)
                    v, te = heldout_metrics(model, tokenizer, val, cfg), heldout_metrics(model, tokenizer, test, cfg)
                    runs.append({"seed_size": size, "seed": seed, "ratio": ratio, "budget": budget,
                                 "strategy": strategy, "synthesis": syn, "train_samples": len(train),
                                 "finetune_steps": ft.get("steps"), "val_loss": v["loss"], "test_loss": te["loss"],
                                 "val_acc": v.get("acc"), "test_acc": te.get("acc"),
                                 "seconds": round(time.perf_counter() - t0, 1)})
                    print(f"S={size} seed={seed} BR={ratio:g} {strategy:>14}: {syn['accepted']}/{budget} accepted, "
                          f"val loss {v['loss']:.4f}, test loss {te['loss']:.4f} ({runs[-1]['seconds']} s)", flush=True)
    table, crossover = [], {}
    for size in a.seed_sizes:
        crossover[size] = None
        for ratio in a.ratios:
            row = {"seed_size": size, "ratio": ratio}
            for strategy in STRATEGIES:
                rs = [r for r in runs if r["seed_size"] == size and r["ratio"] == ratio and r["strategy"] == strategy]
                row[strategy] = {k: mean_std([r[k] for r in rs]) for k in ("val_loss", "test_loss")}
                row[strategy]["accepted"] = sum(r["synthesis"]["accepted"] for r in rs) / len(rs)
            aug, new = row["augment_answer"]["val_loss"][0], row["new_question"]["val_loss"][0]
            row["new_question_wins_on_validation"] = new < aug
            val = {(r["strategy"], r["seed"]): r["val_loss"] for r in runs
                   if r["seed_size"] == size and r["ratio"] == ratio}
            row["seeds_new_question_wins"] = sum(val["new_question", s] < val["augment_answer", s] for s in a.seeds)
            if new < aug and crossover[size] is None:
                crossover[size] = ratio
            table.append(row)
    report = {"command": "python scripts/budget_rule.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              **made_by, "config": a.config, "seed_sizes": a.seed_sizes, "ratios": a.ratios, "seeds": a.seeds,
              "crossover_ratio_on_validation": crossover, "table": table, "runs": runs,
              "seconds": round(time.perf_counter() - t_start, 1)}
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    md = ["# The budget rule on the offline world", "", f"`{report['command']}`, commit {made_by.get('commit')}", "",
          "| seed set | budget ratio | augment_answer val loss | new_question val loss | new_question wins (seeds) "
          "| augment_answer test loss | new_question test loss |", "|---|---|---|---|---|---|---|"]
    for row in table:
        f = lambda s, k: f"{row[s][k][0]:.4f} ± {row[s][k][1]:.4f}"  # noqa: E731
        md.append(f"| {row['seed_size']} | {row['ratio']:g} | {f('augment_answer', 'val_loss')} | "
                  f"{f('new_question', 'val_loss')} | {row['seeds_new_question_wins']}/{len(a.seeds)} | "
                  f"{f('augment_answer', 'test_loss')} | {f('new_question', 'test_loss')} |")
    md += ["", "Crossover (smallest budget ratio from which new_question has the lower mean validation loss): "
           + ", ".join(f"S={k}: {v if v is not None else 'none in the sweep'}" for k, v in crossover.items()), ""]
    (out / "report.md").write_text("\n".join(md))
    print("\n".join(md))
    return report


if __name__ == "__main__":
    main()
