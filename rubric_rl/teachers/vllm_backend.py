"""The ``vllm`` teacher: an in-process ``vllm.LLM`` (optional ``vllm`` extra, imported lazily).

For a teacher on its own GPUs, prefer ``vllm serve`` + the ``openai`` backend (see DESIGN.md,
"Scale-out"); this backend is for one process that owns both the GPU and the RL loop.
"""

from __future__ import annotations

import logging

from ..configs.teacher import TeacherConfig as T  # the one place of each teacher_* default
from .base import TeacherRequest, TeacherResult

logger = logging.getLogger(__name__)

VLLM_ADVICE = ("vLLM needs Linux + CUDA; without a GPU, use teacher_backend='transformers', or run `vllm serve` / "
               "`rubric-rl serve-teacher` elsewhere and use teacher_backend='openai'")


def require_vllm() -> None:
    """Pre-flight: a :class:`~rubric_rl.errors.MissingExtra` unless vllm can be found (it is not imported)."""
    from ..errors import require_extra

    require_extra("teacher_backend='vllm'", "vllm", VLLM_ADVICE)


def import_vllm():
    """The ``vllm`` module, or a :class:`~rubric_rl.errors.MissingExtra` (an ImportError) that says how to get it."""
    try:
        import vllm
    except ImportError as err:
        from ..errors import missing_extra

        raise missing_extra("teacher_backend='vllm'", "vllm", err, VLLM_ADVICE) from err
    return vllm


class VLLMTeacher:
    name = "vllm"

    def __init__(self, model_name_or_path: str, *, max_new_tokens: int = T.teacher_max_new_tokens,
                 temperature: float = T.teacher_temperature, top_p: float = T.teacher_top_p,
                 dtype: str = T.teacher_dtype, trust_remote_code: bool = T.teacher_trust_remote_code,
                 tensor_parallel_size: int = T.teacher_vllm_tensor_parallel_size,
                 gpu_memory_utilization: float = T.teacher_vllm_gpu_memory_utilization,
                 max_model_len: int | None = T.teacher_vllm_max_model_len, seed: int = 0, llm=None):
        self.vllm = import_vllm()
        self.model_name = model_name_or_path
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        if llm is None:
            kwargs = dict(model=model_name_or_path, dtype=dtype, trust_remote_code=trust_remote_code,
                          tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                          seed=seed)
            if max_model_len is not None:
                kwargs["max_model_len"] = max_model_len
            llm = self.vllm.LLM(**kwargs)
        self.llm = llm

    def __repr__(self) -> str:
        return f"VLLMTeacher({self.model_name!r})"

    def _params(self, req: TeacherRequest, max_new: int, temp: float, nucleus: float):
        return self.vllm.SamplingParams(max_tokens=max_new, temperature=temp, top_p=nucleus, seed=int(req.seed))

    def generate(self, requests: list[TeacherRequest], *, max_new_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None) -> list[TeacherResult]:
        if not requests:
            return []
        max_new = max_new_tokens or self.max_new_tokens
        temp = self.temperature if temperature is None else temperature
        nucleus = self.top_p if top_p is None else top_p
        try:
            outs = self.llm.chat([r.messages for r in requests],
                                 sampling_params=[self._params(r, max_new, temp, nucleus) for r in requests],
                                 use_tqdm=False)
        except Exception:  # noqa: BLE001 - one bad request must not sink the batch: retry one by one
            logger.exception("vllm batched chat failed; retrying the %d requests one by one", len(requests))
            outs = []
            for r in requests:
                try:
                    outs.extend(self.llm.chat([r.messages], sampling_params=[self._params(r, max_new, temp, nucleus)],
                                              use_tqdm=False))
                except Exception as err:  # noqa: BLE001
                    outs.append(err)
        return [self._result(o) for o in outs]

    @staticmethod
    def _result(out) -> TeacherResult:
        if isinstance(out, Exception):
            return TeacherResult(text=None, error=f"generation_error:{type(out).__name__}")
        completion = out.outputs[0]
        text = (completion.text or "").strip()
        tokens = {"prompt_tokens": len(out.prompt_token_ids or []),
                  "completion_tokens": len(completion.token_ids or [])}
        meta = {"finish_reason": getattr(completion, "finish_reason", None)}
        if not text:
            return TeacherResult(text=None, error="empty", meta=meta, **tokens)
        return TeacherResult(text=text, meta=meta, **tokens)
