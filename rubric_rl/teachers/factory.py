"""Build a teacher from its config; optional backends are imported lazily."""

from __future__ import annotations

from ..configs.teacher import TeacherConfig


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
            extra_body=cfg.teacher_extra_body,
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


def teacher_label(teacher) -> str:
    """``backend:model`` for provenance and logs (never anything secret)."""
    name = getattr(teacher, "name", type(teacher).__name__)
    model = getattr(teacher, "model_name", None)
    return f"{name}:{model}" if model else name
