"""W&B as its users expect it: one offline run of a tiny 2-step ``rubric-rl train`` (SFT warm start, warm-up, GRPO
with ``log_completions``, export, the downstream evaluation), read back from the run's ``.wandb`` file.

An offline run writes no ``config.yaml`` or ``wandb-summary.json`` (those come with ``wandb sync``): its records
(config, history, summary, artifacts) are protobuf records in W&B's leveldb-style log, read by :func:`records`.
Tables and images are also written as files under ``files/media/``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, TINY

SEEDS = [
    {"prompt_related": ["Write a multiple-choice question."], "response_related": ["Reason step by step."]},
    {"prompt_related": ["Ask about the dose."], "response_related": ["Be concise."]},
]
EVAL_CONFIG = """eval_documents: {q}/documents.jsonl
eval_test_data: {q}/test.jsonl
eval_num_samples: 8
eval_seeds: [0]
eval_epochs: 1
eval_batch_size: 8
eval_finetune: full
eval_influence: false
eval_progress: false
eval_torch_num_threads: 1
"""


def records(path):
    """The protobuf records of a ``run-*.wandb`` file: a 7-byte header (``:W&B``, magic, version), then 32 KiB
    blocks of chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last), as W&B's datastore writes them."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, block = 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def _items(items) -> dict:
    """``{key: value}`` of a record's items; a dict value comes flattened (``nested_key`` = its path)."""
    out: dict = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = json.loads(item.value_json)
    return out


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory, quickstart_dir):
    tmp = tmp_path_factory.mktemp("wandb")
    (tmp / "seeds.json").write_text(json.dumps(SEEDS))
    (tmp / "eval.yaml").write_text(EVAL_CONFIG.format(q=quickstart_dir))
    q, out = quickstart_dir, tmp / "run"
    argv = [
        "train", "--output_dir", str(out), "--policy_model_name_or_path", TINY,
        "--policy_sft_warmstart", "true", "--seed_rubrics", str(tmp / "seeds.json"), "--policy_sft_epochs", "80",
        "--policy_sft_max_documents", "2", "--policy_sft_batch_size", "4", "--policy_sft_learning_rate", "0.02",
        "--max_document_chars", "120", "--documents", str(q / "documents.jsonl"), "--teacher_backend", "template",
        "--target_model_name_or_path", "tiny:hidden=32,layers=2,heads=4,seed=1",
        "--warmup_data", str(q / "warmup.jsonl"), "--warmup_epochs", "1", "--warmup_learning_rate", "0.001",
        "--influence_validation_data", str(q / "validation.jsonl"), "--influence_proj_dim", "256",
        "--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "64",
        "--learning_rate", "0.001", "--logging_steps", "1", "--save_steps", "100", "--use_cpu", "true",
        "--seed", "0", "--gradient_checkpointing", "false", "--torch_num_threads", "1", "--disable_tqdm", "true",
        "--lr_scheduler_type", "linear", "--max_steps", "2", "--report_to", "wandb", "--log_completions", "true",
        "--evaluate_config", str(tmp / "eval.yaml"), "--evaluate_sources", "none=none",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(tmp),
           "WANDB_DATA_DIR": str(tmp / "wandb_data"), "WANDB_CACHE_DIR": str(tmp / "wandb_cache"),
           "WANDB_CONFIG_DIR": str(tmp / "wandb_config")}
    env.pop("WANDB_PROJECT", None)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rubric_rl.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((tmp / "wandb").glob("offline-run-*"))
    recs = list(records(next(run_dir.glob("run-*.wandb"))))
    return {"stdout": done.stdout, "stderr": done.stderr, "out": out, "run_dir": run_dir, "records": recs,
            "seconds": time.perf_counter() - t0}


def _of(recs, kind):
    return [getattr(r, kind) for r in recs if r.WhichOneof("record_type") == kind]


def _history(recs) -> list[dict]:
    return [_items(h.item) for h in _of(recs, "history")]


def _summary(recs) -> dict:
    out = {}
    for s in _of(recs, "summary"):
        out.update(_items(s.update))
    return out


def _config(recs) -> dict:
    out = {}
    for c in [r.run.config for r in recs if r.WhichOneof("record_type") == "run"] + _of(recs, "config"):
        out.update(_items(c.update))
    return out


def test_config_holds_rubric_rl_settings_beside_trls(wandb_run):
    config = _config(wandb_run["records"])
    assert "learning_rate" in config and "num_generations" in config  # TRL's GRPOConfig, flat, as HF writes it
    ours = config["rubric_rl"]
    assert set(ours) == {"train", "teacher", "influence"}
    assert ours["train"]["reward_novelty_weight"] == 0.5 and ours["train"]["policy_sft_warmstart"] is True
    assert ours["teacher"]["teacher_backend"] == "template"
    assert ours["influence"]["target_model_name_or_path"] == "tiny:hidden=32,layers=2,heads=4,seed=1"
    assert "influence_estimator" in ours["influence"]
    saved = json.loads((wandb_run["out"] / "rubric_rl_args.json").read_text())
    assert ours["train"] == saved["rubric_rl"] and ours["influence"] == saved["influence"]  # tokens blanked alike


def test_completions_table_has_honest_columns(wandb_run):
    tables = sorted((wandb_run["run_dir"] / "files" / "media" / "table").glob("completions_*.table.json"))
    assert tables, "no completions table"
    table = json.loads(tables[0].read_text())
    cols = table["columns"]
    for col in ("step", "prompt", "completion", "reward", "advantage", "influence", "valid", "outcome", "doc_id",
                "question", "answer", "novelty", "teacher_text"):
        assert col in cols, (col, cols)
    assert "raw_influence" not in cols and "sample" not in cols
    rows = [dict(zip(cols, row)) for row in table["data"]]
    rollouts = [json.loads(x) for x in (wandb_run["out"] / "rollouts.jsonl").read_text().splitlines()]
    by_text: dict = {}  # the same rubric can be sampled twice in a step (for two documents): keep every rollout
    for r in rollouts:
        by_text.setdefault((r["step"], r["rubric"]), []).append(r)
    valid = [row for row in rows if row["valid"]]
    assert valid and all(row["outcome"] == "valid" and row["question"] and row["answer"] for row in valid)

    def same(row, r):  # reward is the shaped reward, influence the raw influence, each as the rollout log has it
        return (row["doc_id"] == str(r["doc_id"]) and row["outcome"] == r["outcome"]
                and (r["influence"] is None or row["influence"] == pytest.approx(r["influence"]))
                and (r["reward"] is None or row["reward"] == pytest.approx(r["reward"])))

    for row in rows:
        candidates = by_text[(row["step"] - 1, row["completion"][0]["content"])]
        assert any(same(row, r) for r in candidates), (row, candidates)
    assert any(r["influence"] is not None and r["reward"] != pytest.approx(r["influence"]) for r in rollouts)


def test_every_series_is_on_the_grpo_step(wandb_run):
    recs = wandb_run["records"]
    metrics = _of(recs, "metric")
    assert any(m.glob_name == "*" and m.step_metric == "train/global_step" for m in metrics)
    history = _history(recs)
    assert all("train/global_step" in h for h in history)
    keys = {k for h in history for k in h}
    for key in ("train/reward", "train/valid_rate", "train/influence_mean", "influence/histogram", "completions",
                "sft_warmstart/loss_table", "warmup/loss_table", "eval/table"):
        assert key in keys, key
    steps = {k: h["train/global_step"] for h in history for k in h}
    assert steps["sft_warmstart/loss_table"] == 0 and steps["warmup/loss_table"] == 0  # before GRPO (line charts)
    assert steps["eval/table"] == 2  # after the last GRPO step


def test_stage_and_evaluation_metrics(wandb_run):
    summary = _summary(wandb_run["records"])
    assert summary["sft_warmstart/reused"] is False and summary["sft_warmstart/steps"] > 1
    assert summary["sft_warmstart/final_loss"] < summary["sft_warmstart/first_loss"]
    assert summary["warmup/reused"] is False and summary["warmup/steps"] > 1
    assert isinstance(summary["warmup/final_loss"], float)
    report = json.loads((wandb_run["out"] / "eval" / "report.json").read_text())
    assert summary["eval/trained/loss"] == pytest.approx(report["summary"]["trained"]["loss"]["mean"])
    assert summary["eval/ranking"] == ", ".join(report["ranking"])
    assert summary["eval/table"]["_type"] == "table-file" and summary["eval/heldout"]["_type"] == "image-file"
    table = json.loads((wandb_run["run_dir"] / "files" / summary["eval/table"]["path"]).read_text())
    assert [row[0] for row in table["data"]] == ["(untrained target)", *report["ranking"]]
    for plot in report["plots"]:  # every plot of the report, as an image
        image = summary[f"eval/{plot.removesuffix('.png')}"]
        assert image["_type"] == "image-file" and (wandb_run["run_dir"] / "files" / image["path"]).is_file()


def test_export_and_evaluation_are_artifacts(wandb_run):
    arts = {a.type: a for a in _of(wandb_run["records"], "artifact")}
    assert set(arts) >= {"model", "evaluation"}
    files = {t: {e.path for e in a.manifest.contents} for t, a in arts.items()}
    assert arts["model"].name.startswith("rubric-generator-")
    assert {"model.safetensors", "README.md", "rubric_rl_export.json", "tokenizer.json"} <= files["model"]
    assert files["model"] == {p.name for p in (wandb_run["out"] / "export").iterdir()}
    assert arts["evaluation"].name.startswith("evaluation-")
    assert {"report.json", "report.md", "heldout.png"} <= files["evaluation"]


def test_log_completions_does_not_flood_stdout(wandb_run):
    out = wandb_run["stdout"]
    assert "Step 1" not in out and "┏" not in out  # TRL's rich completion tables
    assert len(out.splitlines()) < 40, out[-3000:]
    assert "Exported rubric generator" in out and "Downstream evaluation" in out


def test_nothing_goes_to_a_disabled_or_left_over_run(tmp_path, monkeypatch):
    """A train() that stopped early leaves its run active in the process: a later job without report_to wandb
    logs nothing to it, and a disabled run (WANDB_MODE=disabled) stages no artifact files."""
    from types import SimpleNamespace

    import wandb

    from rubric_rl import wandb_log
    from rubric_rl.configs.influence import InfluenceConfig
    from rubric_rl.configs.teacher import TeacherConfig
    from rubric_rl.configs.train import RubricRLArguments

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    grpo = SimpleNamespace(report_to=["wandb"], project="huggingface", run_name=None, output_dir=str(tmp_path))
    try:
        run = wandb_log.start_run(RubricRLArguments(), grpo, TeacherConfig(), InfluenceConfig())
        assert run is not None and wandb.run is run
        wandb_log.log_artifact(folder, "rubric-generator")
        wandb_log.log_stage("warmup", [{"step": 1, "loss": 1.0}], reused=False)
        staged = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
        assert not staged and wandb_log.active_run() is None  # disabled: nothing staged or logged
        grpo.report_to = ["none"]
        assert wandb_log.start_run(RubricRLArguments(), grpo, TeacherConfig(), InfluenceConfig()) is None
        assert wandb.run is run and wandb_log.active_run() is None  # left over, not this job's
    finally:
        wandb.finish()
