"""The ``transformers`` teacher: a local Hugging Face causal LM, batched generation, chat template."""

from __future__ import annotations

import torch

from ..models import load_model_and_tokenizer
from .base import TeacherRequest, TeacherResult


class TransformersTeacher:
    name = "transformers"

    def __init__(self, model_name_or_path: str, *, max_new_tokens: int = 512, temperature: float = 0.7,
                 top_p: float = 0.95, batch_size: int = 16, dtype: str = "auto", trust_remote_code: bool = False,
                 device: str | torch.device | None = None, model=None, tokenizer=None):
        if model is None or tokenizer is None:
            model, tokenizer = load_model_and_tokenizer(model_name_or_path, dtype=dtype,
                                                        trust_remote_code=trust_remote_code, padding_side="left")
        self.device = torch.device(device) if device is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size = batch_size
        self.model_name = model_name_or_path

    @torch.inference_mode()
    def generate(self, requests: list[TeacherRequest]) -> list[TeacherResult]:
        results: list[TeacherResult] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            texts = [self.tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
                     for r in chunk]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            do_sample = self.temperature > 0
            # One seed per chunk: reproducible given the requests' seeds.
            torch.manual_seed(sum(r.seed for r in chunk) + start)
            out = self.model.generate(
                **enc, max_new_tokens=self.max_new_tokens, do_sample=do_sample,
                temperature=self.temperature if do_sample else None, top_p=self.top_p if do_sample else None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1]:]
            for row, req in zip(new, chunk, strict=True):
                n = int((row != self.tokenizer.pad_token_id).sum())
                text = self.tokenizer.decode(row, skip_special_tokens=True).strip()
                if not text:
                    results.append(TeacherResult(text=None, error="empty", completion_tokens=n))
                else:
                    results.append(TeacherResult(text=text, completion_tokens=n,
                                                 prompt_tokens=int(enc["attention_mask"][0].sum())))
        return results
