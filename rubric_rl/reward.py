"""The TRL reward callable: completions -> rubrics -> samples -> influence -> floats.

``R = valid * (s(IF) + beta * (novelty - mean_group novelty)) - lambda * (1 - valid)`` where ``valid`` means the rubric parsed
and the teacher's sample passed every verifier, ``IF`` is the influence engine's score of the sample on the
target, ``s`` is the configured scaling (by default a sigmoid of the influence standardised over a running
window of this process's recent scores, :class:`RunningScaler`; per-call min-max as in OptimSyn's code is
an option), and ``novelty``
is the share of the other valid samples of its GRPO group (same document and prompt) that are about a
different sentence of the document. Influence is a per-sample score: it pays the best single question,
and a policy paid only by it asks the same question of a document again and again (measured on the
quickstart: 54-68 % of the samples of a trained generator were about one relation). The group-relative
novelty term pays for asking about something else, as in diversity-aware GRPO (DARLING, Li et al. 2025),
whose partitions here are the document's sentences: format (multiple choice or open) does not count.
The term is centred within the group (:func:`centred_novelty`, ``reward_novelty_center``): it orders a group's
samples by novelty without paying validity.

Outcomes that say nothing about the rubric return ``None`` (TRL's "unscorable": excluded from the group
baseline), and are counted, never turned into 0: a NaN/inf influence, or a teacher that failed for
infrastructure reasons (timeout, HTTP error).

It is a plain callable class, not an ``nn.Module`` (TRL would treat a module as a reward model). TRL
calls it once per process on that process's completions; the target model lives on that process's
device, or, with ``reward_influence_url``, in ``rubric-rl serve-influence`` (the scorer factory then returns
an :class:`~rubric_rl.influence.client.InfluenceClient`, which has the scorer's ``score``; a request that
failed for good is ``influence_service_<code>``, unscorable).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .configs.train import RubricRLArguments as TrainArgs  # the one place of each reward_* default
from .jsonl import append_jsonl, iter_log_rows
from .outcome import RUBRIC, Reason, Status, influence_cause, parse_reason
from .rubric import try_parse_rubric
from .synth.engine import SampleSynthesizer, SynthItem
from .synth.grounding import supporting_sentence
from .synth.verifiers import Candidate

logger = logging.getLogger(__name__)

def not_the_rubrics_fault(reason: str | None) -> bool:
    """Whether a logged outcome string (``rollouts.jsonl``'s ``outcome``) is unscorable (None), not invalid: a
    teacher-side failure or an influence failure (``outcome.CLASSIFICATION`` decides)."""
    return reason is not None and parse_reason(reason).status is Status.UNSCORABLE


def completion_text(completion) -> str:
    """TRL passes conversational completions as a list of messages, standard ones as strings."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


class RunningScaler:
    """``running`` scaling of influence: ``s(x) = sigmoid((x - mean_W) / max(std_W, min_rel * mean|x|_W))``.

    ``W`` is a window of the last ``window`` finite valid influences of this process (across GRPO groups
    and steps; the current call's values are added first). Unlike a per-call min-max it gives a lone valid
    sample a score from its own influence, never stretches two close values to 0 and 1, and keeps the
    scale of one step comparable with the next; the sigmoid keeps every valid sample above an invalid one
    (``s`` in (0, 1)). ``min_rel`` floors the spread relative to the typical magnitude, so that a window of
    near-identical scores does not turn noise into a full-range reward.
    """

    def __init__(self, window: int = TrainArgs.reward_if_window, min_rel: float = TrainArgs.reward_if_min_rel):
        from collections import deque

        self.values: deque[float] = deque(maxlen=window)
        self.min_rel = min_rel

    def __call__(self, xs: list[float]) -> list[float]:
        self.values.extend(xs)
        if not self.values:
            return []
        n = len(self.values)
        mean = sum(self.values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in self.values) / n)
        floor = self.min_rel * sum(abs(v) for v in self.values) / n
        scale = max(std, floor, 1e-30)
        return [1 / (1 + math.exp(-max(-60.0, min(60.0, (x - mean) / scale)))) for x in xs]


def shape_rewards(influences: list[float | None], valid: list[bool], *, invalid_penalty: float,
                  scaling: str = TrainArgs.reward_if_scaling, scale: float = TrainArgs.reward_if_scale,
                  scaler: RunningScaler | None = None) -> list[float | None]:
    """Reward shaping, separated from models so that it can be tested exactly.

    ``influences[i]`` is only read where ``valid[i]``; ``None`` or non-finite there gives ``None``.
    ``scaling``: ``running`` (a :class:`RunningScaler`, the default; pass ``scaler`` to keep its window
    across calls), ``batch_minmax`` (this call's valid scores mapped to [0, 1], OptimSyn's code; a lone
    value gets 0.5), ``none`` (raw scores).
    """
    finite_idx = [i for i, (x, ok) in enumerate(zip(influences, valid)) if ok and x is not None and math.isfinite(x)]
    finite = [influences[i] for i in finite_idx]
    scaled: dict[int, float] = {}
    if scaling == "running":
        scaled = dict(zip(finite_idx, (scaler or RunningScaler())(finite)))
    elif scaling == "batch_minmax":
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
        # A batch with a single distinct valid score carries no ranking information: midpoint.
        scaled = {i: (influences[i] - lo) / (hi - lo) if hi > lo else 0.5 for i in finite_idx}
    else:
        scaled = {i: influences[i] for i in finite_idx}
    out: list[float | None] = []
    for i, ok in enumerate(valid):
        if not ok:
            out.append(-invalid_penalty)
        elif i not in scaled:
            out.append(None)
        else:
            out.append(scale * scaled[i])
    return out


MISSING = object()  # group_novelty: "no sample here"


def group_novelty(passages: list, groups: list) -> list[float | None]:
    """Share of the other samples of the same group that are about a different passage (DARLING-style).

    ``passages[i]`` is what sample i is about (the document sentence that supports it; ``None`` when it
    matches none, which counts as one more passage) or the ``MISSING`` marker for no sample (invalid:
    novelty ``None``). A sample alone in its group has novelty 1; eight samples about one fact all get 0.
    """
    out: list[float | None] = []
    for i, (pi, gi) in enumerate(zip(passages, groups, strict=True)):
        if pi is MISSING:
            out.append(None)
            continue
        others = [pj for j, (pj, gj) in enumerate(zip(passages, groups))
                  if j != i and gj == gi and pj is not MISSING]
        out.append(sum(pj != pi for pj in others) / len(others) if others else 1.0)
    return out


def centred_novelty(novelty: list[float | None], groups: list) -> list[float | None]:
    """Each novelty minus the mean novelty of its group's samples that have one (``None`` stays ``None``).

    Added uncentred, ``beta * novelty`` is on average a positive offset (~0.8 beta on the quickstart) that only
    valid samples get: it widens the gap between a valid and an invalid rubric and so pays *validity*, whatever
    the sample's influence. Measured on the quickstart (training seed 1, `scripts/rollout_formats.py`): with
    beta = 2.0 a valid sample earned ~2.1 against -0.1 for an invalid one, while the influence term separated
    the formats by ~0.6; multiple-choice rubrics, longer and more often malformed (valid 0.64-0.67 against
    0.71-0.84), lost on expected reward although their samples had the highest influence, and the policy left
    them. Centred, the term still orders the samples of a group by novelty (GRPO's advantage sees the same
    differences) but adds nothing to the group's mean."""
    sums: dict = {}
    for nov, g in zip(novelty, groups, strict=True):
        if nov is not None:
            total, n = sums.get(g, (0.0, 0))
            sums[g] = (total + nov, n + 1)
    return [None if nov is None else nov - sums[g][0] / sums[g][1] for nov, g in zip(novelty, groups)]


@dataclass
class RewardStats:
    """This process's counts since its start (all outcomes, by reason)."""

    outcomes: Counter = field(default_factory=Counter)
    calls: int = 0  # reward calls of this process
    logged: Counter = field(default_factory=Counter)  # ``outcomes`` as they were at the last since_last_log()

    def since_last_log(self) -> dict[str, int]:
        """The outcomes counted since the previous call (since the start, at the first), nonzero ones, in the
        order of ``outcomes``; then marks this call (``metrics.jsonl``'s per-step ``outcomes``)."""
        new = {k: n - self.logged[k] for k, n in self.outcomes.items() if n - self.logged[k]}
        self.logged = Counter(self.outcomes)
        return new


class InfluenceReward:
    """``reward_funcs`` entry for TRL: scores rubric completions by the influence of their samples."""

    # TRL names its reward column (the completions table) and rewards/<name>/* metrics after this: the shaped reward
    __name__ = "reward"

    def __init__(self, synthesizer: SampleSynthesizer, scorer_factory, *,
                 invalid_penalty: float = TrainArgs.reward_invalid_penalty,
                 scaling: str = TrainArgs.reward_if_scaling, scale: float = TrainArgs.reward_if_scale,
                 novelty_weight: float = TrainArgs.reward_novelty_weight,
                 novelty_center: bool = TrainArgs.reward_novelty_center,
                 log_path: str | Path | None = None, if_window: int = TrainArgs.reward_if_window,
                 if_min_rel: float = TrainArgs.reward_if_min_rel, rubric_format: str = TrainArgs.rubric_format):
        self.synthesizer = synthesizer
        self._scorer_factory = scorer_factory  # built lazily: after TRL has placed this process on its device
        self._scorer = None
        self.invalid_penalty, self.scaling, self.scale = invalid_penalty, scaling, scale
        self.scaler = RunningScaler(window=if_window, min_rel=if_min_rel)
        self.rubric_format = rubric_format
        self.novelty_weight = novelty_weight
        self.novelty_center = novelty_center
        self.stats = RewardStats()
        self.log_path = Path(log_path) if log_path else None
        self.recent_influences: list[float] = []  # drained by the logging callback (histograms)

    def restore_scaler_from_log(self) -> int:
        """Refill the running-scaling window from this process's rollout log (after a resume trimmed it to
        the checkpoint's step), so that the resumed run scales exactly as the uninterrupted one. Returns the
        number of values read."""
        self.scaler.values.clear()
        if self.log_path is None or not self.log_path.exists():
            return 0
        for row in iter_log_rows(self.log_path):
            x = row.get("influence")
            if row.get("outcome") == "valid" and isinstance(x, int | float) and math.isfinite(x):
                self.scaler.values.append(float(x))
        return len(self.scaler.values)

    @property
    def scorer(self):
        if self._scorer is None:
            # Building the scorer initialises modules (LoRA layers) from the global RNG. It happens on the
            # first reward call, which after a resume is a different step than in the original run: keep
            # it from shifting the policy's sampling stream, or a resumed run would diverge.
            import random

            from .devices import fork_rng

            py_state = random.getstate()
            with fork_rng():
                self._scorer = self._scorer_factory()
            random.setstate(py_state)
        return self._scorer

    def __call__(self, prompts, completions, completion_ids=None, *, document=None, doc_id=None,
                 trainer_state=None, log_extra=None, log_metric=None, **_):
        import time

        t0 = time.perf_counter()
        n = len(completions)
        step = getattr(trainer_state, "global_step", None)
        documents, doc_ids = document or [""] * n, doc_id or [""] * n
        rollouts = [Rollout(text=completion_text(c), document=documents[i], doc_id=doc_ids[i],
                            group=completion_text(prompts[i]) if prompts else "")
                    for i, c in enumerate(completions)]
        for r in rollouts:
            r.rubric, err = try_parse_rubric(r.text, self.rubric_format)
            if err:
                r.cause = Reason(RUBRIC, err)

        todo = [(i, r) for i, r in enumerate(rollouts) if r.cause is None]
        t_parse = time.perf_counter()
        outcomes = self.synthesizer.synthesize(
            [SynthItem(document=r.document, rubric=r.rubric, doc_id=str(r.doc_id), seed=(step or 0) * n + i)
             for i, r in todo]
        )
        for (_, r), out in zip(todo, outcomes, strict=True):
            r.teacher_text = out.teacher_text  # kept for every rollout: rejects can be diagnosed
            if out.valid:
                r.sample = out.messages
            else:
                r.cause = out.cause
        t_synth = time.perf_counter()

        scored = [r for r in rollouts if r.sample is not None]
        if scored:
            for r, res in zip(scored, self.scorer.score([r.sample for r in scored]), strict=True):
                r.cause = influence_cause(res.value, res.reason)
                r.influence = res.value if r.cause is None else None

        t_influence = time.perf_counter()
        # -lambda for the invalid; an unscorable rollout has no influence, so shape_rewards gives it None directly
        rewards = shape_rewards([r.influence for r in rollouts], [r.status is not Status.INVALID for r in rollouts],
                                invalid_penalty=self.invalid_penalty, scaling=self.scaling, scale=self.scale,
                                scaler=self.scaler)
        for r, reward in zip(rollouts, rewards, strict=True):
            r.reward = reward
        # Novelty among the samples that got a reward from their influence (valid, finite): which passage
        # of the document each one is about, compared within its GRPO group (same document and prompt).
        for r in rollouts:
            if r.valid and r.reward is not None:
                c = Candidate(r.sample)
                r.passage = supporting_sentence(c.question, c.answer, r.document)
        keys = [(str(r.doc_id), r.group) for r in rollouts]
        novelty = group_novelty([r.passage for r in rollouts], keys)
        paid = centred_novelty(novelty, keys) if self.novelty_center else novelty
        for r, nov, pay in zip(rollouts, novelty, paid, strict=True):
            r.novelty = nov
            if self.novelty_weight and pay is not None:
                r.reward += self.novelty_weight * pay
        self._account(rollouts, step, log_metric, log_extra,
                      {"time/rubric_parse_s": t_parse - t0, "time/teacher_and_verifiers_s": t_synth - t_parse,
                       "time/influence_s": t_influence - t_synth}, t0)
        return [r.reward for r in rollouts]

    def _account(self, rollouts: list["Rollout"], step, log_metric, log_extra, timings: dict, t0: float) -> None:
        """Counts, metrics (``log_metric``), TRL's completions table (``log_extra``) and the rollout log."""
        import time

        n = len(rollouts)
        self.stats.calls += 1
        for r in rollouts:
            self.stats.outcomes["valid" if r.valid else (r.reason or "unknown")] += 1
        n_none = sum(r.reward is None for r in rollouts)
        if n_none:
            logger.info("reward: %d/%d completions unscorable (%s)", n_none, n,
                        dict(Counter(r.reason for r in rollouts if r.reward is None)))
        finite_if = [r.influence for r in rollouts if r.influence is not None]
        self.recent_influences.extend(finite_if)
        if log_metric is not None:
            for name, seconds in timings.items():
                log_metric(name, seconds)
            log_metric("time/reward_total_s", time.perf_counter() - t0)
            log_metric("valid_rate", sum(r.valid for r in rollouts) / n)
            log_metric("rubric_parse_rate", sum(r.rubric is not None for r in rollouts) / n)
            log_metric("unscorable_rate", n_none / n)
            if finite_if:
                log_metric("influence_mean", sum(finite_if) / len(finite_if))
            finite_nov = [r.novelty for r in rollouts if r.novelty is not None]
            if finite_nov:
                log_metric("novelty_mean", sum(finite_nov) / len(finite_nov))
        if log_extra is not None:  # columns beside TRL's prompt, completion, reward (shaped) and advantage
            rows = [r.table_row() for r in rollouts]
            for column in rows[0] if rows else ():
                log_extra(column, [row[column] for row in rows])
        if self.log_path is not None:
            append_jsonl(self.log_path, (r.log_row(step) for r in rollouts))


@dataclass
class Rollout:
    """One completion of the policy through the reward: its rubric, the teacher's sample (or why there is none),
    the sample's influence, novelty and reward."""

    text: str
    document: str
    doc_id: str
    group: str  # the prompt: with doc_id, the GRPO group
    rubric: object = None
    cause: Reason | None = None  # None while nothing has gone wrong: the rubric's, teacher's, ..., influence's reason
    teacher_text: str | None = None
    sample: list[dict] | None = None
    influence: float | None = None
    passage: object = MISSING  # the document sentence the sample is about (group_novelty's input)
    novelty: float | None = None
    reward: float | None = None

    @property
    def status(self) -> Status:
        """``valid`` (a sample with a finite influence), ``invalid`` (the rubric's fault: -lambda) or ``unscorable``
        (not the rubric's fault: teacher infrastructure, influence; reward None)."""
        if self.cause is not None:
            return self.cause.status
        return Status.VALID if self.sample is not None else Status.INVALID

    @property
    def reason(self) -> str | None:
        """The logged form of ``cause`` (``rollouts.jsonl``'s ``outcome``; None: valid)."""
        return None if self.cause is None else str(self.cause)

    @property
    def unscorable(self) -> bool:
        return self.status is Status.UNSCORABLE

    @property
    def valid(self) -> bool:
        return self.status is Status.VALID

    def table_row(self) -> dict:
        """This rollout's columns in TRL's completions table (``log_completions``; W&B): the raw influence, whether
        it is valid and why not, the document, and the teacher's sample (its raw text where it was rejected)."""
        c = Candidate(self.sample) if self.sample else None
        return {"influence": self.influence, "valid": self.valid, "outcome": self.reason or "valid",
                "novelty": self.novelty, "doc_id": str(self.doc_id), "question": c.question if c else "",
                "answer": c.answer if c else "", "teacher_text": (self.teacher_text or "") if c is None else ""}

    def log_row(self, step) -> dict:
        return {"step": step, "doc_id": self.doc_id, "rubric": self.text, "outcome": self.reason or "valid",
                "influence": self.influence, "passage": self.passage if self.passage is not MISSING else None,
                "novelty": self.novelty, "reward": self.reward, "sample": self.sample,
                "teacher_text": self.teacher_text if self.sample is None else None}
