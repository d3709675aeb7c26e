"""The ``transformers`` teacher: a local Hugging Face causal LM, batched generation, chat template."""

from __future__ import annotations

import logging

import torch

from ..configs.teacher import TeacherConfig as T  # the one place of each teacher_* default
from ..devices import resolve_device
from ..models import load_model_and_tokenizer
from .base import TeacherRequest, TeacherResult

logger = logging.getLogger(__name__)


class TransformersTeacher:
    name = "transformers"

    def __init__(self, model_name_or_path: str, *, max_new_tokens: int = T.teacher_max_new_tokens,
                 temperature: float = T.teacher_temperature, top_p: float = T.teacher_top_p,
                 batch_size: int = T.teacher_batch_size, dtype: str = T.teacher_dtype,
                 trust_remote_code: bool = T.teacher_trust_remote_code,
                 device: str | torch.device | None = None, model=None, tokenizer=None):
        if model is None or tokenizer is None:
            model, tokenizer = load_model_and_tokenizer(model_name_or_path, dtype=dtype,
                                                        trust_remote_code=trust_remote_code, padding_side="left")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size = batch_size
        self.model_name = model_name_or_path
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

    def __repr__(self) -> str:
        return f"TransformersTeacher({self.model_name!r}, device={str(self.device)!r}, batch_size={self.batch_size})"

    @torch.inference_mode()
    def generate(self, requests: list[TeacherRequest], *, max_new_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None) -> list[TeacherResult]:
        """One result per request. Keyword arguments override the configured sampling parameters for this call
        (the ``serve-teacher`` endpoint passes a client's ``max_tokens`` / ``temperature`` / ``top_p``)."""
        max_new = max_new_tokens or self.max_new_tokens
        temp = self.temperature if temperature is None else temperature
        nucleus = self.top_p if top_p is None else top_p
        results: list[TeacherResult | None] = [None] * len(requests)
        todo: list[tuple[int, list[int]]] = []
        for i, req in enumerate(requests):
            try:
                ids = self.tokenizer.apply_chat_template(req.messages, tokenize=True, add_generation_prompt=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in recent transformers
                    ids = ids["input_ids"]
                ids = list(ids)
            except Exception as err:  # noqa: BLE001 - a bad request fails alone
                results[i] = TeacherResult(text=None, error=f"bad_request:{type(err).__name__}")
                continue
            if self.max_positions is not None and len(ids) + max_new > self.max_positions:
                results[i] = TeacherResult(text=None, error="prompt_too_long", prompt_tokens=len(ids))
                continue
            todo.append((i, ids))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            try:
                outs = self._generate_chunk([ids for _, ids in chunk], [requests[i].seed for i, _ in chunk],
                                            max_new, temp, nucleus)
            except Exception:  # noqa: BLE001 - retry one by one so one bad request cannot sink its batch
                logger.exception("batched generation failed; retrying the %d requests one by one", len(chunk))
                outs = []
                for i, ids in chunk:
                    try:
                        outs.extend(self._generate_chunk([ids], [requests[i].seed], max_new, temp, nucleus))
                    except Exception as err:  # noqa: BLE001
                        outs.append(TeacherResult(text=None, error=f"generation_error:{type(err).__name__}"))
            for (i, _), res in zip(chunk, outs, strict=True):
                results[i] = res
        return results  # type: ignore[return-value]

    def _generate_chunk(self, prompts: list[list[int]], seeds: list[int], max_new: int, temp: float,
                        nucleus: float) -> list[TeacherResult]:
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):  # left padding
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        do_sample = temp > 0
        # Reproducible given the requests' seeds, without touching the caller's global RNG state.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(sum(seeds) * 1_000_003 + len(seeds))
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                max_new_tokens=max_new, do_sample=do_sample, temperature=temp if do_sample else None,
                top_p=nucleus if do_sample else None, pad_token_id=pad,
            )
        new = out[:, width:].tolist()
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        results = []
        for row, ids in zip(new, prompts, strict=True):
            # Generated tokens up to and including the first EOS; the rest is padding.
            n, stopped = len(row), False
            for k, tok in enumerate(row):
                if tok in eos_ids:
                    n, stopped = k + 1, True
                    break
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            meta = {"finish_reason": "stop" if stopped or n < max_new else "length"}
            if not text:
                results.append(TeacherResult(text=None, error="empty", prompt_tokens=len(ids), completion_tokens=n,
                                             meta=meta))
            else:
                results.append(TeacherResult(text=text, prompt_tokens=len(ids), completion_tokens=n, meta=meta))
        return results
