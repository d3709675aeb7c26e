"""The ``openai`` teacher over real HTTP: a uvicorn server on 127.0.0.1 (ephemeral port) that injects faults."""

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, PlainTextResponse  # noqa: E402

from rubric_rl.teachers.base import TeacherRequest  # noqa: E402
from rubric_rl.teachers.openai_backend import OpenAITeacher, parse_retry_after  # noqa: E402
from rubric_rl.teachers.server import BackgroundServer  # noqa: E402


def make_fault_app():
    """Behaviour chosen by the last user message: 'ok', 'fail500', 'flaky500:<id>', 'rate429:<id>', 'slow',
    'badjson', 'nochoices', 'empty', 'client400', 'sleep:<seconds>'."""
    app = FastAPI()
    state = {"seen": {}, "in_flight": 0, "max_in_flight": 0, "headers": [], "bodies": []}
    app.state.faults = state

    def completion(text):
        return {"id": "x", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        state["headers"].append(dict(request.headers))
        state["bodies"].append(body)
        cmd = body["messages"][-1]["content"]
        kind, _, arg = cmd.partition(":")
        n = state["seen"][cmd] = state["seen"].get(cmd, 0) + 1
        tracked = kind == "sleep"  # in-flight accounting for the concurrency test only
        state["in_flight"] += tracked
        state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            if kind == "fail500":
                return JSONResponse({"error": "boom"}, status_code=500)
            if kind == "flaky500" and n == 1:
                return JSONResponse({"error": "boom"}, status_code=503)
            if kind == "rate429" and n == 1:
                return JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": arg or "1"})
            if kind == "slow":
                await asyncio.sleep(3)
            if kind == "sleep":
                await asyncio.sleep(float(arg.split(":")[0]))
            if kind == "badjson":
                return PlainTextResponse("{not json", media_type="application/json")
            if kind == "nochoices":
                return {"object": "chat.completion"}
            if kind == "empty":
                return completion("")
            if kind == "client400":
                return JSONResponse({"error": "bad request"}, status_code=400)
            return completion(f"echo {cmd} seed={body.get('seed')} max={body.get('max_tokens')}")
        finally:
            state["in_flight"] -= tracked

    return app


@pytest.fixture(scope="module")
def fault_server():
    with BackgroundServer(make_fault_app()) as srv:
        yield srv


def req(text, seed=0):
    return TeacherRequest(messages=[{"role": "user", "content": text}], seed=seed)


def teacher(srv, **kw):
    kw = {"max_retries": 2, "backoff_s": 0.01, "max_backoff_s": 2.0, "timeout_s": 5.0, **kw}
    return OpenAITeacher(srv.base_url, "m", **kw)


def test_ok_order_seed_and_usage(fault_server):
    with teacher(fault_server, concurrency=4, max_new_tokens=7) as t:
        res = t.generate([req(f"ok:{i}", seed=i) for i in range(10)])
    assert [r.text for r in res] == [f"echo ok:{i} seed={i} max=7" for i in range(10)]
    assert all(r.ok and r.prompt_tokens == 3 and r.completion_tokens == 2 for r in res)
    assert res[0].meta["finish_reason"] == "stop" and res[0].meta["attempts"] == 1


def test_faults_become_reasons_and_the_run_goes_on(fault_server):
    with teacher(fault_server, timeout_s=0.5, max_retries=1) as t:
        res = t.generate([req("ok:a"), req("fail500"), req("slow"), req("badjson"), req("nochoices"),
                          req("empty"), req("client400"), req("ok:b")])
        errors = [r.error for r in res]
        assert errors == [None, "http_500", "timeout", "bad_response", "bad_response", "empty", "http_400", None]
        assert res[1].meta["attempts"] == 2  # retried once
        assert res[6].meta["attempts"] == 1  # 4xx: not retried
        assert t.stats["failures"] == 3  # 500 and timeout after their retry, 400 at once
    assert res[0].text.startswith("echo ok:a") and res[7].text.startswith("echo ok:b")


def test_transient_500_is_retried(fault_server):
    with teacher(fault_server) as t:
        r, = t.generate([req("flaky500:x1")])
    assert r.ok and r.meta["attempts"] == 2


def test_429_honours_retry_after(fault_server):
    with teacher(fault_server, backoff_s=0.0) as t:
        start = time.monotonic()
        r, = t.generate([req("rate429:1")])
        elapsed = time.monotonic() - start
    assert r.ok and r.meta["attempts"] == 2
    assert elapsed >= 0.95  # waited for Retry-After: 1, not the (zero) backoff


def test_retry_after_capped_by_max_backoff(fault_server):
    with teacher(fault_server, backoff_s=0.0, max_backoff_s=0.2) as t:
        start = time.monotonic()
        r, = t.generate([req("rate429:30")])
    assert r.ok and time.monotonic() - start < 5


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert 9 <= parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) <= 11


def test_concurrency_limit(fault_server):
    state = fault_server.server.config.app.state.faults
    state["max_in_flight"] = 0
    with teacher(fault_server, concurrency=3) as t:
        start = time.monotonic()
        res = t.generate([req(f"sleep:0.2:{i}") for i in range(9)])
        elapsed = time.monotonic() - start
    assert all(r.ok for r in res)
    assert 2 <= state["max_in_flight"] <= 3
    assert elapsed >= 0.55  # 9 requests of 0.2 s, 3 at a time


def test_api_key_sent_but_never_shown(fault_server, monkeypatch, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("RUBRIC_RL_TEST_KEY", "sk-secret-123")
    t = teacher(fault_server, api_key_env="RUBRIC_RL_TEST_KEY", max_retries=1)
    try:
        assert "sk-secret" not in repr(t) and "sk-secret" not in str(t)
        t.generate([req("fail500"), req("client400")])  # failures are logged: without the key
        t.generate([req("ok:key")])
    finally:
        t.close()
    assert "teacher request failed" in caplog.text and "sk-secret" not in caplog.text
    headers = fault_server.server.config.app.state.faults["headers"][-1]
    assert headers["authorization"] == "Bearer sk-secret-123"


def test_missing_api_key_env_is_a_clear_error(fault_server, monkeypatch):
    monkeypatch.delenv("RUBRIC_RL_NOPE", raising=False)
    with pytest.raises(ValueError, match="RUBRIC_RL_NOPE"):
        teacher(fault_server, api_key_env="RUBRIC_RL_NOPE")


def test_connection_refused_and_dropped():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more
    with OpenAITeacher(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff_s=0.01) as t:
        r, = t.generate([req("ok")])
    assert r.error == "connection_error" and r.meta["attempts"] == 2

    # a server that accepts and hangs up without answering
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def hang_up():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        with OpenAITeacher(f"http://127.0.0.1:{srv.getsockname()[1]}/v1", "m", max_retries=1, backoff_s=0.01) as t:
            r, = t.generate([req("ok")])
        assert r.error == "connection_error"
    finally:
        stop.set()
        thread.join(2)
        srv.close()


def test_generate_inside_a_running_event_loop(fault_server):
    t = teacher(fault_server)

    async def inside():  # e.g. TRL or a notebook calling the sync API from a coroutine
        return t.generate([req("ok:loop")])

    try:
        res = asyncio.run(inside())
    finally:
        t.close()
    assert res[0].text.startswith("echo ok:loop")


def test_generate_from_several_threads(fault_server):
    with teacher(fault_server, concurrency=4) as t:
        with ThreadPoolExecutor(3) as pool:
            outs = list(pool.map(lambda i: t.generate([req(f"ok:t{i}:{j}") for j in range(4)]), range(3)))
    assert [[r.text.split()[1] for r in rs] for rs in outs] == [[f"ok:t{i}:{j}" for j in range(4)] for i in range(3)]


def test_close_and_reuse(fault_server):
    t = teacher(fault_server)
    assert t.generate([req("ok:1")])[0].ok
    t.close()
    t.close()  # idempotent
    assert t.generate([req("ok:2")])[0].ok  # a fresh loop on demand
    t.close()
    assert t.generate([]) == []


def test_config_holds_the_variable_name_not_the_key(monkeypatch):
    from rubric_rl.configs.teacher import TeacherConfig

    monkeypatch.setenv("RUBRIC_RL_CFG_KEY", "sk-zzz")
    cfg = TeacherConfig(teacher_backend="openai", teacher_model_name_or_path="m",
                        teacher_base_url="http://127.0.0.1:1/v1", teacher_api_key_env="RUBRIC_RL_CFG_KEY")
    assert "sk-zzz" not in repr(cfg)
    with pytest.raises(ValueError, match="NAME of an environment variable") as err:
        TeacherConfig(teacher_backend="openai", teacher_model_name_or_path="m",
                      teacher_base_url="http://127.0.0.1:1/v1", teacher_api_key_env="sk-zzz/not a name")
    assert "sk-zzz" not in str(err.value)  # a pasted key is not echoed back


def test_extra_body_from_the_config_reaches_the_server(fault_server):
    """``teacher_extra_body`` (JSON on the command line, a mapping in YAML) is merged into every request body, so a
    server's own fields (llama.cpp's ``grammar``, vLLM's ``structured_outputs``) can be sent; model, messages,
    stream and seed stay rubric-rl's."""
    from transformers import HfArgumentParser

    from rubric_rl.configs.teacher import TeacherConfig
    from rubric_rl.teachers.factory import build_teacher

    (cfg,) = HfArgumentParser(TeacherConfig).parse_args_into_dataclasses(
        ["--teacher_backend", "openai", "--teacher_model_name_or_path", "m", "--teacher_base_url",
         fault_server.base_url, "--teacher_extra_body", '{"grammar": "root ::= \\"ok\\"", "top_k": 5}'])
    assert cfg.teacher_extra_body == {"grammar": 'root ::= "ok"', "top_k": 5}
    bodies = fault_server.config.app.state.faults["bodies"]
    before = len(bodies)
    with build_teacher(cfg) as t:
        assert t.generate([req("ok", seed=3)])[0].ok
    (body,) = bodies[before:]
    assert body["grammar"] == 'root ::= "ok"' and body["top_k"] == 5
    assert body["model"] == "m" and body["seed"] == 3 and body["messages"][-1]["content"] == "ok"


def test_teacher_grammar_sends_the_shipped_grammar_file(fault_server, tmp_path):
    """``teacher_grammar``: a shipped name (configs/teacher_llama_cpp.yaml's ``question_answer``) or a file; its text
    is llama.cpp's ``grammar`` field of every request, beside the other extra fields. A missing one is one line from
    the preflight, naming the field and the shipped names; the grammar and extra_body's own 'grammar' together, or
    on a backend without the field, are refused."""
    from rubric_rl.configs.teacher import TeacherConfig
    from rubric_rl.errors import UserError
    from rubric_rl.preflight import check_teacher
    from rubric_rl.teachers.factory import GRAMMARS, build_teacher

    shipped = (GRAMMARS / "question_answer.gbnf").read_text()
    own = tmp_path / "yes.gbnf"
    own.write_text('root ::= "yes"\n')
    bodies = fault_server.config.app.state.faults["bodies"]
    for value, text in (("question_answer", shipped), (str(own), 'root ::= "yes"\n')):
        cfg = TeacherConfig(teacher_backend="openai", teacher_model_name_or_path="m",
                            teacher_base_url=fault_server.base_url, teacher_grammar=value,
                            teacher_extra_body={"top_k": 5})
        check_teacher(cfg)
        before = len(bodies)
        with build_teacher(cfg) as t:
            assert t.generate([req("ok", seed=1)])[0].ok
        (body,) = bodies[before:]
        assert body["grammar"] == text and body["top_k"] == 5
    assert "root     ::= \"Question:\\n\"" in shipped
    missing = TeacherConfig(teacher_backend="openai", teacher_model_name_or_path="m",
                            teacher_base_url=fault_server.base_url, teacher_grammar=str(tmp_path / "nope.gbnf"))
    with pytest.raises(UserError, match=r"teacher_grammar: .*nope.gbnf.* is neither a file nor a shipped grammar "
                                        r"\(question_answer\)"):
        check_teacher(missing)
    with pytest.raises(ValueError, match="teacher_grammar and teacher_extra_body's 'grammar' are both set"):
        TeacherConfig(teacher_backend="openai", teacher_model_name_or_path="m", teacher_grammar="question_answer",
                      teacher_extra_body={"grammar": "root ::= \"x\""})
    with pytest.raises(ValueError, match="teacher_grammar is for the openai backend"):
        TeacherConfig(teacher_backend="template", teacher_grammar="question_answer")


@pytest.mark.parametrize("value, message", [
    ('{"grammar": ', "teacher_extra_body is not valid JSON"),
    ('["grammar"]', "teacher_extra_body must be a JSON object"),
    ('{"messages": []}', "teacher_extra_body may not set messages"),
    ('{"temperature": 0.1, "top_p": 0.5}', "may not set temperature, top_p: set teacher_temperature, teacher_top_p"),
])
def test_bad_extra_body_is_one_clear_error(value, message):
    from rubric_rl.configs.teacher import TeacherConfig

    with pytest.raises(ValueError, match=message):
        TeacherConfig(teacher_extra_body=value)
    with pytest.raises(ValueError, match=message):  # the teacher built directly checks it the same way
        OpenAITeacher("http://127.0.0.1:1/v1", "m", extra_body=value)
