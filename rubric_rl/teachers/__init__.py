"""Teacher backends behind one interface (see :mod:`rubric_rl.teachers.base`)."""

from .base import Teacher, TeacherRequest, TeacherResult

__all__ = ["Teacher", "TeacherRequest", "TeacherResult"]
