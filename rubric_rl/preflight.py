"""Input checks every command runs before any model loads.

Every file a config names is opened once here: it must exist, be a file (or, for documents, a
``datasets`` folder), decode as UTF-8, parse, and hold usable rows -- warm-up, validation and test rows
need an assistant turn with text (the loss and the influence are computed on assistant tokens). A
failure is a :class:`~rubric_rl.errors.UserError` whose one line names the config field, the file and,
where there is one, the line: ``influence_validation_data: data/val.jsonl:7: no assistant turn``.

The readers themselves (:mod:`rubric_rl.data.documents`) give the same errors later; checking up front
only moves them before the minutes of model loading, SFT warm start and warm-up. So do the optional
dependencies a setting needs (``teacher_backend='vllm'``: the ``vllm`` extra; a GGUF model file: ``gguf``;
``eval_lm_eval_tasks``: ``eval``, and task names the harness knows), each a
:class:`~rubric_rl.errors.MissingExtra` that says what to install.
"""

from __future__ import annotations

import os
from pathlib import Path

from .data.documents import load_chat_samples, load_documents, load_rubric_file
from .errors import DataFileError, UserError
from .jsonl import check_file, read_text
from .rubric import RubricParseError, parse_completion


def _named(field: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except DataFileError as err:
        raise DataFileError(f"{field}: {err}") from None


def check_documents(path, *, field: str = "documents", text_field: str = "text") -> list[dict]:
    if not path:
        raise UserError(f"{field} must name a documents file")
    return _named(field, load_documents, path, text_field=text_field)


def check_chat_file(path, *, field: str, need_assistant: bool = False) -> list[dict]:
    """The rows of a chat jsonl file; with ``need_assistant`` every row needs an assistant turn with text."""
    rows = _named(field, load_chat_samples, path)
    if need_assistant:
        for row in rows:
            if not any(m["role"] == "assistant" and m["content"].strip() for m in row["messages"]):
                raise DataFileError(f"{field}: {path}:{row['line']}: no assistant turn with text (the loss and "
                                    "the influence are computed on the assistant's tokens)")
    return rows


def check_rubrics(path, *, field: str):
    return _named(field, load_rubric_file, path)


def check_sft_targets(rubrics, path, rubric_format: str, *, field: str = "seed_rubrics") -> None:
    """Each seed rubric, written as the SFT warm start's target (``Rubric.as_completion``), must be a rubric that
    the reward accepts (``rubric.parse_completion``: the parser and its quality gate): otherwise the warm start
    teaches the policy a reply that every rollout is penalised for."""
    for i, rubric in enumerate(rubrics):
        try:
            parse_completion(rubric.as_completion(rubric_format), rubric_format)
        except RubricParseError as err:
            raise DataFileError(f"{field}: {path}: rubric {i}: as an SFT target in rubric_format {rubric_format!r} "
                                f"it is no valid rubric ({err}); the warm start would teach a penalised reply")


def check_text_file(path, *, field: str) -> str:
    return _named(field, read_text, path)


def check_model(name, *, field: str) -> None:
    """A GGUF model file needs the optional ``gguf`` extra."""
    if isinstance(name, str) and ".gguf" in name.lower():
        from .errors import require_extra
        from .models import gguf_location

        if gguf_location(name) is not None:
            require_extra(f"{field} {name!r} (a GGUF file)", "gguf")


def _check_eval_target(eval_cfg, influence_cfg) -> None:
    """The target the evaluation fine-tunes: eval_target_model_name_or_path, by default the reward's target."""
    if eval_cfg.eval_target_model_name_or_path:
        check_model(eval_cfg.eval_target_model_name_or_path, field="eval_target_model_name_or_path")
    else:
        check_model(influence_cfg.target_model_name_or_path, field="target_model_name_or_path")


def check_teacher(teacher_cfg) -> None:
    env = getattr(teacher_cfg, "teacher_api_key_env", None)
    if teacher_cfg.teacher_backend == "openai" and env and not os.environ.get(env):
        raise UserError(f"teacher_api_key_env: the environment variable {env!r} is not set or empty")
    if teacher_cfg.teacher_backend == "vllm":
        from .teachers.vllm_backend import require_vllm

        require_vllm()
    if teacher_cfg.teacher_backend == "transformers":
        check_model(teacher_cfg.teacher_model_name_or_path, field="teacher_model_name_or_path")
    if getattr(teacher_cfg, "teacher_grammar", None):
        from .teachers.factory import grammar_path

        try:
            grammar_path(teacher_cfg.teacher_grammar)
        except FileNotFoundError as err:
            raise UserError(str(err)) from None


def _finished_warmup(run_dir) -> bool:
    from .influence.warmup import warmup_finished  # imports torch: only when there is no warmup_data

    return warmup_finished(run_dir)


def check_influence(cfg, run_dir, *, need_validation: bool = True) -> None:
    """The target model, warmup_data (unless RUN_DIR/warmup holds a finished warm-up) and
    influence_validation_data."""
    check_model(cfg.target_model_name_or_path, field="target_model_name_or_path")
    if cfg.warmup_data:
        check_chat_file(cfg.warmup_data, field="warmup_data", need_assistant=True)
    elif not _finished_warmup(run_dir):
        raise UserError(f"warmup_data is not set and {Path(run_dir) / 'warmup'} holds no finished warm-up; set "
                        "warmup_data to a chat jsonl")
    if need_validation:
        if not cfg.influence_validation_data:
            raise UserError("influence_validation_data is not set; it must name the validation chat jsonl")
        check_chat_file(cfg.influence_validation_data, field="influence_validation_data", need_assistant=True)


def check_influence_service(args, influence_cfg) -> dict:
    """``reward_influence_url``: every endpoint answers ``/health`` (within ``reward_influence_wait_s``) as a
    ``rubric-rl serve-influence``, takes the key, and all serve the same settings; a setting of this run's config
    that the service's differ from is named in a warning. Returns the client's description of the service."""
    from .influence.client import InfluenceClient

    client = InfluenceClient.from_args(args)
    try:
        return client.connect(influence_cfg, wait_s=args.reward_influence_wait_s)
    finally:
        client.close()


def check_train(args, grpo_args, teacher_cfg, influence_cfg) -> None:
    """Everything `rubric-rl train` reads: documents, seed rubrics (with the SFT warm start; each one's SFT target
    must pass the rubric parser's quality gate), warm-up, validation and decontamination files (or, with
    ``reward_influence_url``, instead of the warm-up and validation files: the influence service answers), the
    teacher's key, and the downstream evaluation config."""
    check_documents(args.documents, text_field=args.document_text_field)
    check_model(args.policy_model_name_or_path, field="policy_model_name_or_path")
    if args.policy_sft_warmstart:
        if not args.seed_rubrics:
            raise UserError("policy_sft_warmstart needs seed_rubrics (a JSON list of rubrics)")
        rubrics = check_rubrics(args.seed_rubrics, field="seed_rubrics")
        check_sft_targets(rubrics, args.seed_rubrics, args.rubric_format)
    if args.reward_influence_url:  # the service holds the target, its warm-up and the validation set
        check_influence_service(args, influence_cfg)
    else:
        check_influence(influence_cfg, grpo_args.output_dir)
    for path in args.reward_decontam_files or []:
        check_chat_file(path, field="reward_decontam_files")
    if args.reward_blocklist_file:
        check_text_file(args.reward_blocklist_file, field="reward_blocklist_file")
    check_teacher(teacher_cfg)
    if args.evaluate_config:
        check_evaluate_config(args.evaluate_config, args.evaluate_sources or [],
                              Path(grpo_args.output_dir) / "eval")


def check_synthesize(sa, synth_cfg, teacher_cfg) -> None:
    from .synth.hub import check_hub_settings

    check_hub_settings(synth_cfg, sa.output)  # HF_TOKEN for synth_push_to_hub, first: it needs no file
    check_documents(sa.documents)
    spec = sa.rubric_source
    if spec != "none":
        path = Path(spec)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise UserError(f"rubric_source: {spec}: folder is not an exported rubric generator (no config.json)")
        elif path.exists():
            check_rubrics(path, field="rubric_source")
        else:
            raise UserError(f"rubric_source {spec!r} is neither 'none', an existing rubrics JSON file, nor an "
                            "exported rubric generator folder")
    if synth_cfg.synth_seed_samples:
        check_chat_file(synth_cfg.synth_seed_samples, field="synth_seed_samples", need_assistant=True)
    for path in synth_cfg.synth_eval_files:
        check_chat_file(path, field="synth_eval_files")
    if synth_cfg.synth_blocklist_file:
        check_text_file(synth_cfg.synth_blocklist_file, field="synth_blocklist_file")
    check_teacher(teacher_cfg)


def check_score(run, sa, influence_cfg) -> None:
    _named("samples", check_file, sa.samples)
    text = check_text_file(sa.samples, field="samples")
    if not text.strip():
        raise DataFileError(f"samples: {sa.samples}: no samples (the file is empty)")
    check_influence(influence_cfg, run.output_dir)


def check_serve_influence(run, sa, influence_cfg) -> None:
    """``serve-influence``: the ``serve`` extra, the key variable, and what ``score`` needs (target, warm-up,
    validation set)."""
    from .errors import require_extra

    require_extra("serve-influence", "serve")
    if sa.serve_api_key_env and not os.environ.get(sa.serve_api_key_env):
        raise UserError(f"serve_api_key_env: the environment variable {sa.serve_api_key_env!r} is not set or empty")
    check_influence(influence_cfg, run.output_dir)


def check_warmup(run, influence_cfg) -> None:
    check_influence(influence_cfg, run.output_dir, need_validation=False)


def check_eval_harness(eval_cfg, test_rows: list[dict]) -> None:
    """eval_lm_eval_tasks: the ``eval`` extra, task names the harness knows, and (for the held-out task) test rows
    that are all multiple-choice items."""
    from .configs.evaluate import HELDOUT_TASK
    from .evaluate.harness import check_tasks

    check_tasks(eval_cfg)
    if HELDOUT_TASK in eval_cfg.eval_lm_eval_tasks:
        for row in test_rows:
            if not (isinstance(row.get("choices"), list) and len(row["choices"]) >= 2 and row.get("answer") is not None):
                raise DataFileError(f"eval_test_data: {eval_cfg.eval_test_data}:{row['line']}: no 'choices' and "
                                    f"'answer'; the harness task {HELDOUT_TASK!r} scores multiple-choice items only")


def check_evaluate(ea, cfg, teacher_cfg, influence_cfg) -> None:
    from .configs.evaluate import parse_sources
    from .evaluate.synthesis import resolve_source

    check_documents(cfg.eval_documents, field="eval_documents", text_field=cfg.eval_document_text_field)
    test_rows = check_chat_file(cfg.eval_test_data, field="eval_test_data", need_assistant=True)
    check_eval_harness(cfg, test_rows)
    _check_eval_target(cfg, influence_cfg)
    for name, spec in parse_sources(ea.sources).items():
        try:
            resolve_source(name, spec)
        except ValueError as err:
            raise UserError(f"sources: {err}") from None
    if cfg.eval_influence:
        if not influence_cfg.influence_validation_data:
            raise UserError("eval_influence needs influence_validation_data (the validation chat jsonl); set it or "
                            "pass --eval_influence false")
        run_dir = cfg.eval_influence_run_dir or Path(ea.output) / "influence"
        check_influence(influence_cfg, run_dir)
    check_teacher(teacher_cfg)


def check_closed_loop(loop_cfg, eval_cfg, teacher_cfg, influence_cfg) -> None:
    from .configs.closed_loop import INFLUENCE
    from .synth.pipeline import RubricSource

    docs = check_documents(eval_cfg.eval_documents, field="eval_documents", text_field=eval_cfg.eval_document_text_field)
    check_eval_harness(eval_cfg, check_chat_file(eval_cfg.eval_test_data, field="eval_test_data", need_assistant=True))
    _check_eval_target(eval_cfg, influence_cfg)
    seeds = check_chat_file(loop_cfg.loop_seed_data, field="loop_seed_data", need_assistant=True)
    if loop_cfg.loop_num_seeds > len(seeds):
        raise UserError(f"loop_num_seeds={loop_cfg.loop_num_seeds}, but loop_seed_data {loop_cfg.loop_seed_data} "
                        f"holds {len(seeds)} seeds")
    from .configs.synth import NEEDS_DOCUMENT

    if loop_cfg.loop_strategy in NEEDS_DOCUMENT:
        ids = {d["id"] for d in docs}
        for i, s in enumerate(seeds):
            if str(s.get("doc_id")) not in ids:
                raise UserError(f"loop_seed_data: {loop_cfg.loop_seed_data}:{i + 1}: doc_id {s.get('doc_id')!r} is "
                                f"not a document of eval_documents ({eval_cfg.eval_documents}); {loop_cfg.loop_strategy} "
                                "writes from the seed's document")
    try:
        RubricSource.resolve(loop_cfg.loop_rubric_source)
    except ValueError as err:
        raise UserError(f"loop_rubric_source: {err}") from None
    if influence_cfg.influence_validation_data:
        check_chat_file(influence_cfg.influence_validation_data, field="influence_validation_data", need_assistant=True)
    elif INFLUENCE in loop_cfg.loop_rules:
        raise UserError("loop_rules has 'influence', which needs influence_validation_data (the validation chat jsonl)")
    check_teacher(teacher_cfg)


def check_evaluate_config(config_path: str, sources: list[str], output) -> None:
    """The evaluation `rubric-rl train` runs at its end (evaluate_config), checked before training. The source
    'trained' does not exist yet and is not checked."""
    from .config import parse_config
    from .configs.evaluate import EvalArguments, EvalConfig, parse_sources
    from .configs.influence import InfluenceConfig
    from .configs.teacher import TeacherConfig

    if not Path(config_path).is_file():  # before the parser, whose error would only say it does not parse
        raise UserError(f"evaluate_config: no such file {config_path!r}")
    argv = ["--config", config_path, "--sources", *(sources or ["none=none"]), "--output", str(output)]
    try:
        ea, cfg, teacher_cfg, influence_cfg = parse_config(
            (EvalArguments, EvalConfig, TeacherConfig, InfluenceConfig), argv, prog="rubric-rl train",
            shared_config=True)
    except SystemExit:  # parse_config printed the reason
        raise UserError(f"evaluate_config: {config_path} does not parse (the line above says why)") from None
    parse_sources(ea.sources)
    try:
        check_evaluate(ea, cfg, teacher_cfg, influence_cfg)
    except UserError as err:
        raise UserError(f"evaluate_config {config_path}: {err}") from None
