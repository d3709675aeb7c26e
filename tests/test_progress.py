"""The console of long work: phase banners, progress bars, no raw metric dicts (rubric_rl/progress.py)."""

import logging

import pytest
import torch
from transformers import Trainer, TrainingArguments

from rubric_rl.models import load_causal_lm
from rubric_rl.progress import QuietProgressCallback, phase, quiet_trainer_logs


class Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        ids = torch.arange(5, 13) + i
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _train(tmp_path, tiny_tokenizer, *, quiet, disable_tqdm):
    model = load_causal_lm("tiny:hidden=32,layers=2,heads=4,seed=0", tiny_tokenizer)
    args = TrainingArguments(output_dir=str(tmp_path / f"t{quiet}{disable_tqdm}"), max_steps=2, logging_steps=1,
                             per_device_train_batch_size=4, report_to="none", use_cpu=True, save_strategy="no",
                             disable_tqdm=disable_tqdm)
    trainer = Trainer(model=model, args=args, train_dataset=Rows())
    if quiet:
        quiet_trainer_logs(trainer)
    trainer.train()
    return trainer


@pytest.mark.parametrize("disable_tqdm", [False, True])
def test_trainer_logs_stay_off_the_console(tmp_path, tiny_tokenizer, capfd, disable_tqdm):
    _train(tmp_path, tiny_tokenizer, quiet=False, disable_tqdm=disable_tqdm)
    loud = "".join(capfd.readouterr())
    assert "'loss'" in loud  # HF's default: the case is live
    trainer = _train(tmp_path, tiny_tokenizer, quiet=True, disable_tqdm=disable_tqdm)
    quiet = "".join(capfd.readouterr())
    assert "'loss'" not in quiet and "'train_runtime'" not in quiet
    bars = [c for c in trainer.callback_handler.callbacks if isinstance(c, QuietProgressCallback)]
    assert len(bars) == (0 if disable_tqdm else 1)  # the progress bar stays when there was one


def test_phase_banner(caplog):
    with caplog.at_level(logging.INFO, logger="rubric_rl"):
        phase("target warm-up", "48 samples")
    assert caplog.messages == ["== target warm-up: 48 samples =="]
