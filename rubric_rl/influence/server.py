"""``rubric-rl serve-influence``: the influence scorer behind an HTTP API, for every training process to share.

Under ``accelerate launch`` each training process otherwise keeps its own copy of the target and computes
influence inline. With the service, the target, its warm-up checkpoints and the validation gradients are loaded
once, at startup (``InfluenceScorer.from_config``, from the same ``--config``/``target_*``/``warmup_*``/
``influence_*`` fields as ``train`` and ``score``; the warm-up runs first if ``OUTPUT_DIR/warmup`` has none), and
the training processes (``train``'s ``reward_influence_url``, :mod:`.client`) load no target at all.

Endpoints:

* ``POST /v1/score``: ``{"samples": [MESSAGES, ...]}`` (each a message list or ``{"messages": [...]}``) ->
  ``{"results": [{"value": float | null, "reason": str | null, "truncated": bool}, ...], "fingerprint",
  "worker", "batch_samples", "score_s", "latency_s"}``: one result per sample, in order, as
  ``InfluenceScorer.score`` returns them (``value`` null with ``reason`` ``bad_format``,
  ``no_assistant_tokens``, ``nonfinite_gradient``). Errors are ``{"error": {"message", "type", "code"}}``: 400
  (not a list of samples), 401 (key), 413 (more samples than the queue holds), 429 ``busy`` with
  ``Retry-After`` (the queue is full), 500 ``scoring_error`` (the scorer raised; the batch's requests fail,
  the server goes on);
* ``GET /health``: ``{"status": "ok", "service": "rubric-rl-influence", "fingerprint", "settings", "devices",
  "workers", "max_request_samples", "max_batch_samples", "run_dir", "version"}`` (no key needed);
* ``GET /metrics``: queue depth (samples and requests waiting), samples in flight, samples/s over the last
  minute, p50/p95 request latency over the last 1024 requests, counts (requests, samples, batches, busy
  rejections, errors), per worker (device, batches, samples, busy) and the scorers' ``stats`` summed.

One worker per device (``serve_devices``; on CPU: one), each a scorer with its own thread (a scorer is not
thread-safe); the event loop only queues. Concurrent requests are **micro-batched**: a worker takes the queued
requests (whole, up to ``serve_max_batch_samples`` samples) and, when requests are coming concurrently, waits up to
``serve_batch_wait_ms`` for more, then makes one ``score`` call for all of them. A lone sequential client never
waits, and its request is exactly the in-process reward's ``score`` call. The queue is bounded
(``serve_max_queue_samples``): a request that would overflow it is answered 429 at once, with a ``Retry-After``
from the recent throughput, rather than queued without end.

fastapi and uvicorn come from the optional ``serve`` extra and are imported lazily.
"""

# No ``from __future__ import annotations`` here: FastAPI resolves the endpoint annotations (``Request``,
# imported lazily inside create_app) at runtime.
import asyncio
import logging
import math
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..configs.run import ServeInfluenceArguments as ServeArgs  # the one place of each serve_* default
from .client import SERVICE

logger = logging.getLogger(__name__)


class ScoringFailed(RuntimeError):
    """The scorer raised on a batch (its requests answer 500)."""


@dataclass
class _Job:
    samples: list
    future: asyncio.Future


@dataclass
class _Batch:
    results: list
    worker: int
    batch_samples: int
    score_s: float


def _percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))]


class ScoringPool:
    """The bounded queue and one worker per scorer (device), with micro-batching (module docstring)."""

    def __init__(self, scorers, *, devices=None, max_batch_samples: int = ServeArgs.serve_max_batch_samples,
                 batch_wait_ms: float = ServeArgs.serve_batch_wait_ms,
                 max_queue_samples: int = ServeArgs.serve_max_queue_samples):
        self.scorers = list(scorers)
        if not self.scorers:
            raise ValueError("ScoringPool needs at least one scorer")
        self.devices = [str(d) for d in devices] if devices else [f"worker{k}" for k in range(len(self.scorers))]
        self.max_batch_samples, self.max_queue_samples = max(1, int(max_batch_samples)), max(1, int(max_queue_samples))
        self.batch_wait_s = max(0.0, batch_wait_ms / 1000)
        self.executors = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"influence-worker-{k}")
                          for k in range(len(self.scorers))]
        self._pending: deque[_Job] = deque()
        self._cond: asyncio.Condition | None = None
        self._tasks: list[asyncio.Task] = []
        self.queued_samples = 0
        self.in_flight = 0
        self.counts: Counter = Counter()  # requests, samples, batches, busy, errors
        self.workers = [{"device": d, "batches": 0, "samples": 0, "seconds": 0.0, "busy": False} for d in self.devices]
        self._done: deque = deque(maxlen=1024)  # (finished at, samples, latency s) of answered requests
        self.started = time.monotonic()

    async def start(self):
        self._cond = asyncio.Condition()
        self._tasks = [asyncio.create_task(self._worker(k)) for k in range(len(self.scorers))]

    async def stop(self):
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        for ex in self.executors:
            ex.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ queue
    async def submit(self, samples: list) -> asyncio.Future | None:
        """Queue a request; None when it does not fit the queue (busy)."""
        assert self._cond is not None, "ScoringPool.start() was not awaited"
        async with self._cond:
            if self.queued_samples + len(samples) > self.max_queue_samples:
                self.counts["busy"] += 1
                return None
            future = asyncio.get_running_loop().create_future()
            self._pending.append(_Job(samples, future))
            self.queued_samples += len(samples)
            self._cond.notify()
        return future

    def _take(self, jobs: list[_Job]) -> bool:
        """Move queued requests, whole and in order, into ``jobs`` while they fit ``max_batch_samples`` (the
        first one always fits). True if any was taken."""
        took = False
        size = sum(len(j.samples) for j in jobs)
        while self._pending:
            n = len(self._pending[0].samples)
            if self._pending[0].future.done():  # its request was cancelled (the client went away): not scored
                self._pending.popleft()
                self.queued_samples -= n
                continue
            if jobs and size + n > self.max_batch_samples:
                break
            jobs.append(self._pending.popleft())
            self.queued_samples -= n
            size += n
            took = True
        return took

    async def _worker(self, k: int):
        loop = asyncio.get_running_loop()
        last = 1
        while True:
            jobs: list[_Job] = []
            async with self._cond:
                await self._cond.wait_for(lambda: bool(self._pending))
                self._take(jobs)
            # Wait for more only when clients are sending concurrently (requests were queued, or the last batch
            # had several): a lone client never pays the wait.
            if len(jobs) > 1 or last > 1:
                deadline = loop.time() + self.batch_wait_s
                while sum(len(j.samples) for j in jobs) < self.max_batch_samples:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    async with self._cond:
                        try:
                            await asyncio.wait_for(self._cond.wait_for(lambda: bool(self._pending)), timeout)
                        except asyncio.TimeoutError:
                            break
                        if not self._take(jobs):  # the next request does not fit this batch
                            break
            last = len(jobs)
            if jobs:  # (none when every queued request was cancelled)
                await self._score(loop, k, jobs)

    async def _score(self, loop, k: int, jobs: list[_Job]):
        samples = [s for j in jobs for s in j.samples]
        worker = self.workers[k]
        worker["busy"] = True
        self.in_flight += len(samples)
        t0 = time.perf_counter()
        error = None
        try:
            results = await loop.run_in_executor(self.executors[k], self.scorers[k].score, samples)
            if len(results) != len(samples):
                raise RuntimeError(f"the scorer returned {len(results)} results for {len(samples)} samples")
        except Exception as err:  # noqa: BLE001 - a failed batch fails its requests, not the server
            logger.exception("influence scoring failed on %s", self.devices[k])
            error = ScoringFailed(f"{type(err).__name__}: {' '.join(str(err).split())}"[:500])
            self.counts["errors"] += 1
        finally:
            worker["busy"] = False
            self.in_flight -= len(samples)
        seconds = time.perf_counter() - t0
        worker["batches"] += 1
        worker["samples"] += len(samples)
        worker["seconds"] += seconds
        self.counts["batches"] += 1
        i = 0
        for job in jobs:
            n = len(job.samples)
            if not job.future.done():  # (a client that went away cancelled its request)
                if error is not None:
                    job.future.set_exception(error)
                else:
                    job.future.set_result(_Batch(results[i:i + n], k, len(samples), seconds))
            i += n

    # ------------------------------------------------------------------ numbers
    def record(self, samples: int, latency_s: float) -> None:
        self.counts["requests"] += 1
        self.counts["samples"] += samples
        self._done.append((time.monotonic(), samples, latency_s))

    def samples_per_s(self, window_s: float = 60.0) -> float:
        now = time.monotonic()
        span = min(window_s, now - self.started)
        done = sum(n for t, n, _ in self._done if now - t <= window_s)
        return done / span if span > 0 else 0.0

    def retry_after_s(self) -> int:
        """Whole seconds for the queue to drain at the recent throughput, in [1, 60]."""
        rate = self.samples_per_s()
        return max(1, min(60, math.ceil(self.queued_samples / rate))) if rate > 0 else 1

    def metrics(self) -> dict:
        latencies = sorted(lat for _, _, lat in self._done)
        scorer_stats: Counter = Counter()
        for s in self.scorers:
            scorer_stats.update(getattr(s, "stats", None) or {})
        return {
            "queue_depth": self.queued_samples, "queued_requests": len(self._pending), "in_flight": self.in_flight,
            "max_queue_samples": self.max_queue_samples, "samples_per_s": self.samples_per_s(),
            "latency_s": {"p50": _percentile(latencies, 50), "p95": _percentile(latencies, 95),
                          "requests": len(latencies)},
            "requests": self.counts["requests"], "samples": self.counts["samples"], "batches": self.counts["batches"],
            "busy_rejections": self.counts["busy"], "errors": self.counts["errors"],
            "uptime_s": time.monotonic() - self.started,
            "workers": [dict(w) for w in self.workers], "scorer": dict(scorer_stats),
        }


def _json_result(r) -> dict:
    value, reason = r.value, r.reason
    if value is not None and not math.isfinite(value):  # (the scorer gives None for these already)
        value, reason = None, reason or "nonfinite_gradient"
    return {"value": None if value is None else float(value), "reason": None if value is not None else reason,
            "truncated": bool(r.truncated)}


class BadScoreRequest(ValueError):
    """A score request the service refuses (HTTP ``status`` with ``code``)."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def request_samples(body, max_samples: int) -> list:
    """The samples of a ``POST /v1/score`` body (``{"samples": [...]}``), at most ``max_samples`` of them (the queue's
    size: a larger request could never be queued); raises :class:`BadScoreRequest` otherwise."""
    samples = body.get("samples") if isinstance(body, dict) else None
    if not isinstance(samples, list):
        raise BadScoreRequest(400, "the body must be {\"samples\": [...]}: a list of chat samples (message lists or "
                                   "{\"messages\": [...]})", "invalid_samples")
    if len(samples) > max_samples:
        raise BadScoreRequest(413, f"{len(samples)} samples in one request; this service queues at most "
                                   f"{max_samples} (serve_max_queue_samples): split the request", "request_too_large")
    return samples


def health_report(pool: ScoringPool, fingerprint: str | None, settings: dict | None, run_dir) -> dict:
    """``GET /health``: what tells this service from any other server, its identity and its size."""
    from .. import __version__

    return {"status": "ok", "service": SERVICE, "version": __version__, "fingerprint": fingerprint,
            "settings": settings, "devices": pool.devices, "workers": len(pool.scorers),
            "max_request_samples": pool.max_queue_samples, "max_batch_samples": pool.max_batch_samples,
            "run_dir": None if run_dir is None else str(run_dir)}


def create_app(scorers, *, devices=None, fingerprint: str | None = None, settings: dict | None = None,
               run_dir=None, api_key: str | None = None, max_batch_samples: int = ServeArgs.serve_max_batch_samples,
               batch_wait_ms: float = ServeArgs.serve_batch_wait_ms,
               max_queue_samples: int = ServeArgs.serve_max_queue_samples):
    """A FastAPI app serving ``scorers`` (one scorer or a list: one worker each) as the influence API.

    ``fingerprint`` and ``settings`` (:func:`.client.fingerprint`, :func:`.client.settings`) are what ``/health``
    reports and what clients compare endpoints by; ``api_key``, when given, is required as a Bearer token on
    ``/v1/score`` and ``/metrics``. The caller owns the scorers (closing them is its business).
    """
    from ..errors import import_extra

    import_extra("serve-influence", "serve")
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    if not isinstance(scorers, list | tuple):
        scorers = [scorers]
    pool = ScoringPool(scorers, devices=devices, max_batch_samples=max_batch_samples, batch_wait_ms=batch_wait_ms,
                       max_queue_samples=max_queue_samples)

    @asynccontextmanager
    async def lifespan(app):
        await pool.start()
        try:
            yield
        finally:
            await pool.stop()

    app = FastAPI(title="rubric-rl influence", lifespan=lifespan)
    app.state.pool = pool

    def error(status: int, message: str, code: str, type_: str = "invalid_request_error", headers=None):
        return JSONResponse(status_code=status, headers=headers,
                            content={"error": {"message": message, "type": type_, "code": code}})

    def unauthorized(request: Request):
        if api_key is not None and request.headers.get("authorization", "") != f"Bearer {api_key}":
            return error(401, "invalid or missing API key", "invalid_api_key", "authentication_error")
        return None

    @app.get("/health")
    async def health():
        return health_report(pool, fingerprint, settings, run_dir)

    @app.get("/metrics")
    async def metrics(request: Request):
        if (resp := unauthorized(request)) is not None:
            return resp
        return pool.metrics()

    @app.post("/v1/score")
    async def score(request: Request):
        t0 = time.perf_counter()
        if (resp := unauthorized(request)) is not None:
            return resp
        try:
            body = await request.json()
        except ValueError:
            return error(400, "request body is not valid JSON", "invalid_json")
        try:
            samples = request_samples(body, pool.max_queue_samples)
        except BadScoreRequest as err:
            return error(err.status, err.message, err.code)
        if not samples:
            return {"results": [], "fingerprint": fingerprint, "worker": None, "batch_samples": 0, "score_s": 0.0,
                    "latency_s": 0.0}
        future = await pool.submit(samples)
        if future is None:
            wait = pool.retry_after_s()
            return error(429, f"busy: {pool.queued_samples} samples queued, at most {pool.max_queue_samples} "
                              f"(serve_max_queue_samples); retry in {wait} s", "busy", "rate_limit_error",
                         headers={"Retry-After": str(wait)})
        try:
            batch = await future
        except ScoringFailed as err:
            return error(500, f"scoring failed: {err}", "scoring_error", "server_error")
        latency = time.perf_counter() - t0
        pool.record(len(samples), latency)
        return {"results": [_json_result(r) for r in batch.results], "fingerprint": fingerprint,
                "worker": batch.worker, "batch_samples": batch.batch_samples, "score_s": batch.score_s,
                "latency_s": latency}

    return app


def resolve_devices(names, cfg) -> list[str]:
    """``serve_devices`` as a list of devices: ``auto`` is ``influence_device`` when that names one, else every
    visible CUDA device, else one CPU worker."""
    names = list(names or ["auto"])
    if names != ["auto"]:
        return names
    if cfg.influence_device != "auto":
        return [cfg.influence_device]
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def serve(cfg, run_dir, sa) -> None:
    """``rubric-rl serve-influence``: build one scorer per device (``InfluenceScorer.from_config``: the warm-up,
    the checkpoints and the validation gradients, once), then serve them until interrupted."""
    from ..errors import UserError, import_extra

    _, uvicorn = import_extra("serve-influence", "serve")
    from ..progress import phase
    from .client import fingerprint as settings_fingerprint
    from .client import settings as comparable_settings
    from .scorer import InfluenceScorer

    api_key = None
    if sa.serve_api_key_env:
        api_key = os.environ.get(sa.serve_api_key_env)
        if not api_key:
            raise UserError(f"serve_api_key_env: the environment variable {sa.serve_api_key_env!r} is not set or empty")
    devices = resolve_devices(sa.serve_devices, cfg)
    scorers = []
    try:
        for device in devices:
            t0 = time.perf_counter()
            phase("influence worker", f"{device}: the target {cfg.target_model_name_or_path}, its warm-up checkpoints "
                                      "and validation gradients")
            scorers.append(InfluenceScorer.from_config(cfg, run_dir, device=device))
            logger.info("worker on %s ready in %.1f s", device, time.perf_counter() - t0)
        fp = settings_fingerprint(cfg, run_dir)
        app = create_app(scorers, devices=devices, fingerprint=fp, settings=comparable_settings(cfg), run_dir=run_dir,
                         api_key=api_key, max_batch_samples=sa.serve_max_batch_samples,
                         batch_wait_ms=sa.serve_batch_wait_ms, max_queue_samples=sa.serve_max_queue_samples)
        if sa.serve_host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning("serve-influence is listening on %s: anyone who can reach it can use the target%s",
                           sa.serve_host, "" if api_key else " (no serve_api_key_env set)")
        print(f"rubric-rl serve-influence: {len(scorers)} worker(s) ({', '.join(devices)}), settings fingerprint {fp}; "
              f"listening on http://{sa.serve_host}:{sa.serve_port} (train: --reward_influence_url "
              f"http://{sa.serve_host}:{sa.serve_port})", flush=True)
        uvicorn.run(app, host=sa.serve_host, port=sa.serve_port, log_level=sa.serve_log_level,
                    timeout_graceful_shutdown=5)
    finally:
        for s in scorers:
            s.close()
