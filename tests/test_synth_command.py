"""``rubric-rl synthesize``: outputs, provenance, rubric sources, budget, resume."""

import json

import pytest

from rubric_rl.rubric import Rubric
from rubric_rl.synth import commands
from rubric_rl.synth.commands import SynthConfig, synthesize
from rubric_rl.teachers.base import TeacherResult
from rubric_rl.configs.teacher import TeacherConfig
from rubric_rl.teachers.template import TemplateTeacher


@pytest.fixture()
def q(quickstart_dir):
    return {k: str(quickstart_dir / f) for k, f in (("docs", "documents.jsonl"), ("rubrics", "seed_rubrics.json"),
                                                     ("val", "validation.jsonl"), ("test", "test.jsonl"),
                                                     ("seeds", "warmup.jsonl"))}


def cfg(q, **kw):
    return SynthConfig(synth_eval_files=[q["val"], q["test"]], synth_progress=False, synth_batch_size=8, **kw)


def lines(path):
    return [json.loads(x) for x in open(path, encoding="utf-8") if x.strip()]


def test_writes_samples_provenance_summary_and_dataset(q, tmp_path):
    out = tmp_path / "synth.jsonl"
    s = synthesize(cfg(q, synth_save_dataset=str(tmp_path / "ds")), TeacherConfig(), rubric_source=q["rubrics"],
                   documents=q["docs"], output=str(out), num_samples=40)
    rows = lines(out)
    assert s["accepted"] == len(rows) == 40 and s["stopped"] == "num_samples"
    assert s["queries_spent"] == 40 + sum(s["rejected"].values()) + s["surplus"]
    assert s["strategy"] == "new_question" and s["teacher"] == "template" and s["decontamination"] is True
    p = rows[0]["provenance"]
    assert set(p) >= {"item", "doc_id", "rubric", "rubric_text", "teacher", "strategy", "seed", "verifiers"}
    assert p["verifiers"] == {"format": "pass", "nontrivial": "pass", "grounding": "pass", "safety": "pass",
                              "decontam": "pass", "dedup": "pass"}
    assert Rubric.from_dict(p["rubric"]).render() == p["rubric_text"]
    assert rows[0]["messages"][0]["role"] == "user" and rows[0]["messages"][1]["role"] == "assistant"
    assert len({json.dumps(r["messages"]) for r in rows}) == 40  # no duplicates
    assert json.loads((tmp_path / "synth.summary.json").read_text())["accepted"] == 40
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert len(ds) == 40 and ds[0]["messages"] == rows[0]["messages"]
    assert json.loads(ds[0]["provenance"])["item"] == p["item"]


def test_rubric_source_none_and_default_num_samples(q, tmp_path):
    s = synthesize(cfg(q), TeacherConfig(), rubric_source="none", documents=q["docs"], output=str(tmp_path / "o.jsonl"))
    assert s["num_samples"] == 48 and s["accepted"] == 48  # one per document
    assert all(r["provenance"]["rubric"] is None for r in lines(tmp_path / "o.jsonl"))


def test_rubric_source_export_dir(q, tmp_path, monkeypatch):
    """EXPORT_DIR: RubricGenerator.from_pretrained(path).generate(texts, seed=...); None = unparseable, counted."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    calls = []

    seed_rubrics = [Rubric.from_dict(r) for r in json.load(open(q["rubrics"]))]

    class FakeGenerator:
        def generate(self, texts, seed=0):
            calls.append(seed)
            return [None if i % 4 == 0 else seed_rubrics[(i + seed) % len(seed_rubrics)] for i in range(len(texts))]

    import rubric_rl.generator as gen_module

    monkeypatch.setattr(gen_module.RubricGenerator, "from_pretrained",
                        classmethod(lambda cls, path, **kw: FakeGenerator()))
    out = tmp_path / "g.jsonl"
    s = synthesize(cfg(q), TeacherConfig(), rubric_source=str(export), documents=q["docs"], output=str(out),
                   num_samples=60)
    assert s["accepted"] == 60 and s["rubrics_unparseable"] == 12 * len(calls) and s["rubrics_generated"] == 48 * len(calls)
    assert s["items_skipped"]["rubric_unparseable"] > 0 and calls[0] == 0 and calls == list(range(len(calls)))
    rows = lines(out)
    assert all(r["provenance"]["rubric_text"] in {x.render() for x in seed_rubrics} for r in rows)
    assert all(r["provenance"]["rubric_source"].startswith("generator:epoch") for r in rows)
    assert (tmp_path / "g.rubrics.jsonl").exists()
    # resuming reuses the cached rubrics instead of generating again
    n = len(calls)
    s2 = synthesize(cfg(q), TeacherConfig(), rubric_source=str(export), documents=q["docs"], output=str(out),
                    num_samples=70)
    assert s2["accepted"] == 70 and calls[n:] in ([], [n])


def test_items_skipped_and_rubrics_unparseable_are_different_honest_counts(q, tmp_path, monkeypatch):
    """Rubrics (what the generator wrote, a pass over the documents at a time) and items (what was skipped) are
    counted under two names; a run resumed after a crash reports what the uninterrupted run does."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(line + "\n" for line in open(q["docs"]).read().splitlines()[:12]))
    texts = [json.loads(x)["text"] for x in open(docs)]
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    seed_rubrics = [Rubric.from_dict(r) for r in json.load(open(q["rubrics"]))]

    class HalfParse:
        def generate(self, texts, seed=0):
            return [None if i % 2 == 0 else seed_rubrics[i % len(seed_rubrics)] for i in range(len(texts))]

    import rubric_rl.generator as gen_module

    monkeypatch.setattr(gen_module.RubricGenerator, "from_pretrained", classmethod(lambda cls, p, **kw: HalfParse()))
    kw = dict(rubric_source=str(export), documents=str(docs), num_samples=8)
    ref = synthesize(cfg(q), TeacherConfig(), output=str(tmp_path / "ref.jsonl"), **kw)
    epochs = len(lines(tmp_path / "ref.rubrics.jsonl"))
    assert "skipped" not in ref and epochs >= 2
    assert (ref["rubrics_generated"], ref["rubrics_unparseable"]) == (12 * epochs, 6 * epochs)
    assert 0 < ref["items_skipped"]["rubric_unparseable"] <= ref["rubrics_unparseable"]
    out = tmp_path / "run.jsonl"
    with pytest.raises(Crash):  # the first chunk generates the rubrics, then the teacher dies: no checkpoint
        synthesize(cfg(q), TeacherConfig(), output=str(out), teacher=CrashingTeacher(texts, crash_at_call=1), **kw)
    assert (tmp_path / "run.rubrics.jsonl").exists()
    s = synthesize(cfg(q), TeacherConfig(), output=str(out), **kw)
    assert s["resumed"] and lines(out) == lines(tmp_path / "ref.jsonl")
    for key in ("rubrics_generated", "rubrics_unparseable", "items_skipped", "queries_spent"):
        assert s[key] == ref[key], key


def test_budget_stops_cleanly(q, tmp_path):
    class Picky(TemplateTeacher):
        def generate(self, requests, **kw):  # every other query fails
            res = super().generate(requests)
            return [r if req.seed % 2 else TeacherResult(text=None, error="http_500") for req, r in zip(requests, res)]

    docs = [json.loads(x)["text"] for x in open(q["docs"])]
    s = synthesize(cfg(q, synth_budget=13), TeacherConfig(), rubric_source=q["rubrics"], documents=q["docs"],
                   output=str(tmp_path / "b.jsonl"), num_samples=100, teacher=Picky(docs))
    assert s["stopped"] == "budget" and s["queries_spent"] == 13 and s["budget"] == 13
    assert s["rejected"]["teacher_http_500"] == 7 and s["accepted"] == 6
    assert len(lines(tmp_path / "b.jsonl")) == 6


class Crash(RuntimeError):
    pass


class CrashingTeacher(TemplateTeacher):
    """Raises (like a killed process would stop) at the given call."""

    def __init__(self, documents, crash_at_call):
        super().__init__(documents)
        self.calls, self.crash_at_call = 0, crash_at_call

    def generate(self, requests, **kw):
        self.calls += 1
        if self.calls == self.crash_at_call:
            raise Crash("killed")
        return super().generate(requests)


def test_resume_after_interruption_neither_duplicates_nor_loses(q, tmp_path):
    docs = [json.loads(x)["text"] for x in open(q["docs"])]
    ref = synthesize(cfg(q), TeacherConfig(), rubric_source=q["rubrics"], documents=q["docs"],
                     output=str(tmp_path / "ref.jsonl"), num_samples=70)
    out = tmp_path / "run.jsonl"
    with pytest.raises(Crash):
        synthesize(cfg(q), TeacherConfig(), rubric_source=q["rubrics"], documents=q["docs"], output=str(out),
                   num_samples=70, teacher=CrashingTeacher(docs, crash_at_call=4))
    partial = lines(out)
    assert 0 < len(partial) < 70
    s = synthesize(cfg(q), TeacherConfig(), rubric_source=q["rubrics"], documents=q["docs"], output=str(out),
                   num_samples=70)
    assert s["resumed"] and s["accepted"] == 70
    assert lines(out) == lines(tmp_path / "ref.jsonl")
    assert s["queries_spent"] == ref["queries_spent"] and s["rejected"] == ref["rejected"]


def test_resume_after_crash_between_data_and_state(q, tmp_path, monkeypatch):
    """Samples written after the last state checkpoint are dropped on resume (then written again, once)."""
    ref_out, out = tmp_path / "ref.jsonl", tmp_path / "run.jsonl"
    synthesize(cfg(q), TeacherConfig(), rubric_source=q["rubrics"], documents=q["docs"], output=str(ref_out),
               num_samples=50)
    real = commands.write_json_atomic
    count = {"n": 0}

    def flaky_state_write(path, obj):
        count["n"] += 1
        if count["n"] == 3:
            raise Crash("died after the data, before the state")
        real(path, obj)

    monkeypatch.setattr(commands, "write_json_atomic", flaky_state_write)
    with pytest.raises(Crash):
        synthesize(cfg(q), TeacherConfig(), rubric_source=q["rubrics"], documents=q["docs"], output=str(out),
                   num_samples=50)
    monkeypatch.setattr(commands, "write_json_atomic", real)
    state = json.loads((tmp_path / "run.state.json").read_text())
    assert out.stat().st_size > state["output_bytes"]  # unacknowledged samples on disk
    synthesize(cfg(q), TeacherConfig(), rubric_source=q["rubrics"], documents=q["docs"], output=str(out),
               num_samples=50)
    assert lines(out) == lines(ref_out)


def test_rerun_reuse_extend_refuse_overwrite(q, tmp_path, monkeypatch):
    out = str(tmp_path / "r.jsonl")
    kw = dict(rubric_source=q["rubrics"], documents=q["docs"], output=out)
    first = synthesize(cfg(q), TeacherConfig(), num_samples=20, **kw)
    with monkeypatch.context() as m:
        m.setattr("rubric_rl.teachers.factory.build_teacher", lambda *a, **k: pytest.fail("teacher built"))
        again = synthesize(cfg(q), TeacherConfig(), num_samples=20, **kw)  # a finished run loads no teacher
    assert again["queries_spent"] == first["queries_spent"] and again["accepted"] == 20  # reused, nothing new
    assert again["teacher"] == "template"
    more = synthesize(cfg(q), TeacherConfig(), num_samples=30, **kw)
    assert more["accepted"] == 30 and len(lines(out)) == 30
    with pytest.raises(ValueError, match="different arguments.*synth"):
        synthesize(cfg(q, synth_seed=1), TeacherConfig(), num_samples=30, **kw)
    fresh = synthesize(cfg(q, synth_seed=1, synth_overwrite=True), TeacherConfig(), num_samples=5, **kw)
    assert fresh["accepted"] == 5 and not fresh["resumed"] and len(lines(out)) == 5
    other = tmp_path / "exists.jsonl"
    other.write_text('{"messages": []}\n')
    with pytest.raises(ValueError, match="no resume state"):
        synthesize(cfg(q), TeacherConfig(), num_samples=5, rubric_source="none", documents=q["docs"],
                   output=str(other))


def test_auto_strategy_with_a_seed_set(q, tmp_path):
    s = synthesize(cfg(q, synth_strategy="auto", synth_seed_samples=q["seeds"]), TeacherConfig(),
                   rubric_source=q["rubrics"], documents=q["docs"], output=str(tmp_path / "a.jsonl"), num_samples=30)
    # budget 4 * 30 = 120 queries for 96 seeds: a low ratio -> new answers to the seed questions
    assert s["strategy"] == "augment_answer" and "1.25" in s["strategy_why"]
    seed_questions = {r["messages"][0]["content"] for r in lines(q["seeds"])}
    rows = lines(tmp_path / "a.jsonl")
    assert all(r["messages"][0]["content"] in seed_questions for r in rows)
    assert all("seed_sample" in r["provenance"] for r in rows)
    # exact copies of seed samples are near-duplicates of the seed set, not new data
    seed_pairs = {json.dumps(r["messages"]) for r in lines(q["seeds"])}
    assert not any(json.dumps(r["messages"]) in seed_pairs for r in rows)
    s2 = synthesize(cfg(q, synth_strategy="auto", synth_seed_samples=q["seeds"], synth_budget=2000), TeacherConfig(),
                    rubric_source=q["rubrics"], documents=q["docs"], output=str(tmp_path / "b.jsonl"), num_samples=5)
    assert s2["strategy"] == "new_question"


def test_contaminating_teacher_is_caught(q, tmp_path):
    val = lines(q["val"])

    class Leaky(TemplateTeacher):
        def generate(self, requests, **kw):
            res = super().generate(requests)
            out = []
            for req, r in zip(requests, res):
                if req.seed % 3 == 0:  # leak a validation item about this document's drug (grounded, so the
                    drug = req.document.split()[0]  # decontaminator, not the grounding check, must catch it)
                    about = [v for v in val if drug in v["messages"][0]["content"]] or val
                    item = about[req.seed % len(about)]["messages"]
                    r = TeacherResult(text=f"Question:\n{item[0]['content']}\nAnswer:\n{item[1]['content']}")
                out.append(r)
            return out

    docs = [json.loads(x)["text"] for x in open(q["docs"])]
    s = synthesize(cfg(q, synth_write_rejected=True), TeacherConfig(), rubric_source=q["rubrics"], documents=q["docs"],
                   output=str(tmp_path / "c.jsonl"), num_samples=30, teacher=Leaky(docs))
    assert s["rejected"].get("contaminated", 0) >= 10 and s["rejected_by_verifier"]["decontam"] >= 10
    val_prompts = {v["messages"][0]["content"] for v in val}
    assert not any(r["messages"][0]["content"] in val_prompts for r in lines(tmp_path / "c.jsonl"))
    rejected = lines(tmp_path / "c.rejected.jsonl")
    assert any(r["reason"] == "contaminated" for r in rejected)


@pytest.mark.parametrize("kwargs, field", [
    ({"synth_strategy": "magic"}, "synth_strategy"),
    ({"synth_strategy": "rephrase"}, "synth_seed_samples"),
    ({"synth_budget": 0}, "synth_budget"),
    ({"synth_batch_size": 0}, "synth_batch_size"),
    ({"synth_decontam_threshold": 1.0}, "synth_decontam_threshold"),
    ({"synth_dedup_threshold": 0}, "synth_dedup_threshold"),
    ({"synth_auto_ratio_threshold": 0}, "synth_auto_ratio_threshold"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SynthConfig(**kwargs)


def test_files_are_checked_by_preflight_not_by_the_config(q, tmp_path):
    from rubric_rl.configs.synth import SynthArguments
    from rubric_rl.errors import UserError
    from rubric_rl.preflight import check_synthesize

    missing = SynthConfig(synth_eval_files=["/nonexistent/val.jsonl"])  # values only: no disk read
    sa = SynthArguments(rubric_source="none", documents=q["docs"], output=str(tmp_path / "x.jsonl"))
    with pytest.raises(UserError, match="synth_eval_files"):
        check_synthesize(sa, missing, TeacherConfig())
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="synth_hf_dataset: .*afile exists and is not a dataset"):
        check_synthesize(sa, SynthConfig(synth_hf_dataset=str(tmp_path / "afile")), TeacherConfig())


def test_bad_rubric_source(q, tmp_path):
    with pytest.raises(ValueError, match="rubric_source"):
        synthesize(cfg(q), TeacherConfig(), rubric_source=str(tmp_path / "missing.json"), documents=q["docs"],
                   output=str(tmp_path / "x.jsonl"), num_samples=1)


def test_help_on_every_field():
    import dataclasses

    for f in dataclasses.fields(SynthConfig):
        assert f.name.startswith("synth_") and f.metadata.get("help"), f.name


def test_synthesize_through_the_openai_backend(q, tmp_path):
    """The same run through HTTP (openai backend -> serve-teacher app with the template teacher) gives the
    same dataset as the in-process template teacher."""
    pytest.importorskip("fastapi")
    from rubric_rl.teachers.server import BackgroundServer, create_app

    docs = [json.loads(x)["text"] for x in open(q["docs"])]
    local = synthesize(cfg(q), TeacherConfig(), rubric_source=q["rubrics"], documents=q["docs"],
                       output=str(tmp_path / "local.jsonl"), num_samples=25)
    with BackgroundServer(create_app(TemplateTeacher(docs), model_name="template")) as srv:
        tcfg = TeacherConfig(teacher_backend="openai", teacher_model_name_or_path="template",
                             teacher_base_url=srv.base_url, teacher_concurrency=4)
        remote = synthesize(cfg(q), tcfg, rubric_source=q["rubrics"], documents=q["docs"],
                            output=str(tmp_path / "remote.jsonl"), num_samples=25)
    assert remote["teacher"] == "openai:template" and remote["accepted"] == 25
    assert remote["queries_spent"] == local["queries_spent"]
    assert [r["messages"] for r in lines(tmp_path / "remote.jsonl")] == \
        [r["messages"] for r in lines(tmp_path / "local.jsonl")]


@pytest.mark.slow
def test_serve_teacher_subprocess_with_a_tiny_model(q, tmp_path):
    """`python -m rubric_rl.teachers.server` (what `rubric-rl serve-teacher` runs) in its own process, a tiny
    random model behind it, and a synthesize run against it: the run completes and accounts for every query,
    whatever the (random) model writes."""
    import os
    import re
    import subprocess
    import sys
    import threading

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "rubric_rl.teachers.server", "--model",
                             "tiny:hidden=32,layers=2,heads=4,seed=0", "--port", "0", "--max_new_tokens", "16",
                             "--device", "cpu"], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, ready = {}, threading.Event()

    def pump():
        for line in proc.stdout:
            m = re.search(r"Uvicorn running on (http://\S+)", line)
            if m:
                url["base"] = m.group(1) + "/v1"
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(180) and "base" in url
        tcfg = TeacherConfig(teacher_backend="openai", teacher_model_name_or_path="tiny", teacher_base_url=url["base"],
                             teacher_max_new_tokens=16, teacher_concurrency=4)
        s = synthesize(cfg(q, synth_budget=12), tcfg, rubric_source=q["rubrics"], documents=q["docs"],
                       output=str(tmp_path / "tiny.jsonl"), num_samples=5)
        assert s["queries_spent"] == 12 and s["stopped"] == "budget"  # a random model writes no usable samples
        assert s["accepted"] + sum(s["rejected"].values()) == 12
        assert not any(k.startswith("teacher_") for k in s["rejected"])  # every HTTP call answered
    finally:
        proc.terminate()
        proc.wait(10)
