"""Sharded ``rubric-rl score``: N processes each score a share of the input; the shards merge into the one file
a single process writes, byte for byte.

* **Shares.** The input is cut into chunks of ``chunk_size`` lines (the unit one process hands the scorer at a
  time, whose batches are length-sorted within the chunk); shard K of N is a run of whole chunks
  (:func:`shard_lines`). So every shard makes exactly the scorer calls one process makes for those lines, and
  its scores are the same floats. Every shard still reads the whole input up to its last line, so that a
  repeat of a line in an earlier shard is marked ``duplicate`` exactly as one process marks it.
* **Shard files**, next to the output: ``OUT.shard-K-of-N.jsonl`` (the lines, as the output would hold
  them) and ``OUT.shard-K-of-N.json`` (its record: the shard key, the line range, the byte and line counts,
  the counts per reason, the scores in order, the shard's own top K). Each is written to a temporary name
  and renamed; the record goes last, so a shard without its record is unfinished.
* **Merge.** A shard that finds, after writing its own, all N records present with its key merges (the last
  finisher; an exclusive ``OUT.merge.lock`` keeps two from doing it at once): it checks every shard's range,
  byte and line count, concatenates the shards into a temporary file, renames it to OUT, writes the top-K
  file from the shards' own top K (the global top K is among them), and removes the shard files. ``--merge``
  does the same on demand (shards scored elsewhere and copied here, or a merge that was interrupted) and
  names every missing, stale or partial shard; nothing short is ever written to OUT.
* **The shard key** (:func:`shard_key`): the input's bytes, the validation file's bytes, every influence
  setting but the device, ``chunk_size``, ``select_top`` and the number of lines. A record with another key
  is stale (an earlier run's): the automatic merge waits for it to be replaced, ``--merge`` refuses it.

Under ``accelerate launch``/``torchrun`` (``WORLD_SIZE`` > 1) the shard is the process's ``RANK`` and its
device ``cuda:LOCAL_RANK`` (:func:`rubric_rl.launch.launched`, :func:`launch_device`); there is no collective, as in the
warm-up (which rank 0 runs while the others wait).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from ..configs.influence import InfluenceConfig
from ..errors import UserError
from ..jsonl import replace_atomic, write_text_atomic
from ..launch import launched  # re-exported: score's launcher check
from ..provenance import file_sha256

logger = logging.getLogger("rubric_rl.influence.scorer")

SHARD_FORMAT = 1
_KIND = "rubric_rl_score_shard"
_NOT_DEFINING = {"influence_device"}  # shards may run on different devices


def launch_device(cfg: InfluenceConfig) -> str | None:
    """The device of this launched process (``cuda:LOCAL_RANK``) when ``influence_device`` is ``auto`` and
    CUDA is there; None otherwise (the config decides)."""
    info = launched()
    if info is None or str(cfg.influence_device) != "auto":
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return f"cuda:{info[2] % torch.cuda.device_count()}"


def resolve(num_shards: int | None, shard_index: int | None, merge: bool = False) -> tuple[int, int]:
    """``(num_shards, shard_index)`` of this process: the flags, or the launcher's world size and rank."""
    info = launched()
    if info is not None:
        if num_shards is not None or shard_index is not None or merge:
            raise UserError(f"--num_shards/--shard_index/--merge are for separate runs; under a launcher "
                            f"(WORLD_SIZE={info[0]}) each process scores the shard of its rank: leave them out")
        return info[0], info[1]
    if num_shards is None:
        return 1, 0
    if shard_index is None and not merge:
        raise UserError(f"--num_shards {num_shards} needs --shard_index K (0 to {num_shards - 1}), or --merge to "
                        "merge finished shards")
    return num_shards, 0 if shard_index is None else shard_index


def shard_lines(total: int, chunk_size: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """Lines ``[lo, hi)`` (0-based) of shard ``shard_index``: a run of whole chunks, the chunks dealt out as
    evenly as they go (a file of fewer chunks than shards leaves some shards empty)."""
    chunks = -(-total // chunk_size)
    first = shard_index * chunks // num_shards
    last = (shard_index + 1) * chunks // num_shards
    return min(first * chunk_size, total), min(last * chunk_size, total)


def shard_paths(output: str | Path, num_shards: int, shard_index: int) -> tuple[Path, Path]:
    """``(lines file, record file)`` of one shard."""
    output = Path(output)
    stem = f"{output.name}.shard-{shard_index}-of-{num_shards}"
    return output.with_name(stem + ".jsonl"), output.with_name(stem + ".json")


def _lock_path(output: Path) -> Path:
    return output.with_name(output.name + ".merge.lock")


def shard_key(cfg: InfluenceConfig, samples_path: str | Path, total: int, chunk_size: int,
              select_top: int | None) -> dict:
    """What every shard of one merged file must share (see the module docstring)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_DEFINING}
    val = cfg.influence_validation_data
    return {
        "samples_sha256": file_sha256(samples_path),
        "lines": total,
        "chunk_size": chunk_size,
        "select_top": select_top,
        "validation_sha256": file_sha256(val) if val and Path(val).is_file() else None,
        "settings_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest(),
    }


def clear_shard(output: str | Path, num_shards: int, shard_index: int) -> None:
    """Remove this shard's files from an earlier run (the record first: a lines file alone is unfinished)."""
    data, record = shard_paths(output, num_shards, shard_index)
    record.unlink(missing_ok=True)
    data.unlink(missing_ok=True)


def _write_text_atomically(path: Path, text: str) -> None:
    write_text_atomic(path, text, tmp_suffix=f".tmp{os.getpid()}")  # shards race on OUT's files: one name each


@contextmanager
def open_lines(path: Path, *, remove_on_error: bool):
    """``path`` opened for writing text; removed if the block raises and ``remove_on_error`` (a shard's
    temporary lines file)."""
    try:
        with path.open("w", encoding="utf-8") as fh:
            yield fh
    except BaseException:
        if remove_on_error:
            path.unlink(missing_ok=True)
        raise


def temporary_lines_path(output: str | Path, num_shards: int, shard_index: int) -> Path:
    data, _ = shard_paths(output, num_shards, shard_index)
    return data.with_name(f"{data.name}.tmp{os.getpid()}")


def finish_shard(output: str | Path, num_shards: int, shard_index: int, tmp_lines: Path, record: dict) -> Path:
    """Rename the shard's lines into place, then write its record (which marks it finished); returns the
    record's path. ``record`` holds the key, the range, the counts, ``values`` and ``top``."""
    data, record_path = shard_paths(output, num_shards, shard_index)
    size = tmp_lines.stat().st_size
    replace_atomic(tmp_lines, data)
    full = {"format": SHARD_FORMAT, "kind": _KIND, "shard_index": shard_index, "num_shards": num_shards,
            "bytes": size, **record}
    _write_text_atomically(record_path, json.dumps(full))
    return record_path


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("kind") == _KIND else None


def survey(output: str | Path, num_shards: int, key: dict) -> tuple[dict[int, dict], list[int], dict[int, str]]:
    """``(finished records by shard, missing shards, stale shards -> why)``."""
    ready, missing, stale = {}, [], {}
    for k in range(num_shards):
        _, record_path = shard_paths(output, num_shards, k)
        if not record_path.exists():
            missing.append(k)
            continue
        record = _read_record(record_path)
        if record is None or record.get("format") != SHARD_FORMAT:
            stale[k] = f"{record_path} is not a shard record of this version"
        elif record.get("key") != key:
            old = record.get("key") or {}
            stale[k] = f"{record_path} was made for other input or settings (differs in " + ", ".join(
                sorted(f for f in set(old) | set(key) if old.get(f) != key.get(f))) + ")"
        else:
            ready[k] = record
    return ready, missing, stale


def _shard_command(num_shards: int, k: int) -> str:
    return f"rubric-rl score ... --num_shards {num_shards} --shard_index {k}"


def try_merge(output: str | Path, num_shards: int, key: dict, selected_path: str | Path | None, *,
              explicit: bool = False) -> dict | None:
    """Merge the shards into ``output`` (and the top-K file) if all are finished; returns the merged record
    (counts, values, seconds per shard) or None when some shard is not finished (or another process is
    merging). With ``explicit`` (``--merge``) a missing or stale shard is an error naming it, and a lock left
    by an interrupted merge is taken over."""
    output = Path(output)
    ready, missing, stale = survey(output, num_shards, key)
    if missing or stale:
        if explicit:
            parts = [f"shard {k} of {num_shards} is missing (run `{_shard_command(num_shards, k)}`)" for k in missing]
            parts += [f"shard {k} of {num_shards} is stale: {why}; rerun it" for k, why in stale.items()]
            if len(missing) == num_shards and output.is_file():
                parts.append(f"{output} exists: the last shard to finish merges them by itself, so it may be merged "
                             "already (--merge is for shards copied here from elsewhere, or an interrupted merge)")
            raise UserError(f"cannot merge {output}: " + "; ".join(parts))
        return None
    lock = _lock_path(output)
    if not explicit:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            logger.info("all %d shards of %s are finished and %s exists: another process is merging them (if "
                        "none is, remove the lock or run with --merge)", num_shards, output, lock)
            return None
    try:
        merged = _merge(output, num_shards, key, ready, selected_path)
    finally:
        lock.unlink(missing_ok=True)
    return merged


def _merge(output: Path, num_shards: int, key: dict, records: dict[int, dict], selected_path) -> dict:
    start = 0
    for k in range(num_shards):  # every range as this process would have cut it, end to end
        lo, hi = shard_lines(key["lines"], key["chunk_size"], num_shards, k)
        r = records[k]
        if (r.get("first"), r.get("end")) != (lo, hi) or lo != start:
            raise UserError(f"cannot merge {output}: shard {k} of {num_shards} holds lines {r.get('first')}-"
                            f"{r.get('end')}, expected {lo}-{hi}; rerun `{_shard_command(num_shards, k)}`")
        start = hi
    if start != key["lines"]:
        raise UserError(f"cannot merge {output}: the shards cover {start} of {key['lines']} lines")
    tmp = output.with_name(f"{output.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as out:
            for k in range(num_shards):
                data, _ = shard_paths(output, num_shards, k)
                r = records[k]
                if not data.is_file() or data.stat().st_size != r["bytes"]:
                    size = data.stat().st_size if data.is_file() else "no"
                    raise UserError(f"cannot merge {output}: shard {k} of {num_shards} is partial ({data}: {size} "
                                    f"bytes, its record says {r['bytes']}); rerun `{_shard_command(num_shards, k)}`")
                lines = 0
                with data.open("rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        lines += block.count(b"\n")
                        out.write(block)
                if lines != r["end"] - r["first"]:
                    raise UserError(f"cannot merge {output}: shard {k} of {num_shards} ({data}) has {lines} lines, "
                                    f"expected {r['end'] - r['first']}; rerun `{_shard_command(num_shards, k)}`")
            out.flush()
            os.fsync(out.fileno())
        if key["select_top"] is not None:
            top = sorted((tuple(item) for k in range(num_shards) for item in records[k]["top"]), reverse=True)
            selected_path = Path(selected_path)
            selected_path.parent.mkdir(parents=True, exist_ok=True)
            _write_text_atomically(selected_path, "".join(row + "\n" for _, _, row in top[:key["select_top"]]))
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    for k in range(num_shards):
        clear_shard(output, num_shards, k)
    reasons: dict[str, int] = {}
    for k in range(num_shards):  # first-seen order, as one process counts them
        for reason, n in records[k]["unscored"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    return {
        "scored": sum(records[k]["scored"] for k in range(num_shards)),
        "unscored": reasons,
        "truncated": sum(records[k]["truncated"] for k in range(num_shards)),
        "values": [v for k in range(num_shards) for v in records[k]["values"]],
        "top_count": min(key["select_top"] or 0, sum(len(records[k]["top"]) for k in range(num_shards))),
        "shard_seconds": [records[k]["seconds"] for k in range(num_shards)],
    }
