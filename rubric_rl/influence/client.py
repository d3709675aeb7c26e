"""The client of ``rubric-rl serve-influence``: what ``train`` uses instead of an in-process scorer when
``reward_influence_url`` is set (:class:`InfluenceClient`), and the service's identity (:func:`settings`,
:func:`fingerprint`), shared with :mod:`.server`.

:class:`InfluenceClient` has the scorer's interface that the reward uses (``score(samples) ->
[InfluenceResult]``, ``stats``, ``close()``), so :class:`~rubric_rl.reward.InfluenceReward` takes it from its
factory unchanged. One reward call is one ``POST /v1/score`` (split only past the service's
``max_request_samples``), so the service makes the scorer call the in-process reward makes and returns the same
values. Values travel as JSON numbers (Python's float repr, exact).

Failure handling, per request (the ``openai`` teacher's rules, :mod:`rubric_rl.teachers.openai_backend`):

* 429 (busy: the service's queue is full), 5xx, 408, timeouts, broken or refused connections and malformed
  answers (a 200 whose body is not the service's reply) are retried up to ``max_retries`` times with
  exponential backoff and jitter, or after the service's ``Retry-After``, each delay capped at
  ``max_backoff_s``; with several endpoints a retry goes to another one;
* a request that still fails gives every sample ``InfluenceResult(None, "service_<code>")`` (``code`` one of
  ``http_<status>``, ``timeout``, ``connection_error``, ``bad_response``): the reward leaves those rollouts
  unscored (``influence_service_<code>``, None, never 0);
* a circuit breaker (``teachers.base.CircuitBreaker``: ``breaker_window`` requests, ``breaker_max_failure_rate``)
  counts the requests that failed for good that way; once tripped, ``score`` raises
  :class:`~rubric_rl.errors.InfluenceUnavailable` naming the endpoint and the last error (exit 3), and every
  later call raises it at once;
* any other 4xx (a bad key, a wrong URL) cannot be a sample's fault (a sample the scorer cannot use is a
  per-sample reason in a 200): it raises :class:`~rubric_rl.errors.UserError` at once, as does a service whose
  settings fingerprint changed under a running client (restarted with other settings: its scores would not be
  comparable with the run's earlier ones).

With several endpoints, ``least_loaded`` asks each one's ``GET /metrics`` (a short timeout) before a request and
sends to the one with the fewest samples queued plus in flight (over every training process), ``round_robin``
takes turns; an endpoint that failed is avoided for ``cooldown_s`` while another one is up.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import httpx

from ..configs.influence import InfluenceConfig
from ..configs.train import RubricRLArguments as TrainArgs  # the one place of each reward_influence_* default
from ..errors import InfluenceUnavailable, UserError
from ..provenance import file_sha256
from ..teachers.base import CircuitBreaker, is_infrastructure_error
from ..teachers.openai_backend import RETRY_STATUSES, parse_retry_after
from .scorer import InfluenceResult
from .warmup import warmup_dir

logger = logging.getLogger(__name__)

SERVICE = "rubric-rl-influence"  # /health's "service": what tells an influence service from any other server
SCORE_PATH, HEALTH_PATH, METRICS_PATH = "/v1/score", "/health", "/metrics"
# Influence settings that do not change a score (where and how fast it is computed; file paths, whose contents
# the fingerprint hashes instead).
FREE_SETTINGS = ("influence_device", "influence_batch_size", "influence_proj_memory_mb", "influence_proj_layerwise",
                 "target_trust_remote_code", "warmup_data", "influence_validation_data")
SERVICE_PREFIX = "service_"  # reason of a sample whose request failed for good: service_<code>


def settings(cfg: InfluenceConfig) -> dict:
    """The influence settings that decide a score (every field but :data:`FREE_SETTINGS`)."""
    return {k: v for k, v in asdict(cfg).items() if k not in FREE_SETTINGS}


def fingerprint(cfg: InfluenceConfig, run_dir: str | Path) -> str:
    """What a service's scores depend on: :func:`settings`, the validation file's contents and the finished
    warm-up's defining arguments (``RUN_DIR/warmup/warmup_args.json``, the warm-up data's hash included)."""
    import hashlib

    wargs = warmup_dir(run_dir) / "warmup_args.json"
    payload = {"settings": settings(cfg), "validation_sha256": file_sha256(cfg.influence_validation_data),
               "warmup": json.loads(wargs.read_text()) if wargs.exists() else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def normalize_url(url: str) -> str:
    """``http://host:port`` from what a user writes (a trailing ``/`` or ``/v1`` is dropped)."""
    url = url.strip().rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def _is_infrastructure(code: str) -> bool:
    return is_infrastructure_error(code) or code == "bad_response"


class InfluenceClient:
    """``score`` through one or several ``rubric-rl serve-influence`` endpoints (see the module docstring)."""

    def __init__(self, urls, *, balance: str = TrainArgs.reward_influence_balance,
                 timeout_s: float = TrainArgs.reward_influence_timeout_s,
                 max_retries: int = TrainArgs.reward_influence_max_retries,
                 backoff_s: float = TrainArgs.reward_influence_backoff_s,
                 max_backoff_s: float = TrainArgs.reward_influence_max_backoff_s,
                 breaker_window: int = TrainArgs.reward_influence_breaker_window,
                 breaker_max_failure_rate: float = TrainArgs.reward_influence_breaker_max_failure_rate,
                 api_key_env: str | None = TrainArgs.reward_influence_api_key_env,
                 probe_timeout_s: float = 2.0, cooldown_s: float = 30.0):  # (these two have no setting)
        urls = [urls] if isinstance(urls, str) else list(urls or [])
        if not urls:
            raise ValueError("InfluenceClient: no endpoint (reward_influence_url)")
        if balance not in ("least_loaded", "round_robin"):
            raise ValueError(f"InfluenceClient: balance must be least_loaded or round_robin, got {balance!r}")
        self.urls = [normalize_url(u) for u in urls]
        self.endpoint = ", ".join(self.urls)
        self.balance, self.timeout_s = balance, timeout_s
        self.probe_timeout_s, self.cooldown_s = probe_timeout_s, cooldown_s
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise UserError(f"reward_influence_api_key_env: the environment variable {api_key_env!r} is not set "
                                "or empty")
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s))
        self.breaker = CircuitBreaker(self.endpoint, window=breaker_window, max_failure_rate=breaker_max_failure_rate,
                                      unavailable=InfluenceUnavailable)
        self.stats: Counter = Counter()  # per sample, as InfluenceScorer.stats: scored, truncated, one per reason
        self.transport: Counter = Counter()  # requests, attempts, retries, failures, busy (429s)
        self.per_endpoint: Counter = Counter()  # successful requests per endpoint
        self.fingerprint: str | None = None
        self.health: dict[str, dict] = {}  # url -> its /health, from connect()
        self.max_request_samples: int | None = None
        self._turn = 0
        self._down_until: dict[str, float] = {}

    @classmethod
    def from_args(cls, args) -> "InfluenceClient":
        """From ``train``'s ``reward_influence_*`` fields (:class:`~rubric_rl.configs.train.RubricRLArguments`)."""
        return cls(args.reward_influence_url, balance=args.reward_influence_balance,
                   timeout_s=args.reward_influence_timeout_s, max_retries=args.reward_influence_max_retries,
                   backoff_s=args.reward_influence_backoff_s, max_backoff_s=args.reward_influence_max_backoff_s,
                   breaker_window=args.reward_influence_breaker_window,
                   breaker_max_failure_rate=args.reward_influence_breaker_max_failure_rate,
                   api_key_env=args.reward_influence_api_key_env)

    def __repr__(self) -> str:  # never the key
        return f"InfluenceClient(urls={self.urls!r}, balance={self.balance!r})"

    # ------------------------------------------------------------------ connecting
    def connect(self, cfg: InfluenceConfig | None = None, *, wait_s: float = TrainArgs.reward_influence_wait_s) -> dict:
        """Ask every endpoint's ``/health`` (waiting up to ``wait_s`` for each to answer) and ``/metrics`` (the
        key, when the service wants one). Raises :class:`UserError` for an endpoint that does not answer, is no
        influence service, refuses the key, or serves other settings than the first endpoint; logs a warning
        naming each of ``cfg``'s settings (this run's) that the service's differ from. Returns :meth:`describe`."""
        for url in self.urls:
            health = self._wait_for_health(url, wait_s)
            if health.get("service") != SERVICE or not isinstance(health.get("fingerprint"), str):
                raise UserError(f"reward_influence_url: {url} answers /health but is no influence service (got "
                                f"{json.dumps(health)[:200]}); start `rubric-rl serve-influence` there")
            try:
                resp = self._http.get(url + METRICS_PATH, timeout=self.probe_timeout_s + 10)
            except httpx.HTTPError as err:
                raise UserError(f"reward_influence_url: {url}/metrics: {type(err).__name__}: {err}") from None
            if resp.status_code == 401:
                raise UserError(f"reward_influence_url: {url} refuses the key (HTTP 401): set "
                                "reward_influence_api_key_env to the variable holding the service's key")
            if self.fingerprint is None:
                self.fingerprint = health["fingerprint"]
            elif health["fingerprint"] != self.fingerprint:
                first = self.urls[0]
                diff = _differences(self.health[first].get("settings") or {}, health.get("settings") or {}, first)
                raise UserError(f"reward_influence_url: {url} serves other influence settings than {first} "
                                f"(fingerprint {health['fingerprint']} vs {self.fingerprint}"
                                f"{'; ' + diff if diff else ': the validation data or the warm-up differ'}); "
                                "their scores are not comparable: serve every endpoint with the same config")
            self.health[url] = health
            limit = health.get("max_request_samples")
            if isinstance(limit, int) and limit > 0:
                self.max_request_samples = min(limit, self.max_request_samples or limit)
        if cfg is not None:
            diff = _differences(settings(cfg), self.health[self.urls[0]].get("settings") or {})
            if diff:
                logger.warning("the influence service scores with other settings than this run's config (%s); the "
                               "rewards are the service's: start it with the same --config", diff)
        return self.describe()

    def _wait_for_health(self, url: str, wait_s: float) -> dict:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                resp = self._http.get(url + HEALTH_PATH, timeout=self.probe_timeout_s + 10)
                if resp.status_code == 200:
                    return resp.json()
                why = f"HTTP {resp.status_code} from /health"
            except (httpx.HTTPError, ValueError) as err:
                why = f"{type(err).__name__}: {err}"
            if time.monotonic() >= deadline:
                waited = f" within {wait_s:g} s" if wait_s else ""
                raise UserError(f"reward_influence_url: {url} does not answer{waited} ({why}); start it with "
                                "`rubric-rl serve-influence --config C --output_dir D` (it listens once its warm-up "
                                "and validation gradients are loaded; reward_influence_wait_s waits for it) or fix "
                                "the URL")
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def describe(self) -> dict:
        """The endpoints, their workers and devices, the settings fingerprint, and the request counts."""
        return {"urls": self.urls, "balance": self.balance, "fingerprint": self.fingerprint,
                "workers": {u: h.get("devices") for u, h in self.health.items()},
                "requests": dict(self.transport), "per_endpoint": dict(self.per_endpoint)}

    # ------------------------------------------------------------------ scoring
    def score(self, samples) -> list[InfluenceResult]:
        """One :class:`InfluenceResult` per sample (a message list or ``{"messages": [...]}``), same order, as
        ``InfluenceScorer.score``; a request that failed for good gives ``reason="service_<code>"``."""
        self.breaker.check()
        samples = [s["messages"] if isinstance(s, dict) and "messages" in s else s for s in samples]
        if not samples:
            return []
        size = self.max_request_samples or len(samples)
        results: list[InfluenceResult] = []
        for i in range(0, len(samples), size):
            results.extend(self._request(samples[i:i + size]))
        for r in results:
            self.stats["scored" if r.reason is None else r.reason] += 1
            self.stats["truncated"] += bool(r.truncated)
        return results

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _request(self, samples: list) -> list[InfluenceResult]:
        self.transport["requests"] += 1
        error, detail, avoid = "unknown", None, set()
        for attempt in range(self.max_retries + 1):
            self.breaker.check()
            url = self._pick(avoid)
            self.transport["attempts"] += 1
            retry_after = None
            try:
                resp = self._http.post(url + SCORE_PATH, json={"samples": samples})
            except httpx.TimeoutException:
                error, detail = "timeout", f"{url}: no answer within {self.timeout_s:g} s"
            except httpx.TransportError as err:  # refused, reset, remote closed, protocol errors
                error, detail = "connection_error", f"{url}: {type(err).__name__}: {err}"
            else:
                if resp.status_code == 200:
                    parsed = self._parse(url, resp, len(samples))
                    if parsed is not None:
                        self.breaker.record(False)
                        self.per_endpoint[url] += 1
                        self._down_until.pop(url, None)
                        return parsed
                    error, detail = "bad_response", f"{url}: a 200 that is not the service's reply"
                else:
                    error, detail = f"http_{resp.status_code}", f"{url}: {_error_message(resp)}"
                    if resp.status_code == 429:
                        self.transport["busy"] += 1
                    elif resp.status_code not in RETRY_STATUSES:
                        raise UserError(f"influence service {url} refused a request (HTTP {resp.status_code}: "
                                        f"{_error_message(resp)}); check reward_influence_url and "
                                        "reward_influence_api_key_env")
                    retry_after = parse_retry_after(resp.headers.get("retry-after"))
            self._down_until[url] = time.monotonic() + self.cooldown_s
            if len(self.urls) > 1:
                avoid.add(url)
            if attempt < self.max_retries:
                self.transport["retries"] += 1
                delay = self._delay(attempt, retry_after)
                logger.debug("influence request failed (%s), retry %d/%d in %.2fs", detail, attempt + 1,
                             self.max_retries, delay)
                time.sleep(delay)
        self.transport["failures"] += 1
        logger.warning("influence request of %d samples failed for good: %s", len(samples), detail or error)
        self.breaker.record(_is_infrastructure(error), f"{error} ({detail})" if detail else error)
        self.breaker.check()
        return [InfluenceResult(None, SERVICE_PREFIX + error) for _ in samples]

    def _parse(self, url: str, resp: httpx.Response, n: int) -> list[InfluenceResult] | None:
        try:
            body = resp.json()
            rows = body["results"]
            if not isinstance(rows, list) or len(rows) != n:
                return None
            out = []
            for row in rows:
                value, reason = row["value"], row.get("reason")
                if value is not None:
                    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                        return None
                    value = float(value)
                elif not isinstance(reason, str):
                    return None
                out.append(InfluenceResult(value, reason if value is None else None, bool(row.get("truncated"))))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        served = body.get("fingerprint")
        if self.fingerprint is None:
            self.fingerprint = served
        elif served != self.fingerprint:
            raise UserError(f"influence service {url} now serves other influence settings (fingerprint {served}, "
                            f"was {self.fingerprint}): its scores are not comparable with this run's; restart it "
                            "with the run's config")
        return out

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        base = self.backoff_s * (2 ** attempt)
        return min(self.max_backoff_s, base * (0.5 + random.random() / 2))

    def _pick(self, avoid: set) -> str:
        """The endpoint of the next attempt: among those not in ``avoid`` and not cooling down after a failure
        (when there is one), the least loaded or the next in turn."""
        if len(self.urls) == 1:
            return self.urls[0]
        now = time.monotonic()
        order = self.urls[self._turn % len(self.urls):] + self.urls[:self._turn % len(self.urls)]
        self._turn += 1
        fresh = [u for u in order if u not in avoid]
        up = [u for u in fresh if self._down_until.get(u, 0) <= now]
        candidates = up or fresh or order
        if self.balance == "round_robin" or len(candidates) == 1:
            return candidates[0]
        loads = {u: self._load(u) for u in candidates}
        return min(candidates, key=lambda u: loads[u])  # min keeps the first of equals: turns break ties

    def _load(self, url: str) -> float:
        try:
            m = self._http.get(url + METRICS_PATH, timeout=self.probe_timeout_s).json()
            return float(m["queue_depth"]) + float(m["in_flight"])
        except Exception:  # noqa: BLE001 - an endpoint that does not answer is the most loaded
            return math.inf


def _differences(mine: dict, theirs: dict, label: str = "this run") -> str:
    names = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    return ", ".join(f"{k}={theirs.get(k)!r} ({label}: {mine.get(k)!r})" for k in names)


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json()["error"]
        return f"{err.get('code')}: {err.get('message')}"
    except Exception:  # noqa: BLE001 - any other body
        return " ".join(resp.text.split())[:200] or f"HTTP {resp.status_code}"
