"""``rubric-rl evaluate``: parse the argv, check the inputs, run :func:`rubric_rl.evaluate.run.evaluate`, print
the table."""

from __future__ import annotations

import sys
from pathlib import Path

from .config import EvalArguments, EvalConfig, parse_sources
from .report import _fmt, format_paired, format_table


def _merge_repeated(argv: list[str], flag: str = "--sources") -> list[str]:
    """``--sources a=x --sources b=y c=z`` -> ``--sources a=x b=y c=z`` (argparse keeps only the last)."""
    values, rest, found = [], [], False
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == flag:
            found = True
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            continue
        if tok.startswith(flag + "="):
            found = True
            values.append(tok[len(flag) + 1:])
        else:
            rest.append(tok)
        i += 1
    return rest + ([flag, *values] if found else [])


def cmd_evaluate(argv: list[str] | None = None) -> dict:
    """``rubric-rl evaluate`` (the argv after the subcommand): parse, run, print the table."""
    from ..config import parse_config
    from ..influence.config import InfluenceConfig
    from ..teachers.config import TeacherConfig

    argv = _merge_repeated(list(sys.argv[1:] if argv is None else argv))
    ea, cfg, teacher_cfg, influence_cfg = parse_config(
        (EvalArguments, EvalConfig, TeacherConfig, InfluenceConfig), argv, prog="rubric-rl evaluate",
        description="Compare rubric sources downstream: synthesize with each, fine-tune the target, score the "
                    "held-out test set (loss, multiple-choice acc/acc_norm), with influence, validity, diversity, "
                    "several seeds. Writes report.json, report.md and plots to --output.", shared_config=True)
    from ..preflight import check_evaluate
    from .run import evaluate  # looked up at call time, so tests can stand in for the run

    check_evaluate(ea, cfg, teacher_cfg, influence_cfg)
    report = evaluate(cfg, teacher_cfg, influence_cfg, parse_sources(ea.sources), ea.output)
    print(format_table(report))
    print("\n" + format_paired(report))
    c = report["correlation"][f"influence_vs_{report['primary_metric']}_gain"]
    print(f"\nPearson r (mean influence vs {report['primary_metric']} gain, n={c['n']}): {_fmt(c['pearson_r'])}")
    print(f"Report: {Path(ea.output) / 'report.md'} ({report['timing']['total_s']:.0f} s)")
    return report
