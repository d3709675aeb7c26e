"""Teacher configuration (flat ``teacher_*`` fields, parsed together with TRL's GRPOConfig)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .checks import at_least, choice, positive

BACKENDS = ("template", "transformers", "openai", "vllm")


@dataclass
class TeacherConfig:
    _argument_group_name = "teacher (teacher_*): the model that writes each sample from a document and a rubric"

    teacher_backend: str = field(
        default="template",
        metadata={"help": "Teacher backend: 'transformers' (local HF model), 'openai' (any OpenAI-compatible "
                          "endpoint, e.g. `vllm serve`), 'vllm' (in-process, needs the vllm extra), or 'template' "
                          "(offline deterministic stand-in for the quickstart and tests)."},
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Teacher model: hub id or local path (transformers/vllm), model name sent to the "
                          "endpoint (openai). Unused by 'template'."},
    )
    teacher_max_new_tokens: int = field(default=512, metadata={"help": "Max tokens the teacher writes per sample."})
    teacher_temperature: float = field(default=0.7, metadata={"help": "Teacher sampling temperature (0 = greedy)."})
    teacher_top_p: float = field(default=0.95, metadata={"help": "Teacher nucleus sampling top-p."})
    teacher_batch_size: int = field(default=16, metadata={"help": "Prompts per generate() call (transformers)."})
    teacher_dtype: str = field(default="auto", metadata={"help": "Teacher weights dtype (transformers/vllm)."})
    teacher_trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code (off)."})
    teacher_base_url: str | None = field(
        default=None, metadata={"help": "openai backend: base URL, e.g. http://localhost:8000/v1."}
    )
    teacher_api_key_env: str | None = field(
        default=None,
        metadata={"help": "openai backend: name of the environment variable holding the API key (the key itself "
                          "never goes in a config or a log)."},
    )
    teacher_max_document_chars: int = field(
        default=12000, metadata={"help": "A document longer than this many characters is cut before it goes into "
                                         "the teacher prompt (at the last sentence end in the window's last fifth, "
                                         "marked as cut), so a prompt never exceeds the teacher's context; the "
                                         "verifiers check the sample against the cut text. 0: never cut."})
    teacher_concurrency: int = field(default=8, metadata={"help": "openai backend: requests in flight at once."})
    teacher_timeout_s: float = field(default=120.0, metadata={"help": "openai backend: per-request timeout (s)."})
    teacher_max_retries: int = field(
        default=3, metadata={"help": "openai backend: retries on 429/5xx/timeouts/connection errors, with backoff."}
    )
    teacher_backoff_s: float = field(
        default=1.0,
        metadata={"help": "openai backend: first retry delay in seconds, doubled on every retry (with jitter); a "
                          "Retry-After header from the server takes precedence."},
    )
    teacher_max_backoff_s: float = field(
        default=60.0, metadata={"help": "openai backend: upper bound on one retry delay, Retry-After included (s)."}
    )
    teacher_breaker_window: int = field(
        default=32,
        metadata={"help": "openai backend: circuit breaker window, in requests. When more than "
                          "teacher_breaker_max_failure_rate of the last this-many requests failed for infrastructure "
                          "reasons (connection, timeout, HTTP 5xx/408/429 after the retries), the run stops with "
                          "'teacher unavailable' (exit 3) instead of going on without a teacher. 0 disables it."},
    )
    teacher_breaker_max_failure_rate: float = field(
        default=0.5,
        metadata={"help": "openai backend: share of the breaker window that may fail for infrastructure reasons "
                          "before the run stops (in [0, 1]; 0 disables the breaker)."},
    )
    teacher_extra_body: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "openai backend: extra fields merged into every chat-completion request body, as a JSON "
                          "object (a mapping in a YAML config), for what a server accepts beyond the OpenAI API: "
                          "llama.cpp's GBNF `grammar`, vLLM's `structured_outputs`, `repetition_penalty`, ... "
                          "Example: --teacher_extra_body '{\"repeat_penalty\": 1.1}'. It may not set model, "
                          "messages, stream or seed, nor max_tokens, temperature or top_p (teacher_max_new_tokens, "
                          "teacher_temperature, teacher_top_p set those)."},
    )
    teacher_grammar: str | None = field(
        default=None,
        metadata={"help": "openai backend: a GBNF grammar sent as llama.cpp's `grammar` field with every request, so "
                          "the server can only write replies of that shape: a .gbnf file, or the name of one shipped "
                          "in rubric_rl/assets/grammars (`question_answer`: \"Question:\\n...\\nAnswer:\\n...\", "
                          "for the question-writing strategies)."},
    )
    teacher_vllm_tensor_parallel_size: int = field(
        default=1, metadata={"help": "vllm backend: GPUs the in-process teacher is sharded over."}
    )
    teacher_vllm_gpu_memory_utilization: float = field(
        default=0.9, metadata={"help": "vllm backend: fraction of GPU memory vLLM may take."}
    )
    teacher_vllm_max_model_len: int | None = field(
        default=None, metadata={"help": "vllm backend: context length cap (None = the model's own)."}
    )

    def __post_init__(self):
        choice("teacher_backend", self.teacher_backend, BACKENDS)
        self.teacher_extra_body = parse_extra_body(self.teacher_extra_body)
        if self.teacher_grammar:
            if self.teacher_backend != "openai":
                raise ValueError(f"teacher_grammar is for the openai backend (a server that takes llama.cpp's grammar "
                                 f"field), not teacher_backend {self.teacher_backend!r}")
            if "grammar" in (self.teacher_extra_body or {}):
                raise ValueError("teacher_grammar and teacher_extra_body's 'grammar' are both set; keep one")
        if self.teacher_backend in ("transformers", "vllm", "openai") and not self.teacher_model_name_or_path:
            raise ValueError(f"teacher_model_name_or_path is required for teacher_backend={self.teacher_backend!r}")
        if self.teacher_backend == "openai" and not self.teacher_base_url:
            raise ValueError("teacher_base_url is required for teacher_backend='openai'")
        for name in ("teacher_max_new_tokens", "teacher_batch_size", "teacher_concurrency",
                     "teacher_vllm_tensor_parallel_size"):
            at_least(name, getattr(self, name), 1)
        positive("teacher_temperature", self.teacher_temperature, allow_zero=True)
        if not 0 < self.teacher_top_p <= 1:
            raise ValueError(f"teacher_top_p must be in (0, 1], got {self.teacher_top_p!r}")
        positive("teacher_max_document_chars", self.teacher_max_document_chars, allow_zero=True)
        positive("teacher_timeout_s", self.teacher_timeout_s)
        positive("teacher_max_retries", self.teacher_max_retries, allow_zero=True)
        positive("teacher_backoff_s", self.teacher_backoff_s, allow_zero=True)
        if self.teacher_breaker_window < 0:
            raise ValueError(f"teacher_breaker_window must be >= 0 (0 disables the breaker), got "
                             f"{self.teacher_breaker_window!r}")
        if not 0 <= self.teacher_breaker_max_failure_rate <= 1:
            raise ValueError(f"teacher_breaker_max_failure_rate must be in [0, 1] (0 disables the breaker), got "
                             f"{self.teacher_breaker_max_failure_rate!r}")
        if self.teacher_max_backoff_s < self.teacher_backoff_s:
            raise ValueError(f"teacher_max_backoff_s must be >= teacher_backoff_s ({self.teacher_backoff_s!r}), "
                             f"got {self.teacher_max_backoff_s!r}")
        if not 0 < self.teacher_vllm_gpu_memory_utilization <= 1:
            raise ValueError("teacher_vllm_gpu_memory_utilization must be in (0, 1], got "
                             f"{self.teacher_vllm_gpu_memory_utilization!r}")
        if self.teacher_vllm_max_model_len is not None and self.teacher_vllm_max_model_len < 1:
            raise ValueError(f"teacher_vllm_max_model_len must be >= 1, got {self.teacher_vllm_max_model_len!r}")
        if self.teacher_api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.teacher_api_key_env):
            # Catches the classic mistake of pasting the key itself instead of a variable name; the value is
            # deliberately not echoed.
            raise ValueError("teacher_api_key_env must be the NAME of an environment variable (letters, digits, "
                             "underscores), not the key itself")


RESERVED_BODY_KEYS = ("model", "messages", "stream", "seed")
# sampling fields rubric-rl sets per request (a strategy may ask its own temperature): each has its own setting
SAMPLING_BODY_KEYS = {"max_tokens": "teacher_max_new_tokens", "temperature": "teacher_temperature",
                      "top_p": "teacher_top_p"}


def parse_extra_body(value: dict | str | None) -> dict | None:
    """``teacher_extra_body`` as a dict: a JSON object string (the command line) or a mapping (a YAML config)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"teacher_extra_body is not valid JSON ({err.msg} at character {err.pos}): "
                             f"{value[:80]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"teacher_extra_body must be a JSON object (a mapping), got {type(value).__name__}")
    reserved = sorted(set(value) & set(RESERVED_BODY_KEYS))
    if reserved:
        raise ValueError(f"teacher_extra_body may not set {', '.join(reserved)}: rubric-rl sends those itself")
    sampling = sorted(set(value) & set(SAMPLING_BODY_KEYS))
    if sampling:
        raise ValueError(f"teacher_extra_body may not set {', '.join(sampling)}: set "
                         f"{', '.join(SAMPLING_BODY_KEYS[k] for k in sampling)} instead (rubric-rl sends them with "
                         "every request, a strategy's own temperature included)")
    return value
