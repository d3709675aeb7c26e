"""Held-out scoring through lm-evaluation-harness (the optional ``eval`` extra): any harness task, run on the
in-memory target beside rubric-rl's own scorer.

``eval_lm_eval_tasks`` names the tasks: installed ones (what ``lm_eval --tasks`` takes), those of the
``eval_lm_eval_include_path`` folders (``lm_eval --include_path``), and :data:`HELDOUT_TASK`, rubric-rl's held-out
test set as a harness task (``rubric_rl/assets/lm_eval_tasks/rubric_rl_heldout.yaml``, its ``data_files`` pointed at
``eval_test_data`` here). The model and tokenizer are the evaluation's own, passed as they are
(``HFLM(pretrained=model, tokenizer=tokenizer)``): nothing is loaded from the hub but the datasets an installed task
downloads. The harness's numbers go to ``heldout["lm_eval"]``; :mod:`rubric_rl.mcscore` stays the scorer of the
evaluation's acc / acc_norm: it runs each item's context once for all its choices (the harness runs every
(context, choice) pair in full; ``scripts/bench_mcscore_vs_harness.py`` times both on the same items).

What the two scorers see on ``rubric_rl_heldout`` with ``apply_chat_template`` (the default): the same context, the
chat prompt with the assistant header (rubric-rl's ``eval_mc_context=prompt`` mode), and the same choice texts as
continuations. One difference in tokenisation: the harness moves *all* trailing whitespace of a context to the
continuation, so the chat template's closing newline (``<|assistant|>\\n``) is scored with every choice; rubric-rl
moves only spaces and tabs and leaves the template's own newline in the context. Every choice of an item therefore
gets the same extra term, log p(newline | prompt): ``acc`` is identical, and ``acc_norm`` (each score divided by the
choice's length in characters) is the harness's rule applied to the shifted scores, which can pick another choice
when that term is large (an untrained model). ``tests/test_lm_eval_harness.py`` checks all three on the same items;
notes/evaluate.md has the numbers.

The harness's global seeding is off (``random_seed=None`` and the numpy and torch ones): the evaluation's own seeds
decide everything after a call as before it. lm_eval is imported only here, inside the functions.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

from ..configs.evaluate import HELDOUT_TASK, EvalConfig
from ..errors import UserError, did_you_mean, import_extra

# stderr of metrics without a closed form (a task's f1, bleu...): bootstrap draws (the harness's default, 100000, is slow)
BOOTSTRAP_ITERS = 1000


def tasks_dir() -> Path:
    """rubric-rl's harness tasks (package data)."""
    return Path(__file__).resolve().parents[1] / "assets" / "lm_eval_tasks"


def include_paths(extra=()) -> tuple[str, ...]:
    return (str(tasks_dir()), *(str(p) for p in extra))


@functools.lru_cache(maxsize=4)
def _task_manager(paths: tuple[str, ...], with_installed: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=with_installed)


def task_manager(names, paths: tuple[str, ...]):
    """A harness ``TaskManager`` that knows every name in ``names`` (a task, group or tag name, or a task YAML's
    path): the ``paths`` folders alone when they hold them all (indexing the ~200 folders of installed tasks takes
    seconds), else with the installed tasks. Built once per process and set of folders. Unknown names: one
    :class:`UserError` naming each."""
    known = _task_manager(paths, False).all_tasks
    if all(n in known or Path(n).is_file() for n in names):
        return _task_manager(paths, False)
    tm = _task_manager(paths, True)
    unknown = [n for n in names if n not in tm.all_tasks and not Path(n).is_file()]
    if unknown:
        listed = ", ".join(f"{n!r}{did_you_mean(n, tm.all_tasks)}" for n in unknown)
        raise UserError(f"eval_lm_eval_tasks: {listed}: no such lm-evaluation-harness task (installed tasks, the "
                        f"folders of eval_lm_eval_include_path, or {HELDOUT_TASK!r})")
    return tm


def check_tasks(cfg: EvalConfig) -> None:
    """Preflight: the ``eval`` extra is installed and every ``eval_lm_eval_tasks`` name is a task the harness knows
    (nothing to check when the list is empty)."""
    if not cfg.eval_lm_eval_tasks:
        return
    import_extra("eval_lm_eval_tasks", "eval")
    for path in cfg.eval_lm_eval_include_path:
        if not Path(path).is_dir():
            raise UserError(f"eval_lm_eval_include_path: {path} is not a folder")
    task_manager(cfg.eval_lm_eval_tasks, include_paths(cfg.eval_lm_eval_include_path))


def task_specs(names, test_data: str | None) -> list:
    """What ``simple_evaluate`` gets for ``names``: each name as it is, except :data:`HELDOUT_TASK`, which becomes
    its YAML's config with ``data_files`` = ``test_data`` (absolute) and the datasets cache in rubric-rl's."""
    import yaml

    from ..models import cache_dir

    specs: list = []
    for name in names:
        if name == HELDOUT_TASK and test_data:
            spec = yaml.safe_load((tasks_dir() / f"{HELDOUT_TASK}.yaml").read_text(encoding="utf-8"))
            spec["dataset_kwargs"] = {**spec.get("dataset_kwargs", {}),
                                      "data_files": {spec["test_split"]: str(Path(test_data).resolve())},
                                      "cache_dir": str(cache_dir() / "datasets")}
            specs.append(spec)
        else:
            specs.append(name)
    return specs


def run_harness(model, tokenizer, tasks, *, test_data: str | None = None, include_path=(),
                limit: int | None = EvalConfig.eval_lm_eval_limit, num_fewshot: int = EvalConfig.eval_lm_eval_num_fewshot,
                batch_size: int = EvalConfig.eval_score_batch_size, max_length: int | None = None,
                apply_chat_template: bool = EvalConfig.eval_lm_eval_apply_chat_template,
                log_samples: bool = False) -> dict:
    """``lm_eval.simple_evaluate`` of the in-memory ``model`` on ``tasks`` (names, see the module docstring); the
    harness's result dict as it returns it (``results``, ``n-samples``, with ``log_samples`` the ``samples``)."""
    import_extra("lm-evaluation-harness scoring (eval_lm_eval_tasks)", "eval")
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    tm = task_manager(tasks, include_paths(include_path))
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # not its per-call notes (a model object as `pretrained`, num_fewshot set)
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
        return lm_eval.simple_evaluate(
            model=lm, tasks=task_specs(tasks, test_data), task_manager=tm, num_fewshot=num_fewshot, limit=limit,
            apply_chat_template=apply_chat_template, log_samples=log_samples, bootstrap_iters=BOOTSTRAP_ITERS,
            random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    finally:
        quiet.setLevel(level)


def summarize(result: dict) -> dict:
    """``{task: {metric: value, ..., "n": documents scored}}`` from a harness result: each ``"metric,filter"`` key
    as ``metric`` for the ``none`` filter (as named otherwise); stderr values the harness could not compute
    (``"N/A"``) are left out."""
    out = {}
    for task, row in result["results"].items():
        metrics = {}
        for key, value in row.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            metrics[metric if filt == "none" else key] = float(value)
        metrics["n"] = (result.get("n-samples") or {}).get(task, {}).get("effective")
        out[task] = metrics
    return out


def harness_metrics(model, tokenizer, cfg: EvalConfig) -> dict:
    """``{"lm_eval": summarize(...), "lm_eval_s": seconds}`` of ``model`` on ``eval_lm_eval_tasks`` (``{}`` when
    there are none), with the evaluation's batch size and length limit."""
    if not cfg.eval_lm_eval_tasks:
        return {}
    t0 = time.perf_counter()
    result = run_harness(model, tokenizer, cfg.eval_lm_eval_tasks, test_data=cfg.eval_test_data,
                         include_path=cfg.eval_lm_eval_include_path, limit=cfg.eval_lm_eval_limit,
                         num_fewshot=cfg.eval_lm_eval_num_fewshot, batch_size=cfg.eval_score_batch_size,
                         max_length=cfg.eval_max_length, apply_chat_template=cfg.eval_lm_eval_apply_chat_template)
    return {"lm_eval": summarize(result), "lm_eval_s": round(time.perf_counter() - t0, 3)}
