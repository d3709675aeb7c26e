#!/usr/bin/env python
"""rubric-rl's multiple-choice scorer (rubric_rl/mcscore.py: each item's context once, its choices on the KV cache)
vs lm-evaluation-harness (``simple_evaluate`` on the task ``rubric_rl_heldout``: every (context, choice) pair run in
full), on the same items and the same in-memory model, measured in the same run.

    python scripts/bench_mcscore_vs_harness.py [--model ~/.cache/rubric_rl/models/SmolLM2-135M-Instruct] \\
        [--items 96] [--threads 1] [--json out.json]

The items are the test set's first ``--items``, in the ``prompt`` context mode, the one the harness task reproduces
(rubric_rl/evaluate/harness.py). Prints the seconds of each scorer, the ratio harness / rubric-rl, and both
scorers' acc and acc_norm (acc is the same; acc_norm can differ by the chat template's newline, which the harness
scores with every choice). The harness's time is the whole call (task set-up and dataset read included: what
``eval_lm_eval_tasks`` costs per target); ``harness_setup_s`` is that call on one item, for scale.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench_mcscore import item_arguments  # scripts/ (this script's folder; it also puts the repository on sys.path)


def main() -> None:
    ap = item_arguments(__doc__, batch_size=32, threads=1)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    a = ap.parse_args()
    import torch

    from rubric_rl.configs.evaluate import HELDOUT_TASK
    from rubric_rl.evaluate.harness import run_harness, summarize
    from rubric_rl.mcscore import score_multiple_choice
    from rubric_rl.models import load_model_and_tokenizer
    from rubric_rl.provenance import package_versions, provenance

    torch.set_num_threads(a.threads)
    model, tok = load_model_and_tokenizer(a.model, dtype="float32", padding_side="right")
    model.eval()
    items = [json.loads(x) for x in Path(a.test).read_text().splitlines() if x.strip()][:a.items]

    def harness(limit):
        return run_harness(model, tok, [HELDOUT_TASK], test_data=a.test, limit=limit, batch_size=a.batch_size)

    t0 = time.perf_counter()
    harness(1)  # builds the task index once (cached for the timed call) and warms both paths
    setup = time.perf_counter() - t0
    score_multiple_choice(model, tok, items[:1], mode="prompt", batch_size=a.batch_size)
    t0 = time.perf_counter()
    ours = score_multiple_choice(model, tok, items, mode="prompt", batch_size=a.batch_size)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = summarize(harness(len(items)))[HELDOUT_TASK]
    harness_s = time.perf_counter() - t0
    p = provenance()
    out = {"model": a.model, "items": len(items), "pairs": sum(len(it["choices"]) for it in items),
           "batch_size": a.batch_size, "threads": a.threads, "rubric_rl_s": round(ours_s, 3),
           "harness_s": round(harness_s, 3), "harness_setup_s": round(setup, 3),
           "harness_over_rubric_rl": round(harness_s / ours_s, 3),
           "rubric_rl": {"acc": ours["acc"], "acc_norm": ours["acc_norm"]},
           "harness": {"acc": theirs["acc"], "acc_norm": theirs["acc_norm"], "n": theirs["n"]},
           "commit": p["commit"], "versions": {**p["versions"], **package_versions(("lm_eval",))}}
    print(f"{a.model}: {out['items']} items, {out['pairs']} (context, choice) pairs, prompt mode, batch "
          f"{a.batch_size}, {a.threads} threads; commit {str(p['commit'])[:8]}, torch {p['versions']['torch']}, "
          f"lm_eval {out['versions']['lm_eval']}")
    print(f"  rubric-rl mcscore (shared context) {ours_s:8.2f} s   acc {ours['acc']:.4f}  acc_norm {ours['acc_norm']:.4f}")
    print(f"  lm-eval simple_evaluate           {harness_s:8.2f} s   acc {theirs['acc']:.4f}  acc_norm "
          f"{theirs['acc_norm']:.4f}  (n {theirs['n']})")
    print(f"  harness / rubric-rl time ratio {harness_s / ours_s:.2f}x (harness set-up on 1 item: {setup:.2f} s)")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
