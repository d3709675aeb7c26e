"""The miniature of the proof (scripts/proof.py --quick) on the real target, SmolLM2-135M-Instruct.

Slow (about 15 minutes on 2 CPU cores: the target's warm-up, 4 GRPO steps of one training seed, and 3 sources
x 2 evaluation seeds of 16 samples each) and skipped, with the reason, when the model is not fetched. It
checks the pipeline and the report's schema, not the claim (that is reports/proof/, made by the full run).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = Path.home() / ".cache/rubric_rl/models/SmolLM2-135M-Instruct"  # where the proof's configs look

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (REAL / "config.json").exists(),
                       reason=f"real model not fetched: run python scripts/fetch_smollm2.py (looked in {REAL})"),
]


def test_quick_proof_writes_the_report_schema(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "proof.py"), "--quick", "--work",
                           str(tmp_path / "work"), "--output", str(out)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=3600)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    report = json.loads((out / "report.json").read_text())
    assert {"commit", "versions", "target", "calibration", "rl"} <= set(report)
    assert {"torch", "transformers", "trl", "peft", "accelerate"} <= set(report["versions"])
    assert report["calibration"] is None and report["quick"] is True  # --quick skips the calibration stage
    paired = report["rl"]["paired"]["trained>seed"]
    for metric in ("loss", "acc"):
        s = paired[metric]
        assert s["runs"] == 2 and s["wins"] + s["losses"] + s["ties"] == 2 and 0 <= s["p_sign_test"] <= 1
    assert len(report["rl"]["runs"]) == 3 * 2  # trained_s0, seed, none x 2 evaluation seeds
    assert report["rl"]["training"][0]["steps"] == 4
    assert (out / "report.md").read_text().startswith("# The proof on a real target")
