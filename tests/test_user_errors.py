"""Every user error is one line on stderr and exit 2, before any model loads; --debug shows the traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import rubric_rl.evaluate.run
import rubric_rl.influence
import rubric_rl.train
from rubric_rl.cli import main
from rubric_rl.errors import UserError, closest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@pytest.fixture(autouse=True)
def no_models(monkeypatch):
    """Any command that got past its checks would load models: make that a test failure."""
    def loaded(*a, **kw):
        raise AssertionError("a model would load before the input was checked")

    monkeypatch.setattr(rubric_rl.train, "train", loaded)
    monkeypatch.setattr(rubric_rl.evaluate.run, "evaluate", loaded)
    monkeypatch.setattr(rubric_rl.influence, "score_file", loaded)
    monkeypatch.setattr(rubric_rl.influence, "run_warmup", loaded)
    monkeypatch.delenv("RUBRIC_RL_DEBUG", raising=False)


def fails(argv, capsys) -> str:
    """Run the CLI, expect exit 2, return the one stderr line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert info.value.code == 2, err
    assert len(lines) == 1, err  # one line: no usage dump, no traceback
    assert "Traceback" not in err
    return lines[0]


def train_argv(tmp_path, *extra):
    return ["train", "--config", str(QUICKSTART), "--output_dir", str(tmp_path / "run"), *extra]


def write_quickstart_copy(path: Path, lines: int | None = None, transform=None) -> Path:
    rows = (ROOT / "data" / "quickstart" / "validation.jsonl").read_text().splitlines()[:lines]
    rows = [json.loads(r) for r in rows]
    if transform:
        rows = [transform(i, r) for i, r in enumerate(rows)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------- config files
def test_yaml_syntax_error_names_file_line_column(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("output_dir: runs/x\ndocuments: a.jsonl\n  bad_indent: [1, 2\n")
    line = fails(["train", "--config", str(cfg)], capsys)
    assert f"{cfg}:3:13: invalid YAML" in line


def test_config_pointing_at_a_directory_or_missing_file(tmp_path, capsys):
    assert f"{tmp_path}: is a directory" in fails(["train", "--config", str(tmp_path)], capsys)
    missing = tmp_path / "nope.yaml"
    assert f"{missing}: file not found" in fails(["synthesize", "--config", str(missing), "--output", "x"], capsys)


def test_config_that_is_not_a_mapping(tmp_path, capsys):
    cfg = tmp_path / "list.yaml"
    cfg.write_text("- a\n- b\n")
    assert "must be a YAML mapping" in fails(["train", "--config", str(cfg)], capsys)


def test_unknown_config_field_names_field_line_and_closest_name_without_usage(tmp_path, capsys):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("output_dir: runs/x\nlearnin_rate: 0.1\npolcy_use_peft: true\n")
    line = fails(["train", "--config", str(cfg)], capsys)
    assert f"{cfg}:2: unknown field 'learnin_rate' (did you mean 'learning_rate'?)" in line
    assert f"{cfg}:3: unknown field 'polcy_use_peft' (did you mean 'policy_use_peft'?)" in line
    assert "fail_with_unknown_args" not in line and "usage" not in line
    # the shared-config commands too
    line = fails(["score", "--config", str(cfg), "--samples", "s", "--output", "o"], capsys)
    assert "'learnin_rate' (did you mean 'learning_rate'?)" in line


def test_unknown_flag_and_bad_value_are_one_line(tmp_path, capsys):
    line = fails(train_argv(tmp_path, "--polcy_model", "x"), capsys)
    assert "--polcy_model (did you mean 'policy_model_name_or_path'?)" in line
    assert "--max_steps" in fails(train_argv(tmp_path, "--max_steps", "abc"), capsys)
    assert "reward_if_scaling" in fails(train_argv(tmp_path, "--reward_if_scaling", "bogus"), capsys)


def test_closest_name():
    assert closest("learnin_rate", ["learning_rate", "seed"]) == "learning_rate"
    assert closest("zzz", ["learning_rate", "seed"]) is None


# ---------------------------------------------------------------------------------------------- data files
def test_non_utf8_documents_name_file_and_line(tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    lines = (ROOT / "data" / "quickstart" / "documents.jsonl").read_bytes().split(b"\n")
    lines[4] = b'{"id": "x", "text": "caf\xe9 au lait"}'
    docs.write_bytes(b"\n".join(lines))
    line = fails(train_argv(tmp_path, "--documents", str(docs)), capsys)
    assert f"documents: {docs}:5: not valid UTF-8 (byte 0xe9" in line
    line = fails(["synthesize", "--config", str(QUICKSTART), "--documents", str(docs), "--output",
                  str(tmp_path / "o.jsonl")], capsys)
    assert f"{docs}:5: not valid UTF-8" in line


def test_documents_path_a_directory_or_missing(tmp_path, capsys):
    assert f"documents: {tmp_path}: is a directory" in fails(train_argv(tmp_path, "--documents", str(tmp_path)),
                                                              capsys)
    missing = tmp_path / "no.jsonl"
    assert f"documents: {missing}: file not found" in fails(train_argv(tmp_path, "--documents", str(missing)), capsys)


def test_documents_json_syntax_error_names_line(tmp_path, capsys):
    docs = tmp_path / "docs.json"
    docs.write_text('[\n {"text": "a"},\n {"text": }\n]\n')
    assert f"{docs}:3: invalid JSON" in fails(train_argv(tmp_path, "--documents", str(docs)), capsys)


def test_validation_data_missing_or_without_assistant_turn_fails_before_training(tmp_path, capsys):
    missing = tmp_path / "val.jsonl"
    line = fails(train_argv(tmp_path, "--influence_validation_data", str(missing)), capsys)
    assert f"influence_validation_data: {missing}: file not found" in line
    val = write_quickstart_copy(tmp_path / "val.jsonl", 6, lambda i, r: r if i != 3 else {
        **r, "messages": [m for m in r["messages"] if m["role"] != "assistant"]})
    line = fails(train_argv(tmp_path, "--influence_validation_data", str(val)), capsys)
    assert f"influence_validation_data: {val}:4: no assistant turn" in line


def test_warmup_rows_need_an_assistant_turn_with_text(tmp_path, capsys):
    def blank(i, r):
        return {**r, "messages": [m if m["role"] != "assistant" else {**m, "content": "  "} for m in r["messages"]]}

    warm = write_quickstart_copy(tmp_path / "warm.jsonl", 3, lambda i, r: blank(i, r) if i == 1 else r)
    line = fails(train_argv(tmp_path, "--warmup_data", str(warm)), capsys)
    assert f"warmup_data: {warm}:2: no assistant turn" in line
    line = fails(["warmup", "--config", str(QUICKSTART), "--output_dir", str(tmp_path / "w"), "--warmup_data",
                  str(tmp_path)], capsys)
    assert f"warmup_data: {tmp_path}: is a directory" in line


def test_seed_rubrics_and_decontam_files_are_checked(tmp_path, capsys):
    bad = tmp_path / "rubrics.json"
    bad.write_text('[{"prompt_related": ["x"]},\n oops]')
    assert f"seed_rubrics: {bad}:2: invalid JSON" in fails(train_argv(tmp_path, "--seed_rubrics", str(bad)), capsys)
    docs = ROOT / "data" / "quickstart" / "documents.jsonl"
    line = fails(train_argv(tmp_path, "--reward_decontam_files", str(docs)), capsys)
    assert f"reward_decontam_files: {docs}:1: not a chat sample" in line


def test_seed_rubrics_whose_sft_targets_the_reward_would_penalise_fail_before_training(tmp_path, capsys):
    seeds = json.loads((ROOT / "data" / "quickstart" / "seed_rubrics.json").read_text())
    seeds[3]["response_related"] = ["Explain the answer step by step by step."]
    bad = tmp_path / "rubrics.json"
    bad.write_text(json.dumps(seeds))
    line = fails(train_argv(tmp_path, "--seed_rubrics", str(bad)), capsys)
    assert f"seed_rubrics: {bad}: rubric 3: as an SFT target in rubric_format 'json'" in line
    assert "stuttering: response_related[0]" in line
    # a seed rubric the list format would drop to too few items, with rubric_format list
    seeds = [{"prompt_related": ["Ask about the dose."], "technical": ["Be brief."]}]
    bad.write_text(json.dumps(seeds))
    line = fails(train_argv(tmp_path, "--seed_rubrics", str(bad), "--rubric_format", "list"), capsys)
    assert f"seed_rubrics: {bad}: rubric 0: as an SFT target in rubric_format 'list'" in line
    assert "too_few_items" in line


def test_score_with_missing_samples_file(tmp_path, capsys):
    missing = tmp_path / "samples.jsonl"
    line = fails(["score", "--config", str(QUICKSTART), "--output_dir", str(tmp_path), "--samples", str(missing),
                  "--output", str(tmp_path / "o.jsonl")], capsys)
    assert f"samples: {missing}: file not found" in line


def test_evaluate_checks_test_file_and_sources(tmp_path, capsys):
    ev = str(ROOT / "configs" / "evaluate_quickstart.yaml")
    test = write_quickstart_copy(tmp_path / "test.jsonl", 2, lambda i, r: {
        **r, "messages": [m for m in r["messages"] if m["role"] != "assistant"]})
    line = fails(["evaluate", "--config", ev, "--sources", "a=none", "--eval_test_data", str(test),
                  "--output", str(tmp_path / "r")], capsys)
    assert f"eval_test_data: {test}:1: no assistant turn" in line
    line = fails(["evaluate", "--config", ev, "--sources", f"a={tmp_path}", "--output", str(tmp_path / "r")], capsys)
    assert "neither an exported rubric generator (no config.json) nor a closed-loop rule folder" in line


def test_train_checks_its_evaluate_config_before_training(tmp_path, capsys):
    ev = tmp_path / "ev.yaml"
    ev.write_text((ROOT / "configs" / "evaluate_quickstart.yaml").read_text()
                  + f"\neval_test_data: {tmp_path / 'missing_test.jsonl'}\n")
    line = fails(train_argv(tmp_path, "--evaluate_config", str(ev)), capsys)
    assert f"evaluate_config {ev}: eval_test_data: {tmp_path / 'missing_test.jsonl'}: file not found" in line


# ---------------------------------------------------------------------------------------------- --debug
def test_debug_flag_and_env_show_the_traceback(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no.jsonl"
    with pytest.raises(UserError, match="file not found"):
        main(train_argv(tmp_path, "--documents", str(missing), "--debug"))
    monkeypatch.setenv("RUBRIC_RL_DEBUG", "1")
    with pytest.raises(UserError, match="file not found"):
        main(train_argv(tmp_path, "--documents", str(missing)))


def test_real_process_exit_code_and_single_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("a: [1,\n")
    proc = subprocess.run([sys.executable, "-m", "rubric_rl.cli", "train", "--config", str(cfg)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"rubric-rl train: error: {cfg}:")
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- optional extras
def _install_line(line: str, extra: str) -> None:
    assert f"pip install -e '.[{extra}]'" in line  # a clone
    assert f"pip install 'rubric-rl[{extra}]'" in line  # the package


def test_serve_teacher_without_fastapi_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed
    line = fails(["serve-teacher", "--model", "template"], capsys)
    assert line.startswith("rubric-rl serve-teacher: error: ") and "'serve' extra (fastapi, uvicorn)" in line
    _install_line(line, "serve")


def test_serve_teacher_with_an_unset_key_variable_is_one_line(monkeypatch, capsys):
    monkeypatch.delenv("RUBRIC_RL_NO_SUCH_KEY", raising=False)
    line = fails(["serve-teacher", "--model", "template", "--api_key_env", "RUBRIC_RL_NO_SUCH_KEY"], capsys)
    assert "'RUBRIC_RL_NO_SUCH_KEY' (api_key_env) is not set" in line


def test_vllm_teacher_without_vllm_fails_before_any_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)
    line = fails(["synthesize", "--config", str(QUICKSTART), "--rubric_source", "none", "--output",
                  str(tmp_path / "o.jsonl"), "--teacher_backend", "vllm", "--teacher_model_name_or_path", "m"], capsys)
    assert "teacher_backend='vllm' needs the optional 'vllm' extra" in line
    _install_line(line, "vllm")
    assert not (tmp_path / "o.jsonl").exists()
    line = fails(train_argv(tmp_path, "--teacher_backend", "vllm", "--teacher_model_name_or_path", "m"), capsys)
    _install_line(line, "vllm")


def test_gguf_model_without_gguf_fails_before_any_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gguf", None)
    samples = write_quickstart_copy(tmp_path / "s.jsonl", 2)
    model = str(tmp_path / "target.gguf")
    line = fails(["score", "--config", str(QUICKSTART), "--output_dir", str(tmp_path / "run"), "--samples",
                  str(samples), "--output", str(tmp_path / "o.jsonl"), "--target_model_name_or_path", model], capsys)
    assert f"target_model_name_or_path '{model}' (a GGUF file) needs the optional 'gguf' extra" in line
    _install_line(line, "gguf")
    line = fails(train_argv(tmp_path, "--policy_model_name_or_path", model), capsys)
    assert "policy_model_name_or_path" in line
    _install_line(line, "gguf")


def test_extras_match_pyproject():
    import tomllib

    from rubric_rl.errors import EXTRAS

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        packages = {dep.split(">")[0].split("=")[0].split("[")[0].strip() for dep in extras[extra]}
        assert packages == set(modules), extra


def test_lm_eval_tasks_without_lm_eval_fails_before_any_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    line = fails(["evaluate", "--config", str(ROOT / "configs" / "evaluate_quickstart.yaml"), "--sources", "none=none",
                  "--output", str(tmp_path / "eval"), "--eval_lm_eval_tasks", "rubric_rl_heldout"], capsys)
    assert line.startswith("rubric-rl evaluate: error: eval_lm_eval_tasks needs the optional 'eval' extra (lm_eval)")
    _install_line(line, "eval")
