#!/usr/bin/env python
"""Downstream evaluation of a quickstart run: the trained rubric generator vs the seed rubrics vs no rubric.

    python scripts/quickstart_eval.py --run runs/quickstart [--output runs/quickstart/eval] [-- extra flags]

Same as

    rubric-rl evaluate --config configs/evaluate_quickstart.yaml \\
        --sources trained=RUN/export seed=data/quickstart/seed_rubrics.json none=none --output RUN/eval

(3 sources x 3 seeds, 240 samples each, tiny target; about 3 minutes on a 2-core CPU). Prints the table
of report.md; the full report, plots and datasets are in the output folder. Extra flags after ``--`` go
to ``rubric-rl evaluate`` (e.g. ``-- --eval_seeds 0 1 --eval_epochs 20``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/quickstart", help="Run folder of `rubric-rl train` (its export/ is used).")
    ap.add_argument("--export", default=None, help="Exported generator folder (default: RUN/export).")
    ap.add_argument("--output", default=None, help="Report folder (default: RUN/eval).")
    ap.add_argument("--config", default=str(ROOT / "configs" / "evaluate_quickstart.yaml"))
    a = ap.parse_args(argv)
    export = Path(a.export or Path(a.run) / "export")
    if not (export / "config.json").exists():
        ap.error(f"{export} is not an exported rubric generator; train one first: "
                 f"rubric-rl train --config configs/quickstart.yaml --output_dir {a.run}")
    output = a.output or str(Path(a.run) / "eval")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=os.environ.get("RUBRIC_RL_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.chdir(ROOT)  # the config names data/quickstart/... relative to the repository
    from rubric_rl.commands.evaluate import from_argv as cmd_evaluate

    t0 = time.perf_counter()
    report = cmd_evaluate(["--config", a.config,
                           "--sources", f"trained={export.resolve()}", "seed=data/quickstart/seed_rubrics.json",
                           "none=none", "--output", output, *extra])
    primary = report["primary_metric"]
    p = report["paired"]
    print(f"\ntrained beats seed on test {primary} in {p['trained>seed']['wins']}/{p['trained>seed']['seeds']} "
          f"seeds, none in {p['trained>none']['wins']}/{p['trained>none']['seeds']} "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
