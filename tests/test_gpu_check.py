"""scripts/gpu_check.sh without a CUDA device: one line, exit 0, and a JSON that says it skipped (CUDA is hidden,
so this holds on a GPU machine too). The check itself runs on a CUDA machine (README, "GPU check")."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run(cwd, *args):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("GPU_CHECK_CPU", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_no_cuda_is_a_clean_skip_with_a_json(tmp_path):
    res = run(tmp_path)  # default output: gpu_check.json in the current folder
    assert res.returncode == 0, res.stderr
    assert res.stdout == "skipped: no CUDA device\n"
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "skipped" and report["reason"] == "no CUDA device"
    assert report["check"] == "scripts/gpu_check.sh" and "torch" in report

    res = run(tmp_path, "figures/check.json", "no-such-trl.whl")  # a relative path, a wheel that is never used
    assert res.returncode == 0 and res.stdout == "skipped: no CUDA device\n", res.stderr
    assert json.loads((tmp_path / "figures" / "check.json").read_text())["status"] == "skipped"


@pytest.mark.slow
def test_cpu_mode_runs_the_benchmark_and_the_sharded_score(tmp_path):
    """GPU_CHECK_CPU=1: the script's steps on the CPU with small sizes (no training): the benchmark's figures,
    and `accelerate launch` of 2 processes writing the one-process files byte for byte."""
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_CPU": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(SCRIPT), "out.json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["status"] == "ok" and report["mode"].startswith("cpu")
    assert report["bench"][0]["rc"] == 0 and report["bench"][0]["engine_over_floor"] > 0
    assert report["score"]["processes"] == 2 and report["score"]["sharded"]["summary"]["shards"] == 2
    assert report["score"]["output"] == {"identical": True} and report["score"]["top"] == {"identical": True}
