"""Batched per-sample gradients of LoRA factors, turned into (projected) update directions.

One forward and one backward pass per batch. Every trainable parameter must belong to an ``nn.Linear``
(LoRA's ``lora_A``/``lora_B`` are): a forward hook keeps the module's input ``x`` [N, T, in], a tensor hook on
its output receives ``dL/dy`` [N, T, out], and the per-sample weight gradient is the batched product
``dL/dy^T x`` [N, out, in] (bias: ``sum_t dL/dy``). Because the batch loss is the *sum* of per-sample losses
and no layer of a causal LM mixes samples, these are exactly the per-sample gradients. Padding is right
padding, masked out of ``x``, and carries no loss, so it contributes exactly zero.

As soon as a module's gradient is complete (all its calls in the forward have received their output
gradient), it is turned into the update direction (SGD, Adam, or LESS's Adam variant) and projected into
the [N, D] feature buffer, then freed: memory stays at one layer's [N, p_layer] at a time.

Loss: mean token cross-entropy over the sample's assistant tokens (labels != -100), i.e. what the HF model
returns for that sample alone. Logits are computed only at those positions (a pre-hook on the output
embedding selects them), which saves the [N, T, V] logits tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..data.chat import IGNORE_INDEX
from .projection import RademacherProjector


@dataclass
class ParamEntry:
    name: str
    module: nn.Linear
    kind: str  # "weight" | "bias"
    shape: tuple[int, ...]
    numel: int
    offset: int  # into the flattened P-vector (named_parameters order)


class Direction:
    """Maps per-sample gradients [N, p] of one parameter to update directions, in place.

    ``sgd``: g. ``adam``: one torch.optim.Adam step from the saved moments (m, v, step t):
    m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2, Gamma = (m'/(1-b1^(t+1))) / (sqrt(v'/(1-b2^(t+1))) + eps).
    ``adam_less``: as the LESS code, Gamma = m' / sqrt(v' + eps) (no bias correction, eps inside the root).

    ``center``: subtract Gamma(0), the step the optimizer would take on a zero gradient (momentum alone).
    That part is the same for every sample; on a real target it is as large as a sample's own part (norm
    ratio ~1 on SmolLM2-135M), so it swamps cosines and projections. For the ``dot`` estimator without
    projection it shifts every score by the same constant and changes no ranking.
    """

    def __init__(self, kind: str, states: dict | None = None, *, device=None, dtype=torch.float32,
                 center: bool = False):
        if kind not in ("sgd", "adam", "adam_less"):
            raise ValueError(f"unknown direction {kind!r}")
        if kind != "sgd" and not states:
            raise ValueError(f"direction {kind!r} needs the saved Adam states")
        self.kind = kind
        self.center = center and kind != "sgd"  # the zero gradient's SGD step is zero
        self._per_param = {}
        self._zero_step = {}
        for name, st in (states or {}).items():
            t = st.step + 1
            self._per_param[name] = (
                (st.beta1 * st.exp_avg.reshape(-1)).to(device=device, dtype=dtype),
                (st.beta2 * st.exp_avg_sq.reshape(-1)).to(device=device, dtype=dtype),
                1 - st.beta1, 1 - st.beta2, st.eps,
                1 - st.beta1**t, 1 - st.beta2**t,
            )
            if self.center:
                zero = torch.zeros(1, st.exp_avg.numel(), device=device, dtype=dtype)
                self._zero_step[name] = self._step(name, zero)[0]

    def _step(self, name: str, g: torch.Tensor) -> torch.Tensor:
        b1m, b2v, one_b1, one_b2, eps, bc1, bc2 = self._per_param[name]
        v = torch.addcmul(b2v, g, g, value=one_b2)  # v' = b2 v + (1-b2) g^2
        m = g.mul_(one_b1).add_(b1m)  # m' (in place on g)
        if self.kind == "adam":
            return m.div_(v.div_(bc2).sqrt_().add_(eps)).div_(bc1)
        return m.div_(v.add_(eps).sqrt_())

    def __call__(self, name: str, g: torch.Tensor) -> torch.Tensor:
        if self.kind == "sgd":
            return g
        gamma = self._step(name, g)
        return gamma.sub_(self._zero_step[name]) if self.center else gamma


@dataclass
class BatchFeatures:
    features: torch.Tensor  # [N, D]
    finite: torch.Tensor  # [N] bool: all per-sample gradients finite
    losses: torch.Tensor  # [N]


class PerSampleGradients:
    """Per-sample gradient features of a (peft) causal LM whose trainable parameters are in ``nn.Linear`` layers."""

    def __init__(self, model: nn.Module, *, pad_token_id: int, device, dtype: torch.dtype = torch.float32,
                 projector: RademacherProjector | None = None):
        self.model = model
        self.pad_token_id = pad_token_id
        self.device = torch.device(device)
        self.dtype = dtype
        self.projector = projector
        modules = dict(model.named_modules())
        self.entries: list[ParamEntry] = []
        self._by_module: dict[nn.Module, list[ParamEntry]] = {}
        offset = 0
        unsupported = []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            mod_name, _, kind = name.rpartition(".")
            module = modules.get(mod_name)
            if not isinstance(module, nn.Linear) or kind not in ("weight", "bias"):
                unsupported.append(name)
                continue
            entry = ParamEntry(name, module, kind, tuple(p.shape), p.numel(), offset)
            offset += p.numel()
            self.entries.append(entry)
            self._by_module.setdefault(module, []).append(entry)
        if unsupported:
            raise NotImplementedError(
                f"per-sample gradients support trainable nn.Linear weights/biases only (LoRA on linear layers); "
                f"unsupported trainable parameters: {unsupported[:5]}"
            )
        if not self.entries:
            raise ValueError("the model has no trainable parameters (expected LoRA factors)")
        self.num_params = offset
        if projector is not None and projector.num_params != self.num_params:
            raise ValueError(f"projector is for {projector.num_params} params, model has {self.num_params}")
        self.dim = projector.dim if projector is not None else self.num_params
        out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        # Selecting logit positions changes the output layer's input shape: only if it has no trainable params.
        self._out_emb = None
        if out_emb is not None and not any(p.requires_grad for p in out_emb.parameters()):
            self._out_emb = out_emb
        self._active = False
        self._handles = [m.register_forward_hook(self._forward_hook) for m in self._by_module]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- hooks --------------------------------------------------------------------------------------
    def _forward_hook(self, module, inputs, output):
        if not self._active or not torch.is_tensor(output) or not output.requires_grad:
            return
        x = inputs[0].detach()
        if x.dim() != 3 or x.shape[0] != self._n or x.shape[1] != self._t:
            raise RuntimeError(
                f"per-sample gradients expect [batch={self._n}, seq={self._t}, features] inputs to LoRA layers; "
                f"{self._by_module[module][0].name} got {tuple(x.shape)} (e.g. a mixture-of-experts layer): "
                "restrict warmup_lora_target_modules to attention/MLP projections applied to every token"
            )
        self._pending[module] = self._pending.get(module, 0) + 1
        output.register_hook(partial(self._grad_hook, module, x))

    def _grad_hook(self, module, x, g):
        gd = g.detach().to(self.dtype)
        xd = x.to(self.dtype)
        acc = self._acc.setdefault(module, {})
        for e in self._by_module[module]:
            if e.kind == "weight":
                # dL/dy is exactly 0 at padding (no loss there, and nothing attends to it), so padding adds
                # exactly 0 unless x is non-finite there: only then is x masked (and the product redone).
                pg = torch.bmm(gd.transpose(1, 2), xd)  # [N, out, in], row-major like W
                bad = ~torch.isfinite(pg).flatten(1).all(1)
                if bool(bad.any()):
                    pg[bad] = torch.bmm(gd[bad].transpose(1, 2), xd[bad] * self._maskf[bad])
                pg = pg.reshape(self._n, -1)
            else:
                pg = gd.sum(1)
            acc[e.name] = acc[e.name].add_(pg) if e.name in acc else pg
        self._pending[module] -= 1
        if self._pending[module] == 0:
            self._finalize(module)

    def _finalize(self, module) -> None:
        acc = self._acc.pop(module, {})
        for e in self._by_module[module]:
            pg = acc.pop(e.name, None)
            if pg is None:
                pg = torch.zeros(self._n, e.numel, dtype=self.dtype, device=self.device)
            self._finite &= torch.isfinite(pg).all(dim=1)
            gamma = self._direction(e.name, pg)
            if self.projector is None:
                self._out[:, e.offset:e.offset + e.numel] = gamma
            else:
                self.projector.project(gamma, e.offset, out=self._out)
        self._done.add(module)

    # -- batch ----------------------------------------------------------------------------------------
    def pad(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask``, ``labels`` for items with ``input_ids``/``labels``."""
        n, t = len(batch), max(len(b.input_ids) for b in batch)
        ids = torch.full((n, t), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, t), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((n, t), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b.input_ids)
            ids[i, :k] = torch.as_tensor(b.input_ids)
            labels[i, :k] = torch.as_tensor(b.labels)
            mask[i, :k] = 1
        return ids.to(self.device), mask.to(self.device), labels.to(self.device)

    def features(self, batch: list, direction: Direction) -> BatchFeatures:
        """Update directions (projected if a projector is set) of each sample of ``batch``, one backward pass.

        Every item must have at least one loss token (callers filter those out before).
        """
        ids, mask, labels = self.pad(batch)
        n, t = ids.shape
        sel = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t+1
        counts = sel.sum(1)
        if bool((counts == 0).any()):
            raise ValueError("every sample in a batch needs at least one assistant (loss) token")
        sel_full = torch.zeros_like(labels, dtype=torch.bool)
        sel_full[:, :-1] = sel
        targets = labels[:, 1:][sel]
        sample_idx = torch.arange(n, device=self.device).unsqueeze(1).expand(n, t - 1)[sel]

        self._n, self._t = n, t
        self._maskf = mask.to(self.dtype).unsqueeze(-1)
        self._direction = direction
        self._pending, self._acc, self._done = {}, {}, set()
        self._finite = torch.ones(n, dtype=torch.bool, device=self.device)
        self._out = torch.zeros(n, self.dim, dtype=self.dtype, device=self.device)
        handle = None
        if self._out_emb is not None:
            def select(_module, args, _sel=sel_full):
                return (args[0][_sel],) + tuple(args[1:])
            handle = self._out_emb.register_forward_pre_hook(select)
        self._active = True
        try:
            with torch.enable_grad():
                out = self.model(input_ids=ids, attention_mask=mask, use_cache=False)
                logits = out.logits
                if logits.dim() == 3:  # the selection hook did not apply: select here
                    logits = logits[sel_full]
                logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
                ce = F.cross_entropy(logits, targets, reduction="none")
                losses = torch.zeros(n, dtype=ce.dtype, device=self.device).index_add_(0, sample_idx, ce)
                losses = losses / counts.to(ce.dtype)
                losses.sum().backward()
        finally:
            self._active = False
            if handle is not None:
                handle.remove()
            for p in self.model.parameters():
                p.grad = None
        for module in self._by_module:  # modules that got no gradient (unused): direction of a zero gradient
            if module not in self._done:
                self._finalize(module)
        feats, finite = self._out, self._finite
        self._out = self._acc = self._pending = self._direction = self._maskf = None
        return BatchFeatures(feats, finite & torch.isfinite(losses.detach()), losses.detach())
