"""``rubric-rl synthesize``: documents + a rubric source + a teacher -> a verified chat dataset with provenance.

::

    rubric-rl synthesize --config C --rubric_source {EXPORT_DIR | rubrics.json | none} \\
        --documents D.jsonl --output OUT.jsonl [--num_samples N]

Writes ``OUT.jsonl`` (one accepted sample per line: ``messages``, ``doc_id``, ``provenance`` with the
item number, document id, rubric, teacher, strategy, seed and every verifier's verdict), and next to it
``OUT.summary.json`` (accepted, rejected by reason and by verifier, teacher queries spent, why the run
stopped), ``OUT.state.json`` (the resume checkpoint), ``OUT.rubrics.jsonl`` (rubrics a generator
wrote, so a resumed run uses the same ones) and, with ``synth_write_rejected``, ``OUT.rejected.jsonl``.
With ``synth_hf_dataset`` / ``synth_push_to_hub`` the accepted samples also become a Hugging Face dataset folder
with a dataset card, uploaded to the hub (:mod:`rubric_rl.synth.hub`; ``HF_TOKEN`` is checked before any work).

The summary counts items and rubrics apart: ``items_skipped`` counts items sent to no teacher, by reason
(``rubric_unparseable``: the generator's rubric for the item's document did not parse); ``rubrics_generated`` /
``rubrics_unparseable`` count the rubrics in ``OUT.rubrics.jsonl``, which a generator writes a whole pass over the
documents at a time, so they include documents no item has reached yet.

Work is a deterministic, endless sequence of items (item k -> document / seed sample, rubric, teacher
seed), processed in chunks of at most ``synth_batch_size`` teacher queries. After each chunk the
output is fsync'ed and the state (next item, output size, counts) replaced atomically; a rerun with
the same arguments truncates the output back to the last checkpoint and continues from there, so an
interrupted run neither duplicates nor loses samples. A finished run with the same arguments is
reused; a larger ``--num_samples`` extends it. Different arguments are refused unless
``synth_overwrite``.

Every teacher query counts against the budget (``synth_budget``, default
``synth_max_queries_per_sample * num_samples``): the run stops cleanly when it is spent and reports
the queries spent. HTTP retries inside the ``openai`` backend are not separate queries. A query that
failed for infrastructure reasons (timeout, connection, HTTP 5xx/408/429) is not counted: its item is
tried again in a later chunk (at most ``INFRA_RETRIES_PER_ITEM`` times, after which it counts as a
rejected query), and the teacher's circuit breaker stops the run with ``TeacherUnavailable`` (the lines
written so far are kept; a rerun resumes) when the endpoint is down.

The items, their rubrics and seeds, the chunked loop and the infrastructure retries are the shared pipeline's
(:mod:`rubric_rl.synth.pipeline`); this module adds the configuration, the resume state and the file sink.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from ..data.documents import load_chat_samples, load_documents
from ..errors import UserError
from ..jsonl import JsonlAppender, parse_lines, write_json_atomic
from ..configs.synth import SynthConfig
from ..configs.teacher import TeacherConfig
from . import hub
from .dataset import save_hf_dataset
from .dedup import NearDuplicateFilter
from .engine import SampleSynthesizer, SynthItem
from .pipeline import Cursor, ItemPlanner, RubricSource, RubricStream, run_items
from .strategies import NEW_QUESTION, choose_strategy
from .verifiers import VerifierSettings, default_verifiers
from .world import SynthesisWorld

logger = logging.getLogger(__name__)

STATE_VERSION = 2  # 2: items follow the shared pipeline's seeding scheme (a version-1 state resumes another order)


# ---------------------------------------------------------------------------------------------- helpers
def _paths(output: str | Path) -> dict[str, Path]:
    out = Path(output)
    stem = out.with_suffix("") if out.suffix == ".jsonl" else out
    return {"output": out, "state": Path(f"{stem}.state.json"), "summary": Path(f"{stem}.summary.json"),
            "rubrics": Path(f"{stem}.rubrics.jsonl"), "rejected": Path(f"{stem}.rejected.jsonl")}


def _file_digest(path: str | Path | None) -> str | None:
    if path is None:
        return None
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():  # an export folder: names and sizes (hashing weights would be slow)
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(path)}:{p.stat().st_size}\n".encode())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _source_digest(source: RubricSource) -> dict:
    return {"kind": source.kind, "path": None if source.kind == "none" else str(Path(source.spec).resolve()),
            "content": None if source.kind == "none" else _file_digest(source.spec)}


class FileSink:
    """The pipeline's sink for ``synthesize``: accepted samples appended to OUTPUT (and rejected candidates to
    OUTPUT.rejected.jsonl), counts in the resume state; after each chunk the output is fsync'ed and then the
    state that points at it replaced atomically."""

    def __init__(self, paths: dict[str, Path], state: dict, *, num_samples: int,
                 write_rejected: bool, progress: bool):
        from tqdm.auto import tqdm

        self.paths, self.state = paths, state
        self.out = JsonlAppender(paths["output"], truncate_to=state["output_bytes"])
        self.rejected_out = (JsonlAppender(paths["rejected"], truncate_to=state["rejected_bytes"])
                             if write_rejected else None)
        self.rejected, self.by_verifier, self.skipped = (Counter(state["rejected"]),
                                                         Counter(state["rejected_by_verifier"]),
                                                         Counter(state["skipped"]))
        self.bar = tqdm(total=num_samples, initial=min(state["accepted"], num_samples), desc="synthesize",
                        unit="sample", disable=not progress, dynamic_ncols=True)

    @property
    def accepted(self) -> int:
        return self.state["accepted"]

    def skip(self, k: int, reason: str) -> None:
        self.skipped[reason] += 1

    def accept(self, item: SynthItem, outcome) -> None:
        self.out.write({"messages": outcome.messages, "doc_id": item.doc_id, "provenance": _provenance(outcome.meta)})
        self.state["accepted"] += 1
        self.bar.update(1)

    def surplus(self, item: SynthItem, outcome) -> None:
        self.state["surplus"] += 1

    def reject(self, item: SynthItem, outcome) -> None:
        self.rejected[outcome.reason] += 1
        if outcome.meta.get("rejected_by"):
            self.by_verifier[outcome.meta["rejected_by"]] += 1
        if self.rejected_out is not None:
            self.rejected_out.write({"reason": outcome.reason, "teacher_text": outcome.teacher_text,
                                     "messages": outcome.messages, "provenance": _provenance(outcome.meta)})

    def save_counts(self) -> None:
        self.state.update(rejected=dict(self.rejected), rejected_by_verifier=dict(self.by_verifier),
                          skipped=dict(self.skipped))

    def checkpoint(self, cursor: Cursor) -> None:
        """Data first, then the state that points at it."""
        self.state.update(next_item=cursor.next_item, queries=cursor.queries,
                          retry_items=[list(r) for r in cursor.retry_items],
                          infrastructure_failures=cursor.infrastructure_failures)
        self.state["output_bytes"] = self.out.checkpoint()
        if self.rejected_out is not None:
            self.state["rejected_bytes"] = self.rejected_out.checkpoint()
        self.save_counts()
        write_json_atomic(self.paths["state"], self.state)
        self.bar.set_postfix(queries=cursor.queries, rejected=sum(self.rejected.values()), refresh=False)

    def close(self) -> None:
        self.bar.close()
        self.out.close()
        if self.rejected_out is not None:
            self.rejected_out.close()


# ---------------------------------------------------------------------------------------------- command
def synthesize(synth_cfg: SynthConfig, teacher_cfg: TeacherConfig, *, rubric_source: str, documents: str,
               output: str, num_samples: int | None = None, teacher=None, rubric_generator=None,
               command_line: str | None = None) -> dict:
    """Write ``output`` (see the module docstring) and return the summary dict (also in ``OUT.summary.json``).

    ``teacher`` / ``rubric_generator`` replace the ones the configs name (tests, or an already loaded
    model). ``num_samples`` defaults to one per document. ``command_line`` is what the dataset card records
    (``synth_hf_dataset`` / ``synth_push_to_hub``, :mod:`rubric_rl.synth.hub`).
    """
    cfg = synth_cfg
    t0 = time.time()
    hub.check_hub_settings(cfg, output)  # HF_TOKEN before any work
    docs = [d for d in load_documents(documents) if d["text"].strip()]
    num_samples = num_samples or len(docs)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
    budget = cfg.synth_budget or math.ceil(cfg.synth_max_queries_per_sample * num_samples)
    seeds = load_chat_samples(cfg.synth_seed_samples) if cfg.synth_seed_samples else []
    paths = _paths(output)
    paths["output"].parent.mkdir(parents=True, exist_ok=True)

    source = RubricSource.resolve(rubric_source)
    rubrics = RubricStream(source, docs, cfg.synth_seed, generator=rubric_generator, cache_path=paths["rubrics"])
    state, resumed = _start_state(cfg, paths, _fingerprint(cfg, teacher_cfg, documents, source), rubrics, budget,
                                  len(seeds))
    strategy = state["strategy"]
    if strategy != NEW_QUESTION and not seeds:
        raise ValueError(f"strategy {strategy!r} needs synth_seed_samples")
    logger.info("synthesize: strategy %s (%s), budget %d queries, %d documents, %d seed samples%s", strategy,
                state["strategy_why"], budget, len(docs), len(seeds), ", resuming" if resumed else "")
    verifiers, eval_items = _verifiers(cfg, seeds, paths, state)

    own_teacher = teacher is None
    world = SynthesisWorld(teacher_cfg, [d["text"] for d in docs], teacher=teacher, verifiers=verifiers)

    def synthesizer() -> SampleSynthesizer:  # called by run_items on the first chunk: a finished run loads no model
        return world.synthesizer(budget=max(0, budget - state["queries"]))

    planner = ItemPlanner(docs, rubrics, seed=cfg.synth_seed, strategy=strategy, seed_samples=seeds)
    sink = FileSink(paths, state, num_samples=num_samples, write_rejected=cfg.synth_write_rejected,
                    progress=cfg.synth_progress)
    cursor = Cursor(next_item=state["next_item"], queries=state["queries"],
                    retry_items=[list(r) for r in state.get("retry_items", [])],
                    infrastructure_failures=state.get("infrastructure_failures", 0))
    try:
        stopped, cursor = run_items(planner, synthesizer, sink, num_samples=num_samples, cursor=cursor,
                                    budget=budget, max_chunk=cfg.synth_batch_size,
                                    max_idle=max(len(docs), len(seeds), 100))
    finally:
        sink.close()
        teacher = world.built_teacher  # None when no chunk needed one
        if own_teacher and teacher is not None and hasattr(teacher, "close"):
            teacher.close()

    state["elapsed_s"] = round(state.get("elapsed_s", 0.0) + time.time() - t0, 3)
    sink.save_counts()
    write_json_atomic(paths["state"], state)
    summary = {
        "output": str(paths["output"]), "accepted": state["accepted"], "num_samples": num_samples,
        "rejected": dict(sorted(sink.rejected.items(), key=lambda kv: -kv[1])),
        "rejected_by_verifier": dict(sink.by_verifier), "items_skipped": dict(sink.skipped),
        "queries_spent": state["queries"], "budget": budget, "stopped": stopped, "surplus": state["surplus"],
        "infrastructure_failures": state.get("infrastructure_failures", 0),
        "strategy": strategy, "strategy_why": state["strategy_why"],
        "teacher": _teacher_label(teacher, teacher_cfg),
        "rubric_source": source.kind + ("" if source.kind == "none" else f":{rubric_source}"),
        "rubrics_generated": rubrics.generated, "rubrics_unparseable": rubrics.unparseable,
        "decontamination": bool(eval_items), "resumed": resumed, "elapsed_s": state["elapsed_s"],
    }
    _finish(cfg, teacher_cfg, summary, paths, documents=documents, num_documents=len(docs), source=source,
            command_line=command_line)
    return summary


def _fingerprint(cfg: SynthConfig, teacher_cfg: TeacherConfig, documents: str, source: RubricSource) -> dict:
    """What a resumed run must share with the run that wrote the output: the inputs' digests and every setting that
    changes a sample (not the ones that only size, share or show the run)."""
    return {
        "documents": _file_digest(documents), "rubric_source": _source_digest(source),
        "seed_samples": _file_digest(cfg.synth_seed_samples), "eval_files": [_file_digest(p) for p in cfg.synth_eval_files],
        "synth": {k: v for k, v in asdict(cfg).items() if k not in (
            "synth_budget", "synth_max_queries_per_sample", "synth_batch_size", "synth_save_dataset",
            "synth_hf_dataset", "synth_hf_license", "synth_push_to_hub", "synth_push_private",  # sharing only
            "synth_overwrite", "synth_progress", "synth_eval_files", "synth_seed_samples")},
        "teacher": {k: getattr(teacher_cfg, k) for k in ("teacher_backend", "teacher_model_name_or_path",
                                                         "teacher_temperature", "teacher_top_p",
                                                         "teacher_max_new_tokens", "teacher_max_document_chars")},
    }


def _start_state(cfg: SynthConfig, paths: dict[str, Path], fingerprint: dict, rubrics: RubricStream, budget: int,
                 num_seeds: int) -> tuple[dict, bool]:
    """The resume state (and True) when the output is a resumable run of these inputs and settings; otherwise a fresh
    state (with its strategy chosen), written before the output exists (and False)."""
    state = _open_state(paths, fingerprint, cfg.synth_overwrite, rubrics)
    if state is not None:
        return state, True
    choice = choose_strategy(cfg.synth_strategy, budget=budget, num_seeds=num_seeds,
                             ratio_threshold=cfg.synth_auto_ratio_threshold)
    state = {"version": STATE_VERSION, "fingerprint": fingerprint, "strategy": choice.strategy,
             "strategy_why": choice.why, "next_item": 0, "output_bytes": 0, "rejected_bytes": 0,
             "queries": 0, "accepted": 0, "rejected": {}, "rejected_by_verifier": {}, "skipped": {},
             "surplus": 0, "elapsed_s": 0.0,
             "retry_items": [], "infrastructure_failures": 0}
    # Before the output exists: a run killed before its first checkpoint leaves a state at offset 0, so
    # the rerun resumes (truncating what was half-written) instead of refusing a file without a state.
    write_json_atomic(paths["state"], state)
    return state, False


def _verifiers(cfg: SynthConfig, seeds: list[dict], paths: dict[str, Path], state: dict) -> tuple[list, list]:
    """The stateless chain plus the near-duplicate filter, seeded with the seed set and what is already written; and
    the evaluation items it decontaminates against (empty: decontamination is off)."""
    eval_items = []
    if cfg.synth_eval_files:
        from .decontam import load_eval_items

        eval_items = load_eval_items(cfg.synth_eval_files)
    else:
        logger.warning("synthesize: no synth_eval_files: decontamination against evaluation sets is OFF")
    verifiers = default_verifiers(VerifierSettings.of(cfg, "synth_"), eval_items=eval_items)
    if cfg.synth_dedup:
        dedup = NearDuplicateFilter(threshold=cfg.synth_dedup_threshold, seed=cfg.synth_seed)
        for k, s in enumerate(seeds):
            dedup.add(s["messages"], f"seed:{k}")
        if paths["output"].exists():
            with paths["output"].open("rb") as fh:
                kept = fh.read(state["output_bytes"]).decode("utf-8")
            for _, row in parse_lines(enumerate(kept.splitlines(), 1), paths["output"]):
                dedup.add(row["messages"], row.get("provenance", {}).get("item"))
        verifiers.append(dedup)
    return verifiers, eval_items


def _finish(cfg: SynthConfig, teacher_cfg: TeacherConfig, summary: dict, paths: dict[str, Path], *,
            command_line: str | None, **card) -> None:
    """The dataset copy (``synth_save_dataset``), the summary file, the sharing (:func:`_share`) and the closing
    log lines."""
    if cfg.synth_save_dataset:
        save_hf_dataset(paths["output"], cfg.synth_save_dataset)
        summary["dataset_dir"] = str(cfg.synth_save_dataset)
    write_json_atomic(paths["summary"], summary)
    _share(cfg, teacher_cfg, summary, paths, command_line=command_line, **card)
    budget, num_samples, stopped = summary["budget"], summary["num_samples"], summary["stopped"]
    logger.info("synthesize: %d/%d accepted, %d queries of %d, stopped: %s, rejected: %s", summary["accepted"],
                num_samples, summary["queries_spent"], budget, stopped, summary["rejected"])
    if stopped == "budget" and summary["accepted"] < num_samples:
        logger.warning("synthesize: the budget of %d teacher queries ran out at %d/%d samples", budget,
                       summary["accepted"], num_samples)


def _share(cfg: SynthConfig, teacher_cfg: TeacherConfig, summary: dict, paths: dict[str, Path], *,
           command_line: str | None, **card) -> None:
    """``synth_hf_dataset`` / ``synth_push_to_hub``: the dataset folder with its card, then the upload; the summary
    (``hf_dataset``, ``hub``) is rewritten after each, so a failed push leaves the folder and says so."""
    folder = hub.dataset_dir(cfg, paths["output"])
    if folder is None:
        return
    if not summary["accepted"]:
        logger.warning("synthesize: nothing accepted, so no dataset folder is written and nothing is pushed")
        return
    summary["hf_dataset"] = hub.write_dataset(
        paths["output"], folder, summary=summary, synth_cfg=cfg, teacher_cfg=teacher_cfg,
        repo_id=cfg.synth_push_to_hub, command_line=command_line or "(called from Python: synthesize())", **card)
    write_json_atomic(paths["summary"], summary)
    if cfg.synth_push_to_hub:
        try:
            summary["hub"] = {"pushed": True, **hub.push_folder(folder, cfg.synth_push_to_hub,
                                                                private=cfg.synth_push_private)}
        except hub.HubPushError as err:
            summary["hub"] = {"pushed": False, "repo_id": cfg.synth_push_to_hub, "error": str(err)}
            raise
        finally:
            write_json_atomic(paths["summary"], summary)


def nothing_accepted_message(summary: dict) -> str | None:
    """One line saying why a finished ``synthesize`` produced nothing (None when it accepted something)."""
    if summary.get("accepted"):
        return None
    head = f"0 of {summary['num_samples']} samples accepted"
    made, bad = summary.get("rubrics_generated") or 0, summary.get("rubrics_unparseable") or 0
    if made and bad == made:
        return (f"{head}: 0 of {made} rubrics from {summary['rubric_source']} parsed (the rubric source writes no "
                "parseable rubric; is it an exported rubric generator?)")
    reasons = ", ".join(f"{k} {v}" for k, v in list(summary.get("rejected", {}).items())[:3]) or "none"
    return (f"{head} after {summary['queries_spent']} teacher queries (stopped: {summary['stopped']}; top "
            f"rejections: {reasons}); see {_paths(summary['output'])['summary']}")


def _teacher_label(teacher, teacher_cfg: TeacherConfig) -> str:
    if teacher is not None:
        from ..teachers.factory import teacher_label

        return teacher_label(teacher)
    model = teacher_cfg.teacher_model_name_or_path
    return teacher_cfg.teacher_backend + (f":{model}" if model and teacher_cfg.teacher_backend != "template" else "")


def _provenance(meta: dict) -> dict:
    keys = ("item", "doc_id", "rubric_source", "rubric", "rubric_text", "teacher", "strategy", "seed", "seed_sample",
            "verifiers", "rejected_by", "tokens")
    return {k: meta[k] for k in keys if k in meta}


def _open_state(paths: dict[str, Path], fingerprint: dict, overwrite: bool, rubrics: RubricStream) -> dict | None:
    """The saved state to resume from, or None for a fresh run (clearing old files when allowed)."""
    state = None
    if paths["state"].exists():
        state = json.loads(paths["state"].read_text(encoding="utf-8"))
        if state.get("version") != STATE_VERSION or state.get("fingerprint") != fingerprint:
            old = state.get("fingerprint", {})
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            if not overwrite:
                raise UserError(f"{paths['output']} was written by a run with different arguments (differs in: "
                                 f"{', '.join(diff) or 'state version'}); pass --synth_overwrite true to start over, "
                                 "or choose another --output")
            state = None
    elif paths["output"].exists() and paths["output"].stat().st_size > 0 and not overwrite:
        raise UserError(f"{paths['output']} exists and has no resume state ({paths['state'].name}); pass "
                         "--synth_overwrite true to replace it, or choose another --output")
    if state is None:
        for key in ("output", "state", "summary", "rubrics", "rejected"):
            if paths[key].exists():
                paths[key].unlink()
        rubrics.forget()
    return state
