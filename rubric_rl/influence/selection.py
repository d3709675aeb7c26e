"""``rubric-rl score``: every line of a chat jsonl file scored by influence, in order, and the top K selected.

A line that is not a chat sample, whose answer is junk (empty, whitespace, control characters, not text), or
that repeats an earlier line's messages exactly (``duplicate``, with ``duplicate_of``: that line's number) is
written with ``influence: null`` and its reason and never reaches the scorer or the top K; the others are
scored in chunks by :class:`~rubric_rl.influence.scorer.InfluenceScorer`. A sample longer than
``influence_max_length`` is scored on its first tokens and marked ``truncated: true``.

Sharded (``num_shards`` > 1: ``accelerate launch``, or ``--num_shards N --shard_index K``), a process scores a
run of whole chunks into shard files and the last shard to finish merges them into the file one process
writes (:mod:`.shards`); :func:`merge_file` is ``--merge``.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import time
from collections import Counter
from pathlib import Path

import torch

from ..data.chat import ChatFormatError, validate_messages
from ..jsonl import dumps_line
from ..synth.text import answer_junk_reason
from ..configs.influence import InfluenceConfig
from ..configs.run import ScoreArguments
from . import shards
from ..progress import sample_bar
from .scorer import BAD_FORMAT, InfluenceScorer
from .warmup import wait_for_warmup

logger = logging.getLogger("rubric_rl.influence.scorer")


def score_file(cfg: InfluenceConfig, run_dir: str | Path, samples_path: str | Path, output_path: str | Path,
               select_top: int | None = None, selected_path: str | Path | None = None, *,
               chunk_size: int = ScoreArguments.chunk_size, progress: bool = True,
               scorer: InfluenceScorer | None = None,
               num_shards: int = 1, shard_index: int = 0, device: str | None = None) -> dict:
    """Score every line of a chat jsonl file (``rubric-rl score``).

    Args:
        cfg: influence config (target, warm-up, validation set, estimator...).
        run_dir: run directory; its ``warmup/`` is made if missing, validation gradients cached in
            ``influence_cache/``.
        samples_path: chat jsonl, one ``{"messages": [...], ...}`` object (or a bare message list) per line.
        output_path: written with one line per input line, in order: the input object plus ``influence``
            (a float, or null with ``reason``; an answer that is no text gets ``empty_answer``,
            ``whitespace_answer``, ``control_characters_answer`` or ``non_text_answer`` and is never selected;
            malformed lines become ``{"influence": null, "reason":
            "bad_format", "error": "FILE:LINE: ..."}``; a repeat of an earlier line gets ``duplicate`` and
            ``duplicate_of``), and ``truncated: true`` where the sample was cut.
        select_top: if set, the K highest-scoring samples are also written, best first, to ``selected_path``.
        selected_path: where the top-K go (default: ``output_path`` with ``.top{K}`` before the suffix).
        chunk_size: lines scored per call of the scorer (memory bound, progress granularity).
        progress: show a tqdm bar with samples/s.
        scorer: an already built scorer (else built from ``cfg``, on ``device`` if given).
        num_shards, shard_index: score only shard ``shard_index`` of ``num_shards`` (a run of whole chunks) into
            shard files beside ``output_path``; the shard that finds all shards finished merges them into
            ``output_path`` and the top-K file, byte for byte what one process writes (:mod:`.shards`). A shard
            other than 0 waits for the warm-up instead of running it.

    Returns a summary dict: counts (``total``, ``scored``, ``unscored`` per reason, ``truncated``),
    ``samples_per_s``, output paths, score statistics, and ``warmup``: the warm-up folder used and whether it was
    ``reused`` or trained for this call (None for a given ``scorer``). A shard that did not merge returns its own
    counts with ``merged: false`` and the shards still missing.
    """
    samples_path, output_path = Path(samples_path), Path(output_path)
    if select_top is not None and select_top <= 0:
        raise ValueError(f"select_top must be > 0, got {select_top}")
    if select_top is not None and selected_path is None:
        selected_path = _top_path(output_path, select_top)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in 0..{num_shards - 1}, got {shard_index}")
    with samples_path.open(encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    lo, hi, write_to, shard_id = 0, len(lines), output_path, None
    if num_shards > 1:
        shard_id = shards.shard_key(cfg, samples_path, len(lines), chunk_size, select_top)
        lo, hi = shards.shard_lines(len(lines), chunk_size, num_shards, shard_index)
        shards.clear_shard(output_path, num_shards, shard_index)
        write_to = shards.temporary_lines_path(output_path, num_shards, shard_index)
        if scorer is None and shard_index > 0:
            wait_for_warmup(cfg, run_dir)  # shard 0 runs it (as rank 0 does under a launcher)
    if scorer is None:
        scorer = InfluenceScorer.from_config(cfg, run_dir, progress=progress, device=device)
    scorer_progress, scorer.progress = scorer.progress, False  # one bar: this one
    tally = _Tally(select_top)
    start = time.perf_counter()
    bar = sample_bar(hi - lo, "scoring" if num_shards == 1 else f"scoring shard {shard_index} of {num_shards}", progress)
    with shards.open_lines(write_to, remove_on_error=num_shards > 1) as out:
        first_line: dict[str, int] = {}  # canonical messages -> the line number that had them first
        for c0 in range(0, hi, chunk_size):  # chunks before the shard's: only to know their lines' messages
            chunk = lines[c0:c0 + chunk_size]
            objs, msgs, errors = _parse_chunk(chunk, c0, samples_path)
            junk, dup = _junk_and_repeats(msgs, c0, first_line)
            if c0 < lo:
                continue
            idx = [j for j, m in enumerate(msgs) if m is not None and junk[j] is None and j not in dup]
            by_j = dict(zip(idx, scorer.score([msgs[j] for j in idx])))
            for j, obj in enumerate(objs):
                out.write(dumps_line(tally.row(obj, errors[j], junk[j], dup.get(j), by_j.get(j), c0 + j)))
            bar.update(len(chunk))
    bar.close()
    scorer.progress = scorer_progress
    elapsed = time.perf_counter() - start
    warmup = getattr(scorer, "warmup", None)
    if num_shards == 1:
        best = sorted(tally.top, reverse=True)
        if select_top is not None:
            Path(selected_path).parent.mkdir(parents=True, exist_ok=True)
            with Path(selected_path).open("w", encoding="utf-8") as fh:
                for _, _, row in best:
                    fh.write(row + "\n")
        return _summary(cfg, samples_path, output_path, len(lines), tally.scored, dict(tally.reasons),
                        tally.truncated, tally.values, elapsed, select_top and selected_path, len(best), warmup=warmup)
    return _finish_shard(cfg, samples_path, output_path, len(lines), (lo, hi), num_shards, shard_index, shard_id,
                         write_to, tally, elapsed, select_top and selected_path, selected_path, warmup)


def _top_path(output_path: Path, select_top: int) -> Path:
    """Where ``select_top`` samples go by default: ``output_path`` with ``.top{K}`` before the suffix."""
    return output_path.with_name(f"{output_path.stem}.top{select_top}{output_path.suffix}")


def _parse_chunk(chunk: list[str], c0: int, samples_path: Path) -> tuple[list, list, list]:
    """Each line's object, its messages (a line may be ``{"messages": [...]}`` or the list) and, for a line that is no
    chat sample, the error naming ``FILE:LINE`` (None where it is one)."""
    objs: list[dict | None] = []
    msgs: list[list | None] = []
    errors: list[str | None] = []
    for j, line in enumerate(chunk):
        lineno = c0 + j + 1
        try:
            obj = json.loads(line)
            messages = obj["messages"] if isinstance(obj, dict) else obj
            validate_messages(messages)
            objs.append(obj)
            msgs.append(messages)
            errors.append(None)
        except (json.JSONDecodeError, KeyError, TypeError, ChatFormatError) as exc:
            objs.append(None)
            msgs.append(None)
            msg = "empty line" if not line.strip() else f"{type(exc).__name__}: {exc}"
            errors.append(f"{samples_path}:{lineno}: {msg}")
    return objs, msgs, errors


def _junk_and_repeats(msgs: list, c0: int, first_line: dict[str, int]) -> tuple[list, dict[int, int]]:
    """Each line's junk-answer reason (empty / whitespace / control characters / "NaN inf": not scored), and the
    lines (index in the chunk -> earlier line number) that repeat an earlier line's messages; ``first_line`` (canonical
    messages -> the line that had them first) is updated across chunks."""
    junk = [None if m is None else answer_junk_reason(m) for m in msgs]
    dup: dict[int, int] = {}
    for j, m in enumerate(msgs):
        if m is not None and junk[j] is None:
            key = json.dumps(m, sort_keys=True, ensure_ascii=False)
            if key in first_line:
                dup[j] = first_line[key]
            else:
                first_line[key] = c0 + j + 1
    return junk, dup


class _Tally:
    """The output rows of one scoring pass and what the summary counts: reasons, truncated, scored values, the top K
    (a heap of ``(value, -line index, row json)``)."""

    def __init__(self, select_top: int | None):
        self.select_top = select_top
        self.reasons: Counter = Counter()
        self.truncated = self.scored = 0
        self.values: list[float] = []
        self.top: list[tuple[float, int, str]] = []

    def row(self, obj, error: str | None, junk: str | None, duplicate_of: int | None, result, index: int) -> dict:
        """The output row of line ``index`` (0-based): a format error, a junk answer, a repeat, or its score."""
        if obj is None:
            self.reasons[BAD_FORMAT] += 1
            logger.warning("%s", error)
            return {"influence": None, "reason": BAD_FORMAT, "error": error}
        row = dict(obj) if isinstance(obj, dict) else {"messages": obj}
        if junk is not None:
            row.update(influence=None, reason=junk)
            self.reasons[junk] += 1
        elif duplicate_of is not None:
            row.update(influence=None, reason="duplicate", duplicate_of=duplicate_of)
            self.reasons["duplicate"] += 1
        else:
            self._scored(row, result, index)
        return row

    def _scored(self, row: dict, r, index: int) -> None:
        row["influence"] = r.value
        if r.reason is not None:
            row["reason"] = r.reason
            self.reasons[r.reason] += 1
        if r.truncated:
            row["truncated"] = True
            self.truncated += 1
        if r.value is not None:
            self.scored += 1
            self.values.append(r.value)
            if self.select_top is not None:
                item = (r.value, -index, json.dumps(row, ensure_ascii=False))
                if len(self.top) < self.select_top:
                    heapq.heappush(self.top, item)
                else:
                    heapq.heappushpop(self.top, item)


def _finish_shard(cfg, samples_path: Path, output_path: Path, total: int, span: tuple[int, int], num_shards: int,
                  shard_index: int, shard_id: str, write_to: Path, tally: _Tally, elapsed: float, summary_selected,
                  selected_path, warmup) -> dict:
    """A shard's record, then the merge if this shard is the last to finish: the one-process summary when it merged,
    the shard's own counts (``merged: false``) when others are still missing."""
    lo, hi = span
    record = {"key": shard_id, "first": lo, "end": hi, "scored": tally.scored, "unscored": dict(tally.reasons),
              "truncated": tally.truncated, "values": tally.values, "top": [list(t) for t in tally.top],
              "seconds": round(elapsed, 3)}
    shards.finish_shard(output_path, num_shards, shard_index, write_to, record)
    merged = shards.try_merge(output_path, num_shards, shard_id, selected_path)
    if merged is None:
        _, missing, stale = shards.survey(output_path, num_shards, shard_id)
        waiting = sorted(missing + list(stale))
        logger.info("shard %d of %d (lines %d-%d) written; %s", shard_index, num_shards, lo + 1, hi,
                    f"waiting for shard(s) {waiting}: the last to finish merges them into {output_path}"
                    if waiting else "another process merges them")
        return {"input": str(samples_path), "output": str(output_path), "shard_index": shard_index,
                "num_shards": num_shards, "lines": [lo + 1, hi], "scored": tally.scored,
                "unscored": dict(tally.reasons), "truncated": tally.truncated, "seconds": round(elapsed, 3),
                "merged": False, "waiting_for": waiting}
    return _merged_summary(cfg, samples_path, output_path, total, merged, summary_selected, num_shards, warmup=warmup)


def merge_file(cfg: InfluenceConfig, samples_path: str | Path, output_path: str | Path, num_shards: int,
               select_top: int | None = None, selected_path: str | Path | None = None, *,
               chunk_size: int = ScoreArguments.chunk_size) -> dict:
    """``rubric-rl score --merge``: merge the finished shards of ``num_shards`` into ``output_path`` (and the
    top-K file); a missing, stale or partial shard is an error naming it. Returns the summary."""
    samples_path, output_path = Path(samples_path), Path(output_path)
    if select_top is not None and selected_path is None:
        selected_path = _top_path(output_path, select_top)
    with samples_path.open(encoding="utf-8") as fh:
        total = len(fh.read().splitlines())
    key = shards.shard_key(cfg, samples_path, total, chunk_size, select_top)
    merged = shards.try_merge(output_path, num_shards, key, selected_path, explicit=True)
    return _merged_summary(cfg, samples_path, output_path, total, merged, select_top and selected_path, num_shards)


def _merged_summary(cfg, samples_path, output_path, total: int, merged: dict, selected_path, num_shards: int, *,
                    warmup: dict | None = None) -> dict:
    """One process's summary from the merged shard records (its seconds: the slowest shard's), plus the shards'."""
    seconds = max(merged["shard_seconds"], default=0.0)
    summary = _summary(cfg, samples_path, output_path, total, merged["scored"], merged["unscored"],
                       merged["truncated"], merged["values"], seconds, selected_path, merged["top_count"],
                       warmup=warmup)
    summary["shards"] = num_shards
    summary["shard_seconds"] = merged["shard_seconds"]
    return summary


def _summary(cfg, samples_path, output_path, total: int, scored: int, unscored: dict, truncated: int,
             values: list[float], elapsed: float, selected_path, selected_count: int, *,
             warmup: dict | None = None) -> dict:
    summary = {
        "input": str(samples_path),
        "output": str(output_path),
        "total": total,
        "scored": scored,
        "unscored": unscored,
        "truncated": truncated,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(total / elapsed, 3) if elapsed > 0 else None,
        "estimator": cfg.influence_estimator,
        "direction": cfg.influence_direction,
        "warmup": warmup,  # {"dir": RUN_DIR/warmup, "reused": true | false}, None for a given scorer
    }
    if values:
        t = torch.tensor(values, dtype=torch.float64)
        summary["influence_mean"] = float(t.mean())
        summary["influence_std"] = float(t.std()) if len(values) > 1 else 0.0
        summary["influence_min"], summary["influence_max"] = float(t.min()), float(t.max())
    if selected_path:
        summary["selected"] = str(selected_path)
        summary["selected_count"] = selected_count
    if any(math.isnan(v) for v in values):  # pragma: no cover - results are finite by construction
        raise RuntimeError("NaN influence written")
    return summary
