"""Influence scores of candidate SFT samples on the target's validation objective (LESS, optimizer-aware).

For a sample z, warm-up checkpoints i (weights, Adam moments, average learning rate lr_i) and validation
examples v (subtasks s):

- ``dot`` (default): ``score(z) = sum_i lr_i * max_s mean_{v in s} <P g_i(v), P Gamma_i(z)>``, the first-order
  predicted decrease of the (subtask's) mean validation loss after one optimizer step on z at each checkpoint;
- ``less``: ``score(z) = sum_i w_i * max_s mean_{v in s} cos(P g_i(v), P Gamma_i(z))``,
  ``w_i = lr_i / sum_j lr_j``;

with ``g_i(v)`` the plain gradient of v's loss, ``Gamma_i(z)`` z's update direction (``influence_direction``)
and ``P`` the Rademacher projection (identity if ``influence_proj_dim=0``, the default). Larger = more helpful.
Both aggregate validation examples by a mean within a subtask, so the validation side is kept as one mean
direction per subtask and checkpoint (of unit rows for ``less``): ``[S, D]``, never ``[n_val, D]``.

The scorer is handed everything (the target with its adapter, the tokenizer, the checkpoints, the validation rows and
an optional :class:`.cache.ValidationCache`) and reads no file itself: the builder (:mod:`.build`) loads them.
Validation features are computed once per checkpoint and kept in the cache (``RUN_DIR/influence_cache/``:
per-subtask sums and counts, keyed by the JSON arguments that made them: the validation rows' hash, the checkpoint's
adapter hash, the projection...).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.chat import ChatFormatError, TokenizedChat, tokenize_chat, validate_messages
from ..configs.influence import PROJECTION_TILE_ROWS, InfluenceConfig
from ..outcome import Reason, Status, influence_cause
from ..progress import sample_bar as _tqdm
from .cache import CACHE_DIRNAME, CACHE_FORMAT, ValidationCache, validation_key
from .choices import choice_chats, choice_gradient
from .grads import Direction, PerSampleGradients
from .projection import RademacherProjector
from .task import InfluenceTask
from .warmup import WarmupCheckpoint

logger = logging.getLogger(__name__)

# Reason codes of unscorable samples.
BAD_FORMAT = "bad_format"
NO_ASSISTANT_TOKENS = "no_assistant_tokens"
NONFINITE_GRADIENT = "nonfinite_gradient"


@dataclass
class InfluenceResult:
    """One sample's influence, or (``value`` None) the influence stage's code of why there is none: ``reason``, the
    code as the service's JSON and ``score``'s rows carry it; ``cause``, the typed reason (``outcome.Reason``)."""

    value: float | None
    reason: str | None = None
    truncated: bool = False

    @property
    def cause(self) -> Reason | None:
        return influence_cause(self.value, self.reason)

    @property
    def status(self) -> Status:
        return Status.VALID if self.cause is None else self.cause.status


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class InfluenceScorer:
    """Scores chat samples by their optimizer-aware influence on the target's validation loss.

    Build it with :meth:`from_config`; call :meth:`score` on message lists. Holds the target (with the
    warm-up LoRA adapter) on one device; under ``accelerate launch`` each process builds its own.
    """

    def __init__(self, cfg: InfluenceConfig, model, tokenizer, checkpoints: list[WarmupCheckpoint], *,
                 device, progress: bool = False, task: InfluenceTask | None = None):
        # the task (default: the config's objective, every trainable parameter tracked); its modules are tracked
        # for the scorer's lifetime, every requires_grad flag restored by close()
        self.task = task or InfluenceTask.of(cfg)
        self._tracking = ExitStack()
        self._tracking.enter_context(self.task.tracking(model))
        try:
            self._setup(cfg, model, tokenizer, checkpoints, device, progress)
        except BaseException:
            self._tracking.close()
            raise

    def _setup(self, cfg: InfluenceConfig, model, tokenizer, checkpoints: list[WarmupCheckpoint], device,
               progress: bool) -> None:
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.checkpoints = checkpoints
        self.device = torch.device(device)
        self.progress = progress
        self.dtype = _DTYPES[cfg.influence_dtype]
        self.warmup: dict | None = None  # {"dir", "reused"} when built by from_config
        self.cache_hits = 0
        self.cache_misses = 0
        # running counts over all score() calls: scored, truncated, and one entry per reason code
        self.stats: Counter = Counter()
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        # Adapter weights of each checkpoint, as the model's parameters (loaded once through peft's mapping). A
        # checkpoint without adapter weights (``current_weights``) is the model as it was handed: nothing to load.
        self._weights: list[dict[str, torch.Tensor] | None] = []
        self._current: int | None = None  # index of the checkpoint whose weights the model holds
        if any(c.adapter_weights is None for c in checkpoints) and len(checkpoints) > 1:
            raise ValueError("a checkpoint of the model's current weights must be the only checkpoint")
        if any(c.adapter_weights is None for c in checkpoints) and cfg.influence_direction != "sgd":
            raise ValueError("the model's current weights have no optimizer state: influence_direction must be 'sgd'")
        for ckpt in checkpoints:
            if ckpt.adapter_weights is None:
                self._weights.append(None)
                continue
            from peft import set_peft_model_state_dict

            res = set_peft_model_state_dict(model, ckpt.adapter_weights)
            unexpected = getattr(res, "unexpected_keys", None)
            if unexpected:
                raise ValueError(f"{ckpt.path}: unexpected adapter keys {unexpected[:3]}")
            self._weights.append({n: p.detach().clone() for n, p in params.items()})
        num_params = sum(p.numel() for p in params.values())
        projector = None
        if cfg.influence_proj_dim:
            projector = RademacherProjector(num_params, cfg.influence_proj_dim, cfg.influence_proj_seed,
                                            cfg.influence_proj_memory_mb, self.device, self.dtype)
        self.projector = projector
        # Projecting is a pass over the P x d matrix (memory-bound for few rows; unpacking/regenerating a
        # block costs as much as projecting ~100+ rows), so un-projected directions are buffered across
        # batches and checkpoints (up to influence_proj_memory_mb) and projected together. Only if one batch
        # of un-projected rows does not fit there and the matrix is resident, the projection is applied
        # layer by layer inside the backward pass instead (least memory).
        elem = torch.empty((), dtype=self.dtype).element_size()
        self._buffer_rows = int(cfg.influence_proj_memory_mb * 2**20 // (num_params * elem))
        self._project_in_engine = (projector is not None and projector.mode == "dense"
                                   and (cfg.influence_proj_layerwise or self._buffer_rows < cfg.influence_batch_size))
        self._buffer_rows = max(self._buffer_rows, 1)
        self.engine = PerSampleGradients(model, pad_token_id=tokenizer.pad_token_id, device=self.device,
                                         dtype=self.dtype, projector=projector if self._project_in_engine else None)
        self.dim = projector.dim if projector is not None else self.engine.num_params
        self._directions = [
            Direction(cfg.influence_direction, None if cfg.influence_direction == "sgd" else c.adam,
                      device=self.device, dtype=self.dtype, center=cfg.influence_center)
            for c in checkpoints
        ]
        lrs = [c.learning_rate for c in checkpoints]
        if cfg.influence_estimator == "less":
            total = sum(lrs)
            self.weights = [lr / total for lr in lrs] if total > 0 else [1 / len(lrs)] * len(lrs)
        else:
            self.weights = list(lrs)
        # Per checkpoint [S, D]: the mean validation direction of each subtask (of unit rows for less).
        # Aggregation is a mean within a subtask, so <z, mean_v g_v> = mean_v <z, g_v>: no [n_val, D] matrix.
        self._val: list[torch.Tensor] = []
        self.subtasks: list[str] = []
        if projector is not None and projector.dim < 8192 and self.engine.num_params > 100 * projector.dim:
            logger.warning(
                "influence_proj_dim=%d for %d trainable parameters: the projection adds noise of ~%.3f in cosine "
                "units, more than the spread of most scores; influence_proj_dim: 0 is exact (and cheaper here)",
                projector.dim, self.engine.num_params, 1 / math.sqrt(projector.dim))

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: InfluenceConfig, run_dir: str | Path, *, device=None,
                    progress: bool = False) -> "InfluenceScorer":
        """A thin wrapper over the builder: :func:`.build.prepare_scorer_inputs` runs the warm-up into
        run_dir/warmup if missing and loads the target, its adapter and the checkpoints with their Adam state;
        :meth:`from_inputs` builds the scorer on them and its validation features (run_dir/influence_cache)."""
        from .build import prepare_scorer_inputs

        inputs = prepare_scorer_inputs(cfg, run_dir, device=device, progress=progress, cache_dirname=CACHE_DIRNAME)
        return cls.from_inputs(cfg, inputs, progress=progress)

    @classmethod
    def from_inputs(cls, cfg: InfluenceConfig, inputs, *, progress: bool = False) -> "InfluenceScorer":
        """The scorer on what the builder loaded (a :class:`.build.ScorerInputs`), with its validation features
        (computed, or read from the cache the inputs name)."""
        from .build import load_validation

        scorer = cls(cfg, inputs.model, inputs.tokenizer, inputs.checkpoints, device=inputs.device, progress=progress)
        scorer.warmup = inputs.warmup
        load_validation(scorer, inputs.validation, cache_dir=inputs.cache_dir)
        return scorer

    def _use_checkpoint(self, i: int) -> None:
        if self._current == i:
            return
        self._current = i
        if self._weights[i] is None:  # the model's own weights
            return
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if p.requires_grad:
                    p.copy_(self._weights[i][n])

    # -- tokenisation -------------------------------------------------------------------------------
    def _tokenize(self, messages, max_length: int) -> tuple[TokenizedChat | None, str | None]:
        if isinstance(messages, dict) and "messages" in messages:
            messages = messages["messages"]
        try:
            validate_messages(messages)
            chat = tokenize_chat(self.tokenizer, messages, max_length)
        except ChatFormatError:
            return None, BAD_FORMAT
        except Exception as exc:  # a chat template may refuse a message order, etc.
            logger.debug("sample cannot be tokenised: %s", exc)
            return None, BAD_FORMAT
        if chat.num_loss_tokens == 0 or all(x == -100 for x in chat.labels[1:]):
            return chat, NO_ASSISTANT_TOKENS
        return chat, None

    def _batches(self, chats: list[tuple[int, TokenizedChat]]):
        """Length-sorted batches (less padding); yields lists of (original index, chat)."""
        order = sorted(chats, key=lambda ic: -len(ic[1].input_ids))
        bs = self.cfg.influence_batch_size
        for i in range(0, len(order), bs):
            yield order[i:i + bs]

    # -- validation ---------------------------------------------------------------------------------
    def _cache_arguments(self, validation_sha256: str, ckpt: WarmupCheckpoint) -> dict:
        cfg = self.cfg
        return {
            "format": CACHE_FORMAT,
            "kind": "validation_gradients",
            "validation_sha256": validation_sha256,  # of the rows, not the path: moving the file keeps the cache
            "subtask_field": cfg.influence_subtask_field,
            "objective": self.task.objective,
            "checkpoint": ckpt.name,
            "checkpoint_adapter_sha256": ckpt.adapter_sha256,
            "target_model_name_or_path": cfg.target_model_name_or_path,
            "target_dtype": cfg.target_dtype,
            "max_length": cfg.influence_max_length,
            "dtype": cfg.influence_dtype,
            "proj_dim": cfg.influence_proj_dim,
            "proj_seed": cfg.influence_proj_seed,
            "proj_tile_rows": PROJECTION_TILE_ROWS,
            "num_params": self.engine.num_params,
        }

    def set_validation(self, rows: list[dict], *, cache: ValidationCache | None = None, source: str = "validation"
                       ) -> None:
        """Mean validation directions per subtask and checkpoint of the validation rows (chat samples, as
        ``data.documents.load_chat_samples`` reads them): taken from ``cache`` if made with the same arguments,
        else computed (and saved there). ``source`` names the rows in messages (the file they came from).

        Validation examples without assistant tokens are left out everywhere; one whose gradient is not
        finite at a checkpoint is left out at that checkpoint (both are counted in a warning).
        """
        field = self.cfg.influence_subtask_field
        names = sorted({str(r.get(field)) if r.get(field) is not None else "" for r in rows})
        if cache is not None and any(c.adapter_weights is None for c in self.checkpoints):
            raise ValueError("a validation cache needs checkpoints with adapter weights (their hash keys it); the "
                             "model's current weights have none")
        key = validation_key(rows)
        self._val = []
        for i, ckpt in enumerate(self.checkpoints):
            args = self._cache_arguments(key, ckpt)
            sums = cache.load(ckpt.name, args, names, device=self.device, dtype=self.dtype) if cache else None
            if sums is not None:
                self.cache_hits += 1
            else:
                sums = self._compute_validation(rows, i, field, names)
                self.cache_misses += 1
                if cache is not None:
                    cache.save(ckpt.name, args, names, sums, source=source)
            counts = sums["count"]
            n_bad = len(rows) - int(counts.sum())
            if n_bad:
                logger.warning("%s: %d validation example(s) have no assistant tokens or a non-finite gradient at "
                               "%s; left out there", source, n_bad, ckpt.name)
            if not bool((counts > 0).any()):
                raise ValueError(f"{source}: no validation example could be used (no assistant tokens / non-finite "
                                 "gradients)")
            key_sum = "sum_unit" if self.cfg.influence_estimator == "less" else "sum"
            keep = counts > 0  # a subtask with no usable example takes no part in the max
            self._val.append(sums[key_sum][keep] / counts[keep].unsqueeze(1))
            kept = [n for n, k in zip(names, keep.tolist()) if k]
            if self.subtasks and kept != self.subtasks:
                raise ValueError(f"{source}: subtasks {sorted(set(self.subtasks) ^ set(kept))} have no usable "
                                 f"example at some checkpoints")
            self.subtasks = kept

    def _compute_validation(self, rows: list[dict], i: int, field: str, names: list[str]) -> dict:
        """Per-subtask sums of validation gradient features (raw and unit-normalised rows) and counts."""
        index = {n: k for k, n in enumerate(names)}
        sums = torch.zeros(len(names), self.dim, dtype=self.dtype, device=self.device)
        sums_unit = torch.zeros_like(sums)
        counts = torch.zeros(len(names), dtype=self.dtype, device=self.device)
        objective = self.task.objective
        # (subtask, tokenised gold answer or None, (tokenised choice continuations, gold) or None) per usable item
        items = []
        for r in rows:
            sub = index[str(r.get(field)) if r.get(field) is not None else ""]
            chat = reason = None
            if "tokens" in objective:
                chat, reason = self._tokenize(r["messages"], self.cfg.influence_max_length)
            choice = (choice_chats(self.tokenizer, r, self.cfg.influence_max_length)
                      if "choices" in objective else None)
            if objective == "choices" and choice is not None:
                items.append((sub, None, choice))
            elif objective != "choices" and reason is None:
                items.append((sub, chat, choice))
        if objective == "choices" and not items:
            raise ValueError("influence_objective 'choices' needs multiple-choice validation items (messages with "
                             "an 'Options:' block of '(A) ...' lines, 'choices', 'answer'); none found")
        self._use_checkpoint(i)
        sgd = Direction("sgd")
        bar = _tqdm(len(items), f"validation gradients ({self.checkpoints[i].name})", self.progress)
        pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

        def flush():
            projected = self._project([p[2] for p in pending])
            for (sub, ok, _), f in zip(pending, projected):
                f, sub = f[ok], sub[ok]
                sums.index_add_(0, sub, f)
                sums_unit.index_add_(0, sub, f / f.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.dtype).tiny))
                counts.index_add_(0, sub, torch.ones(len(sub), dtype=self.dtype, device=self.device))
            pending.clear()

        # An item's row is the gradient of its objective: its token loss's (one batched backward over the gold
        # answers) plus its choice loss's (one backward over its K continuations). Both are plain gradients
        # in the engine's output space (projected or not), so they add.
        with self._grad_context():
            if objective == "choices":
                batches = [items[k:k + self.cfg.influence_batch_size]
                           for k in range(0, len(items), self.cfg.influence_batch_size)]
            else:
                batches = list(self._batches([(k, it[1]) for k, it in enumerate(items)]))
                batches = [[items[k] for k, _ in b] for b in batches]
            for batch in batches:
                if objective == "choices":
                    feats = torch.zeros(len(batch), self.engine.dim, dtype=self.dtype, device=self.device)
                    ok = torch.ones(len(batch), dtype=torch.bool, device=self.device)
                else:
                    out = self.engine.features([chat for _, chat, _ in batch], sgd)
                    feats, ok = out.features, out.finite
                for b, (_, _, choice) in enumerate(batch):
                    if choice is not None:
                        row, good = choice_gradient(self.engine, choice[0], choice[1], sgd)
                        feats[b] += row[0]
                        ok[b] &= good
                sub = torch.tensor([it[0] for it in batch], device=self.device)
                pending.append((sub, ok, feats))
                if sum(len(p[0]) for p in pending) >= self._buffer_rows:
                    flush()
                bar.update(len(batch))
            flush()
        bar.close()
        return {"sum": sums, "sum_unit": sums_unit, "count": counts}

    def _project(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Project engine outputs that are not projected yet (one pass over the projection for all rows)."""
        if self._project_in_engine or self.projector is None or not parts:
            return parts
        rows = torch.cat(parts) if len(parts) > 1 else parts[0]
        projected = self.projector.project(rows)
        return list(projected.split([len(p) for p in parts]))

    def _grad_context(self):
        from contextlib import ExitStack

        stack = ExitStack()
        if torch.is_inference_mode_enabled():
            stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.autocast(self.device.type, enabled=False))
        return stack

    # -- scoring ------------------------------------------------------------------------------------
    def _similarity(self, i: int, feats: torch.Tensor) -> torch.Tensor:
        """[N] aggregated similarity of the batch's features to checkpoint i's validation features."""
        sims = feats @ self._val[i].T  # [N, S]: mean over each subtask's validation examples
        if self.cfg.influence_estimator == "less":
            sims = sims / feats.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.dtype).tiny)
        return sims.max(dim=1).values  # max across subtasks

    def score(self, samples: Sequence[list[dict]]) -> list[InfluenceResult]:
        """One :class:`InfluenceResult` per sample (a message list), same order. Unscorable samples get
        ``value=None`` and a reason (``bad_format``, ``no_assistant_tokens``, ``nonfinite_gradient``)."""
        results: list[InfluenceResult | None] = [None] * len(samples)
        chats = []
        for k, messages in enumerate(samples):
            chat, reason = self._tokenize(messages, self.cfg.influence_max_length)
            truncated = bool(chat.truncated) if chat is not None else False
            if reason is not None:
                results[k] = InfluenceResult(None, reason, truncated)
            else:
                chats.append((k, chat))
        if not chats:
            return self._count(results)
        bar = _tqdm(len(chats), "influence", self.progress)
        batches = list(self._batches(chats))
        scores = [torch.zeros(len(b), dtype=self.dtype, device=self.device) for b in batches]
        finite = [torch.ones(len(b), dtype=torch.bool, device=self.device) for b in batches]
        pending: list[tuple[int, int, torch.Tensor]] = []  # (batch, checkpoint, features) awaiting projection

        def flush():
            for (b, i, _), feats in zip(pending, self._project([p[2] for p in pending])):
                scores[b] += self.weights[i] * self._similarity(i, feats)
            pending.clear()

        with self._grad_context():
            for b, batch in enumerate(batches):
                for i in range(len(self.checkpoints)):
                    self._use_checkpoint(i)
                    out = self.engine.features([c for _, c in batch], self._directions[i])
                    finite[b] &= out.finite
                    pending.append((b, i, out.features))
                    if sum(len(p[2]) for p in pending) >= self._buffer_rows:
                        flush()
                bar.update(len(batch))
            flush()
        bar.close()
        for batch, sc, ok in zip(batches, scores, finite):
            ok = ok & torch.isfinite(sc)
            for (k, chat), value, good in zip(batch, sc.tolist(), ok.tolist()):
                results[k] = (InfluenceResult(float(value), None, chat.truncated) if good
                              else InfluenceResult(None, NONFINITE_GRADIENT, chat.truncated))
        return self._count(results)

    def _count(self, results):
        for r in results:
            self.stats["scored" if r.reason is None else r.reason] += 1
            self.stats["truncated"] += bool(r.truncated)
        return results

    def close(self) -> None:
        self.engine.close()
        self._tracking.close()  # the model's requires_grad flags as they were handed
