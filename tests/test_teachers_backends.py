"""The transformers, vllm and template backends, the factory and the teacher config."""

import json
import sys
import types

import pytest
import torch

from rubric_rl.data.documents import load_documents, load_rubric_file
from rubric_rl.rubric import Rubric
from rubric_rl.synth.parse import parse_sample
from rubric_rl.teachers.base import TeacherRequest
from rubric_rl.configs.teacher import TeacherConfig
from rubric_rl.teachers.factory import build_teacher, teacher_label
from rubric_rl.teachers.template import TemplateTeacher

TINY = "tiny:hidden=32,layers=2,heads=4,seed=0"


@pytest.fixture(scope="module")
def hf_teacher():
    from rubric_rl.teachers.hf import TransformersTeacher

    return TransformersTeacher(TINY, max_new_tokens=12, temperature=0.8, top_p=0.95, batch_size=3, device="cpu")


def chat(text, seed=0):
    return TeacherRequest(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
                          seed=seed)


# ---------------------------------------------------------------------- transformers
def test_transformers_batched_order_and_reproducible(hf_teacher):
    reqs = [chat(f"Question about drug number {i}", seed=i) for i in range(7)]  # 3 chunks of <= 3
    a = hf_teacher.generate(reqs)
    b = hf_teacher.generate(reqs)
    assert len(a) == 7 and [r.text for r in a] == [r.text for r in b]
    for r, req in zip(a, reqs):
        assert r.ok or r.error == "empty"
        assert 1 <= r.completion_tokens <= 12
        n_prompt = len(hf_teacher.tokenizer.apply_chat_template(req.messages, add_generation_prompt=True)["input_ids"])
        assert r.prompt_tokens == n_prompt  # per row, not the first row's
        assert r.meta["finish_reason"] in ("stop", "length")


def test_transformers_greedy_is_batch_invariant(hf_teacher):
    reqs = [chat("What is the dose of Belmozaline?"), chat("A much longer prompt about the side effects of Ritenlol "
                                                           "and how they compare")]
    together = hf_teacher.generate(reqs, temperature=0.0)
    alone = [hf_teacher.generate([r], temperature=0.0)[0] for r in reqs]
    assert [r.text for r in together] == [r.text for r in alone]


def test_transformers_keeps_global_rng(hf_teacher):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    hf_teacher.generate([chat("hello", seed=5)])
    assert torch.equal(torch.rand(3), expected)


def test_transformers_overrides_and_bad_requests(hf_teacher):
    short = hf_teacher.generate([chat("hi")], max_new_tokens=2)[0]
    assert short.completion_tokens <= 2
    too_long = TeacherRequest(messages=[{"role": "user", "content": "word " * 3000}])
    bad = TeacherRequest(messages=[{"role": "nobody", "content": None}])
    res = hf_teacher.generate([too_long, chat("fine"), bad])
    assert res[0].error == "prompt_too_long"
    assert res[1].ok or res[1].error == "empty"
    assert res[2].error.startswith("bad_request")


def test_transformers_from_factory():
    cfg = TeacherConfig(teacher_backend="transformers", teacher_model_name_or_path=TINY, teacher_max_new_tokens=5,
                        teacher_batch_size=2)
    t = build_teacher(cfg, device="cpu")
    assert t.name == "transformers" and t.max_new_tokens == 5 and t.batch_size == 2
    assert teacher_label(t) == f"transformers:{TINY}"


# ---------------------------------------------------------------------- vllm
def test_vllm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    cfg = TeacherConfig(teacher_backend="vllm", teacher_model_name_or_path="some/model")
    with pytest.raises(ImportError, match=r"pip install 'rubric-rl\[vllm\]'"):
        build_teacher(cfg)


def test_vllm_backend_with_a_fake_vllm(monkeypatch):
    calls = {}

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, **kw):
            calls["init"] = kw

        def chat(self, conversations, sampling_params, use_tqdm=True):
            calls.setdefault("chat", []).append(len(conversations))
            if len(conversations) > 1 and any("explode" in c[-1]["content"] for c in conversations):
                raise RuntimeError("batch failed")
            outs = []
            for conv, sp in zip(conversations, sampling_params):
                if "explode" in conv[-1]["content"]:
                    raise RuntimeError("bad request")
                text = "" if "silent" in conv[-1]["content"] else f"answer seed={sp.seed} max={sp.max_tokens}"
                comp = types.SimpleNamespace(text=text, token_ids=[1, 2], finish_reason="stop")
                outs.append(types.SimpleNamespace(outputs=[comp], prompt_token_ids=[1, 2, 3]))
            return outs

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    cfg = TeacherConfig(teacher_backend="vllm", teacher_model_name_or_path="org/m", teacher_max_new_tokens=9,
                        teacher_vllm_tensor_parallel_size=2, teacher_vllm_max_model_len=4096)
    t = build_teacher(cfg)
    assert calls["init"]["tensor_parallel_size"] == 2 and calls["init"]["max_model_len"] == 4096
    assert calls["init"]["trust_remote_code"] is False
    res = t.generate([chat("a", seed=4), chat("silent"), chat("b", seed=6)])
    assert [r.text for r in res] == ["answer seed=4 max=9", None, "answer seed=6 max=9"]
    assert res[1].error == "empty" and res[0].prompt_tokens == 3 and res[0].completion_tokens == 2
    res = t.generate([chat("a"), chat("explode"), chat("c")])  # one bad request: retried one by one
    assert res[0].ok and res[1].error == "generation_error:RuntimeError" and res[2].ok


# ---------------------------------------------------------------------- config / factory
@pytest.mark.parametrize("kwargs, field", [
    ({"teacher_backend": "gpt"}, "teacher_backend"),
    ({"teacher_backend": "openai", "teacher_model_name_or_path": "m"}, "teacher_base_url"),
    ({"teacher_backend": "vllm"}, "teacher_model_name_or_path"),
    ({"teacher_concurrency": 0}, "teacher_concurrency"),
    ({"teacher_backoff_s": -1}, "teacher_backoff_s"),
    ({"teacher_backoff_s": 5, "teacher_max_backoff_s": 1}, "teacher_max_backoff_s"),
    ({"teacher_vllm_gpu_memory_utilization": 1.5}, "teacher_vllm_gpu_memory_utilization"),
    ({"teacher_top_p": 0}, "teacher_top_p"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TeacherConfig(**kwargs)


def test_factory_openai_and_template():
    cfg = TeacherConfig(teacher_backend="openai", teacher_model_name_or_path="m", teacher_base_url="http://h:1/v1/",
                        teacher_concurrency=3, teacher_max_retries=5, teacher_backoff_s=0.5, teacher_max_backoff_s=9)
    t = build_teacher(cfg)
    assert (t.url, t.concurrency, t.max_retries, t.backoff_s, t.max_backoff_s) == (
        "http://h:1/v1/chat/completions", 3, 5, 0.5, 9)
    t.close()
    assert build_teacher(TeacherConfig()).name == "template"


# ---------------------------------------------------------------------- template: golden + new strategies
def test_template_new_question_outputs_unchanged(quickstart_dir):
    """The new_question path must keep writing exactly the shipped warm-up set (scripts/make_quickstart_world.py)."""
    docs = load_documents(quickstart_dir / "documents.jsonl")
    seeds = load_rubric_file(quickstart_dir / "seed_rubrics.json")
    warm = [json.loads(line) for line in (quickstart_dir / "warmup.jsonl").open()]
    t = TemplateTeacher([d["text"] for d in docs])
    k = 0
    for i, doc in enumerate(docs):
        for j in range(2):
            messages, _ = parse_sample(t.write(doc["text"], seeds[(2 * i + j) % len(seeds)], seed=j))
            assert messages == warm[k]["messages"]
            k += 1


def test_template_rephrase_and_answer(quickstart_dir):
    from rubric_rl.data.world import EVAL_QUESTIONS
    from rubric_rl.teachers.template import TEACHER_QUESTIONS

    docs = load_documents(quickstart_dir / "documents.jsonl")
    t = TemplateTeacher([d["text"] for d in docs])
    doc = docs[0]["text"]
    r = t.rephrase("Belmozaline is prescribed for which condition?", "migraine", Rubric())
    q, a = (m["content"] for m in parse_sample(r)[0])
    assert q != "Belmozaline is prescribed for which condition?" and "Belmozaline" in q and a == "migraine"
    assert q not in {p.format(s="Belmozaline") for p in (*EVAL_QUESTIONS.values(), *TEACHER_QUESTIONS.values())}
    assert "true or false" in parse_sample(t.rephrase("True or false: X is a statin.", "False", Rubric()))[0][0][
        "content"]
    # an answer in the style the rubric asks for, from the document
    mc = ("Which adverse effect is reported most often with Belmozaline?\nOptions:\n(A) rash\n(B) dry cough\n"
          "(C) nausea\n(D) insomnia")
    step = t.answer(doc, mc, Rubric(response_related=["Reason step by step and end with the final answer letter."]))
    assert step == ("Answer:\nLet's think step by step. The most common side effect of Belmozaline is dry cough. "
                    "This matches option (B). The answer is (B).")
    assert t.answer(doc, mc, Rubric(response_related=["Be concise."])) == "Answer:\n(B)"
    tf = t.answer(doc, "True or false: The most common side effect of Belmozaline is rash.", Rubric())
    assert tf == "Answer:\nFalse"
    assert t.answer(doc, "What does the document say about storage?", Rubric()).startswith("Answer:\n")
