"""The whole loop on tiny models: SFT warm start -> warm-up -> GRPO -> metrics -> export -> resume."""

import json

import pytest
import torch
from transformers import TrainerCallback

from rubric_rl.config import parse_config, train_dataclasses
from rubric_rl.rubric import try_parse_rubric

SEEDS = [
    {"prompt_related": ["Write a multiple-choice question."], "response_related": ["Reason step by step."]},
    {"prompt_related": ["Ask about the dose."], "response_related": ["Be concise."]},
]


def make_args(tmp_path, quickstart_dir, out, *extra):
    seeds = tmp_path / "seeds.json"
    seeds.write_text(json.dumps(SEEDS))
    argv = [
        "--output_dir", str(out),
        "--policy_model_name_or_path", "tiny:hidden=32,layers=2,heads=4,seed=0",
        "--policy_sft_warmstart", "true", "--seed_rubrics", str(seeds), "--policy_sft_epochs", "80",
        "--policy_sft_max_documents", "2", "--policy_sft_batch_size", "4", "--policy_sft_learning_rate", "0.02",
        "--max_document_chars", "120",
        "--documents", str(quickstart_dir / "documents.jsonl"),
        "--teacher_backend", "template",
        "--target_model_name_or_path", "tiny:hidden=32,layers=2,heads=4,seed=1",
        "--warmup_data", str(quickstart_dir / "warmup.jsonl"), "--warmup_epochs", "1",
        "--warmup_learning_rate", "0.001",
        "--influence_validation_data", str(quickstart_dir / "validation.jsonl"), "--influence_proj_dim", "256",
        "--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "64",
        "--learning_rate", "0.001", "--logging_steps", "1", "--save_steps", "2", "--report_to", "none",
        "--use_cpu", "true", "--seed", "0", "--gradient_checkpointing", "false", "--torch_num_threads", "1",
        "--disable_tqdm", "true", "--lr_scheduler_type", "linear",
        *extra,
    ]
    return parse_config(train_dataclasses(), argv)


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class StopAt(TrainerCallback):
    """Stops training after ``step``, as a crash would (no checkpoint is written for it unless save_steps says so)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, quickstart_dir):
    from rubric_rl.train import train

    tmp = tmp_path_factory.mktemp("e2e")
    out = tmp / "full"
    summary = train(*make_args(tmp, quickstart_dir, out, "--max_steps", "4"))
    return tmp, out, summary


def test_grpo_run_writes_metrics_rollouts_and_export(full_run):
    _, out, summary = full_run
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for key in ("reward", "reward_std", "valid_rate", "influence_mean"):
            assert key in r
    assert any(r["valid_rate"] > 0 for r in rows)  # the warm-started tiny policy writes parseable rubrics
    rollouts = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 4 * 8
    assert any(r["outcome"] == "valid" and isinstance(r["influence"], float) for r in rollouts)
    assert summary["reward"]["steps"] == 4 and "first_mean" in summary["reward"]
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()


def test_export_round_trip(full_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rubric_rl.data.prompts import policy_messages
    from rubric_rl.export import export_run

    tmp, out, summary = full_run
    export_dir = tmp / "exported"
    export_run(out, export_dir, num_examples=2)
    for name in ("model.safetensors", "config.json", "generation_config.json", "README.md", "reward_curve.png",
                 "rubric_rl_export.json", "tokenizer.json"):
        assert (export_dir / name).exists(), name
    card = (export_dir / "README.md").read_text()
    assert "## Reward curve" in card and "## Sampled rubrics" in card and "tiny:" in card
    model = AutoModelForCausalLM.from_pretrained(export_dir)
    tok = AutoTokenizer.from_pretrained(export_dir)
    doc = json.loads((out / "rubric_rl_args.json").read_text())["rubric_rl"]["documents"]
    text = json.loads(open(doc).readline())["text"]
    enc = tok.apply_chat_template(policy_messages(text, max_document_chars=120), add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=64, do_sample=False)
    completion = tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    rubric, reason = try_parse_rubric(completion)
    assert rubric is not None, (reason, completion)


def test_resume_matches_uninterrupted(full_run, quickstart_dir, monkeypatch):
    import rubric_rl.train as train_mod

    tmp, full_out, _ = full_run
    out = tmp / "resumed"
    real = train_mod.GRPOTrainer

    def stopping(*a, **kw):
        trainer = real(*a, **kw)
        trainer.add_callback(StopAt(3))  # "crash" after step 3: its logs exist, its checkpoint does not
        return trainer

    monkeypatch.setattr(train_mod, "GRPOTrainer", stopping)
    train_mod.train(*make_args(tmp, quickstart_dir, out, "--max_steps", "4"))
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    assert not (out / "checkpoint-3").exists()  # resuming goes back to checkpoint-2 and redoes step 3
    monkeypatch.setattr(train_mod, "GRPOTrainer", real)
    train_mod.train(*make_args(tmp, quickstart_dir, out, "--max_steps", "4", "--resume_from_checkpoint", "true"))

    a, b = read_metrics(full_out), read_metrics(out)
    assert [r["step"] for r in b] == [1, 2, 3, 4]  # no step repeated or lost
    for ra, rb in zip(a, b):
        for key in ("reward", "loss", "valid_rate", "influence_mean", "grad_norm"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), (ra["step"], key)
    # every rollout logged once, and the same rollouts as the uninterrupted run
    ra = [json.loads(x) for x in (full_out / "rollouts.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert [(r["step"], r["rubric"], r["outcome"]) for r in ra] == [(r["step"], r["rubric"], r["outcome"]) for r in rb]
    from safetensors.torch import load_file

    wa, wb = load_file(full_out / "model.safetensors"), load_file(out / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_resuming_a_finished_run_refuses_instead_of_training_one_more_step(full_run, quickstart_dir):
    """HF Trainer resumed at max_steps trains one extra step; a finished run is refused with the way out."""
    import shutil

    from rubric_rl.errors import UserError
    from rubric_rl.train import train

    tmp, full_out, _ = full_run
    out = tmp / "finished"
    shutil.copytree(full_out, out)
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match=r"already max_steps=4.*rubric-rl export --run"):
        train(*make_args(tmp, quickstart_dir, out, "--max_steps", "4", "--resume_from_checkpoint", "true"))
    assert (out / "metrics.jsonl").read_text() == before


def test_rloo_algorithm_runs(full_run, quickstart_dir):
    import shutil

    from rubric_rl.train import train

    tmp, full_out, _ = full_run
    out = tmp / "rloo"
    out.mkdir()
    shutil.copytree(full_out / "sft_warmstart", out / "sft_warmstart")  # same spec: reused, not retrained
    summary = train(*make_args(tmp, quickstart_dir, out, "--max_steps", "2", "--algorithm", "rloo"))
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2] and summary["reward"]["steps"] == 2
    assert "reward" in rows[0] and "valid_rate" in rows[0]
