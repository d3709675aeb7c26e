"""``rubric-rl synthesize``: documents + a rubric source + a teacher -> a verified chat dataset with provenance.

::

    rubric-rl synthesize --config C --rubric_source {EXPORT_DIR | rubrics.json | none} \\
        --documents D.jsonl --output OUT.jsonl [--num_samples N]

Writes ``OUT.jsonl`` (one accepted sample per line: ``messages``, ``doc_id``, ``provenance`` with the
item number, document id, rubric, teacher, strategy, seed and every verifier's verdict), and next to it
``OUT.summary.json`` (accepted, rejected by reason and by verifier, teacher queries spent, why the run
stopped), ``OUT.state.json`` (the resume checkpoint), ``OUT.rubrics.jsonl`` (rubrics a generator
wrote, so a resumed run uses the same ones) and, with ``synth_write_rejected``, ``OUT.rejected.jsonl``.

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

Over 500 lines because ``synthesize`` is still one resumable loop with its state, sinks and retries inline;
issue 10 (one synthesis pipeline: a rubric source type, an item planner, file and in-memory sinks shared with
``rubric_rl.evaluate``) splits it, and that change also changes what the evaluation samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.documents import load_chat_samples, load_documents, load_rubric_file
from ..errors import UserError
from ..jsonl import JsonlAppender, append_jsonl, iter_jsonl, parse_lines
from ..rubric import Rubric
from ..teachers.config import TeacherConfig
from .dataset import save_hf_dataset, write_json_atomic
from .dedup import NearDuplicateFilter
from .engine import SampleSynthesizer, SynthItem
from .strategies import NEW_QUESTION, STRATEGY_CHOICES, choose_strategy
from .verifiers import default_verifiers

logger = logging.getLogger(__name__)

STATE_VERSION = 1
INFRA_RETRIES_PER_ITEM = 3  # an item whose query failed for infrastructure reasons is tried again this many times


@dataclass
class SynthConfig:
    synth_strategy: str = field(
        default=NEW_QUESTION,
        metadata={"help": "Generation strategy: 'new_question' (new questions from a document under a rubric), "
                          "'rephrase' (rephrase seed questions), 'augment_answer' (new answers to seed questions), "
                          "or 'auto' (answer augmentation when budget/seed-set size <= synth_auto_ratio_threshold, "
                          "else new questions; after Chan et al. 2024)."},
    )
    synth_seed_samples: str | None = field(
        default=None,
        metadata={"help": "Seed set for 'rephrase', 'augment_answer' and 'auto': chat-format jsonl "
                          "({'messages': [...], 'doc_id': ...}); 'doc_id' links a seed to its document. Never the "
                          "validation or test set."},
    )
    synth_budget: int | None = field(
        default=None,
        metadata={"help": "Maximum teacher queries for the run (resumes included). Default: "
                          "synth_max_queries_per_sample * num_samples."},
    )
    synth_max_queries_per_sample: float = field(
        default=4.0, metadata={"help": "Default budget per requested sample, when synth_budget is not set."}
    )
    synth_auto_ratio_threshold: float = field(
        default=4.0,
        metadata={"help": "'auto' strategy: budget/seed-set ratio at or below which answers are augmented instead of "
                          "new questions written (task-dependent; tune it)."},
    )
    synth_batch_size: int = field(
        default=32, metadata={"help": "Teacher queries per chunk; the run checkpoints after every chunk."}
    )
    synth_seed: int = field(default=0, metadata={"help": "Seed for the item order, teacher seeds and rubric generation."})
    synth_eval_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Evaluation sets (chat jsonl, e.g. validation and test) no training sample may overlap "
                          "with: n-gram decontamination. Empty: decontamination is off (a warning says so)."},
    )
    synth_decontam_ngram: int = field(default=8, metadata={"help": "Decontamination n-gram size (words)."})
    synth_decontam_threshold: float = field(
        default=0.5, metadata={"help": "A sample is contaminated when it covers more than this share of an "
                                       "evaluation prompt's informative tokens."}
    )
    synth_grounding: bool = field(default=True, metadata={"help": "Reject answers not grounded in the document."})
    synth_grounding_min_overlap: float = field(
        default=0.5, metadata={"help": "Grounding: minimum share of the answer's content words found in the document."}
    )
    synth_safety: bool = field(default=True, metadata={"help": "Apply the safety blocklist."})
    synth_blocklist_file: str | None = field(
        default=None, metadata={"help": "Extra blocklist patterns, one regex per line ('category: regex' allowed)."}
    )
    synth_dedup: bool = field(default=True, metadata={"help": "Remove near-duplicate samples (MinHash over shingles)."})
    synth_dedup_threshold: float = field(
        default=0.8, metadata={"help": "Near-duplicate when the shingle Jaccard similarity is >= this."}
    )
    synth_save_dataset: str | None = field(
        default=None, metadata={"help": "Also save the samples as an HF datasets folder here (load_from_disk)."}
    )
    synth_write_rejected: bool = field(
        default=False, metadata={"help": "Also write rejected candidates with their reason to OUTPUT.rejected.jsonl."}
    )
    synth_overwrite: bool = field(
        default=False,
        metadata={"help": "Start over when OUTPUT exists from a run with other arguments (default: refuse)."},
    )
    synth_progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        if self.synth_strategy not in STRATEGY_CHOICES:
            raise ValueError(f"synth_strategy must be one of {STRATEGY_CHOICES}, got {self.synth_strategy!r}")
        if self.synth_strategy in ("rephrase", "augment_answer") and not self.synth_seed_samples:
            raise ValueError(f"synth_seed_samples is required for synth_strategy={self.synth_strategy!r}")
        if self.synth_budget is not None and self.synth_budget < 1:
            raise ValueError(f"synth_budget must be >= 1, got {self.synth_budget!r}")
        for name in ("synth_max_queries_per_sample", "synth_auto_ratio_threshold"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("synth_batch_size", "synth_decontam_ngram"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.synth_decontam_threshold < 1:
            raise ValueError(f"synth_decontam_threshold must be in [0, 1), got {self.synth_decontam_threshold!r}")
        for name in ("synth_grounding_min_overlap", "synth_dedup_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
        if isinstance(self.synth_eval_files, str):
            self.synth_eval_files = [p for p in self.synth_eval_files.split(",") if p]
        for path in [self.synth_seed_samples, self.synth_blocklist_file, *self.synth_eval_files]:
            if path and not Path(path).exists():
                name = ("synth_seed_samples" if path == self.synth_seed_samples else
                        "synth_blocklist_file" if path == self.synth_blocklist_file else "synth_eval_files")
                raise ValueError(f"{name}: file not found: {path!r}")


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


class RubricSource:
    """``none``, a rubrics JSON file (cycled), or an exported rubric generator (one rubric per document and epoch,
    cached in ``cache_path`` so a resumed run sees the same rubrics)."""

    def __init__(self, spec: str, documents: list[dict], *, seed: int, cache_path: Path, generator=None):
        self.spec = spec
        self.documents = documents
        self.seed = seed
        self.cache_path = cache_path
        self.generator = generator
        self.generated = 0
        self.unparseable = 0
        self._epochs: dict[int, list[Rubric | None]] = {}
        path = Path(spec)
        if spec == "none":
            self.kind, self.rubrics = "none", []
        elif path.is_dir():
            self.kind, self.rubrics = "generator", []
            if cache_path.exists():
                for row in iter_jsonl(cache_path):
                    self._epochs[row["epoch"]] = [Rubric.from_dict(r) if r else None for r in row["rubrics"]]
        elif path.is_file():
            self.kind, self.rubrics = "file", load_rubric_file(path)
        else:
            raise UserError(f"rubric_source {spec!r} is neither 'none', an existing rubrics JSON file, nor an "
                             "exported rubric generator folder")

    def digest(self) -> dict:
        return {"kind": self.kind, "path": None if self.kind == "none" else str(Path(self.spec).resolve()),
                "content": None if self.kind == "none" else _file_digest(self.spec)}

    def _epoch(self, epoch: int) -> list[Rubric | None]:
        if epoch not in self._epochs:
            if self.generator is None:
                from ..generator import RubricGenerator  # noqa: PLC0415 - heavy, only for this source

                logger.info("loading the rubric generator from %s", self.spec)
                self.generator = RubricGenerator.from_pretrained(self.spec)
            texts = [d["text"] for d in self.documents]
            rubrics = list(self.generator.generate(texts, seed=self.seed + epoch))
            if len(rubrics) != len(texts):
                raise RuntimeError(f"rubric generator returned {len(rubrics)} rubrics for {len(texts)} documents")
            self.generated += len(rubrics)
            self.unparseable += sum(r is None for r in rubrics)
            self._epochs[epoch] = rubrics
            append_jsonl(self.cache_path, [{"epoch": epoch, "seed": self.seed + epoch,
                                            "rubrics": [r.to_dict() if r else None for r in rubrics]}],
                         ensure_ascii=True)
        return self._epochs[epoch]

    def get(self, k: int, doc_index: int | None, epoch: int) -> tuple[Rubric | None, str, bool]:
        """``(rubric, label, usable)`` for item ``k`` on document ``doc_index`` in ``epoch``."""
        if self.kind == "none":
            return None, "none", True
        if self.kind == "file":
            i = k % len(self.rubrics)
            return self.rubrics[i], f"file:{i}", True
        if doc_index is None:  # a seed sample without a document: nothing to condition a generator on
            return None, "generator:no_document", True
        rubric = self._epoch(epoch)[doc_index]
        return rubric, f"generator:epoch{epoch}:doc{doc_index}", rubric is not None


def _permutation(seed: int, epoch: int, n: int) -> list[int]:
    return random.Random(f"{seed}:{epoch}").sample(range(n), n)


# ---------------------------------------------------------------------------------------------- command
def synthesize(synth_cfg: SynthConfig, teacher_cfg: TeacherConfig, *, rubric_source: str, documents: str,
               output: str, num_samples: int | None = None, teacher=None, rubric_generator=None) -> dict:
    """Write ``output`` (see the module docstring) and return the summary dict (also in ``OUT.summary.json``).

    ``teacher`` / ``rubric_generator`` replace the ones the configs name (tests, or an already loaded
    model). ``num_samples`` defaults to one per document.
    """
    cfg = synth_cfg
    t0 = time.time()
    docs = [d for d in load_documents(documents) if d["text"].strip()]
    doc_by_id = {d["id"]: i for i, d in enumerate(docs)}
    num_samples = num_samples or len(docs)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
    budget = cfg.synth_budget or math.ceil(cfg.synth_max_queries_per_sample * num_samples)
    seeds = load_chat_samples(cfg.synth_seed_samples) if cfg.synth_seed_samples else []
    paths = _paths(output)
    paths["output"].parent.mkdir(parents=True, exist_ok=True)

    source = RubricSource(rubric_source, docs, seed=cfg.synth_seed, cache_path=paths["rubrics"],
                          generator=rubric_generator)
    fingerprint = {
        "documents": _file_digest(documents), "rubric_source": source.digest(),
        "seed_samples": _file_digest(cfg.synth_seed_samples), "eval_files": [_file_digest(p) for p in cfg.synth_eval_files],
        "synth": {k: v for k, v in asdict(cfg).items() if k not in (
            "synth_budget", "synth_max_queries_per_sample", "synth_batch_size", "synth_save_dataset",
            "synth_overwrite", "synth_progress", "synth_eval_files", "synth_seed_samples")},
        "teacher": {k: getattr(teacher_cfg, k) for k in ("teacher_backend", "teacher_model_name_or_path",
                                                         "teacher_temperature", "teacher_top_p",
                                                         "teacher_max_new_tokens", "teacher_max_document_chars")},
    }
    state = _open_state(paths, fingerprint, cfg.synth_overwrite, source)
    resumed = state is not None
    if state is None:
        choice = choose_strategy(cfg.synth_strategy, budget=budget, num_seeds=len(seeds),
                                 ratio_threshold=cfg.synth_auto_ratio_threshold)
        state = {"version": STATE_VERSION, "fingerprint": fingerprint, "strategy": choice.strategy,
                 "strategy_why": choice.why, "next_item": 0, "output_bytes": 0, "rejected_bytes": 0,
                 "queries": 0, "accepted": 0, "rejected": {}, "rejected_by_verifier": {}, "skipped": {},
                 "surplus": 0, "rubrics_generated": 0, "rubrics_unparseable": 0, "elapsed_s": 0.0,
                 "retry_items": [], "infrastructure_failures": 0}
        # Before the output exists: a run killed before its first checkpoint leaves a state at offset 0, so
        # the rerun resumes (truncating what was half-written) instead of refusing a file without a state.
        write_json_atomic(paths["state"], state)
    strategy = state["strategy"]
    if strategy != NEW_QUESTION and not seeds:
        raise ValueError(f"strategy {strategy!r} needs synth_seed_samples")
    logger.info("synthesize: strategy %s (%s), budget %d queries, %d documents, %d seed samples%s", strategy,
                state["strategy_why"], budget, len(docs), len(seeds), ", resuming" if resumed else "")

    # Verifiers: stateless chain + near-duplicate filter seeded with the seed set and what is already written.
    eval_items = []
    if cfg.synth_eval_files:
        from .decontam import load_eval_items

        eval_items = load_eval_items(cfg.synth_eval_files)
    else:
        logger.warning("synthesize: no synth_eval_files: decontamination against evaluation sets is OFF")
    verifiers = default_verifiers(grounding=cfg.synth_grounding, safety=cfg.synth_safety, eval_items=eval_items,
                                  grounding_min_overlap=cfg.synth_grounding_min_overlap,
                                  decontam_ngram=cfg.synth_decontam_ngram,
                                  decontam_threshold=cfg.synth_decontam_threshold,
                                  blocklist_file=cfg.synth_blocklist_file)
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

    out = JsonlAppender(paths["output"], truncate_to=state["output_bytes"])
    rejected_out = (JsonlAppender(paths["rejected"], truncate_to=state["rejected_bytes"])
                    if cfg.synth_write_rejected else None)
    own_teacher = teacher is None
    synth: SampleSynthesizer | None = None  # built on the first chunk: a finished run loads no model

    def synthesizer() -> SampleSynthesizer:
        nonlocal synth, teacher
        if synth is None:
            if teacher is None:
                from ..teachers.factory import build_teacher

                teacher = build_teacher(teacher_cfg, documents=[d["text"] for d in docs])
            synth = SampleSynthesizer(teacher, verifiers, budget=max(0, budget - state["queries"]),
                                      max_document_chars=teacher_cfg.teacher_max_document_chars)
        return synth

    rejected, by_verifier, skipped = (Counter(state["rejected"]), Counter(state["rejected_by_verifier"]),
                                      Counter(state["skipped"]))
    source.generated, source.unparseable = state["rubrics_generated"], state["rubrics_unparseable"]

    def plan(k: int) -> tuple[SynthItem | None, str | None]:
        teacher_seed = cfg.synth_seed * 1_000_003 + k
        if strategy == NEW_QUESTION:
            epoch, pos = divmod(k, len(docs))
            doc_index, seed_index, seed_messages = _permutation(cfg.synth_seed, epoch, len(docs))[pos], None, None
        else:
            epoch, pos = divmod(k, len(seeds))
            seed_index = _permutation(cfg.synth_seed, epoch, len(seeds))[pos]
            seed_messages = seeds[seed_index]["messages"]
            doc_index = doc_by_id.get(str(seeds[seed_index].get("doc_id")))
        rubric, label, usable = source.get(k, doc_index, epoch)
        if not usable:
            return None, "rubric_unparseable"
        doc = docs[doc_index] if doc_index is not None else {"id": "", "text": ""}
        provenance = {"item": k, "rubric_source": label, "seed": teacher_seed,
                      "rubric": rubric.to_dict() if rubric else None,
                      "rubric_text": rubric.render() if rubric else None}
        if seed_index is not None:
            provenance["seed_sample"] = seed_index
        return SynthItem(document=doc["text"], rubric=rubric, doc_id=doc["id"], seed=teacher_seed, strategy=strategy,
                         seed_messages=seed_messages, meta=provenance), None

    from tqdm.auto import tqdm

    bar = tqdm(total=num_samples, initial=min(state["accepted"], num_samples), desc="synthesize", unit="sample",
               disable=not cfg.synth_progress, dynamic_ncols=True)
    stopped = None
    idle = 0  # consecutive items skipped without a query (all rubrics unparseable...)
    retry_items = [list(r) for r in state.get("retry_items", [])]  # [item, infrastructure failures so far]
    try:
        while True:
            if state["accepted"] >= num_samples:
                stopped = "num_samples"
                break
            left = budget - state["queries"]
            if left <= 0:
                stopped = "budget"
                break
            needed = num_samples - state["accepted"]
            rate = state["accepted"] / state["queries"] if state["queries"] else 1.0
            size = min(cfg.synth_batch_size, left, math.ceil(needed / max(rate, 0.1)))
            items: list[SynthItem] = []
            attempts: list[int] = []  # infrastructure failures of each item so far
            while retry_items and len(items) < size:  # items whose teacher query failed for infrastructure first
                kk, n_failed = retry_items.pop(0)
                item, _ = plan(kk)
                items.append(item)
                attempts.append(n_failed)
            k = state["next_item"]
            while len(items) < size and idle <= max(len(docs), len(seeds), 100):
                item, skip = plan(k)
                k += 1
                if item is None:
                    skipped[skip] += 1
                    idle += 1
                else:
                    items.append(item)
                    attempts.append(0)
                    idle = 0
            if not items:
                stopped = "no_usable_items"
                state["next_item"] = k
                break
            engine = synthesizer()
            queries_before = engine.queries_spent
            outcomes = engine.synthesize(items)
            state["queries"] += engine.queries_spent - queries_before  # infrastructure failures excluded
            for item, o, n_failed in zip(items, outcomes, attempts, strict=True):
                if o.infrastructure:
                    state["infrastructure_failures"] = state.get("infrastructure_failures", 0) + 1
                    if n_failed < INFRA_RETRIES_PER_ITEM:
                        retry_items.append([item.meta["item"], n_failed + 1])
                        continue
                    state["queries"] += 1  # tried too often: now it costs its query, as a rejection
                if o.valid:
                    if state["accepted"] >= num_samples:
                        state["surplus"] += 1
                        continue
                    out.write({"messages": o.messages, "doc_id": item.doc_id,
                               "provenance": _provenance(o.meta)})
                    state["accepted"] += 1
                    bar.update(1)
                else:
                    rejected[o.reason] += 1
                    if o.meta.get("rejected_by"):
                        by_verifier[o.meta["rejected_by"]] += 1
                    if rejected_out is not None:
                        rejected_out.write({"reason": o.reason, "teacher_text": o.teacher_text,
                                            "messages": o.messages, "provenance": _provenance(o.meta)})
            # checkpoint: data first, then the state that points at it
            state["next_item"] = k
            state["retry_items"] = [list(r) for r in retry_items]
            state["output_bytes"] = out.checkpoint()
            if rejected_out is not None:
                state["rejected_bytes"] = rejected_out.checkpoint()
            state.update(rejected=dict(rejected), rejected_by_verifier=dict(by_verifier), skipped=dict(skipped),
                         rubrics_generated=source.generated, rubrics_unparseable=source.unparseable)
            write_json_atomic(paths["state"], state)
            bar.set_postfix(queries=state["queries"], rejected=sum(rejected.values()), refresh=False)
    finally:
        bar.close()
        out.close()
        if rejected_out is not None:
            rejected_out.close()
        if own_teacher and teacher is not None and hasattr(teacher, "close"):
            teacher.close()

    state["elapsed_s"] = round(state.get("elapsed_s", 0.0) + time.time() - t0, 3)
    state.update(rejected=dict(rejected), rejected_by_verifier=dict(by_verifier), skipped=dict(skipped),
                 rubrics_generated=source.generated, rubrics_unparseable=source.unparseable)
    write_json_atomic(paths["state"], state)
    summary = {
        "output": str(paths["output"]), "accepted": state["accepted"], "num_samples": num_samples,
        "rejected": dict(sorted(rejected.items(), key=lambda kv: -kv[1])),
        "rejected_by_verifier": dict(by_verifier), "skipped": dict(skipped),
        "queries_spent": state["queries"], "budget": budget, "stopped": stopped, "surplus": state["surplus"],
        "infrastructure_failures": state.get("infrastructure_failures", 0),
        "strategy": strategy, "strategy_why": state["strategy_why"],
        "teacher": synth.teacher_label if synth is not None else _teacher_label(teacher, teacher_cfg),
        "rubric_source": source.digest()["kind"] + (
            "" if source.kind == "none" else f":{rubric_source}"),
        "rubrics_generated": source.generated, "rubrics_unparseable": source.unparseable,
        "decontamination": bool(eval_items), "resumed": resumed, "elapsed_s": state["elapsed_s"],
    }
    if cfg.synth_save_dataset:
        save_hf_dataset(paths["output"], cfg.synth_save_dataset)
        summary["dataset_dir"] = str(cfg.synth_save_dataset)
    write_json_atomic(paths["summary"], summary)
    logger.info("synthesize: %d/%d accepted, %d queries of %d, stopped: %s, rejected: %s", summary["accepted"],
                num_samples, summary["queries_spent"], budget, stopped, summary["rejected"])
    if stopped == "budget" and state["accepted"] < num_samples:
        logger.warning("synthesize: the budget of %d teacher queries ran out at %d/%d samples", budget,
                       state["accepted"], num_samples)
    return summary


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


def _open_state(paths: dict[str, Path], fingerprint: dict, overwrite: bool, source: RubricSource) -> dict | None:
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
        source._epochs.clear()
    return state
