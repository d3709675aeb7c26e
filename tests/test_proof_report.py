"""scripts/proof.py's pieces that need no real model: the real teacher's endpoint (a serve-teacher process over
real HTTP), the synthesis totals and the report with a section per teacher and the mislabelled check."""

from __future__ import annotations

import json
import sys
import urllib.request
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import proof  # noqa: E402


def endpoint_args(**kw):
    base = dict(real_teacher_url=None, real_teacher_name=None, real_teacher_model="tiny:hidden=32,layers=1,heads=2,seed=0",
                real_teacher_batch_size=2, real_teacher_max_new_tokens=8, real_teacher_threads=1,
                real_teacher_server="serve-teacher", real_teacher_gguf=None)
    return Namespace(**{**base, **kw})


def test_the_real_teacher_is_a_served_model_over_http_and_stops_after(tmp_path):
    with proof.teacher_endpoint(endpoint_args(), tmp_path) as (url, name):
        with urllib.request.urlopen(url + "/models", timeout=30) as r:
            models = json.loads(r.read())
        assert name == "real-teacher" and [m["id"] for m in models["data"]] == ["real-teacher"]
        body = json.dumps({"model": name, "messages": [{"role": "user", "content": "Question?"}],
                           "max_tokens": 4}).encode()
        req = urllib.request.Request(url + "/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert json.loads(r.read())["choices"][0]["message"]["role"] == "assistant"
    try:  # stopped on exit
        urllib.request.urlopen(url + "/models", timeout=5)
        raise AssertionError("serve-teacher still answers after the context")
    except OSError:
        pass
    assert (tmp_path / "logs" / "serve_teacher.log").exists()


def test_a_given_endpoint_is_used_as_it_is(tmp_path):
    with proof.teacher_endpoint(endpoint_args(real_teacher_url="http://h:8000/v1/", real_teacher_name="m"),
                                tmp_path) as (url, name):
        assert (url, name) == ("http://h:8000/v1", "m")
    assert not (tmp_path / "logs").exists()  # nothing started


def test_synthesis_totals_sum_the_datasets():
    report = {"runs": [{"synthesis": {"teacher_queries": 10, "accepted": 2, "rejected": {"parse_x": 7, "v_y": 1}}},
                       {"synthesis": {"teacher_queries": 5, "accepted": 5, "rejected": {}}},
                       {"synthesis": None}]}
    assert proof.synthesis_totals(report) == {"teacher_queries": 15, "accepted": 7, "acceptance": 7 / 15,
                                              "rejected": {"parse_x": 7, "v_y": 1}}
    assert proof.synthesis_totals({"runs": []})["acceptance"] is None


def _condition(r, wins):
    loss = {"wins": wins, "losses": 3 - wins, "ties": 0, "runs": 3, "mean_advantage": 0.1, "p_sign_test": 0.5}
    return {"calibration": {"pearson_r": r, "spearman_rho": r, "p_permutation": 0.1, "pearson_ci95": [0.1, 0.9],
                            "num_datasets": 8, "metric": "loss",
                            "datasets": [{"source": "seed", "seed": 0, "samples": 3, "mean_influence": 0.01,
                                          "gain": 0.1, "heldout": 1.2}],
                            "synthesis": {"teacher_queries": 40, "accepted": 4, "acceptance": 0.1,
                                          "rejected": {"parse_no_question_answer": 36}}},
            "rl": {"paired": {"trained>seed": {"loss": loss}}, "train_seeds": [0], "eval_seeds": [0, 1, 2],
                   "runs": [], "training": [], "synthesis": None,
                   "influence_vs_gain": {"pearson_r": None, "spearman_rho": None, "p_permutation": None,
                                         "num_datasets": 9}}}


def test_the_report_puts_each_teacher_beside_the_other_and_the_mislabelled_auc_first():
    template, real = _condition(0.9, 3), _condition(0.2, 1)
    real["sizes"] = {"samples_per_dataset": 16, "queries_per_sample": 2.0}
    report = {"versions": {"torch": "x"}, "command": "python scripts/proof.py", "commit": "c", "dirty": False,
              "total_s": 60, "target": "T", "policy": "P", "teacher": "template (offline)",
              "calibration": template["calibration"], "rl": template["rl"],
              "mislabelled": {"items": 36, "auc": 0.75, "paired_wins": 25, "pairs": 34, "mean_right": 0.02,
                              "mean_wrong": 0.01, "related_vs_unrelated_auc": 1.0, "objective": "tokens+choices"},
              "teachers": {"template": {"teacher": "template (offline)", **template},
                           "real": {"teacher": "SmolLM2 via serve-teacher", **real}}}
    md = proof.format_report(report)
    summary = md.split("## ")[0]
    assert "| template: template (offline) | 4 / 40 (10%) | 0.900 (8) | 3 wins, 0 losses, 0 ties of 3 |" in summary
    assert "| real: SmolLM2 via serve-teacher | 4 / 40 (10%) | 0.200 (8) | 1 wins, 2 losses, 0 ties of 3 |" in summary
    assert md.index("mislabelled twins") < md.index("## Teacher: template") < md.index("## Teacher: real")
    assert "AUC **0.750**, right > wrong in 25/34" in md
    assert "up to 16 accepted samples per dataset, at most 2 teacher queries" in md
    assert "rejections: parse_no_question_answer 36" in md
    # a calibration-only condition (--skip_rl) says so instead of a comparison
    real["rl"] = None
    report["teachers"]["real"]["rl"] = None
    md = proof.format_report(report)
    assert "| 0.200 (8) | not run |" in md and "not run (`--skip_rl`)" in md
