"""``rubric-rl serve-teacher``: a small OpenAI-compatible server on top of a local teacher.

For people without vLLM: the same setup (teacher behind an HTTP endpoint, reached by the ``openai``
backend) with the ``transformers`` backend doing the generation. Endpoints:

* ``GET  /v1/models``            the one served model;
* ``POST /v1/chat/completions``  non-streaming chat completions (``n=1``); honours ``max_tokens`` /
  ``max_completion_tokens`` (capped at the server's limit), ``temperature``, ``top_p`` and ``seed``;
* ``GET  /health``.

Concurrent requests are **micro-batched**: requests queued while the model is busy, plus those that
arrive within ``batch_wait_ms`` (up to ``batch_size``), go through one batched ``generate`` call, so
a client with concurrency 8 gets a real throughput gain over concurrency 1 (see
``scripts/bench_teacher.py``). The wait only happens when requests come concurrently; a single
sequential client is served at once. Generation runs in
one worker thread (the model is not thread-safe); the event loop stays free to accept requests.

fastapi and uvicorn come from the optional ``serve`` extra and are imported lazily.
"""

# No ``from __future__ import annotations`` here: FastAPI resolves the endpoint annotations (``Request``,
# imported lazily inside create_app) at runtime.
import asyncio
import inspect
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..configs.teacher import TeacherConfig as T  # the sampling and batching defaults: the teacher_* ones
from .base import TeacherRequest, TeacherResult

logger = logging.getLogger(__name__)

# serve-teacher's own defaults (it has no settings dataclass: an argparse command, no --config), written once here;
# commands/serve_teacher.py's parser reads them.
HOST, PORT, BATCH_WAIT_MS, LOG_LEVEL = "127.0.0.1", 8000, 20.0, "info"


def _import_serve_deps():
    """fastapi and uvicorn, or a :class:`~rubric_rl.errors.MissingExtra` (exit 2) saying how to install them."""
    from ..errors import import_extra

    return import_extra("serve-teacher", "serve")


def _accepts_overrides(teacher) -> bool:
    try:
        params = inspect.signature(teacher.generate).parameters
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD for p in params.values()) or {"max_new_tokens", "temperature",
                                                                     "top_p"} <= set(params)


@dataclass
class _Job:
    request: TeacherRequest
    params: tuple  # (max_new_tokens, temperature, top_p): requests are batched per distinct tuple
    future: asyncio.Future


class MicroBatcher:
    """Collects concurrent requests into batches for one (thread-unsafe) teacher."""

    def __init__(self, teacher, *, batch_size: int = T.teacher_batch_size, batch_wait_ms: float = BATCH_WAIT_MS):
        self.teacher = teacher
        self.batch_size = max(1, int(batch_size))
        self.batch_wait_s = max(0.0, batch_wait_ms / 1000)
        self.overrides = _accepts_overrides(teacher)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher-generate")
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.batched_requests = 0

    async def start(self):
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, request: TeacherRequest, params: tuple) -> TeacherResult:
        assert self.queue is not None, "MicroBatcher.start() was not awaited"
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(request, params, future))
        return await future

    async def _run(self):
        loop = asyncio.get_running_loop()
        last_size = 1
        while True:
            jobs = [await self.queue.get()]
            while len(jobs) < self.batch_size and not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            # Wait for more only when clients are sending concurrently (requests were queued, or the last batch
            # had several): a lone client never pays the wait.
            if len(jobs) > 1 or last_size > 1:
                deadline = loop.time() + self.batch_wait_s
                while len(jobs) < self.batch_size:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        jobs.append(await asyncio.wait_for(self.queue.get(), timeout))
                    except asyncio.TimeoutError:
                        break
            last_size = len(jobs)
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.params if self.overrides else (), []).append(job)
            for params, group in groups.items():
                await self._generate(loop, params, group)

    async def _generate(self, loop, params, group):
        requests = [j.request for j in group]
        kwargs = dict(zip(("max_new_tokens", "temperature", "top_p"), params, strict=False))
        try:
            results = await loop.run_in_executor(self.executor, lambda: self.teacher.generate(requests, **kwargs))
            if len(results) != len(requests):
                raise RuntimeError(f"teacher returned {len(results)} results for {len(requests)} requests")
        except Exception as err:  # noqa: BLE001 - a failed batch fails its requests, not the server
            logger.exception("teacher generate failed")
            results = [TeacherResult(text=None, error=f"generation_error:{type(err).__name__}")] * len(requests)
        self.batches += 1
        self.batched_requests += len(requests)
        for job, result in zip(group, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)


def _text_content(content) -> str:
    """OpenAI message content: a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise ValueError("message content must be a string or a list of text parts")


def create_app(teacher, *, model_name: str | None = None, api_key: str | None = None,
               batch_size: int = T.teacher_batch_size, batch_wait_ms: float = BATCH_WAIT_MS,
               max_new_tokens: int = T.teacher_max_new_tokens, temperature: float = T.teacher_temperature,
               top_p: float = T.teacher_top_p):
    """A FastAPI app serving ``teacher`` as an OpenAI-compatible chat endpoint.

    ``max_new_tokens`` / ``temperature`` / ``top_p`` are the defaults for requests that do not set
    them; ``max_new_tokens`` is also the cap. ``api_key``, when given, is required as a Bearer token.
    """
    _import_serve_deps()
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    served = model_name or getattr(teacher, "model_name", None) or getattr(teacher, "name", "teacher")
    batcher = MicroBatcher(teacher, batch_size=batch_size, batch_wait_ms=batch_wait_ms)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="rubric-rl teacher", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.teacher = teacher

    def error(status: int, message: str, code: str, type_: str = "invalid_request_error"):
        return JSONResponse(status_code=status, content={"error": {"message": message, "type": type_,
                                                                   "code": code}})

    def unauthorized(request: Request):
        if api_key is None:
            return None
        if request.headers.get("authorization", "") != f"Bearer {api_key}":
            return error(401, "invalid or missing API key", "invalid_api_key", "authentication_error")
        return None

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served, "batches": batcher.batches,
                "batched_requests": batcher.batched_requests}

    @app.get("/v1/models")
    async def models(request: Request):
        if (resp := unauthorized(request)) is not None:
            return resp
        return {"object": "list", "data": [{"id": served, "object": "model", "created": created,
                                            "owned_by": "rubric-rl"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if (resp := unauthorized(request)) is not None:
            return resp
        try:
            body = await request.json()
        except ValueError:
            return error(400, "request body is not valid JSON", "invalid_json")
        try:
            messages, params, seed = parse_chat_request(body, max_new_tokens=max_new_tokens,
                                                        temperature=temperature, top_p=top_p)
        except BadChatRequest as err:
            return error(400, err.message, err.code)
        result = await batcher.submit(TeacherRequest(messages=messages, seed=seed), params)
        if result.text is None and result.error not in ("empty",):
            return error(500, f"teacher failed: {result.error}", result.error or "teacher_error", "server_error")
        return chat_completion(result, served)

    return app


class BadChatRequest(ValueError):
    """A chat completion request the server refuses (HTTP 400 with ``code``)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.message, self.code = message, code


def parse_chat_request(body, *, max_new_tokens: int, temperature: float, top_p: float) -> tuple[list, tuple, int]:
    """``(messages, (max_new_tokens, temperature, top_p), seed)`` of a chat completion request's JSON body: the
    request's sampling parameters where it sets them, else the server's (``max_new_tokens`` is also the cap).
    Raises :class:`BadChatRequest` for what the server does not serve or cannot read."""
    if not isinstance(body, dict):
        raise BadChatRequest("request body must be a JSON object", "invalid_body")
    if body.get("stream"):
        raise BadChatRequest("streaming is not supported by rubric-rl serve-teacher", "stream_unsupported")
    if body.get("n", 1) != 1:
        raise BadChatRequest("only n=1 is supported", "n_unsupported")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadChatRequest("'messages' must be a non-empty list", "invalid_messages")
    try:
        messages = [{"role": str(m["role"]), "content": _text_content(m.get("content", ""))} for m in raw]
    except (TypeError, KeyError, ValueError) as err:
        raise BadChatRequest(f"bad message: {err}", "invalid_messages") from None
    try:
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or max_new_tokens
        limit = min(int(limit), max_new_tokens)
        temp = float(body["temperature"]) if body.get("temperature") is not None else temperature
        nucleus = float(body["top_p"]) if body.get("top_p") is not None else top_p
        seed = int(body["seed"]) if body.get("seed") is not None else 0
    except (TypeError, ValueError) as err:
        raise BadChatRequest(f"bad sampling parameter: {err}", "invalid_parameter") from None
    if limit < 1 or temp < 0 or not 0 < nucleus <= 1:
        raise BadChatRequest("need max_tokens >= 1, temperature >= 0, 0 < top_p <= 1", "invalid_parameter")
    return messages, (limit, temp, nucleus), seed


def chat_completion(result: TeacherResult, served: str) -> dict:
    """The OpenAI chat completion object of one teacher result (an ``empty`` generation is an empty message)."""
    usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
             "total_tokens": result.prompt_tokens + result.completion_tokens}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": served,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text or ""},
                     "finish_reason": result.meta.get("finish_reason", "stop")}],
        "usage": usage,
    }


class BackgroundServer:
    """Run an ASGI app with uvicorn in a daemon thread (tests, benchmarks; the teacher's and the influence
    service's apps). ``port=0`` picks a free port.

    >>> with BackgroundServer(app) as srv:
    ...     srv.base_url  # 'http://127.0.0.1:PORT/v1'
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        _, uvicorn = _import_serve_deps()
        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                     timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="background-server", daemon=True)
        self.host = host
        self.port: int | None = None

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start within {timeout}s")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:  # an OpenAI-compatible app's base URL
        return f"{self.url}/v1"

    def stop(self, timeout: float = 10.0):
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def build_local_teacher(model: str, *, documents: str | None = None, dtype: str = T.teacher_dtype, device=None,
                        max_new_tokens: int = T.teacher_max_new_tokens, temperature: float = T.teacher_temperature,
                        top_p: float = T.teacher_top_p, batch_size: int = T.teacher_batch_size,
                        trust_remote_code: bool = T.teacher_trust_remote_code):
    """The teacher ``serve`` puts behind the endpoint: ``model="template"`` serves the offline template
    teacher (``documents``: a documents jsonl for its distractor pool); anything else is a transformers
    model (hub id, local path, or a ``tiny:`` spec)."""
    if model == "template":
        from .template import TemplateTeacher

        texts = None
        if documents:
            from ..jsonl import iter_jsonl

            texts = [row["text"] for row in iter_jsonl(documents)]
        return TemplateTeacher(texts)
    from .hf import TransformersTeacher

    return TransformersTeacher(model, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               batch_size=batch_size, dtype=dtype, trust_remote_code=trust_remote_code,
                               device=device)


def serve(model: str, host: str = HOST, port: int = PORT, *, served_model_name: str | None = None,
          documents: str | None = None, dtype: str = T.teacher_dtype, device: str | None = None,
          max_new_tokens: int = T.teacher_max_new_tokens, temperature: float = T.teacher_temperature,
          top_p: float = T.teacher_top_p, batch_size: int = T.teacher_batch_size,
          batch_wait_ms: float = BATCH_WAIT_MS, trust_remote_code: bool = T.teacher_trust_remote_code,
          api_key_env: str | None = None, log_level: str = LOG_LEVEL) -> None:
    """Serve ``model`` (transformers backend, or ``"template"``) as an OpenAI-compatible endpoint; blocks.

    ``api_key_env`` names an environment variable whose value clients must send as a Bearer token.
    """
    _, uvicorn = _import_serve_deps()
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            from ..errors import UserError

            raise UserError(f"serve: environment variable {api_key_env!r} (api_key_env) is not set or empty")
    teacher = build_local_teacher(model, documents=documents, dtype=dtype, device=device,
                                  max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  batch_size=batch_size, trust_remote_code=trust_remote_code)
    app = create_app(teacher, model_name=served_model_name or model, api_key=api_key, batch_size=batch_size,
                     batch_wait_ms=batch_wait_ms, max_new_tokens=max_new_tokens, temperature=temperature,
                     top_p=top_p)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serve-teacher is listening on %s: anyone who can reach it can use the model%s", host,
                       "" if api_key else " (no api_key_env set)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)


if __name__ == "__main__":  # ``python -m rubric_rl.teachers.server ARGS`` is ``rubric-rl serve-teacher ARGS``
    import sys

    from rubric_rl.cli import main

    main(["serve-teacher", *sys.argv[1:]])
