"""Build a teacher from its config; optional backends are imported lazily."""

from __future__ import annotations

from .config import TeacherConfig


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
    raise NotImplementedError(f"teacher_backend={cfg.teacher_backend!r} is not available in this build")
