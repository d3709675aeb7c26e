"""The influence job's builder: what an :class:`~rubric_rl.influence.scorer.InfluenceScorer` is handed (kronfluence's
shape: the analyzer is given a model, it never loads or trains one).

:func:`prepare_scorer_inputs` runs the target's warm-up into ``RUN_DIR/warmup`` when it is missing (or reuses a
finished one), loads the target's tokenizer (the warm-up's copy), the target with the first checkpoint's LoRA adapter
on its device, and every checkpoint's adapter weights and Adam state; the scorer is then built from them
(``InfluenceScorer.from_config`` is a thin wrapper: this function, then the constructor and the validation features).
:func:`load_validation` reads the validation file and hands its rows and the run folder's gradient cache to a built
scorer (which reads no file itself). This module does not import the scorer, so the scorer can call it without an
import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..configs.influence import InfluenceConfig
from ..data.documents import load_chat_samples
from ..devices import resolve_device
from .cache import ValidationCache
from .warmup import WarmupCheckpoint, load_checkpoints, run_warmup, warmup_finished


@dataclass
class ScorerInputs:
    """What the scorer is handed: the target (a peft model on ``device``) and its tokenizer, the warm-up's
    checkpoints, which warm-up folder they came from (``warmup``: ``{"dir", "reused"}``), and where the validation
    set and its gradient cache are."""

    model: object
    tokenizer: object
    checkpoints: list[WarmupCheckpoint]
    device: object
    warmup: dict
    validation: Path
    cache_dir: Path


def prepare_scorer_inputs(cfg: InfluenceConfig, run_dir: str | Path, *, device=None, progress: bool = False,
                          cache_dirname: str) -> ScorerInputs:
    """The warm-up (run or reused) and everything loaded from it; ``device`` overrides ``influence_device`` (under a
    launcher, the process's device comes first); ``cache_dirname`` is the validation cache's folder in ``run_dir``."""
    from peft import PeftModel

    from ..models import load_causal_lm, load_tokenizer

    if cfg.influence_validation_data is None:
        raise ValueError("influence_validation_data is not set; it must name the validation chat jsonl")
    run_dir = Path(run_dir)
    dev = resolve_device(device if device is not None else cfg.influence_device, launcher=True)
    reused = warmup_finished(run_dir)
    wdir = run_warmup(cfg, run_dir, progress=progress)
    tok_dir = wdir / "tokenizer"
    tok = load_tokenizer(str(tok_dir) if tok_dir.exists() else cfg.target_model_name_or_path,
                         trust_remote_code=cfg.target_trust_remote_code, padding_side="right")
    base = load_causal_lm(cfg.target_model_name_or_path, tok, dtype=cfg.target_dtype,
                          trust_remote_code=cfg.target_trust_remote_code)
    first = sorted((p for p in wdir.glob("checkpoint-*") if p.is_dir()),
                   key=lambda p: int(p.name.rsplit("-", 1)[1]))[0]
    model = PeftModel.from_pretrained(base, str(first), is_trainable=True)
    model.to(dev).eval()
    ckpts = load_checkpoints(wdir, model, cfg.influence_checkpoints)
    return ScorerInputs(model, tok, ckpts, dev, {"dir": str(wdir), "reused": reused},
                        Path(cfg.influence_validation_data), run_dir / cache_dirname)


def load_validation(scorer, path: str | Path, *, cache_dir: str | Path | None = None) -> None:
    """Read the validation chat jsonl at ``path`` and set it as ``scorer``'s validation set, its gradients taken from
    (or saved to) the cache folder ``cache_dir`` (None: computed, kept nowhere)."""
    scorer.set_validation(load_chat_samples(path), cache=ValidationCache(cache_dir) if cache_dir is not None else None,
                          source=str(path))
