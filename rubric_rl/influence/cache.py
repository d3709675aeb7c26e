"""The validation-gradient cache: per checkpoint, the per-subtask sums of the validation objective's gradients and
their counts, as safetensors beside the JSON arguments that made them (``RUN_DIR/influence_cache/val-NAME-HASH/``).

The scorer (:mod:`.scorer`) computes the sums and the key; this module is the only one that reads or writes them, so
the scorer itself touches no file. Writes are atomic (a temporary file, then a rename), so a crash never leaves a
half-written entry that a later run would trust; an entry is used only when its saved arguments and subtask names
equal the asked ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..jsonl import replace_atomic, write_json_atomic

CACHE_DIRNAME = "influence_cache"
CACHE_FORMAT = 2  # 2: per-subtask sums [S, D] (format 1 kept [n_val, D])


def hash_json(obj) -> str:
    """sha256 of ``obj``'s canonical JSON (sorted keys): a content key."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class ValidationCache:
    """A folder of validation-gradient entries, one per (checkpoint, arguments)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _entry(self, name: str, arguments: dict) -> Path:
        return self.folder / f"val-{name}-{hash_json(arguments)[:16]}"

    def load(self, name: str, arguments: dict, subtasks: list[str], *, device, dtype) -> dict | None:
        """The saved tensors (``sum``, ``sum_unit``, ``count``) of checkpoint ``name``, or None when there is no
        entry made with exactly these arguments and subtasks."""
        from safetensors.torch import load_file

        entry = self._entry(name, arguments)
        args_file, tensor_file = entry / "arguments.json", entry / "val_grads.safetensors"
        if not (args_file.exists() and tensor_file.exists()):
            return None
        saved = json.loads(args_file.read_text())
        if saved.get("arguments") != arguments or saved.get("subtasks") != subtasks:
            return None
        return {k: v.to(device, dtype) for k, v in load_file(str(tensor_file)).items()}

    def save(self, name: str, arguments: dict, subtasks: list[str], tensors: dict, *, source: str = "") -> None:
        """Write checkpoint ``name``'s tensors and their arguments (``source``: where the validation set came from,
        for a reader; not part of the key)."""
        from safetensors.torch import save_file

        entry = self._entry(name, arguments)
        entry.mkdir(parents=True, exist_ok=True)
        suffix = f".tmp{os.getpid()}"  # processes that share a run folder may write one entry at once
        tmp = entry / f"val_grads.safetensors{suffix}"
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata={"arguments": json.dumps(arguments, sort_keys=True)})
        replace_atomic(tmp, entry / "val_grads.safetensors")
        write_json_atomic(entry / "arguments.json", {"arguments": arguments, "validation_data": source,
                                                     "subtasks": subtasks}, tmp_suffix=suffix)


def validation_key(rows: list[dict]) -> str:
    """The validation set's content key: sha256 of its rows (moving or renaming the file keeps the cache)."""
    return hash_json(rows)

