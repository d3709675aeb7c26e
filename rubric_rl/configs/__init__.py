"""The bottom layer: configuration dataclasses that modules of several layers read (the command line's
parser, the pre-flight checks, the command that runs them). A module here imports only the standard library,
:mod:`rubric_rl.errors` and, inside a check, a constant of the module the field is for; never a module that
imports it back.

* :mod:`.evaluate`: ``EvalConfig``, ``EvalArguments``, ``parse_sources``, the metric constants;
* :mod:`.calibrate`: ``CalibrateArguments``.

The other stages' configs (``RubricRLArguments`` and the argument classes in :mod:`rubric_rl.config`,
``TeacherConfig``, ``InfluenceConfig``, ``SynthConfig``) still live beside their stage.
"""
