"""``serve-teacher``: the OpenAI-compatible server, reached by the ``openai`` backend over real HTTP."""

import json
import sys

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from rubric_rl.data.documents import load_documents, load_rubric_file  # noqa: E402
from rubric_rl.synth.engine import SampleSynthesizer, SynthItem  # noqa: E402
from rubric_rl.teachers.base import TeacherRequest, TeacherResult  # noqa: E402
from rubric_rl.teachers.openai_backend import OpenAITeacher  # noqa: E402
from rubric_rl.teachers.server import BackgroundServer, create_app  # noqa: E402
from rubric_rl.teachers.template import TemplateTeacher  # noqa: E402

TINY = "tiny:hidden=32,layers=2,heads=4,seed=0"


@pytest.fixture(scope="module")
def quick(quickstart_dir):
    docs = load_documents(quickstart_dir / "documents.jsonl")
    return docs, load_rubric_file(quickstart_dir / "seed_rubrics.json")


@pytest.fixture(scope="module")
def template_server(quick):
    docs, _ = quick
    app = create_app(TemplateTeacher([d["text"] for d in docs]), model_name="template", api_key="k-123",
                     batch_size=8, batch_wait_ms=20)
    with BackgroundServer(app) as srv:
        yield srv


def test_models_health_and_auth(template_server):
    base = template_server.base_url
    assert httpx.get(base.replace("/v1", "/health")).json()["status"] == "ok"
    assert httpx.get(base + "/models").status_code == 401
    r = httpx.get(base + "/models", headers={"Authorization": "Bearer k-123"})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "template"
    bad = httpx.post(base + "/chat/completions", headers={"Authorization": "Bearer wrong"},
                     json={"model": "template", "messages": [{"role": "user", "content": "x"}]})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"


def test_request_validation(template_server):
    url, h = template_server.base_url + "/chat/completions", {"Authorization": "Bearer k-123"}
    assert httpx.post(url, headers=h, content=b"{nope").status_code == 400
    assert httpx.post(url, headers=h, json={"messages": []}).status_code == 400
    assert httpx.post(url, headers=h, json={"messages": [{"role": "user", "content": "x"}], "stream": True}
                      ).json()["error"]["code"] == "stream_unsupported"
    assert httpx.post(url, headers=h, json={"messages": [{"role": "user", "content": "x"}], "n": 2}).status_code == 400
    assert httpx.post(url, headers=h, json={"messages": [{"role": "user", "content": "x"}], "top_p": 3}
                      ).status_code == 400
    # content given as text parts is accepted
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Document:\nThe Treaty of "
                                                         "Westphalia ended the Thirty Years War in 1648.\n\nRubric:\n"
                                                         "(no rubric: use your judgement)\n\nWrite."}]}]}
    r = httpx.post(url, headers=h, json=parts)
    assert r.status_code == 200 and "____" in r.json()["choices"][0]["message"]["content"]


def test_served_template_equals_in_process_template(template_server, quick, monkeypatch):
    """Same samples through HTTP (the served template teacher reads document and rubric back from the prompt)."""
    docs, rubrics = quick
    monkeypatch.setenv("RUBRIC_RL_SERVER_KEY", "k-123")
    items = [SynthItem(d["text"], rubrics[i % len(rubrics)], d["id"], seed=i) for i, d in enumerate(docs[:16])]
    local = SampleSynthesizer(TemplateTeacher([d["text"] for d in docs])).synthesize(items)
    with OpenAITeacher(template_server.base_url, "template", api_key_env="RUBRIC_RL_SERVER_KEY", concurrency=8) as t:
        remote = SampleSynthesizer(t).synthesize(items)
    assert [o.messages for o in remote] == [o.messages for o in local]
    assert all(o.valid for o in remote)
    # (that concurrent requests are micro-batched depends on arrival timing here; it is checked with a batch
    # window wide enough to be deterministic in test_micro_batching_waits_only_for_concurrent_clients)


def test_failing_teacher_gives_500_and_the_client_a_reason():
    class Broken:
        name = "broken"

        def generate(self, requests, **kw):
            return [TeacherResult(text=None, error="generation_error:OOM") if "bad" in r.messages[-1]["content"]
                    else TeacherResult(text="fine") for r in requests]

    class Raising:
        name = "raising"

        def generate(self, requests, **kw):
            raise RuntimeError("cuda exploded")

    with BackgroundServer(create_app(Broken(), batch_wait_ms=1)) as srv:
        with OpenAITeacher(srv.base_url, "broken", max_retries=0) as t:
            res = t.generate([TeacherRequest(messages=[{"role": "user", "content": c}]) for c in ("bad", "good")])
    assert res[0].error == "http_500" and res[1].text == "fine"
    with BackgroundServer(create_app(Raising(), batch_wait_ms=1)) as srv:
        r = httpx.post(srv.base_url + "/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 500 and "RuntimeError" in r.json()["error"]["message"]
        assert httpx.get(srv.base_url + "/models").status_code == 200  # the server survives


def test_tiny_transformers_model_behind_the_server():
    from rubric_rl.teachers.hf import TransformersTeacher

    teacher = TransformersTeacher(TINY, max_new_tokens=8, temperature=0.0, batch_size=4, device="cpu")
    with BackgroundServer(create_app(teacher, max_new_tokens=8, batch_wait_ms=20)) as srv:
        with OpenAITeacher(srv.base_url, TINY, concurrency=4, max_new_tokens=6, temperature=0.0) as t:
            reqs = [TeacherRequest(messages=[{"role": "user", "content": f"Tell me about drug {i}"}], seed=i)
                    for i in range(6)]
            res = t.generate(reqs)
        assert all(r.ok or r.error == "empty" for r in res)
        assert all(r.completion_tokens <= 6 for r in res)
        # greedy: the same prompt gives the same text, over HTTP as in process
        direct = teacher.generate(reqs[:1], max_new_tokens=6, temperature=0.0)[0]
        assert res[0].text == direct.text
        ids = httpx.get(srv.base_url + "/models").json()["data"]
        assert ids[0]["id"] == TINY


def test_serve_entry_point_errors(monkeypatch):
    from rubric_rl.teachers import server

    monkeypatch.delenv("RUBRIC_RL_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="RUBRIC_RL_NO_SUCH_KEY"):
        server.serve("template", api_key_env="RUBRIC_RL_NO_SUCH_KEY")
    # without the 'serve' extra: a clear ImportError
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ImportError, match=r"rubric-rl\[serve\]"):
        server.serve("template")


def test_template_request_fields_from_messages(quick):
    """The template teacher recognises the four strategy prompts when it only gets messages."""
    from rubric_rl.synth.strategies import strategy_messages
    from rubric_rl.teachers.template import _request_fields

    docs, rubrics = quick
    seed = [{"role": "user", "content": "Which adverse effect is reported most often with X?"},
            {"role": "assistant", "content": "nausea"}]
    for strategy in ("new_question", "rephrase", "augment_answer", "similar_question"):
        msgs = strategy_messages(strategy, docs[0]["text"], rubrics[3], seed if strategy != "new_question" else None)
        f = _request_fields(TeacherRequest(messages=msgs))
        assert f["strategy"] == strategy and f["document"] == docs[0]["text"]
        assert json.dumps(f["rubric"].to_dict()) == json.dumps(rubrics[3].to_dict())
        if strategy != "new_question":
            assert f["question"] == seed[0]["content"]
        if strategy in ("rephrase", "similar_question"):
            assert f["answer"] == seed[1]["content"]


def test_micro_batching_waits_only_for_concurrent_clients(quick):
    import time

    docs, rubrics = quick
    app = create_app(TemplateTeacher([d["text"] for d in docs]), batch_size=8, batch_wait_ms=400)
    msgs = SampleSynthesizer(TemplateTeacher())._request(SynthItem(docs[0]["text"], rubrics[0])).messages
    with BackgroundServer(app) as srv:
        with OpenAITeacher(srv.base_url, "t", concurrency=1) as t:
            start = time.monotonic()
            for i in range(3):  # a lone sequential client never waits for a batch to fill
                assert t.generate([TeacherRequest(messages=msgs, seed=i)])[0].ok
            assert time.monotonic() - start < 1.0
        with OpenAITeacher(srv.base_url, "t", concurrency=8) as t:
            assert all(r.ok for r in t.generate([TeacherRequest(messages=msgs, seed=i) for i in range(16)]))
        b = app.state.batcher
        assert b.batched_requests == 19 and b.batches <= 3 + 8  # the 16 concurrent ones were batched
