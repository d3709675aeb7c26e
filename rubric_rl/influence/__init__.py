"""Influence engine: warm-up of the target (LoRA + Adam), batched per-sample gradient features,
random projection, validation-gradient cache, and LESS-style optimizer-aware scoring."""

from ..configs.influence import InfluenceConfig
from .scorer import InfluenceResult, InfluenceScorer
from .selection import score_file
from .warmup import run_warmup

__all__ = ["InfluenceConfig", "InfluenceResult", "InfluenceScorer", "run_warmup", "score_file"]
