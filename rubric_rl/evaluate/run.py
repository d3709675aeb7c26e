"""The evaluation run: :func:`evaluate` (every source x every seed: synthesize, influence, fine-tune, held-out)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..configs.evaluate import PRIMARY_METRICS, EvalConfig
from ..devices import resolve_device
from ..jsonl import write_jsonl
from .finetuning import finetune_fresh, load_target
from .heldout import heldout_metrics
from .plots import write_plots
from .report import build_report, format_markdown, format_number, jsonable
from .stats import gain, summary_stats
from .synthesis import Source, dataset_stats, loop_dataset, resolve_source, synthesize_dataset


logger = logging.getLogger("rubric_rl.evaluate")


def evaluate(eval_cfg: EvalConfig, teacher_cfg, influence_cfg, sources: dict[str, str], output_dir,
             *, teacher=None, generators: dict | None = None) -> dict:
    """Compare rubric sources downstream (module docstring); writes REPORT_DIR and returns the report dict.

    ``teacher`` replaces the one ``teacher_cfg`` names; ``generators`` maps a source name to an object with
    ``generate(texts, seed=, batch_size=) -> list[Rubric | None]`` (an already loaded generator, or a stub in
    tests) used instead of loading its SPEC.
    """
    from tqdm.auto import tqdm

    from ..data.documents import load_chat_samples, load_documents
    from ..models import load_tokenizer
    from ..synth.engine import SampleSynthesizer
    from ..synth.verifiers import default_verifiers

    cfg = eval_cfg
    t_start = time.perf_counter()
    from ..provenance import provenance

    made_by = provenance()  # at the start: the code that runs, not the HEAD at the end
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.eval_torch_num_threads:
        torch.set_num_threads(cfg.eval_torch_num_threads)
    device = resolve_device(cfg.eval_device)
    generators = dict(generators or {})

    resolved = []
    for n, s in sources.items():
        if n in generators:  # an injected generator; an export folder SPEC still names its training run
            src = resolve_source(n, s) if Path(s).is_dir() else Source(n, "generator", s)
            src.kind = "generator"
        else:
            src = resolve_source(n, s)
        resolved.append(src)
    if not resolved:
        raise ValueError("sources: nothing to evaluate")
    docs = [d for d in load_documents(cfg.eval_documents, text_field=cfg.eval_document_text_field) if d["text"].strip()]
    test_items = load_chat_samples(cfg.eval_test_data)  # errors name the file and the sample
    target = cfg.eval_target_model_name_or_path or influence_cfg.target_model_name_or_path
    trust = bool(getattr(influence_cfg, "target_trust_remote_code", False))
    tokenizer = load_tokenizer(target, trust_remote_code=trust, padding_side="right")

    if teacher is None:
        from ..teachers.factory import build_teacher

        teacher = build_teacher(teacher_cfg, documents=[d["text"] for d in docs], device=device)
    eval_items = None
    if cfg.eval_decontaminate:
        from ..synth.decontam import load_eval_items

        # (load_eval_items tags items with their file, which the decontaminator's boilerplate detection needs)
        eval_items = load_eval_items([cfg.eval_test_data])

    # The untrained target: the reference of every gain.
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        base_model = load_target(EvalConfig(**{**asdict(cfg), "eval_finetune": "full"}), target, tokenizer, device,
                                 seed=0, trust_remote_code=trust)
    base_model.eval()
    baseline = heldout_metrics(base_model, tokenizer, test_items, cfg)
    del base_model
    timing = {"baseline_s": round(time.perf_counter() - t0, 3), "synthesis_s": 0.0, "influence_s": 0.0,
              "finetune_s": 0.0, "heldout_s": 0.0, "generator_load_s": 0.0}
    logger.info("untrained target %s: test loss %.4f, acc %s", target, baseline["loss"], baseline.get("acc"))

    scorer = None
    influence_dir = None
    if cfg.eval_influence:
        if not getattr(influence_cfg, "influence_validation_data", None):
            raise ValueError("eval_influence needs influence_validation_data (the validation chat jsonl); set it or "
                             "pass --eval_influence false")
        influence_dir = Path(cfg.eval_influence_run_dir) if cfg.eval_influence_run_dir else out_dir / "influence"

    runs: list[dict] = []
    total = len(cfg.eval_seeds) * len(resolved)
    bar = tqdm(total=total, desc="evaluate", disable=not cfg.eval_progress, dynamic_ncols=True)
    max_items = math.ceil(cfg.eval_max_queries_per_sample * cfg.eval_num_samples)
    from ..progress import phase

    phase("evaluation", f"{len(resolved)} sources x {len(cfg.eval_seeds)} seeds, {cfg.eval_num_samples} samples each, "
          f"report in {output_dir}")
    for seed in cfg.eval_seeds:
        for src in resolved:
            bar.set_postfix(source=src.name, seed=seed, refresh=True)
            gen = None
            if src.kind == "generator":
                gen = generators.get(src.name)
                if gen is None:
                    from ..generator import RubricGenerator

                    t0 = time.perf_counter()
                    gen = RubricGenerator.from_pretrained(src.spec, device=device)
                    generators[src.name] = gen
                    timing["generator_load_s"] += time.perf_counter() - t0
            # a fresh verifier chain per dataset (no state shared between sources or seeds)
            synth = SampleSynthesizer(teacher, default_verifiers(eval_items=eval_items),
                                      max_document_chars=teacher_cfg.teacher_max_document_chars)
            t0 = time.perf_counter()
            if src.kind == "dataset":  # a closed loop's finished dataset for this seed
                samples, sstats = loop_dataset(src, seed, cfg.eval_num_samples)
            else:
                samples, sstats = synthesize_dataset(src, docs, synth, num_samples=cfg.eval_num_samples,
                                                     max_items=max_items, seed=seed, generator=gen,
                                                     generator_batch_size=cfg.eval_generator_batch_size)
            timing["synthesis_s"] += time.perf_counter() - t0
            dstats = dataset_stats(samples, tokenizer, cfg.eval_max_length)
            ds_path = None
            if cfg.eval_save_datasets:
                ds_path = out_dir / "datasets" / src.name / f"seed{seed}.jsonl"
                write_jsonl(ds_path, samples)

            infl = {"mean": None, "std": None, "scored": 0}
            if cfg.eval_influence and samples:
                t0 = time.perf_counter()
                if scorer is None:
                    from ..influence import InfluenceScorer

                    with torch.random.fork_rng(devices=[]):
                        scorer = InfluenceScorer.from_config(influence_cfg, influence_dir)
                vals = [r.value for r in scorer.score([s["messages"] for s in samples]) if r.value is not None
                        and math.isfinite(r.value)]
                st = summary_stats(vals)
                infl = {"mean": st["mean"], "std": st["std"], "scored": len(vals)}
                timing["influence_s"] += time.perf_counter() - t0

            t0 = time.perf_counter()
            model, ft = finetune_fresh(cfg, target, tokenizer, device, samples, seed=seed, trust_remote_code=trust)
            timing["finetune_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            held = heldout_metrics(model, tokenizer, test_items, cfg) if samples else dict(baseline)
            timing["heldout_s"] += time.perf_counter() - t0
            del model
            gains = {m: gain(m, held.get(m), baseline.get(m)) for m in PRIMARY_METRICS}
            runs.append({"source": src.name, "seed": seed, "synthesis": sstats, "dataset": dstats,
                         "dataset_path": str(ds_path) if ds_path else None, "influence": infl, "finetune": ft,
                         "heldout": held, "gain": gains})
            logger.info("%s seed %d: %d samples (validity %.2f), influence %s, test loss %.4f, acc %s", src.name, seed,
                        len(samples), sstats["validity_rate"], format_number(infl["mean"]), held["loss"], format_number(held.get("acc")))
            bar.update(1)
    bar.close()
    if scorer is not None:
        scorer.close()

    from ..mcscore import is_mc_item

    report = build_report(cfg, teacher_cfg, influence_cfg, resolved, runs, baseline, target=target,
                          influence_dir=influence_dir,
                          choices_per_item=[len(it["choices"]) for it in test_items if is_mc_item(it)])
    report.update(made_by)
    timing = {k: round(v, 3) for k, v in timing.items()}
    report["timing"] = timing
    report["plots"] = write_plots(report, resolved, out_dir)
    report["timing"]["total_s"] = round(time.perf_counter() - t_start, 3)
    (out_dir / "report.json").write_text(json.dumps(jsonable(report), indent=1) + "\n")
    (out_dir / "report.md").write_text(format_markdown(report))
    return report
