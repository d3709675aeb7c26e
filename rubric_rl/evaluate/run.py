"""The evaluation run: :func:`evaluate` (every source x every seed: synthesize, influence, fine-tune, held-out)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
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
from ..synth.world import SynthesisWorld
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

    from ..progress import phase
    from ..provenance import provenance

    cfg = eval_cfg
    t_start = time.perf_counter()
    made_by = provenance()  # at the start: the code that runs, not the HEAD at the end
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.eval_torch_num_threads:
        torch.set_num_threads(cfg.eval_torch_num_threads)
    generators = dict(generators or {})
    resolved = resolve_sources(sources, generators)
    ev = _Evaluation.setup(cfg, teacher_cfg, influence_cfg, out_dir, teacher=teacher, generators=generators)

    runs: list[dict] = []
    bar = tqdm(total=len(cfg.eval_seeds) * len(resolved), desc="evaluate", disable=not cfg.eval_progress,
               dynamic_ncols=True)
    phase("evaluation", f"{len(resolved)} sources x {len(cfg.eval_seeds)} seeds, {cfg.eval_num_samples} samples each, "
          f"report in {output_dir}")
    for seed in cfg.eval_seeds:
        for src in resolved:
            bar.set_postfix(source=src.name, seed=seed, refresh=True)
            runs.append(ev.run(src, seed))
            bar.update(1)
    bar.close()
    ev.close()
    return _write_report(ev, resolved, runs, made_by, t_start)


def resolve_sources(sources: dict[str, str], generators: dict) -> list[Source]:
    """The evaluated sources, in order; a source with an injected generator is a generator source (an export
    folder SPEC still names its training run)."""
    resolved = []
    for n, s in sources.items():
        if n in generators:
            src = resolve_source(n, s) if Path(s).is_dir() else Source(n, "generator", s)
            src.kind = "generator"
        else:
            src = resolve_source(n, s)
        resolved.append(src)
    if not resolved:
        raise ValueError("sources: nothing to evaluate")
    return resolved


@dataclass
class _Evaluation:
    """What every (source, seed) of one evaluation shares: the data, the target's tokenizer, the teacher, the untrained
    target's metrics (the reference of every gain), the generators and the influence scorer (both loaded once, on
    first use) and the time each stage took."""

    cfg: EvalConfig
    teacher_cfg: object
    influence_cfg: object
    out_dir: Path
    device: object
    docs: list
    test_items: list
    target: str
    trust: bool
    tokenizer: object
    world: SynthesisWorld  # the teacher and the verifier chain's settings
    generators: dict
    baseline: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    influence_dir: Path | None = None
    scorer: object = None

    @classmethod
    def setup(cls, cfg: EvalConfig, teacher_cfg, influence_cfg, out_dir: Path, *, teacher, generators):
        from ..data.documents import load_chat_samples, load_documents
        from ..models import load_tokenizer

        device = resolve_device(cfg.eval_device)
        docs = [d for d in load_documents(cfg.eval_documents, text_field=cfg.eval_document_text_field)
                if d["text"].strip()]
        test_items = load_chat_samples(cfg.eval_test_data)  # errors name the file and the sample
        target = cfg.eval_target_model_name_or_path or influence_cfg.target_model_name_or_path
        trust = bool(getattr(influence_cfg, "target_trust_remote_code", False))
        tokenizer = load_tokenizer(target, trust_remote_code=trust, padding_side="right")
        eval_items = None
        if cfg.eval_decontaminate:
            from ..synth.decontam import load_eval_items

            # (load_eval_items tags items with their file, which the decontaminator's boilerplate detection needs)
            eval_items = load_eval_items([cfg.eval_test_data])
        world = SynthesisWorld(teacher_cfg, [d["text"] for d in docs], device=device, teacher=teacher,
                               eval_items=eval_items)
        world.build_teacher()  # now, before the baseline: a teacher that cannot load stops the run first
        ev = cls(cfg, teacher_cfg, influence_cfg, out_dir, device, docs, test_items, target, trust, tokenizer, world,
                 generators)
        ev.measure_baseline()
        if cfg.eval_influence:
            if not getattr(influence_cfg, "influence_validation_data", None):
                raise ValueError("eval_influence needs influence_validation_data (the validation chat jsonl); set it "
                                 "or pass --eval_influence false")
            ev.influence_dir = Path(cfg.eval_influence_run_dir) if cfg.eval_influence_run_dir else out_dir / "influence"
        return ev

    def measure_baseline(self) -> None:
        """The untrained target's held-out metrics: the reference of every gain."""
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            base_model = load_target(EvalConfig(**{**asdict(self.cfg), "eval_finetune": "full"}), self.target,
                                     self.tokenizer, self.device, seed=0, trust_remote_code=self.trust)
        base_model.eval()
        self.baseline = heldout_metrics(base_model, self.tokenizer, self.test_items, self.cfg)
        del base_model
        self.timing = {"baseline_s": round(time.perf_counter() - t0, 3), "synthesis_s": 0.0, "influence_s": 0.0,
                       "finetune_s": 0.0, "heldout_s": 0.0, "generator_load_s": 0.0}
        logger.info("untrained target %s: test loss %.4f, acc %s", self.target, self.baseline["loss"],
                    self.baseline.get("acc"))

    def run(self, src: Source, seed: int) -> dict:
        """One (source, seed): its dataset, the dataset's mean influence, a fresh target fine-tuned on it, and the
        held-out metrics with their gains over the untrained target."""
        cfg = self.cfg
        samples, sstats = self.dataset(src, seed)
        dstats = dataset_stats(samples, self.tokenizer, cfg.eval_max_length)
        ds_path = None
        if cfg.eval_save_datasets:
            ds_path = self.out_dir / "datasets" / src.name / f"seed{seed}.jsonl"
            write_jsonl(ds_path, samples)
        infl = self.influence(samples)
        t0 = time.perf_counter()
        model, ft = finetune_fresh(cfg, self.target, self.tokenizer, self.device, samples, seed=seed,
                                   trust_remote_code=self.trust)
        self.timing["finetune_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        held = heldout_metrics(model, self.tokenizer, self.test_items, cfg) if samples else dict(self.baseline)
        self.timing["heldout_s"] += time.perf_counter() - t0
        if samples and "lm_eval_s" in held:  # the harness's share of heldout_s
            self.timing["lm_eval_s"] = self.timing.get("lm_eval_s", 0.0) + held["lm_eval_s"]
        del model
        gains = {m: gain(m, held.get(m), self.baseline.get(m)) for m in PRIMARY_METRICS}
        logger.info("%s seed %d: %d samples (validity %.2f), influence %s, test loss %.4f, acc %s", src.name, seed,
                    len(samples), sstats["validity_rate"], format_number(infl["mean"]), held["loss"],
                    format_number(held.get("acc")))
        return {"source": src.name, "seed": seed, "synthesis": sstats, "dataset": dstats,
                "dataset_path": str(ds_path) if ds_path else None, "influence": infl, "finetune": ft,
                "heldout": held, "gain": gains}

    def dataset(self, src: Source, seed: int) -> tuple[list[dict], dict]:
        """The source's samples for this seed and the synthesis stats (a closed loop's dataset is read, not made)."""
        cfg = self.cfg
        gen = self.generator(src)
        synth = self.world.synthesizer()  # a fresh verifier chain per dataset (no state shared between datasets)
        t0 = time.perf_counter()
        if src.kind == "dataset":  # a closed loop's finished dataset for this seed
            samples, sstats = loop_dataset(src, seed, cfg.eval_num_samples)
        else:
            max_items = math.ceil(cfg.eval_max_queries_per_sample * cfg.eval_num_samples)
            samples, sstats = synthesize_dataset(src, self.docs, synth, num_samples=cfg.eval_num_samples,
                                                 max_items=max_items, seed=seed, generator=gen,
                                                 generator_batch_size=cfg.eval_generator_batch_size)
        self.timing["synthesis_s"] += time.perf_counter() - t0
        return samples, sstats

    def generator(self, src: Source):
        """A generator source's rubric generator, loaded on first use and kept (``None`` for other sources)."""
        if src.kind != "generator":
            return None
        gen = self.generators.get(src.name)
        if gen is None:
            from ..generator import RubricGenerator

            t0 = time.perf_counter()
            gen = RubricGenerator.from_pretrained(src.spec, device=self.device)
            self.generators[src.name] = gen
            self.timing["generator_load_s"] += time.perf_counter() - t0
        return gen

    def influence(self, samples: list[dict]) -> dict:
        """The dataset's mean influence (``eval_influence``); the scorer is built on first use."""
        infl = {"mean": None, "std": None, "scored": 0}
        if not (self.cfg.eval_influence and samples):
            return infl
        t0 = time.perf_counter()
        if self.scorer is None:
            from ..influence import InfluenceScorer

            with torch.random.fork_rng(devices=[]):
                self.scorer = InfluenceScorer.from_config(self.influence_cfg, self.influence_dir)
        vals = [r.value for r in self.scorer.score([s["messages"] for s in samples]) if r.value is not None
                and math.isfinite(r.value)]
        st = summary_stats(vals)
        self.timing["influence_s"] += time.perf_counter() - t0
        return {"mean": st["mean"], "std": st["std"], "scored": len(vals)}

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()


def _write_report(ev: _Evaluation, resolved: list[Source], runs: list[dict], made_by: dict, t_start: float) -> dict:
    """report.json, report.md and the plots in the evaluation's folder; returns the report."""
    from ..mcscore import is_mc_item

    report = build_report(ev.cfg, ev.teacher_cfg, ev.influence_cfg, resolved, runs, ev.baseline, target=ev.target,
                          influence_dir=ev.influence_dir,
                          choices_per_item=[len(it["choices"]) for it in ev.test_items if is_mc_item(it)])
    report.update(made_by)
    report["timing"] = {k: round(v, 3) for k, v in ev.timing.items()}
    report["plots"] = write_plots(report, resolved, ev.out_dir)
    report["timing"]["total_s"] = round(time.perf_counter() - t_start, 3)
    (ev.out_dir / "report.json").write_text(json.dumps(jsonable(report), indent=1) + "\n")
    (ev.out_dir / "report.md").write_text(format_markdown(report))
    return report
