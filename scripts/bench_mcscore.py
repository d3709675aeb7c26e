#!/usr/bin/env python
"""Multiple-choice scoring: each choice as a full sequence (the reference) vs the context once and the
choices on its KV cache (``share_context``, the default), measured in the same run on the same items.

    python scripts/bench_mcscore.py [--model ~/.cache/rubric_rl/models/SmolLM2-135M-Instruct] [--items 96]

Prints seconds for both, the speed-up ratio, and the largest log-likelihood difference (float rounding).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def item_arguments(doc: str, *, batch_size: int, threads: int) -> argparse.ArgumentParser:
    """The options of a multiple-choice benchmark (also scripts/bench_mcscore_vs_harness.py's): model, test file,
    items, batch size, threads."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="~/.cache/rubric_rl/models/SmolLM2-135M-Instruct")
    ap.add_argument("--test", default=str(ROOT / "data" / "quickstart" / "test.jsonl"))
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--batch_size", type=int, default=batch_size)
    ap.add_argument("--threads", type=int, default=threads)
    return ap


def main() -> None:
    a = item_arguments(__doc__, batch_size=16, threads=2).parse_args()
    import torch

    from rubric_rl.mcscore import build_mc_item, encode_pair, loglikelihoods
    from rubric_rl.models import load_model_and_tokenizer
    from rubric_rl.provenance import provenance

    torch.set_num_threads(a.threads)
    model, tok = load_model_and_tokenizer(a.model, dtype="float32")
    model.eval()
    items = [json.loads(x) for x in Path(a.test).read_text().splitlines() if x.strip()][:a.items]
    requests = []
    for it in items:
        m = build_mc_item(tok, it)
        requests += [encode_pair(tok, m.context, c) for c in m.continuations]
    times, results = {}, {}
    for name, share in (("full sequences (reference)", False), ("shared context", True)):
        t0 = time.perf_counter()
        results[name] = loglikelihoods(model, requests, batch_size=a.batch_size, pad_token_id=tok.pad_token_id or 0,
                                       share_context=share)
        times[name] = time.perf_counter() - t0
    ref, new = results.values()
    diff = max(abs(x - y) for x, y in zip(ref, new))
    p = provenance()
    print(f"{a.model}: {len(items)} items, {len(requests)} (context, choice) pairs, batch {a.batch_size}, "
          f"{a.threads} threads; commit {p['commit'][:8]}, torch {p['versions']['torch']}, "
          f"transformers {p['versions']['transformers']}")
    for name, t in times.items():
        print(f"  {name:28s} {t:7.1f} s")
    r_t, s_t = times.values()
    print(f"  speed-up {r_t / s_t:.2f}x; largest log-likelihood difference {diff:.2e}")


if __name__ == "__main__":
    main()
