"""Closed-loop, student-guided synthesis (``rubric-rl closed-loop``): selection rules (:mod:`.selection`), the
resumable rounds (:mod:`.run`) and the report (:mod:`.report`)."""

from .run import closed_loop

__all__ = ["closed_loop"]
