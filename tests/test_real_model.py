"""The influence estimator on a real model: SmolLM2-135M-Instruct, fetched by scripts/fetch_smollm2.py.

Slow (about 6 minutes on 2 CPU cores) and skipped, with the reason, when the model folder is not there.
The first-order check is the ground truth: one real torch.optim.Adam step on each candidate at the last
warm-up checkpoint; the default estimator must rank candidates like the validation-loss decrease it
causes, and rank target-task samples above off-domain ones.
"""

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("RUBRIC_RL_REAL_MODEL", Path.home() / ".cache/rubric_rl/models/SmolLM2-135M-Instruct"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (REAL / "config.json").exists(),
                       reason=f"real model not fetched: run python scripts/fetch_smollm2.py (looked in {REAL})"),
]


def test_default_estimator_passes_the_first_order_check_on_smollm2(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import check_influence

    cfg = tmp_path / "real.yaml"
    cfg.write_text("\n".join([
        f"target_model_name_or_path: {REAL}", "target_dtype: float32",
        f"warmup_data: {ROOT / 'data/quickstart/warmup.jsonl'}", "warmup_epochs: 1",
        "warmup_learning_rate: 0.0001", "warmup_batch_size: 8", "warmup_max_length: 256",
        f"influence_validation_data: {ROOT / 'data/quickstart/validation.jsonl'}",
        "influence_batch_size: 8", "influence_max_length: 256"]) + "\n")
    unrelated = tmp_path / "unrelated.jsonl"
    unrelated.write_text("".join((ROOT / "data/checks/off_domain.jsonl").read_text().splitlines(True)[:8]))
    rc = check_influence.main(["--config", str(cfg), "--output_dir", str(tmp_path / "run"), "--num_related", "8",
                               "--unrelated", str(unrelated), "--variants", "default",
                               "--test_data", str(ROOT / "data/quickstart/test.jsonl"), "--threads", "2"])
    assert rc == 0
    report = json.loads((tmp_path / "run" / "influence_check.json").read_text())
    row = report["variants"]["default"]
    assert (row["estimator"], row["direction"], row["proj_dim"]) == ("dot", "adam", 0)  # the shipped defaults
    assert row["auc"] >= 0.8, row
    assert row["spearman_all"] >= 0.8, row
