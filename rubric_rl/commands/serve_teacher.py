"""``rubric-rl serve-teacher`` (also ``python -m rubric_rl.teachers.server``): a local HF model (or the template
teacher) as an OpenAI-compatible endpoint."""

from __future__ import annotations

import argparse


def make_parser() -> argparse.ArgumentParser:
    from ..configs.teacher import TeacherConfig as T  # the sampling and batching defaults are the teacher_* ones
    from ..teachers import server  # serve's docstring is the description (the module imports no torch)

    ap = argparse.ArgumentParser(prog="rubric-rl serve-teacher", description=server.serve.__doc__)
    ap.add_argument("--model", required=True,
                    help="HF hub id or local path served with the transformers backend, a 'tiny:...' spec, or "
                         "'template' for the offline template teacher.")
    ap.add_argument("--host", default=server.HOST, help="Address to listen on (loopback by default).")
    ap.add_argument("--port", type=int, default=server.PORT, help="Port to listen on.")
    ap.add_argument("--served_model_name", default=None,
                    help="Model name reported by /v1/models and accepted in requests (default: --model).")
    ap.add_argument("--documents", default=None,
                    help="Documents file feeding the template teacher's distractor pool (template only).")
    ap.add_argument("--dtype", default=T.teacher_dtype, help="Weights dtype: auto, bfloat16, float16, float32.")
    ap.add_argument("--device", default=None, help="Device, e.g. cuda:0 or cpu (default: cuda if available).")
    ap.add_argument("--max_new_tokens", type=int, default=T.teacher_max_new_tokens,
                    help="Default max tokens per completion (a request's max_tokens overrides it).")
    ap.add_argument("--temperature", type=float, default=T.teacher_temperature,
                    help="Default sampling temperature (a request's temperature overrides it).")
    ap.add_argument("--top_p", type=float, default=T.teacher_top_p,
                    help="Default nucleus top-p (requests override it).")
    ap.add_argument("--batch_size", type=int, default=T.teacher_batch_size,
                    help="Most concurrent requests generated together in one batch.")
    ap.add_argument("--batch_wait_ms", type=float, default=server.BATCH_WAIT_MS,
                    help="How long a batch waits for more concurrent requests before it runs (ms).")
    ap.add_argument("--trust_remote_code", action="store_true", help="Allow custom model code from the hub (off).")
    ap.add_argument("--api_key_env", default=None,
                    help="Name of an environment variable whose value clients must send as a Bearer token.")
    ap.add_argument("--log_level", default=server.LOG_LEVEL, help="uvicorn log level.")
    return ap


def run(args: argparse.Namespace) -> int:
    from ..teachers.server import serve

    serve(**vars(args))
    return 0
