"""``rubric-rl synthesize``: a synthetic SFT dataset from documents, a rubric source and a teacher."""

from __future__ import annotations

import json
import shlex
import sys

from ..config import CommandParser
from ..configs.synth import SynthArguments, SynthConfig
from ..configs.teacher import TeacherConfig


def make_parser() -> CommandParser:
    return CommandParser("synthesize", (SynthArguments, SynthConfig, TeacherConfig),
                         description="Write a synthetic SFT dataset from documents with a rubric source and a "
                                     "teacher.")


def run(args) -> int:
    sa, synth_cfg, teacher_cfg = args
    from ..errors import EXIT_NOTHING_PRODUCED
    from ..preflight import check_synthesize
    from ..synth.commands import nothing_accepted_message, synthesize

    check_synthesize(sa, synth_cfg, teacher_cfg)
    summary = synthesize(synth_cfg, teacher_cfg, rubric_source=sa.rubric_source, documents=sa.documents,
                         output=sa.output, num_samples=sa.num_samples,
                         command_line=shlex.join(["rubric-rl", "synthesize", *args.argv]))
    print(json.dumps(summary, indent=1, default=str))
    message = nothing_accepted_message(summary)
    if message:
        print(f"rubric-rl synthesize: error: {message}", file=sys.stderr)
        return EXIT_NOTHING_PRODUCED
    return 0
