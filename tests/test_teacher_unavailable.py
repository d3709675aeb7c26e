"""When the teacher's infrastructure is down, runs stop with one line and a non-zero exit, and lose nothing.

A real local HTTP server (the template teacher behind ``create_app``) that can be switched to answer 503,
fail every other request, or come back; and a port nothing listens on (connection refused).
"""

import json
import re
import socket

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from rubric_rl.cli import main, run_command  # noqa: E402
from rubric_rl.data.documents import load_documents  # noqa: E402
from rubric_rl.synth.commands import SynthConfig, synthesize  # noqa: E402
from rubric_rl.teachers.base import CircuitBreaker, TeacherRequest, TeacherResult, TeacherUnavailable  # noqa: E402
from rubric_rl.configs.teacher import TeacherConfig  # noqa: E402
from rubric_rl.teachers.openai_backend import OpenAITeacher  # noqa: E402
from rubric_rl.teachers.server import BackgroundServer, create_app  # noqa: E402
from rubric_rl.teachers.template import TemplateTeacher  # noqa: E402


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # closed again: connections are refused


class Switchable:
    """The template teacher; ``mode`` 'up', 'down' (every request fails: HTTP 500) or 'flaky' (a request fails the
    first time its seed is seen)."""

    name = "template"

    def __init__(self, docs):
        self.inner = TemplateTeacher(docs)
        self.mode = "up"
        self.seen: set = set()

    def generate(self, requests, **kw):
        out = self.inner.generate(requests)
        for i, r in enumerate(requests):
            first = r.seed not in self.seen
            self.seen.add(r.seed)
            if self.mode == "down" or (self.mode == "flaky" and first):
                out[i] = TeacherResult(text=None, error="unavailable")
            elif not out[i].ok:  # a bare test prompt, not a teacher prompt: any answer will do
                out[i] = TeacherResult(text="fine")
        return out


@pytest.fixture(scope="module")
def switchable(quickstart_dir):
    docs = load_documents(quickstart_dir / "documents.jsonl")
    teacher = Switchable([d["text"] for d in docs])
    app = create_app(teacher, model_name="template", batch_size=8, batch_wait_ms=5)
    with BackgroundServer(app) as srv:
        srv.teacher = teacher
        yield srv


def set_mode(srv, mode):
    srv.teacher.mode = mode
    srv.teacher.seen.clear()


def teacher_cfg(url, **kw):
    return TeacherConfig(teacher_backend="openai", teacher_model_name_or_path="template", teacher_base_url=url,
                         teacher_max_retries=0, teacher_backoff_s=0.0, teacher_timeout_s=10.0,
                         teacher_breaker_window=kw.pop("window", 8), **kw)


def req(i):
    return TeacherRequest(messages=[{"role": "user", "content": f"q{i}"}], seed=i)


# ---------------------------------------------------------------------------------------------- the breaker
def test_breaker_trips_past_the_share_of_its_window():
    b = CircuitBreaker("http://x/v1", window=4, max_failure_rate=0.5)
    for failed in (True, False, True, False, False, True):  # never more than 2 of the last 4
        b.record(failed, "http_503")
        b.check()
    b.record(True, "http_503")
    b.check()  # F F T T
    b.record(True, "connection_error (ConnectError: refused)")  # F T T T
    with pytest.raises(TeacherUnavailable, match=r"http://x/v1: 3 of the last 4 .*ConnectError: refused"):
        b.check()
    off = CircuitBreaker("http://x/v1", window=0)
    for _ in range(100):
        off.record(True, "timeout")
    off.check()
    with pytest.raises(ValueError, match="teacher_breaker_window"):
        TeacherConfig(teacher_breaker_window=-1)
    with pytest.raises(ValueError, match="teacher_breaker_max_failure_rate"):
        TeacherConfig(teacher_breaker_max_failure_rate=1.5)


def test_dead_endpoint_raises_teacher_unavailable_naming_it():
    url = dead_url()
    teacher = OpenAITeacher(url, "m", max_retries=0, backoff_s=0.0, breaker_window=4, breaker_max_failure_rate=0.5)
    try:
        with pytest.raises(TeacherUnavailable) as info:
            teacher.generate([req(i) for i in range(8)])
        msg = str(info.value)
        assert url in msg and "connection_error" in msg
        with pytest.raises(TeacherUnavailable):  # stays open: the next call fails at once
            teacher.generate([req(0)])
    finally:
        teacher.close()


def test_http_5xx_trips_but_client_errors_do_not(switchable):
    set_mode(switchable, "down")
    teacher = OpenAITeacher(switchable.base_url, "template", max_retries=0, backoff_s=0.0, breaker_window=4)
    try:
        with pytest.raises(TeacherUnavailable, match="http_500"):
            teacher.generate([req(i) for i in range(6)])
    finally:
        teacher.close()
        set_mode(switchable, "up")
    # a 4xx (here: 404 from a wrong path) is the request's fault, not the infrastructure's
    wrong = OpenAITeacher(switchable.base_url + "/nope", "template", max_retries=0, breaker_window=4)
    try:
        results = wrong.generate([req(i) for i in range(8)])
        assert [r.error for r in results] == ["http_404"] * 8
    finally:
        wrong.close()


def test_flaky_endpoint_below_the_threshold_keeps_going(switchable):
    set_mode(switchable, "flaky")
    teacher = OpenAITeacher(switchable.base_url, "template", max_retries=1, backoff_s=0.0, breaker_window=4)
    try:
        results = teacher.generate([req(i) for i in range(8)])  # every first attempt fails, every retry works
        assert all(r.ok for r in results) and teacher.stats["retries"] == 8
    finally:
        teacher.close()
        set_mode(switchable, "up")


# ---------------------------------------------------------------------------------------------- synthesize
def synth_argv(quickstart_dir, out, url, *extra, n=6):
    return ["synthesize", "--rubric_source", str(quickstart_dir / "seed_rubrics.json"),
            "--documents", str(quickstart_dir / "documents.jsonl"), "--output", str(out), "--num_samples", str(n),
            "--synth_progress", "false", "--synth_batch_size", "4", "--teacher_backend", "openai",
            "--teacher_model_name_or_path", "template", "--teacher_base_url", url, "--teacher_max_retries", "0",
            "--teacher_backoff_s", "0", "--teacher_breaker_window", "4", *extra]


def exits(argv, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, [x for x in capsys.readouterr().err.splitlines() if "error:" in x]


def test_synthesize_stops_on_a_dead_endpoint(quickstart_dir, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    code, err = exits(synth_argv(quickstart_dir, out, dead_url()), capsys)
    assert code == 3
    assert len(err) == 1 and "teacher unavailable: http://127.0.0.1:" in err[0] and "connection_error" in err[0]
    assert not out.exists() or out.read_text() == ""
    assert not (tmp_path / "s.summary.json").exists()  # no summary claiming a finished run


def test_synthesize_keeps_its_lines_when_the_endpoint_dies_and_resumes_after(switchable, quickstart_dir, tmp_path,
                                                                            capsys):
    out = tmp_path / "s.jsonl"
    main(synth_argv(quickstart_dir, out, switchable.base_url, n=3))
    capsys.readouterr()
    first = out.read_text().splitlines()
    assert len(first) == 3
    queries = json.loads((tmp_path / "s.state.json").read_text())["queries"]
    set_mode(switchable, "down")
    try:
        code, err = exits(synth_argv(quickstart_dir, out, switchable.base_url, n=6), capsys)
    finally:
        set_mode(switchable, "up")
    assert code == 3 and len(err) == 1 and "http_500" in err[0]
    assert out.read_text().splitlines() == first  # kept
    assert json.loads((tmp_path / "s.state.json").read_text())["queries"] == queries  # no budget spent
    main(synth_argv(quickstart_dir, out, switchable.base_url, n=6))  # back up: resumes, extends
    rows = out.read_text().splitlines()
    assert rows[:3] == first and len(rows) == 6
    summary = json.loads((tmp_path / "s.summary.json").read_text())
    assert summary["accepted"] == 6 and summary["resumed"] is True


def test_synthesize_refusal_is_one_line(switchable, quickstart_dir, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    main(synth_argv(quickstart_dir, out, switchable.base_url, n=2))
    capsys.readouterr()
    code, err = exits(synth_argv(quickstart_dir, out, switchable.base_url, "--synth_seed", "5", n=2), capsys)
    assert code == 2 and len(err) == 1 and "different arguments" in err[0] and "--synth_overwrite true" in err[0]


def test_synthesize_infrastructure_failures_never_consume_the_budget(switchable, quickstart_dir, tmp_path):
    """Every request fails with a 500 the first time (no HTTP retries, breaker off): the items are tried again,
    the budget counts only the queries the teacher answered, and the dataset is the one a healthy endpoint gives."""
    cfg = SynthConfig(synth_progress=False, synth_batch_size=4, synth_dedup=False)
    rubrics, docs = str(quickstart_dir / "seed_rubrics.json"), str(quickstart_dir / "documents.jsonl")
    set_mode(switchable, "flaky")
    try:
        s = synthesize(cfg, teacher_cfg(switchable.base_url, window=0), rubric_source=rubrics,
                       documents=docs, output=str(tmp_path / "flaky.jsonl"), num_samples=8)
    finally:
        set_mode(switchable, "up")
    healthy = synthesize(cfg, teacher_cfg(switchable.base_url), rubric_source=rubrics,
                         documents=docs, output=str(tmp_path / "ok.jsonl"), num_samples=8)
    assert s["accepted"] == healthy["accepted"] == 8
    assert s["infrastructure_failures"] >= 8 and "teacher_http_500" not in s["rejected"]
    assert s["queries_spent"] == healthy["queries_spent"]
    rows = lambda p: sorted(json.dumps(json.loads(x)["messages"]) for x in p.read_text().splitlines())  # noqa: E731
    assert rows(tmp_path / "flaky.jsonl") == rows(tmp_path / "ok.jsonl")


def test_synthesize_with_the_breaker_off_still_ends(quickstart_dir, tmp_path, capsys):
    """Breaker disabled, endpoint dead: each item is tried INFRA_RETRIES_PER_ITEM more times, then costs its query;
    the run ends when the budget is spent, with nothing accepted: exit 1 and one line."""
    out = tmp_path / "off.jsonl"
    code, err = exits(synth_argv(quickstart_dir, out, dead_url(), "--teacher_breaker_window", "0", "--synth_budget",
                                 "4"), capsys)
    assert code == 1
    assert len(err) == 1 and "0 of 6 samples accepted" in err[0] and "teacher_connection_error" in err[0]


def test_synthesize_with_a_rubric_source_that_parses_nothing_exits_nonzero(quickstart_dir, tmp_path, monkeypatch,
                                                                         capsys):
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")

    class Random:
        def generate(self, texts, seed=0):
            return [None] * len(texts)

    import rubric_rl.generator as gen_module

    monkeypatch.setattr(gen_module.RubricGenerator, "from_pretrained", classmethod(lambda cls, path, **kw: Random()))
    with pytest.raises(SystemExit) as info:
        main(["synthesize", "--rubric_source", str(export), "--documents", str(quickstart_dir / "documents.jsonl"),
              "--output", str(tmp_path / "o.jsonl"), "--synth_progress", "false"])
    assert info.value.code == 1
    err = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert len(err) == 1 and re.search(r"0 of 48 samples accepted: 0 of \d+ rubrics from generator:.* parsed", err[0])


# ---------------------------------------------------------------------------------------------- train / evaluate
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_exit_3_with_one_line(command, capsys, monkeypatch):
    def down(argv):
        raise TeacherUnavailable("http://127.0.0.1:9/v1", 17, 32, "connection_error (ConnectError: refused)")

    monkeypatch.delenv("RUBRIC_RL_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        run_command(command, down, [])
    assert info.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rubric-rl {command}: error: teacher unavailable: http://127.0.0.1:9/v1")


def test_evaluate_propagates_teacher_unavailable(quickstart_dir, tmp_path):
    """evaluate's synthesis goes through the same teacher: a dead endpoint stops it (before any fine-tuning)."""
    from rubric_rl.evaluate import Source, synthesize_dataset
    from rubric_rl.synth.engine import SampleSynthesizer

    docs = load_documents(quickstart_dir / "documents.jsonl")
    teacher = OpenAITeacher(dead_url(), "m", max_retries=0, backoff_s=0.0, breaker_window=4)
    try:
        with pytest.raises(TeacherUnavailable):
            synthesize_dataset(Source("none", "none", "none"), docs, SampleSynthesizer(teacher), num_samples=8,
                               max_items=16, seed=0)
    finally:
        teacher.close()
