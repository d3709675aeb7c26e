"""``rubric-rl train``: RL-train a rubric generator (TRL GRPO), export it, then (``evaluate_config``) evaluate it."""

from __future__ import annotations

from pathlib import Path

from ..config import CommandParser, train_dataclasses


def make_parser() -> CommandParser:
    return CommandParser(  # TRL (and torch) load only past --help: GRPOConfig is named, not imported
        "train", train_dataclasses(lazy=True), shared_config=False,
        description="RL-train a rubric generator: policy rollouts -> teacher samples -> influence reward -> GRPO. "
                    "Ends by exporting the generator to OUTPUT_DIR/export.")


def run(args) -> int:
    rl_args, grpo_args, teacher_cfg, influence_cfg = args
    from ..preflight import check_train
    from ..train import format_summary, train
    from ..wandb_log import finish

    check_train(rl_args, grpo_args, teacher_cfg, influence_cfg)
    summary = train(rl_args, grpo_args, teacher_cfg, influence_cfg, getattr(args, "argv", None))  # argv: see train
    if summary.get("export_dir"):  # the main process
        print(format_summary(summary))
        if rl_args.evaluate_config:
            evaluate_the_export(rl_args, summary, teacher_cfg, influence_cfg)
    finish()
    return 0


def evaluate_the_export(rl_args, summary: dict, teacher_cfg, influence_cfg) -> None:
    """The closing evaluation (``evaluate_config``): the exported generator against ``evaluate_sources``, judged with
    the run's own teacher and influence settings; with W&B, the report in the run; then the closing lines against
    the committed distribution over training seeds, when it was made with these settings."""
    from ..configs.evaluate import parse_sources
    from ..evaluate.distribution import compare_with_distribution
    from ..wandb_log import log_artifact, log_evaluation
    from . import evaluate as evaluate_command  # its from_argv looked up at call time (tests stand in for it)

    others = ", ".join(parse_sources(rl_args.evaluate_sources or [])) or "nothing"
    print(f"\nDownstream evaluation ({rl_args.evaluate_config}): trained generator vs {others}", flush=True)
    from ..config import read_config_file

    eval_dir = Path(summary["output_dir"]) / "eval"
    # The influence of the evaluated datasets comes from this run's own warm-up and validation gradients (the
    # same settings: the evaluation uses the run's), not from a second warm-up in eval/influence; an
    # eval_influence_run_dir the evaluation's config names wins.
    reuse = [] if "eval_influence_run_dir" in read_config_file(rl_args.evaluate_config)[0] else [
        "--eval_influence_run_dir", str(summary["output_dir"])]
    report = evaluate_command.from_argv(["--config", rl_args.evaluate_config,
                                         "--sources", f"trained={summary['export_dir']}",
                                         *(rl_args.evaluate_sources or []), "--output", str(eval_dir), *reuse],
                                        teacher_cfg=teacher_cfg, influence_cfg=influence_cfg)
    if report is not None:  # with report_to wandb: the report in the run (no-ops without a W&B run)
        log_evaluation(report, eval_dir, summary.get("global_step"))
        log_artifact(eval_dir, "evaluation", files=["report.json", "report.md", *report.get("plots", [])],
                     metadata={"ranking": report.get("ranking"), "primary_metric": report["primary_metric"]})
    line = compare_with_distribution(summary["output_dir"], report)
    if line:
        print("\n" + line, flush=True)
