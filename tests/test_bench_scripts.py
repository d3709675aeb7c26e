"""The influence benchmarks run and say what they measure (tiny sizes: behaviour, not speed).

`scripts/bench_influence.py` must reproduce the engine's scores with its LESS-style reference (it broke
silently once when the scorer's aggregation moved); `scripts/bench_influence_scaling.py` must write every
sweep the README's scaling table is made from."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny:hidden=64,layers=2,heads=2,seed=0"


def run(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


def test_reference_benchmark_reproduces_the_engines_scores(tmp_path):
    out = tmp_path / "bench.json"
    run([str(ROOT / "scripts/bench_influence.py"), "--model", TINY, "--n", "6", "--n-val", "12", "--proj-dim",
         "128", "--threads", "1", "--reference", "regen", "materialized", "--run-dir", str(tmp_path / "run"),
         "--json", str(out)], tmp_path)
    rep = json.loads(out.read_text())
    assert rep["same_scores"] is True
    for name in ("regen", "materialized"):
        r = rep["references"][name]
        assert r["same_scores"] is True and r["spearman_engine_vs_reference"] > 0.999
        assert r["max_abs_diff"] <= 1e-3 * r["score_scale"]


def test_scaling_benchmark_writes_every_sweep(tmp_path):
    out = tmp_path / "scaling.json"
    res = run([str(ROOT / "scripts/bench_influence_scaling.py"), "--model", TINY, "--n", "3", "--lengths", "64",
               "128", "--length", "256", "--n-vals", "6", "12", "--proj-dims", "0", "128", "--threads", "1",
               "--repeat", "1", "--run-dir", str(tmp_path / "run"), "--json", str(out)], tmp_path)
    rep = json.loads(out.read_text())
    sw = rep["sweeps"]
    assert [r["length"] for r in sw["length"]] == [64, 128]
    assert [round(r["mean_tokens"]) for r in sw["length"]] == [64, 128]  # the samples fill each length
    assert [r["checkpoints"] for r in sw["checkpoints"]] == [1, 2, 4]
    assert [r["n_val"] for r in sw["validation"]] == [6, 12]
    assert all(r["validation_s"] > 0 and r["validation_tokens_only_s"] > 0 for r in sw["validation"])
    assert [r["proj_mode"] for r in sw["projection"]] == ["none", "dense"]
    assert sw["projection"][1]["projection_only_s_per_row"] > 0
    for rows in sw.values():
        for r in rows:
            assert r["engine_s_per_sample"] > 0 and r["floor_s_per_sample"] > 0
            assert abs(r["engine_over_floor"] - r["engine_s_per_sample"] / r["floor_s_per_sample"]) < 1e-9
    assert "engine/floor" in res.stdout and rep["commit"] and rep["versions"]["torch"]


def test_mcscore_vs_harness_benchmark_scores_the_same_items(tmp_path):
    """The script runs both scorers on the same items (the numbers, not the times: tiny sizes)."""
    import pytest

    pytest.importorskip("lm_eval")
    out = tmp_path / "bench.json"
    res = run([str(ROOT / "scripts/bench_mcscore_vs_harness.py"), "--model", "tiny:hidden=32,layers=1,heads=2,seed=0",
               "--items", "12", "--json", str(out)], tmp_path)
    rep = json.loads(out.read_text())
    assert rep["items"] == rep["harness"]["n"] == 12 and rep["pairs"] == 48
    assert rep["harness"]["acc"] == rep["rubric_rl"]["acc"]
    assert rep["rubric_rl_s"] > 0 and rep["harness_s"] > 0 and rep["versions"]["lm_eval"]
    assert "harness / rubric-rl time ratio" in res.stdout
