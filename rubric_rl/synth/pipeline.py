"""The synthesis pipeline: a rubric source, an item planner, and one loop that sends items to the engine in chunks.

``rubric-rl synthesize`` runs it with a resumable file sink (:mod:`rubric_rl.synth.commands`), ``rubric-rl
evaluate`` with an in-memory sink (:func:`synthesize_dataset`); the RL reward sends each rollout to the same
engine (:class:`~rubric_rl.synth.engine.SampleSynthesizer`) directly, since its items are the policy's rollouts.

Seeding scheme: item ``k`` of a run with seed ``s`` is fully determined by ``(s, k)``, so every source under
one seed sees the same documents in the same order, and a resumed run continues the same sequence:

* ``new_question``: ``epoch, pos = divmod(k, n_documents)``; the document is ``document_order(s, epoch,
  n_documents)[pos]``;
* ``rephrase`` / ``augment_answer``: the same over the seed samples; the document is the seed's ``doc_id``;
* the rubric: a file source's ``rubrics[k % R]``; a generator's rubric for that document in that epoch (the
  generator writes one rubric for every document per epoch, sampling with seed ``s * 10_007 + epoch``);
  ``none``: no rubric;
* the teacher's seed: ``s * 1_000_003 + k``.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from ..configs.evaluate import EvalConfig
from ..rubric import Rubric
from .engine import SampleOutcome, SampleSynthesizer, SynthItem
from .strategies import NEW_QUESTION

__all__ = ["RubricSource", "RubricStream", "ItemPlanner", "Cursor", "MemorySink", "document_order", "run_items",
           "synthesize_dataset", "INFRA_RETRIES_PER_ITEM"]

logger = logging.getLogger(__name__)

INFRA_RETRIES_PER_ITEM = 3  # an item whose query failed for infrastructure reasons is tried again this many times


def document_order(seed: int, epoch: int, n: int) -> list[int]:
    """The order of ``n`` documents (or seed samples) in ``epoch`` of a run with ``seed``. (The string is the
    evaluation's, which drew every number the README reports; ``synthesize`` shares it since issue 10.)"""
    return random.Random(f"eval:{seed}:{epoch}").sample(range(n), n)


# ---------------------------------------------------------------------------------------------- rubric source
@dataclass
class RubricSource:
    """What a source SPEC names: ``none``, a rubrics JSON file (``rubrics``), an exported rubric generator
    folder (``run_dir``: the training run its export metadata names), or a closed-loop rule folder
    (``OUT/<rule>`` of ``rubric-rl closed-loop``: a finished dataset per seed; only ``evaluate`` takes it)."""

    name: str
    kind: str  # none | file | generator | dataset
    spec: str
    rubrics: list | None = None
    run_dir: str | None = None

    @classmethod
    def resolve(cls, spec: str, name: str | None = None, *, datasets: bool = False) -> "RubricSource":
        """The source a SPEC names; errors name the source (``NAME=SPEC``, or the SPEC alone). A closed-loop
        dataset folder is accepted only with ``datasets`` (the evaluation: it has samples, not rubrics)."""
        from ..data.documents import DataFileError, load_rubric_file
        from ..errors import UserError
        from ..generator import EXPORT_META

        label = f"source {name}={spec!r}" if name else f"rubric_source {spec!r}"
        name = name or spec
        if spec == "none":
            return cls(name, "none", spec)
        path = Path(spec)
        if path.is_dir():
            from ..configs.closed_loop import RULE_MARKER

            if (path / RULE_MARKER).exists():
                if not datasets:
                    raise UserError(f"{label} is a closed-loop dataset folder, which holds samples, not rubrics; "
                                    "only `rubric-rl evaluate --sources` takes it")
                return cls(name, "dataset", spec)
            if not (path / "config.json").exists():
                raise UserError(f"{label}: folder is neither an exported rubric generator (no config.json) nor a "
                                f"closed-loop rule folder (no {RULE_MARKER})")
            meta_path = path / EXPORT_META
            run_dir = json.loads(meta_path.read_text()).get("run_dir") if meta_path.exists() else None
            return cls(name, "generator", spec, run_dir=run_dir)
        if path.is_file():
            try:
                return cls(name, "file", spec, rubrics=load_rubric_file(path))
            except DataFileError as err:
                raise UserError(f"{label}: {err}") from None
        raise UserError(f"{label} is neither 'none', an existing rubrics JSON file, nor an exported rubric "
                        "generator folder")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "spec": self.spec, "run_dir": self.run_dir,
                "num_rubrics": len(self.rubrics) if self.rubrics is not None else None}


class RubricStream:
    """The rubric of every item of one run (one source, one document list, one seed).

    A generator source writes one rubric per document and epoch, lazily, and caches each epoch (in memory, and
    in ``cache_path`` when given, so a resumed run sees the same rubrics). ``generator`` is the loaded generator
    (loaded from the source's SPEC on first use when None). ``generated`` / ``unparseable`` count the rubrics it
    wrote for this run (the cached ones included): whole epochs, so also those of documents no item reached yet; an
    item whose rubric did not parse is the planner's skip reason ``rubric_unparseable``."""

    def __init__(self, source: RubricSource, documents: list[dict], seed: int, *, generator=None,
                 batch_size: int | None = None, cache_path: Path | None = None):
        self.source, self.documents, self.seed = source, documents, seed
        self.generator, self.batch_size, self.cache_path = generator, batch_size, cache_path
        self.epochs: dict[int, list[Rubric | None]] = {}
        if source.kind == "generator" and cache_path is not None and cache_path.exists():
            from ..jsonl import iter_jsonl

            for row in iter_jsonl(cache_path):
                self.epochs[row["epoch"]] = [Rubric.from_dict(r) if r else None for r in row["rubrics"]]

    @property
    def generated(self) -> int:
        return sum(len(rubrics) for rubrics in self.epochs.values())

    @property
    def unparseable(self) -> int:
        return sum(r is None for rubrics in self.epochs.values() for r in rubrics)

    def forget(self) -> None:
        """Drop cached rubrics (a run that starts over)."""
        self.epochs.clear()

    def _epoch(self, epoch: int) -> list[Rubric | None]:
        if epoch not in self.epochs:
            from ..devices import fork_rng

            if self.generator is None:
                from ..generator import RubricGenerator  # heavy, only for this source

                logger.info("loading the rubric generator from %s", self.source.spec)
                self.generator = RubricGenerator.from_pretrained(self.source.spec)
            texts = [d["text"] for d in self.documents]
            seed = self.seed * 10_007 + epoch
            kwargs = {} if self.batch_size is None else {"batch_size": self.batch_size}
            # the generator seeds torch's global RNG: keep that from leaking into what runs next (fine-tuning)
            with fork_rng():
                rubrics = list(self.generator.generate(texts, seed=seed, **kwargs))
            if len(rubrics) != len(texts):
                raise RuntimeError(f"rubric generator returned {len(rubrics)} rubrics for {len(texts)} documents")
            self.epochs[epoch] = rubrics
            if self.cache_path is not None:
                from ..jsonl import append_jsonl

                append_jsonl(self.cache_path, [{"epoch": epoch, "seed": seed,
                                                "rubrics": [r.to_dict() if r else None for r in rubrics]}],
                             ensure_ascii=True)
        return self.epochs[epoch]

    def get(self, k: int, doc_index: int | None, epoch: int) -> tuple[Rubric | None, str, bool]:
        """``(rubric, label, usable)`` for item ``k`` on document ``doc_index`` in ``epoch``."""
        kind = self.source.kind
        if kind == "none":
            return None, "none", True
        if kind == "file":
            i = k % len(self.source.rubrics)
            return self.source.rubrics[i], f"file:{i}", True
        if doc_index is None:  # a seed sample without a document: nothing to condition a generator on
            return None, "generator:no_document", True
        rubric = self._epoch(epoch)[doc_index]
        return rubric, f"generator:epoch{epoch}:doc{doc_index}", rubric is not None


# ---------------------------------------------------------------------------------------------- item planner
class ItemPlanner:
    """Item ``k`` -> a :class:`SynthItem` (document or seed sample, rubric, teacher seed, provenance in ``meta``)
    or the reason it needs no query (``rubric_unparseable``); the scheme is in the module docstring."""

    def __init__(self, documents: list[dict], rubrics: RubricStream, *, seed: int, strategy: str = NEW_QUESTION,
                 seed_samples: list[dict] | None = None):
        self.documents, self.rubrics, self.seed, self.strategy = documents, rubrics, seed, strategy
        self.seed_samples = list(seed_samples or [])
        self.doc_by_id = {d["id"]: i for i, d in enumerate(documents)}
        if strategy != NEW_QUESTION and not self.seed_samples:
            raise ValueError(f"strategy {strategy!r} needs seed samples")

    @property
    def span(self) -> int:
        """Items per epoch."""
        return len(self.documents) if self.strategy == NEW_QUESTION else len(self.seed_samples)

    def plan(self, k: int) -> tuple[SynthItem | None, str | None]:
        if self.strategy == NEW_QUESTION:
            epoch, pos = divmod(k, len(self.documents))
            doc_index, seed_index = document_order(self.seed, epoch, len(self.documents))[pos], None
        else:
            epoch, pos = divmod(k, len(self.seed_samples))
            seed_index = document_order(self.seed, epoch, len(self.seed_samples))[pos]
            doc_index = self.seed_document(seed_index)
        return self.item(k, epoch=epoch, doc_index=doc_index, seed_index=seed_index,
                         teacher_seed=self.seed * 1_000_003 + k)

    def seed_document(self, seed_index: int) -> int | None:
        """The index of seed sample ``seed_index``'s document (its ``doc_id``), None without one."""
        return self.doc_by_id.get(str(self.seed_samples[seed_index].get("doc_id")))

    def item(self, k: int, *, epoch: int, doc_index: int | None, seed_index: int | None, teacher_seed: int,
             rubric_item: int | None = None, label=None) -> tuple[SynthItem | None, str | None]:
        """The item for document ``doc_index`` (and seed sample ``seed_index``, shown to the teacher for the seeded
        strategies) with the rubric the stream gives item ``rubric_item`` (default ``k``) in ``epoch``, or the
        reason it needs no query; ``label`` (default ``k``) is the item's name in the samples' provenance."""
        rubric, source, usable = self.rubrics.get(k if rubric_item is None else rubric_item, doc_index, epoch)
        if not usable:
            return None, "rubric_unparseable"
        doc = self.documents[doc_index] if doc_index is not None else {"id": "", "text": ""}
        meta = {"item": k if label is None else label, "rubric_source": source, "seed": teacher_seed,
                "rubric": rubric.to_dict() if rubric else None, "rubric_text": rubric.render() if rubric else None}
        seed_messages = None
        if seed_index is not None:
            meta["seed_sample"] = seed_index
            if self.strategy != NEW_QUESTION:
                seed_messages = self.seed_samples[seed_index]["messages"]
        return SynthItem(document=doc["text"], rubric=rubric, doc_id=doc["id"], seed=teacher_seed,
                         strategy=self.strategy, seed_messages=seed_messages, meta=meta), None


# ---------------------------------------------------------------------------------------------- the loop
@dataclass
class Cursor:
    """Where a run stands: the next item to plan, teacher queries spent (infrastructure failures excluded),
    items waiting for another try after an infrastructure failure (``[item, failures so far]``)."""

    next_item: int = 0
    queries: int = 0
    retry_items: list = field(default_factory=list)
    infrastructure_failures: int = 0


class Sink(Protocol):
    """Where outcomes go, in item order. ``accepted`` counts what ``accept`` took; the loop calls ``surplus``
    for a valid sample past ``num_samples`` (the last chunk may overshoot) and ``checkpoint`` after each chunk."""

    accepted: int

    def skip(self, k: int, reason: str) -> None: ...
    def accept(self, item: SynthItem, outcome: SampleOutcome) -> None: ...
    def surplus(self, item: SynthItem, outcome: SampleOutcome) -> None: ...
    def reject(self, item: SynthItem, outcome: SampleOutcome) -> None: ...
    def checkpoint(self, cursor: Cursor) -> None: ...


def run_items(planner: ItemPlanner, synthesizer: SampleSynthesizer | Callable[[], SampleSynthesizer], sink: Sink, *,
              num_samples: int, cursor: Cursor | None = None, budget: int | None = None, max_items: int | None = None,
              max_chunk: int | None = None, max_idle: int | None = None) -> tuple[str, Cursor]:
    """Plan items from ``cursor.next_item`` on and send them to the engine in chunks until ``num_samples`` are
    accepted, ``budget`` teacher queries are spent, ``max_items`` items are planned, or (``max_idle``) that many
    items in a row needed no query. Returns ``(why it stopped, cursor)``.

    A chunk holds ``ceil(needed / validity so far)`` items with a query (at most ``max_chunk`` and the budget
    left), the items to retry first. Outcomes reach the sink in item order. ``synthesizer`` may be a function
    that builds it, called on the first chunk (a finished run loads no model)."""
    if max_items is None and max_idle is None:
        raise ValueError("run_items needs max_items or max_idle (else a source without usable rubrics never ends)")
    cursor = cursor or Cursor()
    engine = None if callable(synthesizer) and not hasattr(synthesizer, "synthesize") else synthesizer
    idle = 0
    while True:
        if sink.accepted >= num_samples:
            return "num_samples", cursor
        left = None if budget is None else budget - cursor.queries
        if left is not None and left <= 0:
            return "budget", cursor
        rate = sink.accepted / cursor.queries if cursor.queries else 1.0
        size = math.ceil((num_samples - sink.accepted) / max(rate, 0.1))
        size = min(x for x in (size, max_chunk, left) if x is not None)
        entries: list[tuple[int, SynthItem | None, str | None, int]] = []  # (k, item, skip reason, failures)
        queued = 0
        while cursor.retry_items and queued < size:  # items whose query failed for infrastructure reasons first
            k, failures = cursor.retry_items.pop(0)
            item, _ = planner.plan(k)
            entries.append((k, item, None, failures))
            queued += 1
        k = cursor.next_item
        while queued < size and (max_items is None or k < max_items) and (max_idle is None or idle <= max_idle):
            item, skip = planner.plan(k)
            entries.append((k, item, skip, 0))
            k += 1
            if item is None:
                idle += 1
            else:
                queued += 1
                idle = 0
        cursor.next_item = k
        if not queued:
            for kk, _, skip, _ in entries:
                sink.skip(kk, skip)
            sink.checkpoint(cursor)
            return ("max_items" if max_items is not None and k >= max_items else "no_usable_items"), cursor
        if engine is None:
            engine = synthesizer()
        items = [item for _, item, _, _ in entries if item is not None]
        spent_before = engine.queries_spent
        outcomes = iter(engine.synthesize(items))
        cursor.queries += engine.queries_spent - spent_before  # infrastructure failures excluded
        for kk, item, skip, failures in entries:
            if item is None:
                sink.skip(kk, skip)
                continue
            out = next(outcomes)
            if out.infrastructure:
                cursor.infrastructure_failures += 1
                if failures < INFRA_RETRIES_PER_ITEM:
                    cursor.retry_items.append([kk, failures + 1])
                    continue
                cursor.queries += 1  # tried too often: now it costs its query, as a rejection
            if not out.valid:
                sink.reject(item, out)
            elif sink.accepted >= num_samples:
                sink.surplus(item, out)
            else:
                sink.accept(item, out)
        sink.checkpoint(cursor)


class MemorySink:
    """Accepted samples in a list (``{"messages", "doc_id", "item", "rubric"}``). Items after the one that gave
    the last wanted sample are not counted: ``tried`` and ``reasons`` describe the dataset, not the overshoot."""

    def __init__(self, num_samples: int):
        self.num_samples, self.accepted, self.tried = num_samples, 0, 0
        self.samples: list[dict] = []
        self.reasons: Counter = Counter()

    def _count(self) -> bool:
        if self.accepted >= self.num_samples:
            return False
        self.tried += 1
        return True

    def skip(self, k: int, reason: str) -> None:
        if self._count():
            self.reasons[reason] += 1

    def reject(self, item: SynthItem, outcome: SampleOutcome) -> None:
        if self._count():
            self.reasons[outcome.reason] += 1

    def accept(self, item: SynthItem, outcome: SampleOutcome) -> None:
        self._count()
        self.accepted += 1
        self.samples.append({"messages": outcome.messages, "doc_id": item.doc_id, "item": item.meta["item"],
                             "rubric": item.meta["rubric"]})

    def surplus(self, item: SynthItem, outcome: SampleOutcome) -> None:
        pass

    def checkpoint(self, cursor: Cursor) -> None:
        pass


def synthesize_dataset(source: RubricSource, docs: list[dict], synthesizer: SampleSynthesizer, *, num_samples: int,
                       max_items: int, seed: int, generator=None,
                       generator_batch_size: int = EvalConfig.eval_generator_batch_size
                       ) -> tuple[list[dict], dict]:
    """The evaluation's dataset of one (source, seed): accepted samples and the synthesis stats.

    Items follow the module's seeding scheme (the same documents in the same order for every source under one
    seed) until ``num_samples`` are accepted or ``max_items`` items (with or without a query) are planned."""
    stream = RubricStream(source, docs, seed, generator=generator, batch_size=generator_batch_size)
    sink = MemorySink(num_samples)
    _, cursor = run_items(ItemPlanner(docs, stream, seed=seed), synthesizer, sink, num_samples=num_samples,
                          max_items=max_items)
    stats = {"items_tried": sink.tried, "teacher_queries": cursor.queries, "accepted": sink.accepted,
             "validity_rate": sink.accepted / sink.tried if sink.tried else 0.0,
             "rejected": dict(sorted(sink.reasons.items())), "budget_exhausted": sink.accepted < num_samples}
    if source.kind == "generator":
        stats["rubrics_generated"] = stream.generated
        stats["rubric_parse_rate"] = (stream.generated - stream.unparseable) / stream.generated if stream.generated \
            else 0.0
    return sink.samples, stats
