"""Loading documents and chat-format sample files, with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataFileError
from ..jsonl import iter_values, read_jsonl, read_text

__all__ = ["DataFileError", "load_chat_samples", "load_documents", "load_rubric_file"]


def load_documents(path: str | Path, text_field: str = "text", id_field: str = "id") -> list[dict]:
    """Documents as ``{"id", "text", ...}`` from jsonl, json (a list), parquet, or an HF ``datasets`` folder.

    Rows with an empty text are kept out and reported in the error if nothing is left; ids default to
    the row number.
    """
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: file not found")
    if path.is_dir():
        if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                or (path / "state.json").exists()):
            raise DataFileError(f"{path}: is a directory, not a documents file (jsonl/json/parquet) or a datasets "
                                "folder written by save_to_disk")
    if path.is_dir() or path.suffix in (".parquet", ".arrow"):
        import datasets

        try:
            ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.load_dataset(
                "parquet", data_files=str(path), split="train")
        except Exception as err:  # noqa: BLE001 - datasets raises many types; the file is what the user must fix
            raise DataFileError(f"{path}: cannot be read as a dataset ({type(err).__name__}: "
                                f"{' '.join(str(err).split())[:200]})") from None
        if isinstance(ds, datasets.DatasetDict):
            raise DataFileError(f"{path}: holds a DatasetDict ({', '.join(ds)}); point documents at one split")
        rows = [dict(r) for r in ds]
    elif path.suffix == ".json":
        try:
            rows = json.loads(read_text(path))
        except json.JSONDecodeError as err:
            raise DataFileError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(rows, list):
            raise DataFileError(f"{path}: expected a JSON list of documents")
    else:
        rows = read_jsonl(path)
    docs = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataFileError(f"{path}: row {i + 1}: expected an object with a {text_field!r} field")
        if text_field not in row:
            raise DataFileError(f"{path}: row {i + 1} has no {text_field!r} field (fields: {sorted(row)})")
        text = row[text_field]
        if not isinstance(text, str):
            raise DataFileError(f"{path}: row {i + 1}: {text_field!r} must be a string")
        docs.append({**row, "id": str(row.get(id_field, i)), "text": text})
    if not any(d["text"].strip() for d in docs):
        raise DataFileError(f"{path}: no document with non-empty {text_field!r}")
    return docs


def load_chat_samples(path: str | Path) -> list[dict]:
    """Chat samples from jsonl: one ``{"messages": [...], ...}`` (or a bare messages list) per line.

    Every row keeps its other fields and gains ``line`` (its line number). Any malformed line is an
    error naming ``file:line``; an empty file is an error too. The one reader of chat files (warm-up,
    validation, test, seed samples)."""
    from .chat import ChatFormatError, validate_messages

    path = Path(path)
    rows = []
    for lineno, obj in iter_values(path):
        row = dict(obj) if isinstance(obj, dict) else {"messages": obj}
        try:
            validate_messages(row.get("messages"))
        except ChatFormatError as err:
            raise DataFileError(f"{path}:{lineno}: not a chat sample ({err})") from None
        row["line"] = lineno
        rows.append(row)
    if not rows:
        raise DataFileError(f"{path}: no samples")
    return rows


def load_rubric_file(path: str | Path):
    """Rubrics from a JSON list (or {"rubrics": [...]}); errors name the file and the entry."""
    from ..rubric import Rubric, RubricParseError

    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataFileError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if isinstance(data, dict) and "rubrics" in data:
        data = data["rubrics"]
    if not isinstance(data, list) or not data:
        raise DataFileError(f"{path}: expected a non-empty JSON list of rubrics")
    out = []
    for i, entry in enumerate(data):
        try:
            out.append(Rubric.from_dict(entry))
        except RubricParseError as err:
            raise DataFileError(f"{path}: rubric {i}: {err}") from None
    return out
