"""The ``openai`` teacher: any OpenAI-compatible chat endpoint (``vllm serve``, ``rubric-rl serve-teacher``, ...).

``POST {base_url}/chat/completions``, one HTTP request per :class:`TeacherRequest`, sent concurrently
(at most ``concurrency`` in flight) from an ``httpx.AsyncClient``.

Failure handling, per request:

* 429, 5xx (and 408), timeouts, broken or refused connections are retried up to ``max_retries``
  times, with exponential backoff and jitter (``backoff_s * 2**attempt``), or after the server's
  ``Retry-After`` when it sends one; every delay is capped at ``max_backoff_s``;
* other 4xx answers are not retried;
* a request that still fails becomes ``TeacherResult(text=None, error=code)`` with ``code`` one of
  ``http_<status>``, ``timeout``, ``connection_error``, ``bad_response`` (a 200 whose body is not
  a chat completion), ``empty`` (a completion without text); the other requests are unaffected;
* a circuit breaker (``breaker_window``, ``breaker_max_failure_rate``) watches the requests that failed
  for good for infrastructure reasons (timeout, connection, 5xx, 408, 429): when more than the allowed
  share of the last ``breaker_window`` requests did, ``generate()`` cancels what is in flight and raises
  :class:`~rubric_rl.teachers.base.TeacherUnavailable` naming the endpoint and the last error, and every
  later call raises it at once.

``generate()`` is synchronous. The HTTP work runs on a private event loop in a daemon thread owned
by the teacher, so it works the same from plain scripts, from worker threads and from code that
already runs an event loop (TRL, notebooks): the caller's loop is never touched or nested.

The API key is read from the environment variable named by ``api_key_env``; it lives only in the
request headers and never appears in ``repr()``, errors or logs.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import threading
import time
from concurrent.futures import Future

import httpx

from ..configs.teacher import TeacherConfig as T  # the one place of each teacher_* default
from ..configs.teacher import parse_extra_body
from .base import CircuitBreaker, TeacherRequest, TeacherResult, is_infrastructure_error

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _LoopThread:
    """A private asyncio loop running forever in a daemon thread."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self):
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class OpenAITeacher:
    """Teacher behind an OpenAI-compatible ``/chat/completions`` endpoint (see module docstring)."""

    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = T.teacher_api_key_env,
                 max_new_tokens: int = T.teacher_max_new_tokens, temperature: float = T.teacher_temperature,
                 top_p: float = T.teacher_top_p, concurrency: int = T.teacher_concurrency,
                 timeout_s: float = T.teacher_timeout_s, max_retries: int = T.teacher_max_retries,
                 backoff_s: float = T.teacher_backoff_s, max_backoff_s: float = T.teacher_max_backoff_s,
                 send_seed: bool = True, extra_body: dict | None = None,
                 breaker_window: int = T.teacher_breaker_window,
                 breaker_max_failure_rate: float = T.teacher_breaker_max_failure_rate):
        if not base_url:
            raise ValueError("OpenAITeacher: base_url is required (e.g. http://localhost:8000/v1)")
        if concurrency < 1:
            raise ValueError(f"OpenAITeacher: concurrency must be >= 1, got {concurrency!r}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model_name = model
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.send_seed = send_seed
        self.extra_body = dict(parse_extra_body(extra_body) or {})  # the config's check, for direct use too
        self.api_key_env = api_key_env
        self._headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(f"OpenAITeacher: environment variable {api_key_env!r} (teacher_api_key_env) is not "
                                 "set or empty")
            self._headers["Authorization"] = f"Bearer {key}"
        self._runner: _LoopThread | None = None
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "http_attempts": 0, "retries": 0, "failures": 0}
        self.breaker = CircuitBreaker(self.base_url, window=breaker_window, max_failure_rate=breaker_max_failure_rate)

    def __repr__(self) -> str:  # never the key
        return (f"OpenAITeacher(base_url={self.base_url!r}, model={self.model_name!r}, "
                f"concurrency={self.concurrency}, api_key_env={self.api_key_env!r})")

    # ------------------------------------------------------------------ public
    def generate(self, requests: list[TeacherRequest], *, max_new_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None) -> list[TeacherResult]:
        if not requests:
            return []
        self.breaker.check()
        params = {"max_tokens": max_new_tokens or self.max_new_tokens,
                  "temperature": self.temperature if temperature is None else temperature,
                  "top_p": self.top_p if top_p is None else top_p}
        runner = self._ensure_runner()
        return runner.submit(self._generate_all(requests, params)).result()

    def close(self) -> None:
        """Close the HTTP connections and stop the private loop (the teacher can be used again after)."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is None:
            return
        client = self._client
        if client is not None:
            try:
                runner.submit(client.aclose()).result(timeout=5)
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
        self._client, self._sem = None, None
        runner.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        runner = getattr(self, "_runner", None)
        if runner is not None:  # no graceful aclose here: the loop thread may be the one collecting us
            try:
                runner.loop.call_soon_threadsafe(runner.loop.stop)
            except Exception:  # noqa: BLE001 - loop already closed
                pass

    # ------------------------------------------------------------------ internals
    def _ensure_runner(self) -> _LoopThread:
        with self._lock:
            if self._runner is None:
                self._runner = _LoopThread(name=f"openai-teacher-{id(self):x}")
            return self._runner

    async def _generate_all(self, requests, params) -> list[TeacherResult]:
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers=self._headers, timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            )
            self._sem = asyncio.Semaphore(self.concurrency)
        tasks = [asyncio.ensure_future(self._one(req, params)) for req in requests]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        if pending:  # the breaker tripped (or a bug): stop sending the rest
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        errors = [t.exception() for t in tasks if t.done() and not t.cancelled()]  # (retrieves every one)
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return [t.result() for t in tasks]

    def _payload(self, req: TeacherRequest, params: dict) -> dict:
        body = {"model": self.model_name, "messages": req.messages, "stream": False, **params, **self.extra_body}
        if self.send_seed:
            body["seed"] = int(req.seed)
        return body

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        base = self.backoff_s * (2 ** attempt)
        return min(self.max_backoff_s, base * (0.5 + random.random() / 2))

    async def _one(self, req: TeacherRequest, params: dict) -> TeacherResult:
        payload = self._payload(req, params)
        assert self._sem is not None and self._client is not None
        async with self._sem:
            self.stats["requests"] += 1
            error, detail = "unknown", None
            for attempt in range(self.max_retries + 1):
                self.breaker.check()  # tripped by another request: do not send this one
                self.stats["http_attempts"] += 1
                retry_after = None
                try:
                    resp = await asyncio.wait_for(self._client.post(self.url, json=payload), self.timeout_s)
                except (asyncio.TimeoutError, httpx.TimeoutException):
                    error, detail = "timeout", f"no answer within {self.timeout_s:g} s"
                except httpx.TransportError as err:  # refused, reset, remote closed, protocol errors
                    error, detail = "connection_error", f"{type(err).__name__}: {err}"
                    logger.debug("teacher request: %s: %s", type(err).__name__, err)
                else:
                    if resp.status_code == 200:
                        self.breaker.record(False)
                        return self._parse(resp, attempts=attempt + 1)
                    error, detail = f"http_{resp.status_code}", None
                    if resp.status_code not in RETRY_STATUSES:
                        break
                    retry_after = parse_retry_after(resp.headers.get("retry-after"))
                if attempt < self.max_retries:
                    self.stats["retries"] += 1
                    delay = self._delay(attempt, retry_after)
                    logger.debug("teacher request failed (%s), retry %d/%d in %.2fs", error, attempt + 1,
                                 self.max_retries, delay)
                    await asyncio.sleep(delay)
            self.stats["failures"] += 1
            logger.warning("teacher request failed for good: %s", error)
            self.breaker.record(is_infrastructure_error(error), f"{error} ({detail})" if detail else error)
            self.breaker.check()
            return TeacherResult(text=None, error=error, meta={"attempts": attempt + 1})

    @staticmethod
    def _parse(resp: httpx.Response, attempts: int) -> TeacherResult:
        meta = {"attempts": attempts}
        try:
            data = resp.json()
            choice = data["choices"][0]
            message = choice["message"]
            text = message.get("content")
            if text is not None and not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return TeacherResult(text=None, error="bad_response", meta=meta)
        meta["finish_reason"] = choice.get("finish_reason")
        usage = data.get("usage") or {}
        tokens = {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
                  "completion_tokens": int(usage.get("completion_tokens") or 0)}
        if not text or not text.strip():
            return TeacherResult(text=None, error="empty", meta=meta, **tokens)
        return TeacherResult(text=text.strip(), meta=meta, **tokens)
