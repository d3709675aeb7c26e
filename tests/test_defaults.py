"""One place for each default: a library class or function that takes a setting has the settings dataclass's
default (rubric_rl/configs/*.py), read from it, not restated. Each row: the callable, its parameter, the field."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from rubric_rl.configs.evaluate import EvalConfig
from rubric_rl.configs.influence import InfluenceConfig
from rubric_rl.configs.run import ScoreArguments, ServeInfluenceArguments
from rubric_rl.configs.synth import SynthConfig
from rubric_rl.configs.teacher import TeacherConfig
from rubric_rl.configs.train import RubricRLArguments

T, R = TeacherConfig, RubricRLArguments
TEACHER_SAMPLING = {"max_new_tokens": "teacher_max_new_tokens", "temperature": "teacher_temperature",
                    "top_p": "teacher_top_p"}
VERIFIERS = {"grounding": "synth_grounding", "safety": "synth_safety",
             "grounding_min_overlap": "synth_grounding_min_overlap",
             "grounding_min_claim_overlap": "synth_grounding_min_claim_overlap",
             "decontam_ngram": "synth_decontam_ngram", "decontam_threshold": "synth_decontam_threshold",
             "blocklist_file": "synth_blocklist_file"}

ROWS = [
    ("rubric_rl.reward:InfluenceReward", R, {
        "invalid_penalty": "reward_invalid_penalty", "scaling": "reward_if_scaling", "scale": "reward_if_scale",
        "novelty_weight": "reward_novelty_weight", "novelty_center": "reward_novelty_center",
        "if_window": "reward_if_window", "if_min_rel": "reward_if_min_rel", "rubric_format": "rubric_format"}),
    ("rubric_rl.reward:RunningScaler", R, {"window": "reward_if_window", "min_rel": "reward_if_min_rel"}),
    ("rubric_rl.reward:shape_rewards", R, {"scaling": "reward_if_scaling", "scale": "reward_if_scale"}),
    ("rubric_rl.teachers.hf:TransformersTeacher", T, {
        **TEACHER_SAMPLING, "batch_size": "teacher_batch_size", "dtype": "teacher_dtype",
        "trust_remote_code": "teacher_trust_remote_code"}),
    ("rubric_rl.teachers.openai_backend:OpenAITeacher", T, {
        **TEACHER_SAMPLING, "api_key_env": "teacher_api_key_env", "concurrency": "teacher_concurrency",
        "timeout_s": "teacher_timeout_s", "max_retries": "teacher_max_retries", "backoff_s": "teacher_backoff_s",
        "max_backoff_s": "teacher_max_backoff_s", "breaker_window": "teacher_breaker_window",
        "breaker_max_failure_rate": "teacher_breaker_max_failure_rate"}),
    ("rubric_rl.teachers.vllm_backend:VLLMTeacher", T, {
        **TEACHER_SAMPLING, "dtype": "teacher_dtype", "trust_remote_code": "teacher_trust_remote_code",
        "tensor_parallel_size": "teacher_vllm_tensor_parallel_size",
        "gpu_memory_utilization": "teacher_vllm_gpu_memory_utilization",
        "max_model_len": "teacher_vllm_max_model_len"}),
    ("rubric_rl.teachers.base:CircuitBreaker", T, {"window": "teacher_breaker_window",
                                                    "max_failure_rate": "teacher_breaker_max_failure_rate"}),
    ("rubric_rl.teachers.server:serve", T, {**TEACHER_SAMPLING, "batch_size": "teacher_batch_size",
                                            "dtype": "teacher_dtype", "trust_remote_code": "teacher_trust_remote_code"}),
    ("rubric_rl.teachers.server:create_app", T, {**TEACHER_SAMPLING, "batch_size": "teacher_batch_size"}),
    ("rubric_rl.teachers.server:build_local_teacher", T, {
        **TEACHER_SAMPLING, "batch_size": "teacher_batch_size", "dtype": "teacher_dtype",
        "trust_remote_code": "teacher_trust_remote_code"}),
    ("rubric_rl.teachers.server:MicroBatcher", T, {"batch_size": "teacher_batch_size"}),
    ("rubric_rl.influence.client:InfluenceClient", R, {
        "balance": "reward_influence_balance", "timeout_s": "reward_influence_timeout_s",
        "max_retries": "reward_influence_max_retries", "backoff_s": "reward_influence_backoff_s",
        "max_backoff_s": "reward_influence_max_backoff_s", "breaker_window": "reward_influence_breaker_window",
        "breaker_max_failure_rate": "reward_influence_breaker_max_failure_rate",
        "api_key_env": "reward_influence_api_key_env"}),
    ("rubric_rl.influence.client:InfluenceClient.connect", R, {"wait_s": "reward_influence_wait_s"}),
    ("rubric_rl.influence.server:ScoringPool", ServeInfluenceArguments, {
        "max_batch_samples": "serve_max_batch_samples", "batch_wait_ms": "serve_batch_wait_ms",
        "max_queue_samples": "serve_max_queue_samples"}),
    ("rubric_rl.influence.server:create_app", ServeInfluenceArguments, {
        "max_batch_samples": "serve_max_batch_samples", "batch_wait_ms": "serve_batch_wait_ms",
        "max_queue_samples": "serve_max_queue_samples"}),
    ("rubric_rl.influence.selection:score_file", ScoreArguments, {"chunk_size": "chunk_size"}),
    ("rubric_rl.influence.selection:merge_file", ScoreArguments, {"chunk_size": "chunk_size"}),
    ("rubric_rl.influence.check:objective_inputs", InfluenceConfig, {"objective": "influence_objective",
                                                                     "max_length": "influence_max_length"}),
    ("rubric_rl.influence.check:objective_losses", InfluenceConfig, {"objective": "influence_objective",
                                                                     "max_length": "influence_max_length"}),
    ("rubric_rl.synth.verifiers:VerifierSettings", SynthConfig, VERIFIERS),  # default_verifiers' settings
    ("rubric_rl.synth.pipeline:synthesize_dataset", EvalConfig, {"generator_batch_size": "eval_generator_batch_size"}),
    ("rubric_rl.evaluate.harness:run_harness", EvalConfig, {"limit": "eval_lm_eval_limit",
                                                            "num_fewshot": "eval_lm_eval_num_fewshot",
                                                            "batch_size": "eval_score_batch_size",
                                                            "apply_chat_template": "eval_lm_eval_apply_chat_template"}),
    ("rubric_rl.data.prompts:policy_messages", R, {"max_document_chars": "max_document_chars",
                                                   "rubric_format": "rubric_format"}),
    ("rubric_rl.data.prompts:build_prompt_dataset", R, {"max_document_chars": "max_document_chars",
                                                        "rubric_format": "rubric_format"}),
    ("rubric_rl.generator:RubricGenerator", R, {"max_document_chars": "max_document_chars",
                                                "rubric_format": "rubric_format"}),
]


def _callable(spec: str):
    module, name = spec.split(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("spec,settings,params", ROWS, ids=[r[0].split(":")[1] for r in ROWS])
def test_a_library_default_is_its_settings_default(spec, settings, params):
    if spec.startswith(("rubric_rl.teachers.hf", "rubric_rl.generator", "rubric_rl.influence.")):
        pytest.importorskip("torch")
    signature = inspect.signature(_callable(spec))
    for param, field_name in params.items():
        assert signature.parameters[param].default == getattr(settings, field_name), (spec, param, field_name)


def test_the_rl_verifier_settings_are_synthesizes():
    """reward_* verifier fields are the twins of synthesize's synth_* ones: the same defaults (read from SynthConfig)."""
    for param, synth_field in VERIFIERS.items():
        assert getattr(R, "reward_" + param) == getattr(SynthConfig, synth_field), param


def test_serve_teacher_parser_defaults_are_the_servers_and_the_teachers():
    from rubric_rl.commands.serve_teacher import make_parser
    from rubric_rl.teachers import server

    args = make_parser().parse_args(["--model", "template"])
    signature = inspect.signature(server.serve)
    for name, value in vars(args).items():
        if name != "model":
            assert signature.parameters[name].default == value, name
    assert (args.max_new_tokens, args.temperature, args.top_p, args.batch_size, args.dtype) == (
        T.teacher_max_new_tokens, T.teacher_temperature, T.teacher_top_p, T.teacher_batch_size, T.teacher_dtype)


def test_each_row_reads_its_default_from_the_settings_class_not_a_literal():
    """The defaults above are written as an attribute of the settings class (``TeacherConfig.teacher_top_p``), never as a
    literal that happens to match today."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for spec, _, params in ROWS:
        module, name = spec.split(":")
        tree = ast.parse((root / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
        target = name.split(".")[-1]
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == target:
                init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                if init is None:  # a dataclass: its fields' defaults
                    found += [f"{spec}({n.target.id}={n.value.value!r})" for n in node.body
                              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                              and n.target.id in params and isinstance(n.value, ast.Constant)
                              and n.value.value is not None]
                    break
                node = init
            elif not (isinstance(node, ast.FunctionDef) and node.name == target):
                continue
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
            pairs += [(k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
            for arg, default in pairs:
                if arg.arg in params and isinstance(default, ast.Constant) and default.value is not None:
                    found.append(f"{spec}({arg.arg}={default.value!r})")
            break
    assert not found, "restated defaults (read them from the settings class):\n" + "\n".join(found)
