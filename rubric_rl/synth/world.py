"""The synthesis world every job shares: the teacher, the verifier chain it is judged by, and the document cut.

``train`` (the reward's synthesizer), ``evaluate``, ``closed-loop`` and ``synthesize`` each asked for a teacher and a
verifier chain and wired them into a :class:`~rubric_rl.synth.engine.SampleSynthesizer` by hand; this is that wiring,
once. The teacher is built on first use (a finished ``synthesize`` run loads no model), or handed in (tests, a job
that already holds one); each :meth:`SynthesisWorld.synthesizer` call gets a fresh stateless chain (no state shared
between datasets), or the one chain the job holds (``synthesize``'s, with its near-duplicate filter).
"""

from __future__ import annotations

from .engine import SampleSynthesizer
from .verifiers import VerifierSettings, default_verifiers


class SynthesisWorld:
    """``teacher_cfg``: the teacher's settings (its backend and ``teacher_max_document_chars``); ``documents``: the
    texts the template teacher draws distractors from; ``settings`` / ``eval_items``: the verifier chain's settings
    and the evaluation items it decontaminates against (None: none); ``verifiers``: a chain to use for every
    synthesizer instead of a fresh one each time."""

    def __init__(self, teacher_cfg, documents: list[str], *, device=None, teacher=None,
                 settings: VerifierSettings | None = None, eval_items: list[dict] | None = None,
                 verifiers: list | None = None):
        self.teacher_cfg = teacher_cfg
        self.documents = documents
        self.device = device
        self.settings = settings
        self.eval_items = eval_items
        self.verifiers = verifiers
        self._teacher = teacher

    @property
    def teacher(self):
        """The teacher, built from ``teacher_cfg`` the first time it is asked for."""
        return self.build_teacher()

    def build_teacher(self):
        """Build the teacher now unless it exists (a job that wants a failing teacher to stop it early); returns it."""
        if self._teacher is None:
            from ..teachers.factory import build_teacher

            self._teacher = build_teacher(self.teacher_cfg, documents=self.documents, device=self.device)
        return self._teacher

    @property
    def built_teacher(self):
        """The teacher if it was built or handed in, else None (nothing is built)."""
        return self._teacher

    def verifier_chain(self) -> list:
        """The held chain, or a fresh stateless one from the world's settings and evaluation items."""
        if self.verifiers is not None:
            return self.verifiers
        return default_verifiers(self.settings, eval_items=self.eval_items)

    def synthesizer(self, *, budget: int | None = None) -> SampleSynthesizer:
        """A synthesizer on the world's teacher and :meth:`verifier_chain`; ``budget`` caps its queries."""
        return SampleSynthesizer(self.teacher, self.verifier_chain(), budget=budget,
                                 max_document_chars=self.teacher_cfg.teacher_max_document_chars)
