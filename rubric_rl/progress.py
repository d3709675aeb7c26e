"""Console conventions for long work: phase banners, and HF Trainer progress bars without raw metric dicts.

HF ``Trainer`` prints every log as a Python dict on stdout (``ProgressCallback.on_log``, or
``PrinterCallback`` when tqdm is off). rubric-rl keeps those numbers in files (``metrics.jsonl``, the
warm-up's ``trainer_state.json``), so the console shows phase banners and labelled progress bars only.
"""

from __future__ import annotations

import logging

from transformers.trainer_callback import PrinterCallback, ProgressCallback

logger = logging.getLogger("rubric_rl")


class QuietProgressCallback(ProgressCallback):
    """HF's progress bar, minus the metric dict it writes under the bar at every log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


def quiet_trainer_logs(trainer) -> None:
    """Swap the trainer's printing callbacks for :class:`QuietProgressCallback` (progress bar kept, if any)."""
    had_bar = trainer.pop_callback(ProgressCallback) is not None
    trainer.pop_callback(PrinterCallback)
    if had_bar:
        trainer.add_callback(QuietProgressCallback)


def sample_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar counting samples (``disable``d unless ``enabled``): the influence scorer's and ``score``'s."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled, dynamic_ncols=True)


def phase(name: str, detail: str = "") -> None:
    """One banner line at the start of a long phase: ``== NAME: detail ==``."""
    logger.info("== %s%s ==", name, f": {detail}" if detail else "")
