"""A trained rubric generator in use: documents in, rubrics out.

Loads an export folder (``rubric-rl export``) or any causal LM with a chat template, writes one
rubric per document with the same prompt the policy was trained on, and parses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .devices import resolve_device
from .configs.train import RubricRLArguments
from .data.prompts import DEFAULT_TASK, policy_messages
from .rubric import Rubric, try_parse_rubric

EXPORT_META = "rubric_rl_export.json"


@dataclass
class GeneratedRubric:
    text: str
    rubric: Rubric | None
    reason: str | None  # parse failure reason code


class RubricGenerator:
    # The sampling defaults are TRL's GRPOConfig ones (max_completion_length 256, temperature 1.0, top_p 1.0), what
    # the policy sampled with in training unless the run set others (an export's metadata then names them); they
    # are not restated from a rubric-rl settings class because none holds them.
    def __init__(self, model, tokenizer, *, task: str = DEFAULT_TASK,
                 max_document_chars: int = RubricRLArguments.max_document_chars,
                 max_new_tokens: int = 256, temperature: float = 1.0, top_p: float = 1.0, device=None,
                 rubric_format: str = RubricRLArguments.rubric_format):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.task, self.max_document_chars = task, max_document_chars
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.rubric_format = rubric_format

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device=None, trust_remote_code: bool = False, **overrides):
        from .models import load_model_and_tokenizer

        path = Path(path)
        meta = json.loads((path / EXPORT_META).read_text()) if (path / EXPORT_META).exists() else {}
        model, tok = load_model_and_tokenizer(str(path), dtype="auto", trust_remote_code=trust_remote_code)
        kwargs = {k: meta[k] for k in ("task", "max_document_chars", "max_new_tokens", "temperature", "top_p",
                                       "rubric_format")
                  if k in meta}
        kwargs.update(overrides)
        return cls(model, tok, device=device, **kwargs)

    @torch.inference_mode()
    def generate_raw(self, documents: list[str], *, seed: int = 0, batch_size: int = 16) -> list[GeneratedRubric]:
        out: list[GeneratedRubric] = []
        torch.manual_seed(seed)
        for start in range(0, len(documents), batch_size):
            chunk = documents[start:start + batch_size]
            texts = [self.tokenizer.apply_chat_template(policy_messages(d, self.task, self.max_document_chars,
                                                                        self.rubric_format),
                                                        tokenize=False, add_generation_prompt=True) for d in chunk]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            do_sample = self.temperature > 0
            gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=do_sample,
                                      temperature=self.temperature if do_sample else None,
                                      top_p=self.top_p if do_sample else None,
                                      pad_token_id=self.tokenizer.pad_token_id)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                rubric, reason = try_parse_rubric(text, self.rubric_format)
                out.append(GeneratedRubric(text, rubric, reason))
        return out

    def generate(self, documents: list[str], *, seed: int = 0, batch_size: int = 16) -> list[Rubric | None]:
        """One rubric per document; ``None`` where the generation did not parse."""
        return [g.rubric for g in self.generate_raw(documents, seed=seed, batch_size=batch_size)]
