"""The synthesis world: the teacher built once, on first use; a fresh stateless verifier chain per synthesizer unless
the job holds its own; the teacher's document cut passed on."""

from rubric_rl.configs.teacher import TeacherConfig
from rubric_rl.synth.verifiers import VerifierSettings
from rubric_rl.synth.world import SynthesisWorld


def test_teacher_is_built_once_on_first_use_and_chains_are_fresh():
    cfg = TeacherConfig(teacher_backend="template", teacher_max_document_chars=123)
    world = SynthesisWorld(cfg, ["Belmozaline is used to treat migraine."],
                           settings=VerifierSettings(grounding=False))
    assert world.built_teacher is None  # nothing built until asked
    a, b = world.synthesizer(), world.synthesizer(budget=5)
    assert world.built_teacher is not None and a.teacher is b.teacher is world.teacher
    assert a.verifiers is not b.verifiers  # no state shared between datasets
    assert [type(v).__name__ for v in a.verifiers] == [type(v).__name__ for v in b.verifiers]
    assert "GroundingVerifier" not in [type(v).__name__ for v in a.verifiers]  # the settings reach the chain
    assert (a.budget, b.budget, a.max_document_chars) == (None, 5, 123)


def test_a_held_chain_and_a_handed_teacher_are_used_as_they_are():
    cfg = TeacherConfig(teacher_backend="template")
    teacher, chain = object(), []
    world = SynthesisWorld(cfg, [], teacher=teacher, verifiers=chain)
    s = world.synthesizer()
    assert s.teacher is teacher and s.verifiers is chain and world.built_teacher is teacher
