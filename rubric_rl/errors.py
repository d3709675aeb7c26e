"""Errors the command line reports as one line, without a traceback.

* :class:`UserError`: the user can fix it (a bad config, a missing or malformed file, a run folder that
  would be overwritten...). ``rubric-rl`` prints ``rubric-rl COMMAND: error: MESSAGE`` on stderr and exits 2.
* :class:`TeacherUnavailable` (in :mod:`rubric_rl.teachers.base`): the teacher's infrastructure is down;
  exit 3.
* :class:`InfluenceUnavailable`: the influence service (``train``'s ``reward_influence_url``, ``rubric-rl
  serve-influence``) failed for infrastructure reasons on too many requests of a window; exit 3 as well.
* :class:`TrainingStalled`: RL cannot learn from what it gets (pre-flight: no sampled rubric parses; during
  training: nothing scorable or no reward spread for ``stall_steps``); exit 1, nothing exported.
* :class:`MissingExtra` (a :class:`UserError`, and an ``ImportError``): an optional dependency (one of the pip
  extras in :data:`EXTRAS`) is not installed; exit 2, the one line says what to install, for a clone
  (``pip install -e '.[serve]'``) and for the package (``pip install 'rubric-rl[serve]'``).
* A full disk (``OSError`` ENOSPC / EDQUOT while writing): exit 4, one line naming the file. Every writer
  checkpoints data before the state that points at it, so rerunning the same command resumes from the last
  checkpoint once space is freed.

``--debug`` (anywhere on the command line) or ``RUBRIC_RL_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import difflib
import os

EXIT_USER_ERROR = 2
EXIT_TEACHER_UNAVAILABLE = 3
EXIT_SERVICE_UNAVAILABLE = EXIT_TEACHER_UNAVAILABLE  # a service the run depends on: the teacher or influence
EXIT_NOTHING_PRODUCED = 1
EXIT_DISK_FULL = 4

# pyproject.toml's optional dependencies: extra -> the modules it provides (tests/test_user_errors.py checks them)
EXTRAS = {"serve": ("fastapi", "uvicorn"), "vllm": ("vllm",), "gguf": ("gguf",), "eval": ("lm_eval",)}


def is_disk_full(err: BaseException) -> bool:
    import errno

    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class UserError(ValueError):
    """A mistake in the user's input; the message (one line) says what and where."""


class DataFileError(UserError):
    """A data file that cannot be used; the message names the file (and line)."""


class MissingExtra(UserError, ImportError):
    """An optional dependency is not installed; the message says which extra to install, and how."""


def install_hint(extra: str) -> str:
    return f"pip install -e '.[{extra}]' in a clone of rubric-rl, or pip install 'rubric-rl[{extra}]'"


def missing_extra(what: str, extra: str, cause: BaseException | str | None = None, advice: str = "") -> MissingExtra:
    """``WHAT needs the optional 'EXTRA' extra (its packages), which is not installed (CAUSE): pip install ...``."""
    why = f" ({one_line(cause)})" if cause else ""
    return MissingExtra(f"{what} needs the optional '{extra}' extra ({', '.join(EXTRAS[extra])}), which is not "
                        f"installed{why}: {install_hint(extra)}" + (f". {advice}" if advice else ""))


def import_extra(what: str, extra: str) -> tuple:
    """The modules of ``extra`` (``EXTRAS[extra]``, in order), imported; else :func:`missing_extra` for ``what`` (the
    command that needs them), with the import error as the cause."""
    import importlib

    try:
        return tuple(importlib.import_module(m) for m in EXTRAS[extra])
    except ImportError as err:
        raise missing_extra(what, extra, err) from err


def require_extra(what: str, extra: str, advice: str = "") -> None:
    """Raise :func:`missing_extra` unless every module of ``extra`` can be found (nothing is imported)."""
    import importlib.util

    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise missing_extra(what, extra, f"no module {', '.join(missing)}", advice)


class InfluenceUnavailable(RuntimeError):
    """The influence service failed for infrastructure reasons (connection, timeout, HTTP 5xx/408/429 after the
    retries, a malformed answer) on too many requests of a window (``teachers.base.CircuitBreaker``, the teacher's
    rule); the run stops with exit 3 instead of training on rewards it does not have."""

    def __init__(self, endpoint: str, failures: int, window: int, last_error: str | None):
        self.endpoint, self.failures, self.window, self.last_error = endpoint, failures, window, last_error
        super().__init__(f"influence service unavailable: {endpoint}: {failures} of the last {window} requests "
                         f"failed for infrastructure reasons (last error: {last_error or 'unknown'}); stopped. "
                         "Restart `rubric-rl serve-influence` and rerun with --resume_from_checkpoint true "
                         "(checkpoints are kept), or tune reward_influence_breaker_window / "
                         "reward_influence_breaker_max_failure_rate (0 disables)")


class TrainingStalled(RuntimeError):
    """RL cannot learn from what it gets (every reward None, or no reward spread in any group for many steps);
    the run stops with exit 1 and exports nothing."""


def debug_enabled() -> bool:
    return os.environ.get("RUBRIC_RL_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def closest(name: str, known) -> str | None:
    """The known name closest to ``name`` (difflib ratio, also against each name's prefix of the same length,
    so that an abbreviated ``polcy_model`` finds ``policy_model_name_or_path``), or None when nothing is close."""
    def score(k: str) -> float:
        whole = difflib.SequenceMatcher(None, name, k).ratio()
        prefix = difflib.SequenceMatcher(None, name, k[:len(name) + 1]).ratio() - 0.05 if len(k) > len(name) else 0
        return max(whole, prefix)

    best = max(sorted(known), key=score, default=None)
    return best if best is not None and score(best) >= 0.6 else None


def did_you_mean(name: str, known) -> str:
    best = closest(name, known)
    return f" (did you mean {best!r}?)" if best else ""


def one_line(message: str) -> str:
    return " ".join(str(message).split())
