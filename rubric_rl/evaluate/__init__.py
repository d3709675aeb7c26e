"""``rubric-rl evaluate``: the downstream proof that a rubric source's data helps the target.

::

    rubric-rl evaluate --config configs/evaluate_quickstart.yaml \\
        --sources trained=runs/X/export seed=data/quickstart/seed_rubrics.json none=none --output REPORT_DIR

For every source (an exported rubric generator, a rubrics JSON file, or ``none``) and every seed in
``eval_seeds``, with the same documents, teacher, budget and teacher seeds for all sources:

1. synthesize ``eval_num_samples`` accepted samples (at most ``eval_max_queries_per_sample`` items per
   sample are tried; an item is one rubric + one teacher query, an unparseable generated rubric is an
   item that fails) -- the dataset's validity rate, size in tokens and diversity (distinct n-grams) are
   recorded;
2. score the dataset's mean influence on the validation set (the same estimator as the RL reward;
   warm-up in ``eval_influence_run_dir``, default ``REPORT_DIR/influence``);
3. fine-tune a fresh copy of the target on it (``eval_finetune``: full or LoRA);
4. measure the target on the held-out test set: loss on the answer tokens, and where items are multiple
   choice, acc / acc_norm by answer log-likelihood (:mod:`rubric_rl.mcscore`).

Outputs in REPORT_DIR: ``report.json`` (every number), ``report.md`` (tables), ``heldout.png`` (held-out
metrics per source, mean +- std over seeds, seeds as dots, the untrained target as a dashed line),
``influence_vs_gain.png`` (the Pearson r between a dataset's mean influence and its held-out gain over
the (source, seed) datasets), ``reward_curve_<source>.png`` for generator sources whose export names its
run (``rubric_rl_export.json`` -> ``run_dir`` -> ``metrics.jsonl``), and ``datasets/<source>/seed<k>.jsonl``.

The package, one step a module: :mod:`.synthesis` (sources, the synthesis plan, dataset statistics),
:mod:`.finetuning` (the AdamW loop), :mod:`.heldout` (held-out scoring), :mod:`.stats` (summaries,
correlation), :mod:`.report` (report dict, markdown), :mod:`.plots` and :mod:`.run` (:func:`evaluate`). The
configuration (``EvalConfig``, ``EvalArguments``, ``parse_sources``) is :mod:`rubric_rl.configs.evaluate`;
the command (``cmd_evaluate``: parse, pre-flight, run, print) is in :mod:`rubric_rl.cli`. This module
re-exports the names other modules and the tests use.
"""

from ..configs.evaluate import (FINETUNE_MODES, LOWER_IS_BETTER, PRIMARY_METRICS, REPORT_FORMAT, SCHEDULERS,
                                EvalArguments, EvalConfig, parse_sources)
from .finetuning import finetune, load_target
from .heldout import heldout_metrics
from .plots import write_plots
from .report import build_report, format_markdown, format_paired, format_table, reward_curve
from .run import evaluate
from .stats import correlation
from .synthesis import Source, dataset_stats, distinct_n, resolve_source, synthesize_dataset

__all__ = ["FINETUNE_MODES", "LOWER_IS_BETTER", "PRIMARY_METRICS", "REPORT_FORMAT", "SCHEDULERS", "EvalArguments",
           "EvalConfig", "Source", "build_report", "correlation", "dataset_stats",
           "distinct_n", "evaluate", "finetune", "format_markdown", "format_paired", "format_table",
           "heldout_metrics", "load_target", "parse_sources", "resolve_source", "reward_curve",
           "synthesize_dataset", "write_plots"]
