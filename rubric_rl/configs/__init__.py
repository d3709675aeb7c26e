"""The bottom layer: every command's settings as dataclasses (TRL's ``HfArgumentParser`` style: a field, its
default, its ``help``, and a ``__post_init__`` that names the bad field; the class attribute
``_argument_group_name``, HfArgumentParser's group title, heads the class's section of ``--help``). A module here
imports only the standard library, another module of this package, and (inside a check) :mod:`rubric_rl.errors`
or a constant of the module the field is for; never a module that imports it back. :mod:`rubric_rl.config` parses
YAML and flags into them.

* :mod:`.train`: ``RubricRLArguments`` (policy, data, prompts, reward, warm start, pre-flight), ``DEFAULT_TASK``,
  ``RUBRIC_FORMATS``; TRL's ``GRPOConfig`` completes a training run;
* :mod:`.teacher`: ``TeacherConfig`` (``teacher_*``);
* :mod:`.influence`: ``InfluenceConfig`` (``target_*``, ``warmup_*``, ``influence_*``);
* :mod:`.synth`: ``SynthConfig`` (``synth_*``), ``SynthArguments``, the strategy names;
* :mod:`.evaluate`: ``EvalConfig``, ``EvalArguments``, ``parse_sources``, the metric constants;
* :mod:`.calibrate`: ``CalibrateArguments``;
* :mod:`.run`: ``RunDirArguments``, ``ScoreArguments`` (``warmup``, ``score``).
"""
