"""``rubric-rl serve-influence`` and its client: the scores are the in-process scorer's, over a real uvicorn server
on 127.0.0.1; micro-batching, the bounded queue (429 + Retry-After), metrics, several workers and endpoints.

The faults (the service killed mid-run, restarted, busy, answering garbage) and the train-level equality are in
tests/test_influence_service_train.py.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from rubric_rl.configs.influence import InfluenceConfig  # noqa: E402
from rubric_rl.errors import InfluenceUnavailable, UserError  # noqa: E402
from rubric_rl.influence.client import InfluenceClient, fingerprint, settings  # noqa: E402
from rubric_rl.influence.scorer import InfluenceResult  # noqa: E402
from rubric_rl.influence.server import create_app  # noqa: E402
from rubric_rl.teachers.server import BackgroundServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "data" / "quickstart"
TARGET = "tiny:hidden=32,layers=2,heads=4,seed=1"
# The influence settings of the service and of the in-process scorer (as flags: the service is also started as
# `rubric-rl serve-influence` in a subprocess).
FLAGS = ["--target_model_name_or_path", TARGET, "--warmup_data", str(QUICKSTART / "warmup.jsonl"),
         "--warmup_epochs", "1", "--warmup_learning_rate", "0.001",
         "--influence_validation_data", str(QUICKSTART / "validation.jsonl"), "--influence_proj_dim", "256"]


def influence_cfg() -> InfluenceConfig:
    return InfluenceConfig(target_model_name_or_path=TARGET, warmup_data=str(QUICKSTART / "warmup.jsonl"),
                           warmup_epochs=1, warmup_learning_rate=0.001,
                           influence_validation_data=str(QUICKSTART / "validation.jsonl"), influence_proj_dim=256)


def chat(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def samples() -> list:
    rows = [json.loads(x)["messages"] for x in (QUICKSTART / "test.jsonl").read_text().splitlines()[:12]]
    rows += [chat("What is Belmozaline used for?", "Belmozaline treats migraine."),
             [{"role": "user", "content": "no answer"}],  # no_assistant_tokens
             {"messages": chat("a dict sample?", "yes, with a messages key")},
             "not a chat sample"]  # bad_format
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same(got: list[InfluenceResult], want: list[InfluenceResult], rel: float = 1e-6):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g.reason, g.truncated) == (w.reason, w.truncated), (g, w)
        if w.value is None:
            assert g.value is None
        else:
            assert abs(g.value - w.value) <= rel * abs(w.value), (g.value, w.value)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: extra OpenMP threads spin
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A run folder with a finished warm-up and validation cache, and the in-process scorer over it."""
    from rubric_rl.influence import InfluenceScorer

    run_dir = tmp_path_factory.mktemp("influence_service")
    cfg = influence_cfg()
    scorer = InfluenceScorer.from_config(cfg, run_dir)
    yield run_dir, cfg, scorer
    scorer.close()


@pytest.fixture(scope="module")
def served(world):
    """The in-process scorer behind the real app, on uvicorn in a thread."""
    run_dir, cfg, scorer = world
    app = create_app(scorer, devices=["cpu"], fingerprint=fingerprint(cfg, run_dir), settings=settings(cfg),
                     run_dir=run_dir, batch_wait_ms=50)
    with BackgroundServer(app) as srv:
        yield srv


class ServiceProcess:
    """`rubric-rl serve-influence` in a subprocess on a given port (killed by the test, by its pid)."""

    def __init__(self, run_dir: Path, port: int, *extra: str):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.log = open(run_dir / f"serve-{port}-{time.monotonic_ns()}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "rubric_rl.cli", "serve-influence", "--output_dir",
                                      str(run_dir), *FLAGS, "--serve_port", str(port), "--serve_log_level", "warning",
                                      *extra], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> "ServiceProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, Path(self.log.name).read_text()[-3000:]
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(Path(self.log.name).read_text()[-3000:])

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()


# ---------------------------------------------------------------------------------------------- same scores
def test_the_service_scores_what_the_in_process_scorer_scores(world, served):
    _, cfg, scorer = world
    want = scorer.score(samples())
    assert any(r.value is not None for r in want) and {"bad_format", "no_assistant_tokens"} <= {r.reason for r in want}
    with InfluenceClient([served.url], max_retries=0) as client:
        about = client.connect(cfg)
        assert about["fingerprint"] == fingerprint(cfg, world[0]) and about["workers"] == {served.url: ["cpu"]}
        assert_same(client.score(samples()), want)
        assert client.stats["scored"] == sum(r.value is not None for r in want)
        assert client.score([]) == []


def test_concurrent_requests_are_micro_batched_into_one_call_with_the_same_scores(world):
    """Four requests queued while the worker is busy go through one scorer call (length-sorted together), and each
    still gets its own samples' in-process scores, up to float32 noise of the other batch composition (5e-7
    relative measured here; a lone request, above, is bit-identical)."""
    _, _, scorer = world
    rows = samples()[:12]
    parts = [rows[i::4] for i in range(4)]
    want = [scorer.score(p) for p in parts]
    gated = Gated(scorer)
    with BackgroundServer(create_app(gated, fingerprint="fp", batch_wait_ms=20)) as srv:
        gated.gate.clear()
        out: dict = {}
        threads = [post_async(srv.url, rows[:1], out, "first")]
        wait_until(lambda: gated.calls)
        threads += [post_async(srv.url, part, out, k) for k, part in enumerate(parts)]
        wait_until(lambda: httpx.get(srv.url + "/metrics").json()["queued_requests"] == 4)
        gated.gate.set()
        for t in threads:
            t.join(60)
    assert gated.calls == [1, 12]
    for k, w in enumerate(want):
        body = out[k].json()
        assert body["batch_samples"] == 12
        assert_same([InfluenceResult(r["value"], r["reason"], r["truncated"]) for r in body["results"]], w, rel=1e-5)


def test_health_metrics_and_request_errors(served):
    health = httpx.get(served.url + "/health").json()
    assert health["status"] == "ok" and health["service"] == "rubric-rl-influence" and health["devices"] == ["cpu"]
    assert health["settings"]["target_model_name_or_path"] == TARGET and "influence_device" not in health["settings"]
    httpx.post(served.url + "/v1/score", json={"samples": samples()[:3]}, timeout=60)
    m = httpx.get(served.url + "/metrics").json()
    assert m["queue_depth"] == 0 and m["in_flight"] == 0 and m["requests"] >= 1 and m["samples_per_s"] > 0
    assert 0 < m["latency_s"]["p50"] <= m["latency_s"]["p95"] and m["workers"][0]["device"] == "cpu"
    assert m["scorer"]["scored"] > 0
    url = served.url + "/v1/score"
    assert httpx.post(url, content=b"{nope").json()["error"]["code"] == "invalid_json"
    assert httpx.post(url, json={"samples": "x"}).status_code == 400
    assert httpx.post(url, json=[1, 2]).status_code == 400
    assert httpx.post(url, json={"samples": [[]] * 5000}).status_code == 413  # more than the queue ever holds


def test_the_cli_service_in_a_subprocess_scores_the_same(world):
    run_dir, cfg, scorer = world
    svc = ServiceProcess(run_dir, free_port()).wait_ready()
    try:
        with InfluenceClient(svc.url, max_retries=0) as client:
            assert client.connect(cfg)["fingerprint"] == fingerprint(cfg, run_dir)
            assert_same(client.score(samples()), scorer.score(samples()))
    finally:
        svc.kill()
    assert "listening on http://127.0.0.1:" in Path(svc.log.name).read_text()


# ---------------------------------------------------------------------------------------------- stand-in scorers
class GatedScorer:
    """value = length of the answer; ``score`` blocks while ``gate`` is closed; records the size of each call."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[int] = []
        self.stats = {}

    def score(self, samples):
        self.calls.append(len(samples))
        self.gate.wait(30)
        return [InfluenceResult(float(len(s[-1]["content"]))) for s in samples]


class Gated:
    """Another scorer behind a gate (as GatedScorer), recording the size of each call."""

    def __init__(self, inner):
        self.inner, self.gate, self.calls = inner, threading.Event(), []
        self.gate.set()

    @property
    def stats(self):
        return self.inner.stats

    def score(self, samples):
        self.calls.append(len(samples))
        self.gate.wait(30)
        return self.inner.score(samples)


def sized(n, tag=""):
    return [chat(f"q{tag}{i}", "a" * (i + 1)) for i in range(n)]


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def post_async(url, rows, out, key):
    def run():
        out[key] = httpx.post(url + "/v1/score", json={"samples": rows}, timeout=60)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_full_queue_answers_429_with_retry_after_and_the_client_backs_off():
    scorer = GatedScorer()
    app = create_app(scorer, fingerprint="fp", max_batch_samples=4, max_queue_samples=4, batch_wait_ms=0)
    with BackgroundServer(app) as srv:
        scorer.gate.clear()
        out: dict = {}
        first = post_async(srv.url, sized(4, "a"), out, "a")  # taken by the worker, which blocks
        wait_until(lambda: scorer.calls)
        second = post_async(srv.url, sized(4, "b"), out, "b")  # fills the queue
        wait_until(lambda: httpx.get(srv.url + "/metrics").json()["queue_depth"] == 4)
        busy = httpx.post(srv.url + "/v1/score", json={"samples": sized(1)})
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "busy"
        assert int(busy.headers["retry-after"]) >= 1
        m = httpx.get(srv.url + "/metrics").json()
        assert (m["queue_depth"], m["in_flight"], m["busy_rejections"], m["workers"][0]["busy"]) == (4, 4, 1, True)
        # the client backs off (Retry-After, capped at max_backoff_s) and gets through once the queue drains
        client = InfluenceClient(srv.url, max_retries=50, backoff_s=0.05, max_backoff_s=0.1)
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("r", client.score(sized(3, "c"))))
        t.start()
        wait_until(lambda: client.transport["busy"] >= 1)
        scorer.gate.set()
        for th in (first, second, t):
            th.join(30)
        assert [r.value for r in got["r"]] == [1.0, 2.0, 3.0]
        assert client.transport["retries"] >= 1 and client.transport["failures"] == 0
        assert out["a"].status_code == out["b"].status_code == 200
        client.close()


def test_requests_queued_behind_a_busy_worker_go_in_one_batch_and_come_back_split():
    scorer = GatedScorer()
    app = create_app(scorer, fingerprint="fp", max_batch_samples=64, batch_wait_ms=20)
    with BackgroundServer(app) as srv:
        scorer.gate.clear()
        out: dict = {}
        threads = [post_async(srv.url, sized(1, "first"), out, "first")]
        wait_until(lambda: scorer.calls)
        threads += [post_async(srv.url, sized(k + 1, f"r{k}"), out, k) for k in range(5)]
        wait_until(lambda: httpx.get(srv.url + "/metrics").json()["queued_requests"] == 5)
        scorer.gate.set()
        for t in threads:
            t.join(30)
    assert scorer.calls == [1, 1 + 2 + 3 + 4 + 5]  # the five queued requests: one scorer call
    for k in range(5):
        body = out[k].json()
        assert [r["value"] for r in body["results"]] == [float(i + 1) for i in range(k + 1)]
        assert body["batch_samples"] == 15


def test_one_worker_per_scorer_shares_the_queue():
    a, b = GatedScorer(), GatedScorer()
    app = create_app([a, b], devices=["cuda:0", "cuda:1"], fingerprint="fp", batch_wait_ms=0)
    with BackgroundServer(app) as srv:
        a.gate.clear()
        b.gate.clear()
        out: dict = {}
        threads = [post_async(srv.url, sized(2, "x"), out, "x")]
        wait_until(lambda: a.calls or b.calls)
        threads.append(post_async(srv.url, sized(3, "y"), out, "y"))
        wait_until(lambda: a.calls and b.calls)  # the second request went to the idle worker
        m = httpx.get(srv.url + "/metrics").json()
        assert [w["busy"] for w in m["workers"]] == [True, True] and m["in_flight"] == 5
        assert httpx.get(srv.url + "/health").json()["devices"] == ["cuda:0", "cuda:1"]
        a.gate.set()
        b.gate.set()
        for t in threads:
            t.join(30)
    assert sorted(a.calls + b.calls) == [2, 3]
    assert [r["value"] for r in out["y"].json()["results"]] == [1.0, 2.0, 3.0]


def test_a_scorer_that_raises_fails_its_batch_with_500_and_the_server_goes_on():
    class Broken(GatedScorer):
        def score(self, samples):
            if any("boom" in s[0]["content"] for s in samples):
                raise RuntimeError("CUDA out of memory (pretend)")
            return super().score(samples)

    app = create_app(Broken(), fingerprint="fp", batch_wait_ms=0)
    with BackgroundServer(app) as srv:
        bad = httpx.post(srv.url + "/v1/score", json={"samples": [chat("boom", "x")]})
        assert bad.status_code == 500 and "out of memory" in bad.json()["error"]["message"]
        ok = httpx.post(srv.url + "/v1/score", json={"samples": sized(2)})
        assert ok.status_code == 200 and httpx.get(srv.url + "/metrics").json()["errors"] == 1


def test_api_key_guards_score_and_metrics_not_health():
    app = create_app(GatedScorer(), fingerprint="fp", api_key="k-1")
    with BackgroundServer(app) as srv:
        assert httpx.get(srv.url + "/health").status_code == 200
        assert httpx.get(srv.url + "/metrics").status_code == 401
        assert httpx.post(srv.url + "/v1/score", json={"samples": []}).status_code == 401
        with pytest.raises(UserError, match="refuses the key"):
            InfluenceClient(srv.url).connect()
        os.environ["RUBRIC_RL_TEST_INFLUENCE_KEY"] = "k-1"
        try:
            client = InfluenceClient(srv.url, api_key_env="RUBRIC_RL_TEST_INFLUENCE_KEY")
            client.connect()
            assert [r.value for r in client.score(sized(2))] == [1.0, 2.0]
            assert "k-1" not in repr(client)
            client.close()
        finally:
            del os.environ["RUBRIC_RL_TEST_INFLUENCE_KEY"]


# ---------------------------------------------------------------------------------------------- several endpoints
def test_round_robin_least_loaded_and_a_dead_endpoint():
    a, b = GatedScorer(), GatedScorer()
    with BackgroundServer(create_app(a, fingerprint="fp")) as sa, \
            BackgroundServer(create_app(b, fingerprint="fp")) as sb:
        rr = InfluenceClient([sa.url, sb.url], balance="round_robin", max_retries=0)
        rr.connect()
        for _ in range(4):
            rr.score(sized(1))
        assert rr.per_endpoint == {sa.url: 2, sb.url: 2}
        # least loaded: while a scores a request, every request goes to b
        a.gate.clear()
        out: dict = {}
        seen = len(a.calls)
        busy = [post_async(sa.url, sized(1, "p"), out, "p")]
        wait_until(lambda: len(a.calls) > seen)
        ll = InfluenceClient([sa.url, sb.url], max_retries=0)
        for _ in range(3):
            ll.score(sized(2))
        assert ll.per_endpoint == {sb.url: 3}
        a.gate.set()
        busy[0].join(30)
        # one endpoint down: the retry goes to the other, nothing fails
        dead = f"http://127.0.0.1:{free_port()}"
        both = InfluenceClient([dead, sb.url], balance="round_robin", max_retries=1, backoff_s=0)
        for _ in range(3):
            assert [r.value for r in both.score(sized(1))] == [1.0]
        assert both.transport["failures"] == 0 and both.per_endpoint == {sb.url: 3}
        for c in (rr, ll, both):
            c.close()


def test_endpoints_with_other_settings_are_refused_and_the_run_config_is_compared(caplog):
    one = create_app(GatedScorer(), fingerprint="fp1", settings={"influence_estimator": "dot"})
    two = create_app(GatedScorer(), fingerprint="fp2", settings={"influence_estimator": "less"})
    with BackgroundServer(one) as s1, BackgroundServer(two) as s2:
        with pytest.raises(UserError, match=r"serves other influence settings.*influence_estimator='less'"):
            InfluenceClient([s1.url, s2.url]).connect()
        with caplog.at_level("WARNING", logger="rubric_rl.influence.client"):
            InfluenceClient(s1.url).connect(InfluenceConfig(influence_estimator="less"))
        assert "influence_estimator='dot' (this run: 'less')" in caplog.text
        # a service restarted with other settings under a running client: refused, not mixed into the run
        client = InfluenceClient(s1.url, max_retries=0)
        client.connect()
        client.fingerprint = "fp-before"
        with pytest.raises(UserError, match="now serves other influence settings"):
            client.score(sized(1))


def test_preflight_names_an_endpoint_that_does_not_answer(tmp_path):
    from types import SimpleNamespace

    from rubric_rl.preflight import check_influence_service

    dead = f"http://127.0.0.1:{free_port()}"
    args = SimpleNamespace(reward_influence_url=[dead], reward_influence_balance="least_loaded",
                           reward_influence_timeout_s=5, reward_influence_max_retries=0, reward_influence_backoff_s=0,
                           reward_influence_max_backoff_s=0, reward_influence_breaker_window=2,
                           reward_influence_breaker_max_failure_rate=0.5, reward_influence_api_key_env=None,
                           reward_influence_wait_s=0)
    with pytest.raises(UserError, match=rf"reward_influence_url: {dead} does not answer .*serve-influence"):
        check_influence_service(args, InfluenceConfig())
    with BackgroundServer(create_app(GatedScorer(), fingerprint="fp")) as srv:
        args.reward_influence_url = [srv.url + "/v1/"]  # a trailing /v1 is forgiven
        assert check_influence_service(args, None)["fingerprint"] == "fp"


def test_train_fields_are_checked():
    from rubric_rl.configs.train import RubricRLArguments

    a = RubricRLArguments(reward_influence_url="http://a:1,http://b:2")
    assert a.reward_influence_url == ["http://a:1", "http://b:2"]
    assert RubricRLArguments(reward_influence_url=[]).reward_influence_url is None
    for kw, match in [({"reward_influence_url": ["gpu0:8100"]}, "not an http"),
                      ({"reward_influence_balance": "random"}, "reward_influence_balance"),
                      ({"reward_influence_breaker_max_failure_rate": 2}, "reward_influence_breaker_max_failure_rate"),
                      ({"reward_influence_api_key_env": "sk-abc123!"}, "NAME of an environment variable")]:
        with pytest.raises(ValueError, match=match):
            RubricRLArguments(**kw)
    from rubric_rl.rundir import is_free

    assert is_free("reward_influence_url") and not is_free("reward_if_scaling")


def test_infrastructure_failures_trip_the_breaker_naming_the_endpoint():
    dead = f"http://127.0.0.1:{free_port()}"
    client = InfluenceClient(dead, max_retries=1, backoff_s=0, breaker_window=2, breaker_max_failure_rate=0.5)
    first = client.score(sized(2))  # 1 of 2: under the threshold, the samples are unscored
    assert [r.reason for r in first] == ["service_connection_error"] * 2 and client.transport["attempts"] == 2
    with pytest.raises(InfluenceUnavailable, match=rf"influence service unavailable: {dead}: 2 of the last 2 "
                                                   r"requests .*connection_error"):
        client.score(sized(1))
    with pytest.raises(InfluenceUnavailable):  # stays open
        client.score(sized(1))
    client.close()


def test_a_malformed_answer_is_an_infrastructure_failure():
    from fastapi import FastAPI

    from rubric_rl.reward import not_the_rubrics_fault

    garbage = FastAPI()
    answers = itertools.cycle([{"results": "nope"}, {"results": [{"value": 1.0}]},  # not a list; one result for two
                               {"results": [{"value": "x"}, {"value": 1.0}]}])  # not a number

    @garbage.post("/v1/score")
    async def score():
        return next(answers)

    with BackgroundServer(garbage) as srv:
        client = InfluenceClient(srv.url, max_retries=1, backoff_s=0, breaker_window=2)
        got = client.score(sized(2))  # two garbage answers (the retry too): failed for good
        assert [r.reason for r in got] == ["service_bad_response"] * 2 and client.transport["retries"] == 1
        assert not_the_rubrics_fault("influence_" + got[0].reason)  # the reward leaves it unscored (None)
        with pytest.raises(InfluenceUnavailable, match="bad_response"):
            client.score(sized(2))
        client.close()


def test_train_with_an_endpoint_that_does_not_answer_stops_before_any_model(tmp_path, capsys, monkeypatch):
    import rubric_rl.models as models
    from rubric_rl.cli import main

    def no_model(*a, **kw):
        raise AssertionError("a model loaded before the pre-flight check")

    monkeypatch.setattr(models, "load_causal_lm", no_model)
    monkeypatch.delenv("RUBRIC_RL_DEBUG", raising=False)
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as info:
        main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(tmp_path / "run"),
              "--reward_influence_url", dead])
    assert info.value.code == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert len(lines) == 1 and lines[0].startswith(f"rubric-rl train: error: reward_influence_url: {dead} does not "
                                                   "answer (ConnectError")
    assert not (tmp_path / "run").exists()


def test_a_call_larger_than_the_service_takes_is_split_in_order():
    scorer = GatedScorer()
    with BackgroundServer(create_app(scorer, fingerprint="fp", max_queue_samples=3)) as srv:
        client = InfluenceClient(srv.url, max_retries=0)
        client.connect()
        assert client.max_request_samples == 3
        rows = [chat(f"q{i}", "a" * (i + 1)) for i in range(7)]
        assert [r.value for r in client.score(rows)] == [float(i + 1) for i in range(7)]
        assert scorer.calls == [3, 3, 1] and client.transport["requests"] == 3
        client.close()


def test_serve_influence_without_fastapi_says_what_to_install(tmp_path, monkeypatch, capsys):
    from rubric_rl.cli import main

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed
    monkeypatch.delenv("RUBRIC_RL_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["serve-influence", "--output_dir", str(tmp_path), *FLAGS])
    assert info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("rubric-rl serve-influence: error: serve-influence needs the optional 'serve' extra")
    assert "pip install -e '.[serve]'" in line and "\n" not in line
