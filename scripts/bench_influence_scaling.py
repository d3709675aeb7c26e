#!/usr/bin/env python
"""How the influence engine's cost grows: sequence length, validation items, checkpoints, projection size.

Every row is timed against a reference measured in the same run on the same samples: the *floor*, one plain
batched forward+backward per checkpoint (the HF loss, LoRA gradients; ``bench_influence.floor_time``), which
no gradient-based scorer can beat. The engine is ``InfluenceScorer.score``, the code the RL reward and
``rubric-rl score`` run. Four sweeps:

* ``length``: samples cut to L tokens (answers repeated to fill), one checkpoint, no projection;
* ``checkpoints``: 1, 2, 4 warm-up checkpoints at one length;
* ``validation``: the one-time validation cost (gradients of the default objective, ``tokens+choices``, and
  of ``tokens``) and the per-sample score time, for n validation items;
* ``projection``: ``influence_proj_dim`` 0 (exact), 2048, 8192: the per-sample time with the projection, and
  the projection alone per row (the P x d Rademacher pass, ``RademacherProjector.project``).

Prints one table per sweep (seconds per sample, ratio engine/floor) and writes ``--json``. CPU example (the
numbers in the README's scaling table)::

    python scripts/bench_influence_scaling.py --threads 2 --json runs/bench_scaling.json

On a GPU: ``--device cuda --dtype bfloat16``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_influence import _sync, floor_time  # noqa: E402  (same floor as the reference benchmark)


def long_samples(rows: list[list[dict]], repeat: int) -> list[list[dict]]:
    """Each sample with its question's first line only and its answer repeated ``repeat`` times (the scorer
    cuts it to its max length), so that short lengths still hold answer tokens."""
    out = []
    for msgs in rows:
        m = [dict(x) for x in msgs]
        m[-2]["content"] = m[-2]["content"].split("\n")[0]
        m[-1]["content"] = " ".join([m[-1]["content"]] * repeat)
        out.append(m)
    return out


def timed_score(scorer, samples, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        _sync(scorer.device)
        t = time.perf_counter()
        res = scorer.score(samples)
        _sync(scorer.device)
        best = min(best, time.perf_counter() - t)
        if any(r.value is None for r in res):
            raise RuntimeError(f"unscorable samples: {[r.reason for r in res if r.value is None][:3]}")
    return best


def timed_floor(scorer, samples, repeat: int) -> float:
    return min(floor_time(scorer, samples) for _ in range(repeat))


def rebuild(scorer, cfg, ckpts, val_path, cls):
    """A new scorer on the same model (the old one's hooks removed first)."""
    from rubric_rl.influence.build import load_validation

    scorer.close()
    new = cls(cfg, scorer.model, scorer.tokenizer, ckpts, device=scorer.device)
    load_validation(new, val_path)
    return new


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny:hidden=512,layers=8,heads=8,seed=0")
    ap.add_argument("--run-dir", default=None, help="default: /tmp/rubric_rl_bench/scaling_<model>")
    ap.add_argument("--samples", default=str(ROOT / "data/quickstart/test.jsonl"))
    ap.add_argument("--validation", default=str(ROOT / "data/quickstart/validation.jsonl"))
    ap.add_argument("--warmup-data", default=str(ROOT / "data/quickstart/warmup.jsonl"))
    ap.add_argument("--n", type=int, default=32, help="candidate samples per row")
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--length", type=int, default=256, help="sequence length of the other sweeps")
    ap.add_argument("--n-vals", type=int, nargs="+", default=[6, 12, 24, 36])
    ap.add_argument("--proj-dims", type=int, nargs="+", default=[0, 2048, 8192])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--repeat", type=int, default=2, help="time each row this many times, keep the fastest")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from rubric_rl.data.chat import tokenize_chat
    from rubric_rl.data.documents import load_chat_samples
    from rubric_rl.influence import InfluenceConfig, InfluenceScorer
    from rubric_rl.influence.build import load_validation
    from rubric_rl.influence.warmup import load_checkpoints
    from rubric_rl.provenance import provenance

    run_dir = Path(a.run_dir or f"/tmp/rubric_rl_bench/scaling_{a.model.replace(':', '_').replace(',', '_')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    val_rows = [json.loads(x) for x in Path(a.validation).read_text().splitlines() if x.strip()]
    val_paths = {}
    for n in sorted(set(a.n_vals) | {max(a.n_vals)}):
        val_paths[n] = run_dir / f"validation_{n}.jsonl"
        val_paths[n].write_text("".join(json.dumps(r) + "\n" for r in val_rows[:n]))
    warm_path = run_dir / "warmup_data.jsonl"
    warm_path.write_text("\n".join([x for x in Path(a.warmup_data).read_text().splitlines() if x.strip()][:32]) + "\n")
    # 4 epochs of 4 steps: 4 checkpoints (one per epoch)
    cfg = InfluenceConfig(
        target_model_name_or_path=a.model, target_dtype=a.dtype, warmup_data=str(warm_path), warmup_epochs=4,
        warmup_learning_rate=1e-3, warmup_batch_size=8, warmup_lora_r=a.lora_r, warmup_lora_alpha=2 * a.lora_r,
        influence_validation_data=str(val_paths[max(a.n_vals)]), influence_proj_dim=0,
        influence_batch_size=a.batch_size, influence_max_length=a.length, influence_checkpoints=["last"],
        influence_dtype="float64" if a.dtype == "float64" else "float32",
    )
    scorer = InfluenceScorer.from_config(cfg, run_dir, device=a.device)
    wdir = Path(scorer.warmup["dir"])
    all_ckpts = load_checkpoints(wdir, scorer.model, ["all"])
    base = [m["messages"] for m in load_chat_samples(a.samples)][: a.n]
    samples = long_samples(base, repeat=max(1, max(a.lengths) // 16))
    print(f"model {a.model}: {scorer.engine.num_params:,} LoRA parameters (r={a.lora_r}), {len(all_ckpts)} "
          f"checkpoints; {a.n} samples per row, batch {a.batch_size}, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    scorer.score(samples[:2])  # kernels / allocator warm-up
    out: dict = {"model": a.model, "lora_params": scorer.engine.num_params, "n": a.n, "batch_size": a.batch_size,
                 "threads": torch.get_num_threads(), "device": a.device, "dtype": a.dtype, "sweeps": {},
                 "load_avg_1min_start": os.getloadavg()[0], **provenance()}

    def row(s, label: str, **extra) -> dict:
        eng = timed_score(s, samples, a.repeat)
        fl = timed_floor(s, samples, a.repeat)
        r = {"label": label, "engine_s_per_sample": eng / a.n, "floor_s_per_sample": fl / a.n,
             "engine_over_floor": eng / fl, **extra}
        print(f"  {label:28s} engine {1e3 * eng / a.n:8.1f} ms/sample   floor {1e3 * fl / a.n:8.1f} ms/sample   "
              f"engine/floor {eng / fl:5.2f}", flush=True)
        return r

    print("sequence length (1 checkpoint, exact):", flush=True)
    rows = []
    for L in a.lengths:
        scorer.cfg.influence_max_length = L
        toks = [len(tokenize_chat(scorer.tokenizer, m, L).input_ids) for m in samples]
        rows.append(row(scorer, f"L={L} (mean {sum(toks) / len(toks):.0f} tokens)", length=L,
                        mean_tokens=sum(toks) / len(toks)))
    out["sweeps"]["length"] = rows
    scorer.cfg.influence_max_length = a.length

    print(f"checkpoints (L={a.length}, exact):", flush=True)
    rows = []
    for c in (1, 2, 4):
        if c > len(all_ckpts):
            continue
        scorer = rebuild(scorer, cfg, all_ckpts[-c:], val_paths[max(a.n_vals)], InfluenceScorer)
        rows.append(row(scorer, f"{c} checkpoint(s)", checkpoints=c))
    out["sweeps"]["checkpoints"] = rows

    print(f"validation items (L={a.length}, 1 checkpoint, exact):", flush=True)
    rows = []
    for n in a.n_vals:
        times = {}
        for objective in ("tokens+choices", "tokens"):
            c2 = dataclasses.replace(cfg, influence_objective=objective)
            scorer.close()
            scorer = InfluenceScorer(c2, scorer.model, scorer.tokenizer, all_ckpts[-1:], device=scorer.device)
            t = time.perf_counter()
            load_validation(scorer, val_paths[n])
            times[objective] = time.perf_counter() - t
        r = row(scorer, f"{n} items", n_val=n, validation_s=times["tokens+choices"],
                validation_tokens_only_s=times["tokens"])
        print(f"  {'':28s} validation (once): tokens+choices {times['tokens+choices']:.1f} s, tokens "
              f"{times['tokens']:.1f} s", flush=True)
        rows.append(r)
    out["sweeps"]["validation"] = rows

    print(f"projection (L={a.length}, 1 checkpoint):", flush=True)
    rows = []
    for d in a.proj_dims:
        c2 = dataclasses.replace(cfg, influence_proj_dim=d)
        scorer = rebuild(scorer, c2, all_ckpts[-1:], val_paths[max(a.n_vals)], InfluenceScorer)
        extra = {"proj_dim": d, "proj_mode": scorer.projector.mode if scorer.projector else "none"}
        if scorer.projector is not None:
            x = torch.randn(a.n, scorer.engine.num_params, dtype=scorer.dtype, device=scorer.device)
            scorer.projector.project(x[:2])
            _sync(scorer.device)
            t = time.perf_counter()
            scorer.projector.project(x)
            _sync(scorer.device)
            extra["projection_only_s_per_row"] = (time.perf_counter() - t) / a.n
        r = row(scorer, f"d={d} ({extra['proj_mode']})", **extra)
        if "projection_only_s_per_row" in extra:
            print(f"  {'':28s} projection alone {1e3 * extra['projection_only_s_per_row']:.1f} ms/row", flush=True)
        rows.append(r)
    out["sweeps"]["projection"] = rows
    scorer.close()
    out["load_avg_1min_end"] = os.getloadavg()[0]
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
