"""The ``rubric-rl`` command: parse arguments, call one function. No logic lives here."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

USAGE = """usage: rubric-rl COMMAND [--config FILE.yaml] [--field value ...]

Train rubric generators with RL, rewarded by the influence of their synthetic data on a target model.

commands:
  train            RL-train a rubric generator (TRL GRPO), then export it          (rubric-rl train --help)
  export           write a trained run's rubric generator as a standalone model    (rubric-rl export --help)
  warmup           warm up the target model (LoRA + Adam checkpoints) for influence (rubric-rl warmup --help)
  score            score an SFT dataset by influence on the validation set         (rubric-rl score --help)
  synthesize       write a synthetic dataset with a rubric source and a teacher    (rubric-rl synthesize --help)
  serve-teacher    serve a local HF model as an OpenAI-compatible teacher endpoint (rubric-rl serve-teacher --help)
  serve-influence  serve the influence scorer over HTTP for train's reward_influence_url (rubric-rl serve-influence --help)
  evaluate         synthesize with each rubric source, fine-tune the target, score held-out data (rubric-rl evaluate --help)
  calibrate        does the reward predict the gain? influence vs held-out gain over sources x seeds (rubric-rl calibrate --help)
  closed-loop      student-guided synthesis in rounds, per selection rule, vs static generation (rubric-rl closed-loop --help)

Every command but export and serve-teacher takes --config FILE.yaml, a YAML file of flat fields (see configs/);
flags override it. `rubric-rl COMMAND --help` lists the options by stage; `rubric-rl train --help-all` adds the
fields train inherits from TRL's GRPOConfig (transformers' TrainingArguments).
A user error is one line on stderr and exit status 2 (an unavailable teacher or influence service: 3); --debug (or
RUBRIC_RL_DEBUG=1) shows the traceback instead.
"""


def _setup_logging():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=os.environ.get("RUBRIC_RL_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_train(argv):
    from .config import parse_config, train_dataclasses

    args, grpo_args, teacher_cfg, influence_cfg = parse_config(  # TRL (and torch) load only past --help
        train_dataclasses(lazy=True), argv, prog="rubric-rl train",
        description="RL-train a rubric generator: policy rollouts -> teacher samples -> influence reward -> GRPO. "
                    "Ends by exporting the generator to OUTPUT_DIR/export.")
    from .preflight import check_train
    from .train import format_summary, train

    check_train(args, grpo_args, teacher_cfg, influence_cfg)
    summary = train(args, grpo_args, teacher_cfg, influence_cfg)
    if summary.get("export_dir"):  # the main process
        print(format_summary(summary))
        if args.evaluate_config:
            from .configs.evaluate import parse_sources
            from .wandb_log import log_artifact, log_evaluation

            others = ", ".join(parse_sources(args.evaluate_sources or [])) or "nothing"
            print(f"\nDownstream evaluation ({args.evaluate_config}): trained generator vs {others}", flush=True)
            # the evaluation judges the reward this run trained on: its teacher and influence settings are the run's
            eval_dir = Path(summary["output_dir"]) / "eval"
            report = cmd_evaluate(["--config", args.evaluate_config,
                                   "--sources", f"trained={summary['export_dir']}", *(args.evaluate_sources or []),
                                   "--output", str(eval_dir)],
                                  teacher_cfg=teacher_cfg, influence_cfg=influence_cfg)
            if report is not None:  # with report_to wandb: the report in the run (no-ops without a W&B run)
                log_evaluation(report, eval_dir, summary.get("global_step"))
                log_artifact(eval_dir, "evaluation", files=["report.json", "report.md", *report.get("plots", [])],
                             metadata={"ranking": report.get("ranking"), "primary_metric": report["primary_metric"]})
            from .evaluate.distribution import compare_with_distribution

            # the committed distribution over training seeds (reports/quickstart/), when made with these settings
            line = compare_with_distribution(summary["output_dir"], report)
            if line:
                print("\n" + line, flush=True)
    from .wandb_log import finish

    finish()


def cmd_export(argv):
    p = argparse.ArgumentParser(prog="rubric-rl export", description="Write a standalone rubric generator "
                                "(merged safetensors weights, tokenizer, generation config, model card).")
    p.add_argument("--run", required=True, help="OUTPUT_DIR of a `rubric-rl train` run.")
    p.add_argument("--output", required=True, help="Folder to write the rubric generator to.")
    p.add_argument("--push_to_hub", default=None, metavar="REPO",
                   help="Also upload to this Hugging Face Hub repo (token from HF_TOKEN or `hf auth login`).")
    p.add_argument("--public", action="store_true", help="Create the hub repo public (default: private).")
    p.add_argument("--num_examples", type=int, default=3, help="Rubrics sampled into the model card.")
    a = p.parse_args(argv)
    from .export import export_run

    out = export_run(a.run, a.output, push_to_hub=a.push_to_hub, private=not a.public, num_examples=a.num_examples)
    print(f"Exported rubric generator: {out}")


def cmd_warmup(argv):
    from .config import RunDirArguments, parse_config
    from .configs.influence import InfluenceConfig

    run, cfg = parse_config((RunDirArguments, InfluenceConfig), argv, prog="rubric-rl warmup",
                            description="Warm up the target (LoRA + Adam) and keep HF Trainer checkpoints with "
                                        "optimizer state in OUTPUT_DIR/warmup.", shared_config=True)
    from .influence import run_warmup
    from .preflight import check_warmup

    check_warmup(run, cfg)
    path = run_warmup(cfg, run.output_dir)
    print(f"Warm-up checkpoints: {path}")


def cmd_score(argv):
    from .config import RunDirArguments, ScoreArguments, parse_config
    from .configs.influence import InfluenceConfig

    run, sa, cfg = parse_config((RunDirArguments, ScoreArguments, InfluenceConfig), argv, prog="rubric-rl score",
                                description="Score chat-format samples by their influence on the validation set "
                                            "(uses OUTPUT_DIR/warmup, running it first if missing).",
                                shared_config=True)
    from .influence import score_file
    from .preflight import check_score

    check_score(run, sa, cfg)
    from .influence.selection import merge_file
    from .influence.shards import launch_device, launched, resolve

    num_shards, shard_index = resolve(sa.num_shards, sa.shard_index, sa.merge)
    if sa.merge:
        summary = merge_file(cfg, sa.samples, sa.output, num_shards, select_top=sa.select_top,
                             selected_path=sa.selected, chunk_size=sa.chunk_size)
    else:
        summary = score_file(cfg, run.output_dir, sa.samples, sa.output, select_top=sa.select_top,
                             selected_path=sa.selected, chunk_size=sa.chunk_size, num_shards=num_shards,
                             shard_index=shard_index, device=launch_device(cfg))
    if summary.get("merged", True) or launched() is None:  # under a launcher: the process that merged
        print(json.dumps(summary, indent=1, default=str))


def cmd_synthesize(argv):
    from .config import SynthArguments, parse_config
    from .configs.synth import SynthConfig
    from .configs.teacher import TeacherConfig
    from .synth.commands import nothing_accepted_message, synthesize

    sa, synth_cfg, teacher_cfg = parse_config((SynthArguments, SynthConfig, TeacherConfig), argv,
                                              prog="rubric-rl synthesize",
                                              description="Write a synthetic SFT dataset from documents with a "
                                                          "rubric source and a teacher.", shared_config=True)
    from .preflight import check_synthesize

    check_synthesize(sa, synth_cfg, teacher_cfg)
    summary = synthesize(synth_cfg, teacher_cfg, rubric_source=sa.rubric_source, documents=sa.documents,
                         output=sa.output, num_samples=sa.num_samples,
                         command_line=shlex.join(["rubric-rl", "synthesize", *argv]))
    print(json.dumps(summary, indent=1, default=str))
    message = nothing_accepted_message(summary)
    if message:
        from .errors import EXIT_NOTHING_PRODUCED

        print(f"rubric-rl synthesize: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_NOTHING_PRODUCED)


def cmd_serve_teacher(argv):
    from .teachers.server import main as serve_main

    serve_main(argv)


def cmd_serve_influence(argv):
    from .config import RunDirArguments, ServeInfluenceArguments, parse_config
    from .configs.influence import InfluenceConfig

    run, sa, cfg = parse_config(
        (RunDirArguments, ServeInfluenceArguments, InfluenceConfig), argv, prog="rubric-rl serve-influence",
        description="Serve the influence scorer over HTTP (POST /v1/score, GET /health, GET /metrics) for `rubric-rl "
                    "train --reward_influence_url URL`: the target, its warm-up (OUTPUT_DIR/warmup, run first if "
                    "missing) and the validation gradients (OUTPUT_DIR/influence_cache) are loaded once, one worker "
                    "per device, concurrent requests micro-batched, a full queue answered 429 with Retry-After. Give "
                    "it the training run's --config: its scores then equal the in-process reward's.",
        shared_config=True)
    from .influence.server import serve
    from .preflight import check_serve_influence

    check_serve_influence(run, sa, cfg)
    serve(cfg, run.output_dir, sa)


def cmd_evaluate(argv: list[str] | None = None, *, teacher_cfg=None, influence_cfg=None) -> dict:
    """``rubric-rl evaluate`` (the argv after the subcommand): parse, run, print the table; returns the report.

    ``teacher_cfg`` / ``influence_cfg`` (``train`` passes its own) replace what the config file says; a field
    the file sets differently is named in a warning."""
    from .config import merge_repeated, parse_config
    from .configs.evaluate import EvalArguments, EvalConfig, parse_sources
    from .configs.influence import InfluenceConfig
    from .configs.teacher import TeacherConfig

    argv = merge_repeated(list(sys.argv[1:] if argv is None else argv))
    ea, cfg, file_teacher, file_influence = parse_config(
        (EvalArguments, EvalConfig, TeacherConfig, InfluenceConfig), argv, prog="rubric-rl evaluate",
        description="Compare rubric sources downstream: synthesize with each, fine-tune the target, score the "
                    "held-out test set (loss, multiple-choice acc/acc_norm), with influence, validity, diversity, "
                    "several seeds. Writes report.json, report.md and plots to --output.", shared_config=True)
    teacher_cfg = _given_over_file(teacher_cfg, file_teacher)
    influence_cfg = _given_over_file(influence_cfg, file_influence)
    from .evaluate.report import format_number, format_paired, format_table
    from .evaluate.run import evaluate  # looked up at call time, so tests can stand in for the run
    from .preflight import check_evaluate

    check_evaluate(ea, cfg, teacher_cfg, influence_cfg)
    report = evaluate(cfg, teacher_cfg, influence_cfg, parse_sources(ea.sources), ea.output)
    print(format_table(report))
    print("\n" + format_paired(report))
    c = report["correlation"][f"influence_vs_{report['primary_metric']}_gain"]
    print(f"\nPearson r (mean influence vs {report['primary_metric']} gain, n={c['n']}): {format_number(c['pearson_r'])}")
    print(f"Report: {Path(ea.output) / 'report.md'} ({report['timing']['total_s']:.0f} s)")
    return report


def _given_over_file(given, parsed):
    """``given`` (the training run's settings) when there is one, else ``parsed``; warns about each field the
    evaluation's config file set to another value."""
    if given is None:
        return parsed
    from dataclasses import fields

    differ = [f"{f.name}={getattr(parsed, f.name)!r} (the run's: {getattr(given, f.name)!r})" for f in fields(given)
              if getattr(parsed, f.name) != getattr(given, f.name)]
    if differ:
        logging.getLogger("rubric_rl").warning("evaluate_config sets %s; the evaluation uses the training run's "
                                               "values", ", ".join(differ))
    return given


def cmd_calibrate(argv):
    from .calibrate import cmd_calibrate as run

    run(argv)


def cmd_closed_loop(argv):
    from .config import parse_config
    from .configs.closed_loop import ClosedLoopArguments, ClosedLoopConfig
    from .configs.evaluate import EvalConfig
    from .configs.influence import InfluenceConfig
    from .configs.teacher import TeacherConfig

    argv = list(argv)
    la, loop_cfg, eval_cfg, teacher_cfg, influence_cfg = parse_config(
        (ClosedLoopArguments, ClosedLoopConfig, EvalConfig, TeacherConfig, InfluenceConfig), argv,
        prog="rubric-rl closed-loop",
        description="Closed-loop synthesis (arXiv:2512.00884): per round the current student scores the seed "
                    "questions, a selection rule picks seeds, the teacher writes one sample per picked seed, a fresh "
                    "target is fine-tuned on all samples so far. One loop per rule and seed; resumable; writes "
                    "report.json, report.md and budget_curve.png to --output. Fine-tuning and held-out settings are "
                    "the evaluation's eval_* fields.", shared_config=True)
    from .loop import closed_loop
    from .loop.report import format_paired, format_table
    from .preflight import check_closed_loop

    check_closed_loop(loop_cfg, eval_cfg, teacher_cfg, influence_cfg)
    report = closed_loop(loop_cfg, eval_cfg, teacher_cfg, influence_cfg, la.output, argv=argv)
    print(format_table(report))
    print("\n" + format_paired(report))
    print(f"Report: {Path(la.output) / 'report.md'} ({report['seconds']:.0f} s)")
    return report


COMMANDS = {
    "train": cmd_train,
    "export": cmd_export,
    "warmup": cmd_warmup,
    "score": cmd_score,
    "synthesize": cmd_synthesize,
    "serve-teacher": cmd_serve_teacher,
    "serve-influence": cmd_serve_influence,
    "evaluate": cmd_evaluate,
    "calibrate": cmd_calibrate,
    "closed-loop": cmd_closed_loop,
}


def _quiet_warnings() -> None:
    """Warnings a user can do nothing about: transformers' rename of gradient_checkpointing (TRL passes the
    old name), and runpy's note when ``python -m rubric_rl.cli`` is used under accelerate launch."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*found in sys.modules after import of package", category=RuntimeWarning)


def main(argv: list[str] | None = None) -> None:
    _quiet_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"rubric-rl {__version__}")
        return
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"rubric-rl: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    previous = os.environ.get("RUBRIC_RL_DEBUG")
    if "--debug" in argv[1:]:  # show tracebacks (as RUBRIC_RL_DEBUG=1 does), for this command only
        argv = [a for a in argv if a != "--debug"]
        os.environ["RUBRIC_RL_DEBUG"] = "1"
    _setup_logging()
    try:
        run_command(argv[0], command, argv[1:])
    finally:
        if previous is None:
            os.environ.pop("RUBRIC_RL_DEBUG", None)
        else:
            os.environ["RUBRIC_RL_DEBUG"] = previous


def run_command(name: str, command, argv: list[str]) -> None:
    """Run one subcommand; user errors and an unavailable teacher or influence service become one line on stderr
    and an exit code (2: user error, 3: teacher or influence service unavailable, 1: nothing produced, 4: disk
    full), unless --debug / RUBRIC_RL_DEBUG=1."""
    from .errors import (EXIT_DISK_FULL, EXIT_NOTHING_PRODUCED, EXIT_SERVICE_UNAVAILABLE, EXIT_USER_ERROR,
                         InfluenceUnavailable, TrainingStalled, UserError, debug_enabled, is_disk_full, one_line)
    from .teachers.base import TeacherUnavailable

    try:
        command(argv)
    except UserError as err:
        if debug_enabled():
            raise
        print(f"rubric-rl {name}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except (TeacherUnavailable, InfluenceUnavailable) as err:
        if debug_enabled():
            raise
        print(f"rubric-rl {name}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_SERVICE_UNAVAILABLE) from None
    except TrainingStalled as err:
        if debug_enabled():
            raise
        print(f"rubric-rl {name}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_NOTHING_PRODUCED) from None
    except OSError as err:
        if debug_enabled() or not is_disk_full(err):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(f"rubric-rl {name}: error: disk full{where} ({one_line(err.strerror or err)}); what was written up to "
              "the last checkpoint is kept: free space and rerun the same command to resume", file=sys.stderr)
        raise SystemExit(EXIT_DISK_FULL) from None


if __name__ == "__main__":
    main()
