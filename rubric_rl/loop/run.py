"""The closed loop: rounds of select -> synthesize -> fine-tune, per selection rule and seed, resumable.

Per rule and run seed ``s`` (the ``eval_seeds``), with the seed set ``S`` (``loop_seed_data``) and the round
shares ``b_0..b_{T-1}`` of the budget (:meth:`ClosedLoopConfig.round_budgets`):

1. round ``t`` scores every seed with the current student (the untrained target in round 0) by the rule
   (:mod:`rubric_rl.loop.selection`) and picks the top ``min(b_t, |S|)``; ``static`` takes all seeds, spread
   evenly, in one round;
2. item ``k`` of the round is the ``k``-th picked seed (cycling when the teacher's samples are rejected), with its
   document, the rubric of the rubric source (a file's rubrics cycle over all the loop's items), the strategy, and
   the teacher seed ``s * 1_000_003 + t * 100_003 + k``;
   the shared pipeline (:func:`~rubric_rl.synth.pipeline.run_items`) runs the items until the round's share is
   spent, exactly: ``b_t`` accepted samples, or ``b_t`` teacher queries;
3. a fresh target is fine-tuned on all samples so far with the evaluation's fine-tuning (the same seed, order and
   settings as ``rubric-rl evaluate`` gives that dataset), and scored on the held-out test set (reported, never
   used to select) and the validation set.

On disk, ``OUT/<rule>/seed<s>/round<t>/``: ``selection.json`` (scores, picks, the student's answers for
``loss_own``), ``samples.jsonl``, ``student.safetensors`` (the trainable weights), and ``metrics.json``, written
last: a round with ``metrics.json`` is done and never rerun; a round without it is redone from its start. Then
``OUT/<rule>/seed<s>/dataset.jsonl`` (every sample), ``OUT/<rule>/closed_loop_rule.json`` (which makes the rule
folder a source of ``rubric-rl evaluate``), and ``OUT/report.json``, ``report.md``, ``budget_curve.png``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..configs.closed_loop import RULE_MARKER, STATIC, ClosedLoopConfig
from ..configs.evaluate import EvalConfig
from ..configs.synth import NEEDS_DOCUMENT
from ..errors import UserError
from ..jsonl import read_jsonl, write_json_atomic, write_jsonl
from ..rundir import FREE_FIELDS
from ..synth.pipeline import ItemPlanner, MemorySink, RubricSource, RubricStream, document_order, run_items

__all__ = ["closed_loop", "RULE_MARKER", "ARGS_FILE", "SeedPlanner"]

logger = logging.getLogger("rubric_rl.loop")

ARGS_FILE = "closed_loop_args.json"
# settings that change nothing a finished round computed: a resumed run may change them (the teacher's endpoint and
# retries and the influence performance knobs are train's, rundir.FREE_FIELDS)
_FREE = {"loop_rules", "loop_overwrite", "loop_progress", "loop_save_students", "eval_seeds", "eval_progress",
         "eval_torch_num_threads", "eval_device", "eval_save_datasets", "eval_influence", "eval_influence_run_dir",
         "eval_score_batch_size", "eval_generator_batch_size"} | {
    f for f in FREE_FIELDS if f.startswith(("teacher_", "influence_"))}


class SeedPlanner(ItemPlanner):
    """The pipeline's planner with the loop's item order: item ``k`` of round ``t`` is the ``k``-th picked seed
    (``order`` cycles; ``None`` = static: every seed once per epoch, in the pipeline's document order), its
    document and rubric, and the teacher seed ``s * 1_000_003 + t * 100_003 + k``. ``offset`` is the number of items
    the earlier rounds planned: a rubric file's rubrics cycle over the whole loop, not from its first rubric
    again each round; a generator's rubrics are those of epoch ``t``."""

    def __init__(self, seeds: list[dict], order: list[int] | None, documents: list[dict], rubrics, *, seed: int,
                 round_index: int, strategy: str, offset: int = 0):
        super().__init__(documents, rubrics, seed=seed, strategy=strategy, seed_samples=seeds)
        self.order, self.round, self.offset = order, round_index, offset

    def seed_of(self, k: int) -> int:
        if self.order is not None:
            return self.order[k % len(self.order)]
        epoch, pos = divmod(k, len(self.seed_samples))
        return document_order(self.seed, epoch, len(self.seed_samples))[pos]

    def plan(self, k: int):
        i = self.seed_of(k)
        doc_index = self.seed_document(i)
        if self.strategy in NEEDS_DOCUMENT and doc_index is None:
            return None, "seed_without_document"
        return self.item(k, epoch=self.round, doc_index=doc_index, seed_index=i,
                         teacher_seed=self.seed * 1_000_003 + self.round * 100_003 + k, rubric_item=self.offset + k,
                         label=f"{self.round}:{k}")


# ---------------------------------------------------------------------------------------------- run folder
def _fingerprint(*configs) -> dict:
    out = {}
    for cfg in configs:
        for k, v in asdict(cfg).items():
            if k not in _FREE:
                out[k] = v
    return json.loads(json.dumps(out, default=str))


def _open_run(out: Path, fingerprint: dict, overwrite: bool) -> None:
    args = out / ARGS_FILE
    if out.exists() and any(out.iterdir()):
        if not args.exists():
            raise UserError(f"{out} exists and is not a closed-loop run folder (no {ARGS_FILE}); choose another "
                            "--output")
        if overwrite:
            shutil.rmtree(out)
        else:
            saved = json.loads(args.read_text())
            diff = sorted(k for k in (set(saved) | set(fingerprint)) - _FREE if saved.get(k) != fingerprint.get(k))
            if diff:
                listed = ", ".join(f"{k} ({saved.get(k)!r} -> {fingerprint.get(k)!r})" for k in diff)
                raise UserError(f"{out} holds a closed loop run with other settings: {listed}; rerun with the "
                                "original values to resume it, pass --loop_overwrite true to start over, or choose "
                                "another --output")
    out.mkdir(parents=True, exist_ok=True)
    if not args.exists():
        args.write_text(json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")


def _save_student(model, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}, str(tmp))
    tmp.replace(path)


def _write_json(path: Path, obj) -> None:
    """The loop's JSON files (indent 1, ASCII, a final newline), written atomically."""
    write_json_atomic(path, obj, end="\n", ensure_ascii=True, default=str)


def _load_student(model, path: Path):
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(tensors))
    res = model.load_state_dict(tensors, strict=False)
    if missing or res.unexpected_keys:
        raise UserError(f"{path}: does not fit the student (missing {missing[:3]}, unexpected "
                        f"{list(res.unexpected_keys)[:3]}); the target settings changed? pass --loop_overwrite true")
    return model


# ---------------------------------------------------------------------------------------------- the loop
class _World:
    """What every (rule, seed) loop shares: data, tokenizer, teacher, verifier inputs, the untrained metrics."""

    def __init__(self, loop_cfg, eval_cfg, teacher_cfg, influence_cfg, teacher, generator):
        from ..data.documents import load_chat_samples, load_documents
        from ..models import load_tokenizer
        from ..preflight import check_chat_file

        self.loop, self.eval, self.teacher_cfg, self.influence_cfg = loop_cfg, eval_cfg, teacher_cfg, influence_cfg
        self.docs = [d for d in load_documents(eval_cfg.eval_documents, text_field=eval_cfg.eval_document_text_field)
                     if d["text"].strip()]
        self.pool = check_chat_file(loop_cfg.loop_seed_data, field="loop_seed_data", need_assistant=True)
        if loop_cfg.loop_num_seeds > len(self.pool):
            raise UserError(f"loop_num_seeds={loop_cfg.loop_num_seeds} but {loop_cfg.loop_seed_data} holds "
                            f"{len(self.pool)} seeds")
        self.test = load_chat_samples(eval_cfg.eval_test_data)
        val = getattr(influence_cfg, "influence_validation_data", None)
        self.validation = load_chat_samples(val) if val else None
        self.source = RubricSource.resolve(loop_cfg.loop_rubric_source)
        self.target = eval_cfg.eval_target_model_name_or_path or influence_cfg.target_model_name_or_path
        self.trust = bool(getattr(influence_cfg, "target_trust_remote_code", False))
        self.tokenizer = load_tokenizer(self.target, trust_remote_code=self.trust, padding_side="right")
        from ..devices import resolve_device

        self.device = resolve_device(eval_cfg.eval_device)
        eval_items = None
        if eval_cfg.eval_decontaminate:
            from ..synth.decontam import load_eval_items

            eval_items = load_eval_items([eval_cfg.eval_test_data] + ([val] if val else []))
        from ..synth.world import SynthesisWorld

        self.world = SynthesisWorld(teacher_cfg, [d["text"] for d in self.docs], device=self.device, teacher=teacher,
                                    eval_items=eval_items)
        self.world.build_teacher()
        self.generator = generator  # a loaded rubric generator (loaded from the source's folder on first use if None)
        self._baseline = None

    def seeds_for(self, seed: int) -> list[dict]:
        n = self.loop.loop_num_seeds
        return list(self.pool) if not n else random.Random(f"loop:seeds:{seed}").sample(self.pool, n)

    def fresh_student(self, seed: int):
        from ..evaluate.finetuning import load_target

        return load_target(self.eval, self.target, self.tokenizer, self.device, seed=seed, trust_remote_code=self.trust)

    def train_student(self, samples: list[dict], seed: int):
        """A fresh target fine-tuned on ``samples``, exactly as ``rubric-rl evaluate`` fine-tunes a dataset."""
        from ..evaluate.finetuning import finetune_fresh

        return finetune_fresh(self.eval, self.target, self.tokenizer, self.device, samples, seed=seed,
                              trust_remote_code=self.trust)

    def metrics(self, model) -> dict:
        from ..evaluate.heldout import heldout_metrics
        from ..mcscore import answer_loss

        model.eval()
        held = heldout_metrics(model, self.tokenizer, self.test, self.eval)
        if self.validation:
            held["validation_loss"] = answer_loss(model, self.tokenizer, self.validation,
                                                  batch_size=self.eval.eval_score_batch_size,
                                                  max_length=self.eval.eval_max_length)["loss"]
        return held

    def baseline(self) -> dict:
        if self._baseline is None:
            with torch.random.fork_rng(devices=[]):
                model = self.fresh_student(0)
            self._baseline = self.metrics(model)
        return self._baseline

    def synthesizer(self):
        return self.world.synthesizer()  # a fresh verifier chain each round


def _round_dirs(rs_dir: Path) -> list[Path]:
    return sorted((p for p in rs_dir.glob("round*") if p.is_dir() and p.name[5:].isdigit()),
                  key=lambda p: int(p.name[5:]))


def _finished_rounds(rs_dir: Path) -> tuple[list[dict], list[dict]]:
    """The metrics of the rounds already finished (in order) and their samples; an unfinished round (killed) is
    removed, to be redone from its start."""
    done = []
    for d in _round_dirs(rs_dir):
        if (d / "metrics.json").exists() and int(d.name[5:]) == len(done):
            done.append(json.loads((d / "metrics.json").read_text()))
        else:
            shutil.rmtree(d)
    data: list[dict] = []
    for t in range(len(done)):
        data += read_jsonl(rs_dir / f"round{t}" / "samples.jsonl")
    return done, data


def _synthesize_round(world: _World, planner, sink: MemorySink, share: int, num_seeds: int):
    """One round's samples into ``sink``: ``share`` accepted samples (at most ``loop_max_queries_per_sample`` items
    each), or ``share`` teacher queries (``loop_budget_unit: queries``). Returns ``run_items``' (stopped, cursor)."""
    cfg = world.loop
    if cfg.loop_budget_unit == "samples":
        return run_items(planner, world.synthesizer, sink, num_samples=share,
                         max_items=math.ceil(cfg.loop_max_queries_per_sample * share))
    return run_items(planner, world.synthesizer, sink, num_samples=share, budget=share, max_idle=max(100, num_seeds))


def _run_rule_seed(world: _World, rule: str, seed: int, rs_dir: Path, bar) -> dict:
    from ..progress import phase
    from .selection import seed_scores, select

    cfg = world.loop
    seeds = world.seeds_for(seed)
    budgets = cfg.round_budgets(rule)
    rs_dir.mkdir(parents=True, exist_ok=True)
    done, data = _finished_rounds(rs_dir)
    stream = RubricStream(world.source, world.docs, seed, generator=world.generator,
                          batch_size=world.eval.eval_generator_batch_size,
                          cache_path=rs_dir / "rubrics.jsonl" if world.source.kind == "generator" else None)
    student = None
    if done and len(done) < len(budgets):
        student = _load_student(world.fresh_student(seed), rs_dir / f"round{len(done) - 1}" / "student.safetensors")
    if done:
        bar.update(len(done))
    for t in range(len(done), len(budgets)):
        t0 = time.perf_counter()
        rdir = rs_dir / f"round{t}"
        rdir.mkdir()
        share = budgets[t]
        if student is None:  # round 0: the untrained target
            with torch.random.fork_rng(devices=[]):
                student = world.fresh_student(seed)
        phase(f"closed loop {rule}, seed {seed}, round {t + 1}/{len(budgets)}",
              f"{share} {cfg.loop_budget_unit}, {len(data)} samples so far")
        scores, extra = seed_scores(rule, student, world.tokenizer, seeds, seed=seed, round_index=t,
                                    max_new_tokens=cfg.loop_answer_max_new_tokens,
                                    max_length=world.eval.eval_max_length,
                                    batch_size=world.eval.eval_score_batch_size, validation=world.validation,
                                    influence_cfg=world.influence_cfg)
        order = None if rule == STATIC else select(scores, min(share, len(seeds)))
        _write_json(rdir / "selection.json", {"round": t, "rule": rule, "share": share, "picked": order,
                                              "scores": scores, **extra})
        del student
        planner = SeedPlanner(seeds, order, world.docs, stream, seed=seed, round_index=t, strategy=cfg.loop_strategy,
                              offset=sum(m["items"] for m in done))
        sink = MemorySink(share)
        stopped, cursor = _synthesize_round(world, planner, sink, share, len(seeds))
        world.generator = stream.generator  # loaded once, for every later loop
        if cfg.loop_budget_unit == "samples" and sink.accepted < share:
            logger.warning("%s seed %d round %d: %d of %d samples accepted after %d items (%s); rejections: %s",
                           rule, seed, t, sink.accepted, share, cursor.next_item, stopped, dict(sink.reasons))
        samples = [{**s, "round": t} for s in sink.samples]
        write_jsonl(rdir / "samples.jsonl", samples)
        data += samples
        student, ft = world.train_student(data, seed)
        held = world.metrics(student)
        _save_student(student, rdir / "student.safetensors")
        if t and not cfg.loop_save_students:
            (rs_dir / f"round{t - 1}" / "student.safetensors").unlink(missing_ok=True)
        m = {"round": t, "share": share, "accepted": sink.accepted, "queries": cursor.queries, "items": cursor.next_item,
             "stopped": stopped, "rejected": dict(sorted(sink.reasons.items())),
             "spent_samples": sum(x["accepted"] for x in done) + sink.accepted,
             "spent_queries": sum(x["queries"] for x in done) + cursor.queries, "train_samples": len(data),
             "finetune": ft, "heldout": held, "seconds": round(time.perf_counter() - t0, 2)}
        _write_json(rdir / "metrics.json", m)  # last: the round is done
        done.append(m)
        logger.info("%s seed %d round %d: %d samples (%d queries), test loss %.4f, acc %s", rule, seed, t,
                    sink.accepted, cursor.queries, held["loss"], held.get("acc"))
        bar.update(1)
    del student
    write_jsonl(rs_dir / "dataset.jsonl", data)
    summary = {"rule": rule, "seed": seed, "num_seeds": len(seeds), "rounds": done, "final": done[-1]["heldout"],
               "accepted": done[-1]["spent_samples"], "queries": done[-1]["spent_queries"],
               "dataset_path": str(rs_dir / "dataset.jsonl")}
    _write_json(rs_dir / "summary.json", summary)
    return summary


def closed_loop(loop_cfg: ClosedLoopConfig, eval_cfg: EvalConfig, teacher_cfg, influence_cfg, output, *,
                teacher=None, generator=None, argv: list[str] | None = None) -> dict:
    """Run (or resume) every rule x seed loop into ``output``; writes and returns the report. ``teacher`` replaces
    the one ``teacher_cfg`` names; ``generator`` (an object with ``generate(texts, seed=, batch_size=)``) the rubric
    generator a folder ``loop_rubric_source`` names."""
    from tqdm.auto import tqdm

    from ..progress import phase
    from ..provenance import provenance
    from .report import build_report, format_markdown, write_plot

    made_by = provenance()
    t_start = time.perf_counter()
    out = Path(output)
    _open_run(out, _fingerprint(loop_cfg, eval_cfg, teacher_cfg, influence_cfg), loop_cfg.loop_overwrite)
    if eval_cfg.eval_torch_num_threads:
        torch.set_num_threads(eval_cfg.eval_torch_num_threads)
    world = _World(loop_cfg, eval_cfg, teacher_cfg, influence_cfg, teacher, generator)
    phase("closed loop", f"rules {', '.join(loop_cfg.loop_rules)} x seeds {eval_cfg.eval_seeds}, budget "
          f"{loop_cfg.loop_budget} {loop_cfg.loop_budget_unit} in {loop_cfg.loop_rounds} rounds, run folder {out}")
    baseline = world.baseline()
    total = sum(len(loop_cfg.round_budgets(r)) for r in loop_cfg.loop_rules) * len(eval_cfg.eval_seeds)
    bar = tqdm(total=total, desc="closed-loop rounds", disable=not loop_cfg.loop_progress, dynamic_ncols=True)
    runs = []
    for rule in loop_cfg.loop_rules:
        (out / rule).mkdir(exist_ok=True)
        _write_json(out / rule / RULE_MARKER,
                    {"rule": rule, "budget": loop_cfg.loop_budget, "budget_unit": loop_cfg.loop_budget_unit,
                     "rounds": loop_cfg.rounds_of(rule), "strategy": loop_cfg.loop_strategy,
                     "rubric_source": loop_cfg.loop_rubric_source, "seed_data": loop_cfg.loop_seed_data})
        for seed in eval_cfg.eval_seeds:
            runs.append(_run_rule_seed(world, rule, seed, out / rule / f"seed{seed}", bar))
    bar.close()
    report = build_report(loop_cfg, eval_cfg, runs, baseline, target=world.target)
    report.update(made_by)
    report["command"] = "rubric-rl closed-loop " + " ".join(argv) if argv is not None else None
    report["plot"] = write_plot(report, out)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    _write_json(out / "report.json", report)
    (out / "report.md").write_text(format_markdown(report))
    return report

