"""The command line: every subcommand explains its options; shipped configs parse; bad values name the field."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from rubric_rl.cli import COMMANDS, main
from rubric_rl.config import RubricRLArguments, RunDirArguments, ScoreArguments, parse_config, train_dataclasses

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
    ("--evaluate_sources", "trained=x.json", "evaluate_sources"),
    ("--evaluate_sources", "no-equals-sign", "sources"),
])
def test_bad_values_fail_naming_the_field(flag, value, field, capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(train_dataclasses(), ["--config", str(ROOT / "configs" / "quickstart.yaml"), flag, value])
    assert info.value.code == 2
    assert field in capsys.readouterr().err


def test_a_missing_evaluate_config_stops_train_before_any_model_loads(capsys):
    """A file is checked by preflight at the command's start (exit 2, the field named), not by the config
    dataclass: parsing a config reads no file but the config itself."""
    args, *_ = parse_config(train_dataclasses(), ["--config", str(ROOT / "configs" / "quickstart.yaml"),
                                                  "--evaluate_config", "/nonexistent/eval.yaml"])
    assert args.evaluate_config == "/nonexistent/eval.yaml"
    with pytest.raises(SystemExit) as info:
        main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--evaluate_config", "/nonexistent/eval.yaml"])
    assert info.value.code == 2
    assert "evaluate_config: no such file '/nonexistent/eval.yaml'" in capsys.readouterr().err


def test_missing_config_file_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parse_config(train_dataclasses(), ["--config", "/nonexistent/run.yaml"])
    assert "/nonexistent/run.yaml" in capsys.readouterr().err


def test_train_chains_the_downstream_evaluation(tmp_path, monkeypatch, capsys):
    """With evaluate_config set (the quickstart), `rubric-rl train` ends by evaluating its export."""
    import rubric_rl.commands.evaluate
    import rubric_rl.train

    calls = []
    monkeypatch.setattr(rubric_rl.train, "train", lambda *a: {
        "output_dir": str(tmp_path), "export_dir": str(tmp_path / "export"), "reward": {}})
    monkeypatch.setattr(rubric_rl.commands.evaluate, "from_argv", lambda argv, **given: calls.append((argv, given)))
    main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(tmp_path),
          "--influence_proj_dim", "512"])
    assert [argv for argv, _ in calls] == [
        ["--config", "configs/evaluate_quickstart.yaml", "--sources", f"trained={tmp_path / 'export'}",
         "seed=data/quickstart/seed_rubrics.json", "none=none", "--output", str(tmp_path / "eval"),
         # the datasets' influence from the run's own warm-up, not a second one in eval/influence
         "--eval_influence_run_dir", str(tmp_path)]]
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
    # an evaluation config that names its own influence folder keeps it
    ev = tmp_path / "eval_own.yaml"
    ev.write_text((ROOT / "configs" / "evaluate_quickstart.yaml").read_text() + "\neval_influence_run_dir: elsewhere\n")
    main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(tmp_path),
          "--evaluate_config", str(ev)])
    assert "--eval_influence_run_dir" not in calls[-1][0]


def test_the_runs_settings_win_over_the_evaluation_file_with_a_warning(caplog):
    import logging

    from rubric_rl.commands.evaluate import given_over_file as _given_over_file
    from rubric_rl.configs.teacher import TeacherConfig

    run, file = TeacherConfig(teacher_temperature=0.5), TeacherConfig(teacher_temperature=0.9)
    with caplog.at_level(logging.WARNING, logger="rubric_rl"):
        assert _given_over_file(run, file) is run
    assert "teacher_temperature=0.9 (the run's: 0.5)" in caplog.text
    assert _given_over_file(None, file) is file


# ---------------------------------------------------------------------------------------------- --help
CONFIG_COMMANDS = ["train", "warmup", "score", "serve-influence", "synthesize", "evaluate", "calibrate", "closed-loop"]


def test_help_imports_neither_torch_nor_trl():
    """`--help` of every command answers in well under a second: nothing imports torch or TRL before it."""
    import json
    import subprocess
    import sys

    code = ("import json, sys\nfrom rubric_rl.cli import COMMANDS, main\nseen = {}\n"
            "for c in sorted(COMMANDS):\n"
            "    try:\n        main([c, '--help'])\n    except SystemExit:\n        pass\n"
            "    seen[c] = sorted(m for m in ('torch', 'trl') if m in sys.modules)\n"
            "print(json.dumps(seen))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(seen) == set(COMMANDS)
    assert all(loaded == [] for loaded in seen.values()), seen  # the first command listed with torch loaded it


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 0
    return capsys.readouterr().out


def test_train_help_is_grouped_by_stage_and_points_to_help_all(capsys):
    from rubric_rl.configs.influence import InfluenceConfig
    from rubric_rl.configs.teacher import TeacherConfig

    out = _help(capsys, "train", "--help")
    lines = out.splitlines()
    titles = [RubricRLArguments._argument_group_name, TeacherConfig._argument_group_name,
              InfluenceConfig._argument_group_name, "TRL's GRPOConfig (inherited)"]
    at = [next(i for i, line in enumerate(lines) if line.startswith(t)) for t in titles]
    assert at == sorted(at), at  # rubric-rl's own sections first, TRL's last
    assert lines[0].startswith("usage: rubric-rl train [--config FILE.yaml]")
    # the teacher's section right after rubric-rl's own (it was line 1,531, after TRL's fields; rubric-rl's own
    # section grows with its fields: 264 lines at the time of writing)
    teacher_at = next(i for i, line in enumerate(lines) if line.startswith("  --teacher_backend"))
    assert at[1] < teacher_at < at[2] and teacher_at < 400, teacher_at
    options = {line.split()[0] for line in lines if line.startswith("  --")}
    assert {"--config", "--help-all", "--debug", "--policy_model_name_or_path", "--influence_estimator"} <= options
    assert "--per_device_train_batch_size" not in options and "--learning_rate" not in options  # TRL's: not listed
    assert "rubric-rl train --help-all" in " ".join(lines[at[-1]:])
    assert "--no_reward_grounding" not in out  # the complement of a true default is hidden (--reward_grounding false)
    full = _help(capsys, "train", "--help-all")
    options = [line.split()[0] for line in full.splitlines() if line.startswith("  --")]
    assert {"--per_device_train_batch_size", "--learning_rate", "--num_generations", "--output_dir"} <= set(options)
    assert options.index("--influence_dtype") < options.index("--output_dir")  # TRL's fields come last
    assert options.count("--debug") == 1  # rubric-rl's (cli.main takes --debug off the command line)


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_every_config_command_documents_config(command, capsys):
    out = _help(capsys, command, "--help")
    assert "--config FILE.yaml" in out.splitlines()[0]
    assert any(line.startswith("  --config FILE.yaml") for line in out.splitlines())


def test_help_lists_the_options_the_parser_takes():
    """--help is built from the same dataclasses by the same HfArgumentParser code: the same option strings."""
    from rubric_rl.config import help_parser, make_parser
    from rubric_rl.configs.influence import InfluenceConfig

    ours = {"-h", "--help", "--help-all", "--config", "--debug"}
    for types in (train_dataclasses(), (RunDirArguments, ScoreArguments, InfluenceConfig)):
        shown = {o for a in help_parser(types, full=True)._actions for o in a.option_strings} - ours
        parsed = {o for a in make_parser(types)._actions for o in a.option_strings} - ours
        assert shown == parsed


def test_help_names_only_real_grpo_fields_and_titles_every_dataclass():
    from rubric_rl.config import GRPO_CONFIG, INHERITED, known_config_fields
    from rubric_rl.configs import calibrate, closed_loop, evaluate, influence, run, synth, teacher, train

    grpo = {f.name for f in dataclasses.fields(train_dataclasses()[1])}
    assert set(INHERITED[GRPO_CONFIG][2]) <= grpo
    assert known_config_fields() >= grpo
    for module in (calibrate, closed_loop, evaluate, influence, run, synth, teacher, train):
        for cls in vars(module).values():
            if dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__:
                assert cls._argument_group_name, cls


def test_the_registry_parses_exactly_the_settings_layer():
    """known_config_fields reads the settings layer (config sits below the command registry): every command's
    dataclasses are classes of rubric_rl.configs (or TRL's GRPOConfig), and every such class is some command's."""
    from rubric_rl.commands import COMMANDS, parsed_types
    from rubric_rl.config import GRPO_CONFIG, settings_classes

    named = {t for name in COMMANDS for t in parsed_types(name)}
    assert named == set(settings_classes()) | {GRPO_CONFIG}
    assert all(hasattr(COMMANDS[name], "run") for name in COMMANDS)


def test_help_with_a_config_shows_the_files_values(capsys):
    out = " ".join(_help(capsys, "train", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--help").split())
    quick = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    assert f"(default: {quick['reward_novelty_weight']})" in out.split("--reward_novelty_weight")[1].split("--")[0]
