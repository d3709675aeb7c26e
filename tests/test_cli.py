"""The command line: every subcommand explains its options; shipped configs parse; bad values name the field."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from rubric_rl.cli import COMMANDS, main
from rubric_rl.config import RubricRLArguments, parse_config, train_dataclasses

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert command in out and "--" in out


def test_train_help_explains_every_field(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(RubricRLArguments):
        assert f"--{f.name}" in out
        assert " ".join(f.metadata["help"].split())[:40] in out, f.name


@pytest.mark.parametrize("command", ["export", "serve-teacher"])
def test_argparse_subcommands_explain_every_option(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    options = [line.split()[0] for line in out.splitlines() if line.startswith("  --")]
    assert options
    for line in out.split("options:")[1].split("\n  -")[1:]:
        assert len(line.split()) > 2, f"option without help: {line.strip()}"


def test_top_level_usage_lists_commands(capsys):
    main([])
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2


@pytest.mark.parametrize("name", ["quickstart.yaml", "real_example.yaml"])
def test_shipped_train_configs_parse(name):
    # bf16 needs an accelerator; this machine has none, so the check runs with it off.
    args, grpo, teacher, influence = parse_config(train_dataclasses(),
                                                  ["--config", str(ROOT / "configs" / name), "--bf16", "false"])
    raw = yaml.safe_load((ROOT / "configs" / name).read_text())
    assert grpo.output_dir == raw["output_dir"]
    assert args.policy_model_name_or_path == raw["policy_model_name_or_path"]


def test_cli_flags_override_the_file():
    args, grpo, _, _ = parse_config(train_dataclasses(), [
        "--config", str(ROOT / "configs" / "quickstart.yaml"), "--max_steps", "7", "--seed", "3",
        "--output_dir", "/tmp/x", "--report_to", "none"])
    assert (grpo.max_steps, grpo.seed, grpo.output_dir) == (7, 3, "/tmp/x")


@pytest.mark.parametrize("flag,value,field", [
    ("--reward_if_scaling", "bogus", "reward_if_scaling"),
    ("--reward_invalid_penalty", "-1", "reward_invalid_penalty"),
    ("--teacher_backend", "nope", "teacher_backend"),
    ("--influence_estimator", "nope", "influence_estimator"),
    ("--reward_novelty_weight", "-0.5", "reward_novelty_weight"),
    ("--evaluate_config", "/nonexistent/eval.yaml", "evaluate_config"),
    ("--evaluate_sources", "trained=x.json", "evaluate_sources"),
    ("--evaluate_sources", "no-equals-sign", "sources"),
])
def test_bad_values_fail_naming_the_field(flag, value, field, capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(train_dataclasses(), ["--config", str(ROOT / "configs" / "quickstart.yaml"), flag, value])
    assert info.value.code == 2
    assert field in capsys.readouterr().err


def test_missing_config_file_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parse_config(train_dataclasses(), ["--config", "/nonexistent/run.yaml"])
    assert "/nonexistent/run.yaml" in capsys.readouterr().err


def test_train_chains_the_downstream_evaluation(tmp_path, monkeypatch, capsys):
    """With evaluate_config set (the quickstart), `rubric-rl train` ends by evaluating its export."""
    import rubric_rl.cli
    import rubric_rl.train

    calls = []
    monkeypatch.setattr(rubric_rl.train, "train", lambda *a: {
        "output_dir": str(tmp_path), "export_dir": str(tmp_path / "export"), "reward": {}})
    monkeypatch.setattr(rubric_rl.cli, "cmd_evaluate", lambda argv, **given: calls.append((argv, given)))
    main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(tmp_path),
          "--influence_proj_dim", "512"])
    assert [argv for argv, _ in calls] == [
        ["--config", "configs/evaluate_quickstart.yaml", "--sources", f"trained={tmp_path / 'export'}",
         "seed=data/quickstart/seed_rubrics.json", "none=none", "--output", str(tmp_path / "eval")]]
    # the evaluation gets the run's own teacher and influence settings, flags included
    assert calls[0][1]["influence_cfg"].influence_proj_dim == 512
    assert calls[0][1]["teacher_cfg"].teacher_backend == "template"
    assert "Downstream evaluation" in capsys.readouterr().out
    # and without it, no evaluation
    cfg = tmp_path / "noeval.yaml"
    cfg.write_text("\n".join(line for line in (ROOT / "configs" / "quickstart.yaml").read_text().splitlines()
                             if not line.startswith("evaluate_")))
    main(["train", "--config", str(cfg), "--output_dir", str(tmp_path)])
    assert len(calls) == 1


def test_the_runs_settings_win_over_the_evaluation_file_with_a_warning(caplog):
    import logging

    from rubric_rl.cli import _given_over_file
    from rubric_rl.configs.teacher import TeacherConfig

    run, file = TeacherConfig(teacher_temperature=0.5), TeacherConfig(teacher_temperature=0.9)
    with caplog.at_level(logging.WARNING, logger="rubric_rl"):
        assert _given_over_file(run, file) is run
    assert "teacher_temperature=0.9 (the run's: 0.5)" in caplog.text
    assert _given_over_file(None, file) is file
