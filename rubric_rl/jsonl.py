"""UTF-8 text and JSON-lines files: the one place that reads and writes them.

Two kinds of reader, because the package reads two kinds of file:

* **Input files** the user names (documents, chat samples, evaluation items, a synthesized dataset):
  :func:`iter_values`, :func:`iter_rows`, :func:`iter_jsonl`, :func:`read_jsonl`. Blank lines are skipped;
  anything else that is wrong (missing file, a directory, a byte that is not UTF-8, a line that is not
  JSON, a line that is not an object) is a :class:`~rubric_rl.errors.DataFileError` naming ``file:line``.
* **Logs this package appends to** (``metrics.jsonl``, ``rollouts*.jsonl``): :func:`iter_log_rows`, and
  :func:`filter_log` to trim one on resume. A run that was killed mid-write leaves a torn last line; such
  lines (and blank ones) are skipped, and a missing file reads as empty.

Writers: :func:`dumps_line` (one line, newline included), :func:`write_jsonl` (a whole file),
:func:`append_jsonl` (appends rows, creating the folder), and :class:`JsonlAppender` (append-only with
fsync'd checkpoints, for resumable outputs). ``ensure_ascii`` and ``default`` are passed on to
``json.dumps``, so every file keeps the bytes it had. Whole files that a reader must never see half-written (a
resume state, a summary, a shard's record, a round's metrics) go through :func:`write_text_atomic` (or
:func:`write_json_atomic`): a temporary file, fsync'd, renamed over the old one (:func:`replace_atomic`).

Imports only the standard library and :mod:`rubric_rl.errors`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import DataFileError


def check_file(path: str | Path) -> Path:
    """``path`` as a Path if it is an existing regular file, else a :class:`DataFileError` naming it."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: file not found")
    if path.is_dir():
        raise DataFileError(f"{path}: is a directory, not a file")
    if not path.is_file():
        raise DataFileError(f"{path}: not a regular file")
    return path


def _decode_line(path: Path, lineno: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column "
                            f"{err.start + 1}); re-encode the file as UTF-8") from None


def iter_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of a UTF-8 text file; a bad byte is an error naming ``file:line``."""
    path = check_file(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            yield lineno, _decode_line(path, lineno, raw)


def read_text(path: str | Path) -> str:
    """The whole UTF-8 text of ``path``; errors name ``file:line`` (missing file, directory, bad byte)."""
    path = check_file(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = data.count(b"\n", 0, err.start) + 1
        line_start = data.rfind(b"\n", 0, err.start) + 1
        raise DataFileError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{data[err.start]:02x} at column "
                            f"{err.start - line_start + 1}); re-encode the file as UTF-8") from None


def parse_lines(lines: Iterable[tuple[int, str]], where: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` of every non-blank line of ``lines`` (pairs of line number and text);
    a line that is not JSON is a :class:`DataFileError` naming ``where:line``."""
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFileError(f"{where}:{lineno}: invalid JSON ({err.msg})") from None


def iter_values(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` of every non-blank line; errors name ``file:line``."""
    return parse_lines(iter_text_lines(path), path)


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of every non-blank line; a line that is not a JSON object is an error."""
    for lineno, row in iter_values(path):
        if not isinstance(row, dict):
            raise DataFileError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """The objects of a jsonl file, strictly (see :func:`iter_rows`)."""
    for _, row in iter_rows(path):
        yield row


def read_jsonl(path: str | Path) -> list[dict]:
    """All objects of a jsonl file, strictly (see :func:`iter_rows`)."""
    return list(iter_jsonl(path))


def iter_log_rows(path: str | Path) -> Iterator[dict]:
    """The objects of a log this package appends to; lines that do not parse as a JSON object (a torn last
    line after a crash, a blank line) are skipped, and a missing file yields nothing."""
    path = Path(path)
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            yield row


def filter_log(path: str | Path, keep) -> None:
    """Rewrite a log keeping, byte for byte, the lines whose object passes ``keep(row)``; lines that do not
    parse as an object are dropped, and a missing file is left missing (used on resume)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and keep(row):
            kept.append(line)
    path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")


def dumps_line(obj, *, ensure_ascii: bool = False, default=None) -> str:
    """One jsonl line for ``obj``, with its newline."""
    return json.dumps(obj, ensure_ascii=ensure_ascii, default=default) + "\n"


def write_jsonl(path: str | Path, rows: Iterable, *, ensure_ascii: bool = False, default=None) -> Path:
    """Write ``rows`` as a jsonl file (replacing it), creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(dumps_line(row, ensure_ascii=ensure_ascii, default=default))
    return path


def append_jsonl(path: str | Path, rows: Iterable, *, ensure_ascii: bool = False, default=None) -> None:
    """Append ``rows`` to a jsonl file, creating the folder and the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(dumps_line(row, ensure_ascii=ensure_ascii, default=default))


def replace_atomic(tmp: str | Path, final: str | Path) -> None:
    """fsync the finished file ``tmp``, then rename it over ``final``: a reader sees the old file or the new one."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def write_text_atomic(path: str | Path, text: str, *, tmp_suffix: str = ".tmp") -> None:
    """Write ``text`` to ``path`` through ``PATH<tmp_suffix>`` (:func:`replace_atomic`); the one atomic writer.
    Writers that may race on one path (sharded processes) give a suffix of their own."""
    path = Path(path)
    tmp = path.with_name(path.name + tmp_suffix)
    tmp.write_text(text, encoding="utf-8")
    replace_atomic(tmp, path)


def write_json_atomic(path: str | Path, obj, *, end: str = "", indent: int | None = 1, ensure_ascii: bool = False,
                      default=None, sort_keys: bool = False, tmp_suffix: str = ".tmp") -> None:
    """``json.dumps(obj, ...) + end`` written by :func:`write_text_atomic` (the arguments keep each file's bytes)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, default=default,
                                       sort_keys=sort_keys) + end, tmp_suffix=tmp_suffix)


class JsonlAppender:
    """Append-only jsonl writer with explicit checkpoints.

    The writer flushes and fsyncs at each checkpoint and reports the byte offset; a resumed run truncates
    the file back to the offset of its last checkpoint, so a crash between two checkpoints neither
    duplicates nor loses a row (the work after the checkpoint is redone)."""

    def __init__(self, path: str | Path, *, truncate_to: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_to is not None and self.path.exists():
            with self.path.open("r+b") as fh:
                fh.truncate(truncate_to)
        self._fh = self.path.open("ab")

    def write(self, row: dict) -> None:
        self._fh.write(dumps_line(row).encode("utf-8"))

    def checkpoint(self) -> int:
        """Flush to disk; returns the file size (the offset a resume truncates back to)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return self._fh.tell()

    def close(self) -> None:
        if not self._fh.closed:
            self.checkpoint()
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
