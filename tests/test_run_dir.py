"""A run folder is never silently overwritten or mixed (checked by train() before any model loads)."""

import json
from pathlib import Path

import pytest

import rubric_rl.data.documents
from rubric_rl.cli import main
from rubric_rl.config import parse_config, train_dataclasses
from rubric_rl.errors import UserError
from rubric_rl.rundir import save_run_args
from rubric_rl.train import train

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
REAL_LOAD_DOCUMENTS = rubric_rl.data.documents.load_documents


class Reached(Exception):
    """train() got past the run-folder check (it would now load documents and models)."""


@pytest.fixture(autouse=True)
def stop_after_the_check(monkeypatch):
    def reached(*a, **kw):
        raise Reached

    monkeypatch.setattr(rubric_rl.data.documents, "load_documents", reached)


def args(out, *extra):
    return parse_config(train_dataclasses(), ["--config", str(QUICKSTART), "--output_dir", str(out), *extra])


def old_run(out: Path, *extra, steps=(25, 30)) -> Path:
    """A folder as a finished quickstart run leaves it: args, checkpoints, logs, model, export, caches."""
    out.mkdir(parents=True, exist_ok=True)
    a, g, t, i = args(out, *extra)
    save_run_args(out, rubric_rl=a, grpo=g, teacher=t, influence=i)
    for s in steps:
        (out / f"checkpoint-{s}").mkdir()
        (out / f"checkpoint-{s}" / "trainer_state.json").write_text(json.dumps({"global_step": s}))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 31)))
    (out / "rollouts.jsonl").write_text('{"step": 0}\n')
    (out / "model.safetensors").write_bytes(b"x")
    (out / "export").mkdir()
    (out / "export" / "config.json").write_text("{}")
    (out / "completions").mkdir()  # TRL's log_completions
    (out / "completions" / "completions_00030.parquet").write_bytes(b"x")
    for cache in ("warmup", "influence_cache", "sft_warmstart"):
        (out / cache).mkdir()
        (out / cache / "kept.json").write_text("{}")
    return out


def test_fresh_folder_and_caches_only_are_not_a_run(tmp_path):
    with pytest.raises(Reached):
        train(*args(tmp_path / "new"))
    reused = tmp_path / "reused"
    (reused / "sft_warmstart").mkdir(parents=True)  # a cache copied in (as test_rloo_algorithm_runs does)
    with pytest.raises(Reached):
        train(*args(reused))
    assert (reused / "rubric_rl_args.json").exists()


@pytest.mark.parametrize("what", ["args", "checkpoint"])
def test_rerun_without_resume_refuses(tmp_path, what):
    out = tmp_path / "run"
    if what == "args":
        out.mkdir()
        a, g, t, i = args(out)
        save_run_args(out, rubric_rl=a, grpo=g, teacher=t, influence=i)
    else:
        (out / "checkpoint-3").mkdir(parents=True)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError) as info:
        train(*args(out))
    msg = str(info.value)
    assert str(out) in msg and "--resume_from_checkpoint true" in msg and "--overwrite_output_dir true" in msg
    assert sorted(p.name for p in out.iterdir()) == before  # nothing touched


def test_cli_refusal_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import rubric_rl.preflight

    monkeypatch.setattr(rubric_rl.preflight, "load_documents", REAL_LOAD_DOCUMENTS)  # the input checks pass
    out = old_run(tmp_path / "run")
    with pytest.raises(SystemExit) as info:
        main(["train", "--config", str(QUICKSTART), "--output_dir", str(out)])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert info.value.code == 2 and len(err) == 1 and "already holds a run (last checkpoint: checkpoint-30)" in err[0]
    assert (out / "checkpoint-30").is_dir() and len((out / "metrics.jsonl").read_text().splitlines()) == 30


def test_overwrite_deletes_the_old_run_and_keeps_the_caches(tmp_path):
    out = old_run(tmp_path / "run")
    with pytest.raises(Reached):
        train(*args(out, "--overwrite_output_dir", "true", "--seed", "7"))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["influence_cache", "rubric_rl_args.json", "sft_warmstart", "warmup"]
    assert all((out / c / "kept.json").exists() for c in ("warmup", "influence_cache", "sft_warmstart"))
    assert json.loads((out / "rubric_rl_args.json").read_text())["grpo"]["seed"] == 7


def test_resume_with_changed_computation_refuses_listing_the_fields(tmp_path):
    out = old_run(tmp_path / "run")
    with pytest.raises(UserError) as info:
        train(*args(out, "--resume_from_checkpoint", "true", "--learning_rate", "0.001", "--num_generations", "4",
                    "--max_steps", "200", "--logging_steps", "5"))
    msg = str(info.value)
    assert "learning_rate (0.0002 -> 0.001)" in msg and "num_generations (8 -> 4)" in msg
    assert "max_steps" not in msg and "logging_steps" not in msg and "--allow_changed_args true" in msg
    saved = json.loads((out / "rubric_rl_args.json").read_text())
    assert saved["grpo"]["learning_rate"] == 0.0002  # the record still tells the truth


@pytest.mark.parametrize("flag,value", [("--policy_model_name_or_path", "tiny:hidden=64,layers=2,heads=4,seed=3"),
                                        ("--reward_novelty_weight", "0.5"), ("--seed", "3"), ("--loss_type", "grpo"),
                                        ("--per_device_train_batch_size", "8"),
                                        ("--influence_validation_data", "data/quickstart/test.jsonl")])
def test_each_computational_field_is_compared(tmp_path, flag, value):
    out = old_run(tmp_path / "run")
    with pytest.raises(UserError, match=flag.lstrip("-")):
        train(*args(out, "--resume_from_checkpoint", "true", flag, value))


def test_resume_with_free_changes_is_accepted(tmp_path):
    out = old_run(tmp_path / "run")
    with pytest.raises(Reached):
        train(*args(out, "--resume_from_checkpoint", "true", "--max_steps", "200", "--logging_steps", "5",
                    "--save_steps", "7", "--report_to", "wandb", "--teacher_timeout_s", "30"))
    assert not (out / "args_changes.jsonl").exists()
    assert (out / "checkpoint-30").is_dir() and len((out / "metrics.jsonl").read_text().splitlines()) == 30
    assert json.loads((out / "rubric_rl_args.json").read_text())["grpo"]["max_steps"] == 200


def test_allow_changed_args_records_the_change_and_its_step(tmp_path):
    out = old_run(tmp_path / "run")
    with pytest.raises(Reached):
        train(*args(out, "--resume_from_checkpoint", "true", "--learning_rate", "0.001", "--allow_changed_args",
                    "true"))
    rows = [json.loads(x) for x in (out / "args_changes.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 30
    assert rows[0]["changes"] == {"learning_rate": {"old": 0.0002, "new": 0.001}}
    assert json.loads((out / "rubric_rl_args.json").read_text())["grpo"]["learning_rate"] == 0.001
    # resuming again with the new value is no change; a path names the step of that checkpoint
    with pytest.raises(Reached):
        train(*args(out, "--resume_from_checkpoint", str(out / "checkpoint-25"), "--learning_rate", "0.001"))
    assert len((out / "args_changes.jsonl").read_text().splitlines()) == 1


def test_resume_without_a_checkpoint_or_with_overwrite_is_refused(tmp_path):
    out = old_run(tmp_path / "run", steps=())
    with pytest.raises(UserError, match="holds no checkpoint-N"):
        train(*args(out, "--resume_from_checkpoint", "true"))
    with pytest.raises(UserError, match="exclude each other"):
        train(*args(out, "--resume_from_checkpoint", "true", "--overwrite_output_dir", "true"))
    with pytest.raises(UserError, match="holds no run to resume"):
        train(*args(tmp_path / "empty", "--resume_from_checkpoint", "true"))
