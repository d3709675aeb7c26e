"""Build a teacher from its config; optional backends are imported lazily."""

from __future__ import annotations

from pathlib import Path

from ..configs.teacher import TeacherConfig

GRAMMARS = Path(__file__).resolve().parents[1] / "assets" / "grammars"


def grammar_path(value: str) -> Path:
    """``teacher_grammar``'s file: the path itself, or the shipped grammar of that name (``question_answer``)."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    shipped = GRAMMARS / f"{value}.gbnf"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in GRAMMARS.glob("*.gbnf")))
    raise FileNotFoundError(f"teacher_grammar: {value!r} is neither a file nor a shipped grammar ({names})")


def build_teacher(cfg: TeacherConfig, *, documents: list[str] | None = None, device=None):
    """The teacher ``cfg`` names. ``documents`` only feeds the template teacher's distractor pool."""
    if cfg.teacher_backend == "template":
        from .template import TemplateTeacher

        return TemplateTeacher(documents)
    if cfg.teacher_backend == "transformers":
        from .hf import TransformersTeacher

        return TransformersTeacher(
            cfg.teacher_model_name_or_path, max_new_tokens=cfg.teacher_max_new_tokens,
            temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p, batch_size=cfg.teacher_batch_size,
            dtype=cfg.teacher_dtype, trust_remote_code=cfg.teacher_trust_remote_code, device=device,
        )
    if cfg.teacher_backend == "openai":
        from .openai_backend import OpenAITeacher

        return OpenAITeacher(
            cfg.teacher_base_url, cfg.teacher_model_name_or_path, api_key_env=cfg.teacher_api_key_env,
            max_new_tokens=cfg.teacher_max_new_tokens, temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p,
            concurrency=cfg.teacher_concurrency, timeout_s=cfg.teacher_timeout_s, max_retries=cfg.teacher_max_retries,
            backoff_s=cfg.teacher_backoff_s, max_backoff_s=cfg.teacher_max_backoff_s,
            breaker_window=cfg.teacher_breaker_window, breaker_max_failure_rate=cfg.teacher_breaker_max_failure_rate,
            extra_body=_request_fields(cfg),
        )
    if cfg.teacher_backend == "vllm":
        from .vllm_backend import VLLMTeacher

        return VLLMTeacher(
            cfg.teacher_model_name_or_path, max_new_tokens=cfg.teacher_max_new_tokens,
            temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p, dtype=cfg.teacher_dtype,
            trust_remote_code=cfg.teacher_trust_remote_code,
            tensor_parallel_size=cfg.teacher_vllm_tensor_parallel_size,
            gpu_memory_utilization=cfg.teacher_vllm_gpu_memory_utilization,
            max_model_len=cfg.teacher_vllm_max_model_len,
        )
    raise ValueError(f"unknown teacher_backend {cfg.teacher_backend!r}")


def _request_fields(cfg: TeacherConfig) -> dict | None:
    """``teacher_extra_body``, with ``teacher_grammar``'s text as ``grammar`` when it is set."""
    if not cfg.teacher_grammar:
        return cfg.teacher_extra_body
    return {**(cfg.teacher_extra_body or {}), "grammar": grammar_path(cfg.teacher_grammar).read_text(encoding="utf-8")}


def teacher_label(teacher) -> str:
    """``backend:model`` for provenance and logs (never anything secret)."""
    name = getattr(teacher, "name", type(teacher).__name__)
    model = getattr(teacher, "model_name", None)
    return f"{name}:{model}" if model else name
