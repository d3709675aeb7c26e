#!/usr/bin/env python
"""Benchmark the influence engine against a LESS-style reference, on the same samples, in one run.

* engine: ``InfluenceScorer.score`` (batched per-sample gradients from hooks, Adam direction, chunked
  projection), the code the RL reward runs;
* reference: what the LESS code does: batch size 1, one forward/backward per sample with the model's own
  loss, gradients vectorised from ``p.grad``, Adam direction, dense projection applied every 16 samples
  (LESS's ``project_interval``); validation gradients the same way. Two projections (``--reference``):
  ``regen`` is how LESS projects without a CUDA ``fast_jl`` kernel: TRAK's ``BasicProjector`` regenerates
  the whole P x d matrix, block by block, at every call; here the blocks come from the engine's own
  generator (same matrix, so the scores compare), and the script also times TRAK's own generation
  (``bernoulli_`` blocks of 128 columns) to show that this stand-in is not the slower of the two.
  ``trak`` is that TRAK projector itself (its own matrix: scores agree with the engine's only up to the
  projection error, so its Spearman is reported, not required to match).
  ``materialized`` is a stronger reference than LESS: the float matrix built once, before timing (only
  where it fits in memory);
* floor: one plain batched forward+backward (HF loss, LoRA gradients) over the same length-sorted batches.

Checks that engine and reference give the same scores, prints samples/s of each, their ratio, peak RSS of
each phase (and on CUDA the peak GPU memory of engine and floor), and engine time / floor time. Timers wait
for the device (``torch.cuda.synchronize``). Example (CPU)::

    python scripts/bench_influence.py --model tiny:hidden=512,layers=8,heads=8,seed=0 --n 64 --proj-dim 2048

On a GPU (``scripts/gpu_check.sh`` runs this): ``--device cuda --dtype bfloat16 --skip-reference``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def reset_peak_rss() -> None:
    try:  # Linux: resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_samples(paths: list[str], n: int, seed: int) -> list[list[dict]]:
    rows = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line)["messages"])
    random.Random(seed).shuffle(rows)
    while len(rows) < n:
        rows = rows + rows
    return rows[:n]


def less_reference(scorer, samples, val_samples, project_fn, project_interval: int = 16, subtasks=None):
    """LESS-style scores: bs=1 loop, model's own loss, vectorised p.grad, Adam formula, dense projection.

    ``project_fn(x)`` = ``x @ R`` for a [rows, P] buffer (None: no projection); ``subtasks``: each validation
    sample's subtask name (None: one subtask)."""
    from rubric_rl.data.chat import tokenize_chat

    cfg, model, tok = scorer.cfg, scorer.model, scorer.tokenizer
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    dtype = scorer.dtype

    def grads(messages):
        chat = tokenize_chat(tok, messages, cfg.influence_max_length)
        model.zero_grad(set_to_none=True)
        out = model(input_ids=torch.tensor([chat.input_ids], device=scorer.device),
                    labels=torch.tensor([chat.labels], device=scorer.device))
        out.loss.backward()
        return torch.cat([p.grad.reshape(-1) for _, p in params]).to(dtype)

    def project(buf, out):
        x = torch.stack(buf)
        out.append(project_fn(x) if project_fn is not None else x)
        buf.clear()

    subtasks = [str(x) if x is not None else "" for x in (subtasks or [None] * len(val_samples))]
    timings = {}
    total = torch.zeros(len(samples), dtype=torch.float64)
    for i, ckpt in enumerate(scorer.checkpoints):
        scorer._use_checkpoint(i)
        # validation: plain gradients (not timed as throughput: computed once and cached by both)
        vbuf, vout = [], []
        for m in val_samples:
            vbuf.append(grads(m))
            if len(vbuf) == project_interval:
                project(vbuf, vout)
        if vbuf:
            project(vbuf, vout)
        val = torch.cat(vout)
        t0 = time.perf_counter()
        st = [ckpt.adam[n] for n, _ in params]
        m = torch.cat([s.exp_avg.reshape(-1) for s in st]).to(scorer.device, dtype)
        v = torch.cat([s.exp_avg_sq.reshape(-1) for s in st]).to(scorer.device, dtype)
        b1, b2, eps, step = st[0].beta1, st[0].beta2, st[0].eps, st[0].step
        buf, out = [], []
        for msg in samples:
            g = grads(msg)
            m1 = b1 * m + (1 - b1) * g
            v1 = b2 * v + (1 - b2) * g * g
            if cfg.influence_direction == "adam":
                gamma = (m1 / (1 - b1 ** (step + 1))) / (torch.sqrt(v1 / (1 - b2 ** (step + 1))) + eps)
            elif cfg.influence_direction == "adam_less":
                gamma = m1 / torch.sqrt(v1 + eps)
            else:
                gamma = g
            buf.append(gamma)
            if len(buf) == project_interval:
                project(buf, out)
        if buf:
            project(buf, out)
        feats = torch.cat(out)
        timings[ckpt.name] = time.perf_counter() - t0
        if cfg.influence_estimator == "less":
            feats = feats / feats.norm(dim=1, keepdim=True)
            val = val / val.norm(dim=1, keepdim=True)
        sims = feats @ val.T
        # mean over each subtask's items, then the max over subtasks (the scorer's aggregation)
        agg = torch.tensor([[s == name for name in scorer.subtasks] for s in subtasks], dtype=sims.dtype,
                           device=sims.device)
        agg = agg / agg.sum(0, keepdim=True)
        total += scorer.weights[i] * (sims @ agg).max(1).values.double().cpu()
    model.zero_grad(set_to_none=True)
    return total, sum(timings.values())


class TrakBasicProjector:
    """TRAK's ``BasicProjector`` (Rademacher, no fast_jl), as LESS builds it: block_size 128, block i drawn
    from ``seed + 1000 i``, every block regenerated at every ``project`` call. Scaled by 1/sqrt(d)."""

    def __init__(self, num_params: int, dim: int, seed: int = 0, block: int = 128, dtype=torch.float32):
        self.dim, self.block, self.seed = dim, min(block, dim), seed
        self.mat = torch.empty(num_params, self.block, dtype=dtype)
        self.gen = torch.Generator()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        sketch = torch.zeros(x.shape[0], self.dim, dtype=x.dtype)
        for i, st in enumerate(range(0, self.dim, self.block)):
            ed = min(self.dim, st + self.block)
            self.gen.manual_seed(self.seed + 1000 * i)
            self.mat.bernoulli_(p=0.5, generator=self.gen)
            self.mat *= 2.0
            self.mat -= 1.0
            sketch[:, st:ed] = x @ self.mat[:, : ed - st]
        return sketch / self.dim**0.5


def _sync(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a timer must not stop before it ends)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def reset_cuda_peak(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if str(device).startswith("cuda") else None


def _seconds(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def floor_time(scorer, samples) -> float:
    """One plain batched forward+backward (HF loss, LoRA grads) per checkpoint over the engine's batches."""
    from rubric_rl.data.chat import tokenize_chat

    chats = [(k, tokenize_chat(scorer.tokenizer, m, scorer.cfg.influence_max_length)) for k, m in enumerate(samples)]
    batches = list(scorer._batches(chats))
    model = scorer.model
    _sync(scorer.device)
    t0 = time.perf_counter()
    for i in range(len(scorer.checkpoints)):
        scorer._use_checkpoint(i)
        for batch in batches:
            ids, mask, labels = scorer.engine.pad([c for _, c in batch])
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    model.zero_grad(set_to_none=True)
    _sync(scorer.device)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny:hidden=512,layers=8,heads=8,seed=0")
    ap.add_argument("--run-dir", default=None, help="default: /tmp/rubric_rl_bench/<model>")
    ap.add_argument("--samples", nargs="+", default=[str(ROOT / "data/quickstart/test.jsonl")])
    ap.add_argument("--validation", default=str(ROOT / "data/quickstart/validation.jsonl"))
    ap.add_argument("--warmup-data", default=str(ROOT / "data/quickstart/warmup.jsonl"))
    ap.add_argument("--n", type=int, default=64, help="candidate samples scored")
    ap.add_argument("--n-val", type=int, default=16, help="validation examples used")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--proj-dim", type=int, default=2048)
    ap.add_argument("--proj-memory-mb", type=int, default=1024)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--checkpoints", default="all")
    ap.add_argument("--estimator", default="less")
    ap.add_argument("--direction", default="adam")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tol", type=float, default=1e-3, help="max |engine - reference| allowed (relative to score scale)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--repeat", type=int, default=1, help="time each phase this many times, keep the fastest")
    ap.add_argument("--layerwise", action="store_true", help="influence_proj_layerwise=True")
    ap.add_argument("--skip-reference", action="store_true", help="time engine and floor only")
    ap.add_argument("--reference", nargs="+", default=["regen", "trak", "materialized"],
                    choices=["regen", "trak", "materialized"],
                    help="reference projections to time (see the module docstring); 'materialized' is skipped "
                         "when its float matrix exceeds --reference-max-matrix-gb")
    ap.add_argument("--reference-max-matrix-gb", type=float, default=8.0)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from rubric_rl.influence import InfluenceConfig, InfluenceScorer
    from rubric_rl.data.documents import load_chat_samples

    run_dir = Path(a.run_dir or f"/tmp/rubric_rl_bench/{a.model.replace(':', '_').replace(',', '_')}_r{a.lora_r}")
    run_dir.mkdir(parents=True, exist_ok=True)
    val_path = run_dir / f"validation_{a.n_val}.jsonl"
    rows = [json.loads(x) for x in Path(a.validation).read_text().splitlines() if x.strip()][: a.n_val]
    val_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    warm_path = run_dir / "warmup_data.jsonl"
    warm_rows = [x for x in Path(a.warmup_data).read_text().splitlines() if x.strip()][:32]
    warm_path.write_text("\n".join(warm_rows) + "\n")
    cfg = InfluenceConfig(
        target_model_name_or_path=a.model, target_dtype=a.dtype, warmup_data=str(warm_path), warmup_epochs=2,
        warmup_learning_rate=1e-3, warmup_batch_size=8, warmup_lora_r=a.lora_r, warmup_lora_alpha=2 * a.lora_r,
        influence_validation_data=str(val_path), influence_proj_dim=a.proj_dim,
        influence_proj_memory_mb=a.proj_memory_mb, influence_batch_size=a.batch_size,
        influence_max_length=a.max_length, influence_checkpoints=[a.checkpoints], influence_estimator=a.estimator,
        influence_direction=a.direction, influence_dtype="float64" if a.dtype == "float64" else "float32",
        influence_proj_layerwise=a.layerwise,
        # LESS's objective and direction, which the reference computes: the token loss, no centring. The
        # default's choice term is a one-time validation cost (bench_influence_scaling.py times it); centring
        # subtracts one precomputed vector per checkpoint.
        influence_objective="tokens", influence_center=False,
    )
    t = time.perf_counter()
    scorer = InfluenceScorer.from_config(cfg, run_dir, device=a.device)
    setup_s = time.perf_counter() - t
    samples = load_samples(a.samples, a.n, seed=0)
    val_rows = load_chat_samples(val_path)
    val_samples = [r["messages"] for r in val_rows]
    val_subtasks = [r.get(cfg.influence_subtask_field) for r in val_rows]
    n_base = sum(p.numel() for n, p in scorer.model.named_parameters() if not p.requires_grad)
    n_lora = scorer.engine.num_params
    from rubric_rl.data.chat import tokenize_chat

    lengths = [len(tokenize_chat(scorer.tokenizer, m, a.max_length).input_ids) for m in samples]
    print(f"model {a.model}: {n_base / 1e6:.1f}M base params, {n_lora} LoRA params (r={a.lora_r}), "
          f"{len(scorer.checkpoints)} checkpoint(s); {a.n} samples, mean {sum(lengths) / len(lengths):.0f} tokens; "
          f"d={a.proj_dim} ({scorer.projector.mode if scorer.projector else 'none'}), batch {a.batch_size}, "
          f"threads {torch.get_num_threads()}, setup {setup_s:.1f}s", flush=True)

    scorer.score(samples[: min(4, len(samples))])  # warm-up of kernels / allocator
    floor_time(scorer, samples[: min(4, len(samples))])

    from rubric_rl.influence.projection import RademacherProjector

    # name -> factory of the projection function, called right before that reference runs (so a matrix
    # built for one reference never counts in another phase's peak memory)
    refs: dict[str, object] = {}
    if not a.skip_reference:
        pj = scorer.projector
        for name in a.reference:
            if pj is None:
                refs["none"] = lambda: None
                break
            if name == "trak":
                refs[name] = lambda: TrakBasicProjector(pj.num_params, pj.dim, dtype=pj.dtype).project
            elif name == "regen":  # same matrix, nothing resident: every call regenerates all P x d signs
                refs[name] = lambda: RademacherProjector(pj.num_params, pj.dim, seed=pj.seed,
                                                         memory_mb=a.proj_memory_mb, device=pj.device,
                                                         dtype=pj.dtype, mode="regen").project
            elif pj.num_params * pj.dim * 4 / 2**30 <= a.reference_max_matrix_gb:
                def materialized():
                    mat = pj.matrix()  # built before timing, as a favour to the reference
                    return lambda x: x @ mat
                refs[name] = materialized
            else:
                print(f"reference 'materialized' skipped: the {pj.num_params} x {pj.dim} float matrix needs "
                      f"{pj.num_params * pj.dim * 4 / 2**30:.1f} GB > --reference-max-matrix-gb", flush=True)

    engine_s = fl = float("inf")
    ref_s = {k: float("inf") for k in refs}
    ref_scores: dict[str, torch.Tensor] = {}
    engine_peak = floor_peak = 0.0
    engine_cuda = floor_cuda = None
    ref_peak = {k: 0.0 for k in refs}
    # Peak RSS is taken from the first round only (engine, then floor, then references): later rounds start
    # with memory the allocator kept from the reference's dense matrix.
    for r in range(a.repeat):
        reset_peak_rss()
        reset_cuda_peak(scorer.device)
        _sync(scorer.device)
        t = time.perf_counter()
        res = scorer.score(samples)
        _sync(scorer.device)
        engine_s = min(engine_s, time.perf_counter() - t)
        engine_peak = engine_peak if r else peak_rss_mb()
        engine_cuda = engine_cuda if r else cuda_peak_mb(scorer.device)
        engine = torch.tensor([x.value for x in res], dtype=torch.float64)

        reset_peak_rss()
        reset_cuda_peak(scorer.device)
        fl = min(fl, floor_time(scorer, samples))
        floor_peak = floor_peak if r else peak_rss_mb()
        floor_cuda = floor_cuda if r else cuda_peak_mb(scorer.device)

        for name, make in refs.items():
            fn = make()
            reset_peak_rss()
            ref_scores[name], rs = less_reference(scorer, samples, val_samples, fn, subtasks=val_subtasks)
            del fn
            ref_s[name] = min(ref_s[name], rs)
            ref_peak[name] = ref_peak[name] if r else peak_rss_mb()

    trak_s = our_regen_s = None
    if "regen" in refs:  # one projection call of 16 rows: TRAK's own generation vs the stand-in used here
        pj = scorer.projector
        x16 = torch.randn(16, pj.num_params, dtype=pj.dtype)
        trak = TrakBasicProjector(pj.num_params, pj.dim, dtype=pj.dtype)
        trak_s, our_regen_s = _seconds(trak.project, x16), _seconds(refs["regen"](), x16)

    out = {
        "model": a.model, "base_params_M": round(n_base / 1e6, 2), "lora_params": n_lora, "n": a.n,
        "mean_tokens": round(sum(lengths) / len(lengths), 1), "proj_dim": a.proj_dim,
        "proj_mode": scorer.projector.mode if scorer.projector else "none", "batch_size": a.batch_size,
        "checkpoints": len(scorer.checkpoints), "threads": torch.get_num_threads(), "repeat": a.repeat,
        "layerwise": scorer._project_in_engine, "load_avg_1min": os.getloadavg()[0],
        "engine_samples_per_s": round(a.n / engine_s, 3), "engine_over_floor": round(engine_s / fl, 2),
        "engine_s": round(engine_s, 2), "floor_s": round(fl, 2),
        "engine_peak_rss_mb": round(engine_peak), "floor_peak_rss_mb": round(floor_peak),
        "device": str(scorer.device), "dtype": a.dtype, "influence_dtype": cfg.influence_dtype,
        "references": {},
    }
    if engine_cuda is not None:
        out["gpu"] = torch.cuda.get_device_name(scorer.device)
        out["engine_cuda_peak_mb"], out["floor_cuda_peak_mb"] = round(engine_cuda), round(floor_cuda)
    ok = True
    for name in refs:
        ref = ref_scores[name]
        diff = float((engine - ref).abs().max())
        scale = float(ref.abs().max())
        from_rank = torch.argsort(torch.argsort(engine)).double()
        to_rank = torch.argsort(torch.argsort(ref)).double()
        rho = float(torch.corrcoef(torch.stack([from_rank, to_rank]))[0, 1])
        same = diff <= a.tol * max(scale, 1e-12)
        if name != "trak":  # another random matrix: equal only up to the projection error
            ok = ok and same
        out["references"][name] = {
            "samples_per_s": round(a.n / ref_s[name], 3), "seconds": round(ref_s[name], 2),
            "speedup_engine_vs_reference": round(ref_s[name] / engine_s, 2),
            "reference_over_floor": round(ref_s[name] / fl, 2), "peak_rss_mb": round(ref_peak[name]),
            "max_abs_diff": diff, "score_scale": scale, "spearman_engine_vs_reference": round(rho, 5),
            "same_scores": same if name != "trak" else None,
        }
    if trak_s is not None:
        out["projection_call_16_rows_s"] = {"trak_basic_projector": round(trak_s, 3),
                                            "regen_stand_in": round(our_regen_s, 3)}
    out["same_scores"] = ok
    print(json.dumps(out, indent=1))
    print(f"engine {out['engine_samples_per_s']} samples/s, engine/floor {out['engine_over_floor']}")
    verdict = {True: "match", False: "DIFFER", None: "other matrix"}
    for name, r in out["references"].items():
        print(f"reference[{name}] {r['samples_per_s']} samples/s: ratio {r['speedup_engine_vs_reference']}x, "
              f"reference/floor {r['reference_over_floor']}; scores {verdict[r['same_scores']]} "
              f"(Spearman {r['spearman_engine_vs_reference']}, max |diff| {r['max_abs_diff']:.2e}, "
              f"scale {r['score_scale']:.2e})")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    if not ok:
        sys.exit(1)
    return out


if __name__ == "__main__":
    main()
