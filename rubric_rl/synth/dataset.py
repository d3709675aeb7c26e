"""Writing synthetic datasets: an append-only jsonl with crash-safe checkpoints, and an HF ``datasets`` copy.

Every line is one sample: ``{"messages": [...], "doc_id": ..., "provenance": {...}}``. The writer
flushes and fsyncs at each checkpoint and reports the byte offset; a resumed run truncates the file
back to the offset of its last checkpoint, so a crash between two checkpoints neither duplicates nor
loses a sample (the work after the checkpoint is redone).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class JsonlAppender:
    """Append-only jsonl writer with explicit checkpoints."""

    def __init__(self, path: str | Path, *, truncate_to: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_to is not None and self.path.exists():
            with self.path.open("r+b") as fh:
                fh.truncate(truncate_to)
        self._fh = self.path.open("ab")

    def write(self, row: dict) -> None:
        self._fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))

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


def iter_jsonl(path: str | Path):
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_hf_dataset(jsonl_path: str | Path, out_dir: str | Path):
    """Save the samples of ``jsonl_path`` as an HF ``datasets`` folder (``datasets.load_from_disk``).

    Columns: ``messages`` (list of ``{role, content}``), ``doc_id`` (str) and ``provenance`` (a JSON
    string: its nested fields vary between samples, which Arrow schemas do not like).
    """
    import datasets

    rows = [{"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]],
             "doc_id": str(r.get("doc_id", "")),
             "provenance": json.dumps(r.get("provenance", {}), ensure_ascii=False)}
            for r in iter_jsonl(jsonl_path)]
    features = datasets.Features({
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "doc_id": datasets.Value("string"),
        "provenance": datasets.Value("string"),
    })
    ds = datasets.Dataset.from_list(rows, features=features)
    ds.save_to_disk(str(out_dir))
    return ds
