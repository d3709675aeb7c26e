"""What influence is measured on: kronfluence's ``Task``, in this project's terms.

* the **training loss** of a candidate sample: the mean token cross-entropy over its assistant tokens (what
  :class:`~rubric_rl.influence.grads.PerSampleGradients` differentiates; the loss the target is fine-tuned with);
* the **validation objective** (``influence_objective``): the token loss of each validation item's gold answer, its
  choice loss (:mod:`.choices`), or both;
* the **tracked modules**: whose weights the gradients are taken of. ``trainable``: every trainable parameter (the
  warm-up's LoRA factors); ``linear``: only the trainable weights that belong to an ``nn.Linear`` (a fully
  fine-tuned student's embeddings and norms left out: the closed loop's student).

The scorer is handed a task (or makes one from its config: :meth:`InfluenceTask.of`) and tracks its modules for its
lifetime (:meth:`InfluenceTask.tracking`), restoring every parameter's ``requires_grad`` on close.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from ..configs.influence import OBJECTIVES

TRACKED = ("trainable", "linear")


@dataclass(frozen=True)
class InfluenceTask:
    objective: str  # influence_objective: "tokens", "choices" or "tokens+choices"
    tracked: str = "trainable"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"InfluenceTask: objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.tracked not in TRACKED:
            raise ValueError(f"InfluenceTask: tracked must be one of {list(TRACKED)}, got {self.tracked!r}")

    @classmethod
    def of(cls, cfg, *, tracked: str = "trainable") -> "InfluenceTask":
        """The task an :class:`~rubric_rl.configs.influence.InfluenceConfig` describes."""
        return cls(objective=cfg.influence_objective, tracked=tracked)

    def tracked_names(self, model: nn.Module) -> list[str]:
        """The parameters whose gradients are taken, in ``named_parameters`` order."""
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        if self.tracked == "trainable":
            return names
        linear = {name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}
        return [n for n in names if n.rpartition(".")[0] in linear]

    @contextmanager
    def tracking(self, model: nn.Module):
        """Only the tracked parameters require gradients inside the block; every flag is restored after it."""
        saved = {n: p.requires_grad for n, p in model.named_parameters()}
        keep = set(self.tracked_names(model))
        try:
            for n, p in model.named_parameters():
                p.requires_grad_(n in keep)
            yield keep
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(saved[n])
