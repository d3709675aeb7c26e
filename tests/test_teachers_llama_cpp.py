"""The ``openai`` backend against a real inference server: llama.cpp's OpenAI-compatible server
(``llama-cpp-python[server]``, ``python -m llama_cpp.server``) serving the registry's SmolLM2-135M-Instruct GGUF.

Slow: it builds nothing, but needs llama-cpp-python installed (a source build, README "A real teacher on CPU") and the
GGUF (``python scripts/fetch_smollm2.py --gguf``); skipped, with the reason, where either is missing."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rubric_rl.data.documents import load_documents, load_rubric_file
from rubric_rl.models import SMOLLM2
from rubric_rl.synth.engine import SampleSynthesizer, SynthItem
from rubric_rl.teachers.base import TeacherRequest
from rubric_rl.teachers.openai_backend import OpenAITeacher

# The user cache, not the tests' private RUBRIC_RL_CACHE (conftest), as test_real_model.py does for SmolLM2.
GGUF = Path(os.environ.get("RUBRIC_RL_REAL_GGUF", Path.home() / ".cache/rubric_rl/gguf" / SMOLLM2["gguf"]))
NAME = "SmolLM2-135M-Instruct"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not GGUF.exists(), reason=f"no GGUF at {GGUF}: python scripts/fetch_smollm2.py --gguf"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(GGUF), "--model_alias", NAME,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "2"})
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(base + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"llama_cpp.server did not answer in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_openai_backend_against_llama_cpp_server(llama_server):
    ids = [m["id"] for m in httpx.get(llama_server + "/models").json()["data"]]
    assert NAME in ids
    reqs = [TeacherRequest(messages=[{"role": "user", "content": f"In one sentence: what is {x}?"}], seed=i)
            for i, x in enumerate(["an antibiotic", "a dose", "a contraindication", "a half-life"])]
    with OpenAITeacher(llama_server, NAME, concurrency=2, max_new_tokens=24, temperature=0.0) as t:
        res = t.generate(reqs)
        again = t.generate(reqs[:1])
    assert all(r.ok for r in res), [r.error for r in res]
    assert all(r.text.strip() and 0 < r.completion_tokens <= 24 for r in res)
    assert again[0].text == res[0].text  # greedy: the same prompt, the same answer
    assert len({r.text for r in res}) == len(res)  # four questions, four answers: the prompt reaches the model


def test_synthesis_through_llama_cpp_writes_verified_samples(llama_server, quickstart_dir):
    """The synthesis engine (teacher prompt, parse, verifiers) with the real model behind real HTTP: every item gets
    an outcome with a reason, and the parsed ones hold the question and answer the model wrote."""
    docs = load_documents(quickstart_dir / "documents.jsonl")
    rubrics = load_rubric_file(quickstart_dir / "seed_rubrics.json")
    items = [SynthItem(d["text"], rubrics[i % len(rubrics)], d["id"], seed=i) for i, d in enumerate(docs[:6])]
    with OpenAITeacher(llama_server, NAME, concurrency=2, max_new_tokens=160, temperature=0.7) as t:
        outcomes = SampleSynthesizer(t).synthesize(items)
    assert len(outcomes) == len(items)
    assert all(o.valid or o.reason for o in outcomes)
    for o in outcomes:
        if o.messages:
            assert o.messages[0]["role"] == "user" and o.messages[0]["content"].strip()
            assert o.messages[-1]["role"] == "assistant" and o.messages[-1]["content"].strip()


def test_the_readme_config_and_its_grammar_against_the_server(llama_server, quickstart_dir):
    """configs/teacher_llama_cpp.yaml (the README's, here pointed at this test's port): its shipped grammar reaches
    llama.cpp, so every reply has the "Question:/Answer:" shape and none fails to parse for its format."""
    from rubric_rl.config import parse_config
    from rubric_rl.configs.teacher import TeacherConfig
    from rubric_rl.teachers.factory import build_teacher

    (cfg,) = parse_config((TeacherConfig,), ["--config", "configs/teacher_llama_cpp.yaml",
                                             "--teacher_base_url", llama_server, "--teacher_max_new_tokens", "64"])
    assert cfg.teacher_grammar == "question_answer"
    docs = load_documents(quickstart_dir / "documents.jsonl")
    rubrics = load_rubric_file(quickstart_dir / "seed_rubrics.json")
    items = [SynthItem(d["text"], rubrics[i % len(rubrics)], d["id"], seed=i) for i, d in enumerate(docs[:4])]
    with build_teacher(cfg) as t:
        replies = t.generate([TeacherRequest(messages=[{"role": "user", "content": "Write a question about "
                                                        f"{d['text'][:60]}"}], seed=i) for i, d in enumerate(docs[:4])])
        outcomes = SampleSynthesizer(t).synthesize(items)
    assert all(r.ok and r.text.startswith("Question:\n") and "\nAnswer:\n" in r.text for r in replies), replies
    assert not [o.reason for o in outcomes if o.reason and o.reason.startswith("parse_no_question")]
