"""``train`` with ``reward_influence_url``: the rewards are the in-process run's, the training process loads no
target; and the faults, as the teacher's (tests/test_teacher_unavailable.py): the service killed mid-run stops
the run with exit 3 and one line naming the endpoint, a restarted service is reached again through the retries.
(Busy 429s and malformed answers: tests/test_influence_service.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_influence_service import ServiceProcess, assert_same, free_port, samples  # noqa: E402

from rubric_rl.config import parse_config, train_dataclasses  # noqa: E402
from rubric_rl.influence.client import InfluenceClient, fingerprint, settings  # noqa: E402
from rubric_rl.influence.server import create_app  # noqa: E402
from rubric_rl.teachers.server import BackgroundServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "data" / "quickstart"
SEEDS = [
    {"prompt_related": ["Write a multiple-choice question."], "response_related": ["Reason step by step."]},
    {"prompt_related": ["Ask about the dose."], "response_related": ["Be concise."]},
]


def train_argv(base: Path, out: Path, *extra: str) -> list[str]:
    """test_train_e2e's tiny run (SFT warm start, template teacher, 8 rollouts a step); ``base`` holds the seed
    rubrics (one path for every run, so that a copied sft_warmstart is reused)."""
    return ["--output_dir", str(out), "--policy_model_name_or_path", "tiny:hidden=32,layers=2,heads=4,seed=0",
            "--policy_sft_warmstart", "true", "--seed_rubrics", str(base / "seeds.json"), "--policy_sft_epochs", "80",
            "--policy_sft_max_documents", "2", "--policy_sft_batch_size", "4", "--policy_sft_learning_rate", "0.02",
            "--max_document_chars", "120", "--documents", str(QUICKSTART / "documents.jsonl"),
            "--teacher_backend", "template", "--target_model_name_or_path", "tiny:hidden=32,layers=2,heads=4,seed=1",
            "--warmup_data", str(QUICKSTART / "warmup.jsonl"), "--warmup_epochs", "1",
            "--warmup_learning_rate", "0.001", "--influence_validation_data", str(QUICKSTART / "validation.jsonl"),
            "--influence_proj_dim", "256", "--per_device_train_batch_size", "8", "--num_generations", "4",
            "--max_completion_length", "64", "--learning_rate", "0.001", "--logging_steps", "1",
            "--save_steps", "100", "--report_to", "none", "--use_cpu", "true", "--seed", "0",
            "--gradient_checkpointing", "false", "--torch_num_threads", "1", "--disable_tqdm", "true",
            "--lr_scheduler_type", "linear", *extra]


def rollouts(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("service_train")
    (base / "seeds.json").write_text(json.dumps(SEEDS))
    return base


@pytest.fixture(scope="module")
def service(base):
    """The influence service over its own run folder (warm-up trained there), on uvicorn in a thread."""
    from rubric_rl.influence import InfluenceScorer

    cfg = parse_config(train_dataclasses(), train_argv(base, base / "unused"))[3]
    svc_dir = base / "service"
    scorer = InfluenceScorer.from_config(cfg, svc_dir)
    app = create_app(scorer, devices=["cpu"], fingerprint=fingerprint(cfg, svc_dir), settings=settings(cfg))
    with BackgroundServer(app) as srv:
        srv.run_dir, srv.cfg = svc_dir, cfg
        yield srv
    scorer.close()


@pytest.fixture(scope="module")
def pair(base, service):
    """Two 2-step runs with the same seed: through the service (first), and in process over a copy of the
    service's warm-up and validation cache (so both score with the same files)."""
    import rubric_rl.influence as influence_pkg
    from rubric_rl.train import train

    via = base / "via_service"
    with pytest.MonkeyPatch.context() as mp:  # the training process builds no scorer and runs no warm-up
        def refuse(*a, **kw):
            raise AssertionError("a training run with reward_influence_url loaded the target")

        mp.setattr(influence_pkg.InfluenceScorer, "from_config", classmethod(refuse))
        mp.setattr(influence_pkg, "run_warmup", refuse)
        summary = train(*parse_config(train_dataclasses(), train_argv(
            base, via, "--max_steps", "2", "--reward_influence_url", service.url)))
    inproc = base / "in_process"
    inproc.mkdir()
    for cache in ("warmup", "influence_cache"):
        shutil.copytree(service.run_dir / cache, inproc / cache)
    train(*parse_config(train_dataclasses(), train_argv(base, inproc, "--max_steps", "2")))
    return via, inproc, summary


def test_train_through_the_service_gets_the_in_process_rewards(pair, service):
    via, inproc, summary = pair
    a, b = rollouts(via), rollouts(inproc)
    assert len(a) == len(b) == 2 * 8
    assert [(r["step"], r["rubric"], r["outcome"]) for r in a] == [(r["step"], r["rubric"], r["outcome"]) for r in b]
    scored = [(x["influence"], y["influence"]) for x, y in zip(a, b) if y["influence"] is not None]
    assert scored, "no rollout was scored: the case was not exercised"
    for x, y in scored:
        assert abs(x - y) <= 1e-6 * abs(y), (x, y)
    for x, y in zip(a, b):
        assert (x["reward"] is None) == (y["reward"] is None)
        if y["reward"] is not None:
            assert x["reward"] == pytest.approx(y["reward"], rel=1e-6, abs=1e-9)
    assert not (via / "warmup").exists() and not (via / "influence_cache").exists()  # no target work here
    assert summary["influence_service"]["urls"] == [service.url]
    assert summary["influence_service"]["requests"]["requests"] == 2  # one request per reward call
    assert summary["influence_service"]["fingerprint"] == fingerprint(service.cfg, service.run_dir)


def _run_cli(argv, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "rubric_rl.cli", *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_the_service_killed_mid_run_stops_train_with_one_line_naming_it(base, service, pair):
    via, _, _ = pair
    out = base / "killed"
    out.mkdir()
    shutil.copytree(via / "sft_warmstart", out / "sft_warmstart")  # same spec: reused, not retrained
    svc = ServiceProcess(service.run_dir, free_port()).wait_ready()
    proc = None
    try:
        proc = _run_cli(["train", *train_argv(base, out, "--max_steps", "30", "--reward_influence_url", svc.url,
                                              "--reward_influence_max_retries", "1", "--reward_influence_backoff_s",
                                              "0", "--reward_influence_breaker_window", "2")])
        deadline = time.monotonic() + 600
        log = out / "rollouts.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and any(r["influence"] is not None for r in rollouts(log.parent)):
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        svc.kill()  # SIGKILL: no goodbye to the client
        _, err = proc.communicate(timeout=600)
    finally:
        svc.kill()
        if proc is not None and proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err[-3000:]
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"rubric-rl train: error: influence service unavailable: {svc.url}: 2 of the last 2")
    assert "connection_error" in lines[0]
    rows = rollouts(out)
    failed = [r for r in rows if r["outcome"] == "influence_service_connection_error"]
    assert failed and all(r["reward"] is None for r in failed)  # unscored, never a made-up 0
    assert max(r["step"] for r in rows) < 29 and not (out / "export").exists()  # stopped, nothing exported


def test_a_restarted_service_is_reached_again_through_the_retries(service):
    port = free_port()
    svc = ServiceProcess(service.run_dir, port).wait_ready()
    again = None
    client = InfluenceClient(svc.url, max_retries=400, backoff_s=0.25, max_backoff_s=0.5)
    try:
        client.connect()
        want = client.score(samples())
        svc.kill()
        again = ServiceProcess(service.run_dir, port)  # the same port, ready in seconds: the client waits for it
        got = client.score(samples())
    finally:
        svc.kill()
        if again is not None:
            again.kill()
        client.close()
    assert_same(got, want)
    assert client.transport["retries"] >= 1 and client.transport["failures"] == 0 and client.breaker.tripped is None
