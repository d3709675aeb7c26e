"""Writing synthetic datasets: an HF ``datasets`` copy of a samples jsonl.

Every line of a samples file is one sample: ``{"messages": [...], "doc_id": ..., "provenance": {...}}``,
written by :class:`rubric_rl.jsonl.JsonlAppender` (append-only, fsync'd checkpoints, truncated back to the
last checkpoint on resume, so a crash between two checkpoints neither duplicates nor loses a sample).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..jsonl import iter_jsonl


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
