"""Sharded `rubric-rl score`: N shards merge into the file one process writes, byte for byte (output, top-K file,
null lines of malformed input with their FILE:LINE errors, duplicates across shards); a missing, stale or
partial shard is an error, never a short file. The real target is in test_influence.py
(test_explicit_shards_merge_to_the_one_process_file) and, under `accelerate launch`, at the end here (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rubric_rl.cli import main
from rubric_rl.configs.influence import InfluenceConfig
from rubric_rl.errors import UserError
from rubric_rl.influence import shards
from rubric_rl.influence.scorer import InfluenceResult
from rubric_rl.influence.selection import merge_file, score_file

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "data" / "quickstart"


def chat(question, answer):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


class LengthScorer:
    """A stand-in scorer: the value depends on the sample only; long answers are 'truncated', answers with
    'none' have no assistant tokens."""

    progress = False

    def __init__(self):
        self.calls = []

    def score(self, samples):
        self.calls.append(len(samples))
        out = []
        for s in samples:
            text = s[-1]["content"]
            if "none" in text:
                out.append(InfluenceResult(None, "no_assistant_tokens"))
            else:
                out.append(InfluenceResult(1.0 / (1 + len(text)) + len(s[0]["content"]) * 1e-9,
                                           truncated=len(text) > 30))
        return out


def make_input(path: Path) -> Path:
    lines = []
    for i in range(23):
        lines.append(json.dumps({"messages": chat(f"question {i}?", "x" * (i % 7 + 1) + " answer"), "id": i}))
    lines[2] = "{not json"
    lines[5] = ""
    lines[7] = json.dumps(chat("bare list?", "a bare message list, long enough to be truncated"))
    lines[9] = json.dumps({"messages": chat("junk?", "   "), "id": "junk"})
    lines[11] = json.dumps({"messages": chat("question 1?", "xx answer"), "id": "dup of line 2"})  # line 2's
    lines[17] = json.dumps({"messages": chat("question 3?", "xxxx answer"), "id": "dup across shards"})
    lines[20] = json.dumps({"messages": chat("q none?", "none here"), "id": "none"})
    lines[21] = json.dumps({"messages": [{"role": "user"}]})  # not a chat sample
    lines[22] = json.dumps({"messages": chat("héllo ünïcode?", "ünïcode answer ✓"), "id": "uni"})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def strip_times(summary):
    return {k: v for k, v in summary.items()
            if k not in ("seconds", "samples_per_s", "shards", "shard_seconds", "calls")}


def one_process(tmp_path, samples, chunk_size=4, select_top=5):
    out, top, scorer = tmp_path / "one.jsonl", tmp_path / "one.top.jsonl", LengthScorer()
    summary = score_file(InfluenceConfig(), tmp_path, samples, out, select_top=select_top, selected_path=top,
                         chunk_size=chunk_size, progress=False, scorer=scorer)
    summary["calls"] = scorer.calls
    return out.read_bytes(), top.read_bytes(), summary


@pytest.mark.parametrize("num_shards,order", [(2, [1, 0]), (3, [0, 2, 1]), (8, [7, 0, 3, 1, 2, 4, 5, 6])])
def test_shards_merge_to_the_one_process_file(tmp_path, num_shards, order):
    samples = make_input(tmp_path / "in.jsonl")
    want_out, want_top, want_summary = one_process(tmp_path, samples)
    out, top = tmp_path / "sharded" / "scored.jsonl", tmp_path / "sharded" / "top.jsonl"
    calls = []
    for n, k in enumerate(order):
        scorer = LengthScorer()
        summary = score_file(InfluenceConfig(), tmp_path, samples, out, select_top=5, selected_path=top,
                             chunk_size=4, progress=False, scorer=scorer, num_shards=num_shards, shard_index=k)
        calls += scorer.calls
        if n < len(order) - 1:
            assert summary["merged"] is False and not out.exists()
            assert summary["waiting_for"] == sorted(set(range(num_shards)) - set(order[:n + 1]))
    assert out.read_bytes() == want_out and top.read_bytes() == want_top
    assert sorted(calls) == sorted(want_summary["calls"])  # the same scorer calls, dealt out to the shards
    assert strip_times(summary) == strip_times(want_summary) | {"output": str(out), "selected": str(top)}
    assert summary["shards"] == num_shards and len(summary["shard_seconds"]) == num_shards
    assert sorted(os.listdir(out.parent)) == ["scored.jsonl", "top.jsonl"]  # shard files and lock removed
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[2]["influence"] is None and rows[2]["error"].startswith(f"{samples}:3: JSONDecodeError: ")
    assert rows[5]["error"] == f"{samples}:6: empty line"
    assert rows[17]["reason"] == "duplicate" and rows[17]["duplicate_of"] == 4


def test_shard_ranges_are_whole_chunks_end_to_end():
    for total in (0, 1, 7, 8, 23, 100):
        for n in (1, 2, 3, 8):
            ranges = [shards.shard_lines(total, 4, n, k) for k in range(n)]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert all(lo % 4 == 0 for lo, _ in ranges)


def test_merge_refuses_missing_stale_and_partial_shards(tmp_path):
    samples = make_input(tmp_path / "in.jsonl")
    out = tmp_path / "scored.jsonl"

    def run(k, **kw):
        return score_file(InfluenceConfig(), tmp_path, samples, out, chunk_size=4, progress=False,
                          scorer=LengthScorer(), num_shards=3, shard_index=k, **kw)

    run(0), run(2)
    with pytest.raises(UserError, match=r"shard 1 of 3 is missing \(run `rubric-rl score \.\.\. --num_shards 3 "
                                        r"--shard_index 1`\)"):
        merge_file(InfluenceConfig(), samples, out, 3, chunk_size=4)
    assert not out.exists()

    # shard 1 from other settings (a top-K run): stale, so the automatic merge does not take it
    score_file(InfluenceConfig(), tmp_path, samples, out, select_top=2, selected_path=tmp_path / "t.jsonl",
               chunk_size=4, progress=False, scorer=LengthScorer(), num_shards=3, shard_index=1)
    assert not out.exists()
    summary = run(2)
    assert summary["merged"] is False and summary["waiting_for"] == [1] and not out.exists()
    with pytest.raises(UserError, match=r"shard 1 of 3 is stale: .* \(differs in select_top\)"):
        merge_file(InfluenceConfig(), samples, out, 3, chunk_size=4)

    run(1)  # the last to finish merges
    good = out.read_bytes()
    out.unlink()
    for k in (0, 1):
        run(k)
    data, _ = shards.shard_paths(out, 3, 0)
    data.write_bytes(data.read_bytes()[:-10])  # cut short after it was finished
    with pytest.raises(UserError, match=r"shard 0 of 3 is partial .* rerun `rubric-rl score \.\.\. --num_shards 3 "
                                        r"--shard_index 0`"):
        run(2)
    assert not out.exists() and not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob("*.lock"))
    run(0)
    assert out.read_bytes() == good
    # --merge after the last shard merged by itself: every shard file is gone; the error says why
    with pytest.raises(UserError, match=r"shard 0 of 3 is missing .*; .*scored\.jsonl exists: the last shard to "
                                        r"finish merges them by itself, so it may be merged already"):
        merge_file(InfluenceConfig(), samples, out, 3, chunk_size=4)
    assert out.read_bytes() == good


def test_a_shard_that_fails_leaves_no_shard_file(tmp_path):
    samples = make_input(tmp_path / "in.jsonl")

    class Fails(LengthScorer):
        def score(self, samples):
            if self.calls:
                raise RuntimeError("out of memory")
            return super().score(samples)

    with pytest.raises(RuntimeError, match="out of memory"):
        score_file(InfluenceConfig(), tmp_path, samples, tmp_path / "scored.jsonl", chunk_size=4, progress=False,
                   scorer=Fails(), num_shards=2, shard_index=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_another_merger_holding_the_lock_is_left_alone_and_merge_takes_over(tmp_path):
    samples = make_input(tmp_path / "in.jsonl")
    out = tmp_path / "scored.jsonl"
    want, _, _ = one_process(tmp_path, samples)
    lock = tmp_path / "scored.jsonl.merge.lock"
    lock.write_text("")  # a merge that was interrupted
    for k in (0, 1):
        summary = score_file(InfluenceConfig(), tmp_path, samples, out, chunk_size=4, progress=False,
                             scorer=LengthScorer(), num_shards=2, shard_index=k)
    assert summary["merged"] is False and summary["waiting_for"] == [] and not out.exists()
    summary = merge_file(InfluenceConfig(), samples, out, 2, chunk_size=4)
    assert out.read_bytes() == want and not lock.exists() and summary["total"] == 23


def test_shard_flags(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert shards.resolve(None, None) == (1, 0)
    assert shards.resolve(4, 3) == (4, 3)
    assert shards.resolve(4, None, merge=True) == (4, 0)
    with pytest.raises(UserError, match="needs --shard_index"):
        shards.resolve(4, None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert shards.resolve(None, None) == (2, 1) and shards.launched() == (2, 1, 1)
    with pytest.raises(UserError, match="under a launcher"):
        shards.resolve(2, 1)


@pytest.mark.parametrize("flags,message", [
    (["--shard_index", "0"], "--shard_index needs --num_shards"),
    (["--num_shards", "2", "--shard_index", "2"], "shard_index must be in 0..1, got 2"),
    (["--num_shards", "2", "--shard_index", "1", "--merge"], "--merge needs --num_shards N and no --shard_index"),
    (["--num_shards", "0"], "num_shards must be >= 1"),
    (["--chunk_size", "0"], "chunk_size must be >= 1"),
    (["--num_shards", "2"], "--num_shards 2 needs --shard_index K (0 to 1), or --merge"),
])
def test_bad_shard_flags_are_one_line_errors(tmp_path, capsys, monkeypatch, flags, message):
    import rubric_rl.influence

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(rubric_rl.influence, "score_file", lambda *a, **k: pytest.fail("scored"))
    samples = make_input(tmp_path / "in.jsonl")
    with pytest.raises(SystemExit) as info:
        main(["score", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(tmp_path),
              "--samples", str(samples), "--output", str(tmp_path / "o.jsonl"), *flags])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert info.value.code == 2 and len(err) == 1 and message in err[0], err


# ---------------------------------------------------------------------------------------------------
# a real `accelerate launch` of two processes

TINY_TARGET = "tiny:hidden=32,layers=2,heads=4,seed=0"


@pytest.mark.slow
def test_accelerate_launch_two_processes_writes_the_one_process_file(tmp_path):
    """`accelerate launch` (the project's configs/accelerate/cpu_2proc.yaml: 2 processes through torchrun; the
    installed accelerate starts one process for `--cpu` without mpirun) on a fresh run folder: rank 0 runs the
    warm-up while rank 1 waits, each scores its shard, the last merges; then one process on the same folder
    writes the same bytes."""
    val = tmp_path / "validation.jsonl"
    val.write_text("".join((QUICKSTART / "validation.jsonl").read_text().splitlines(True)[:8]))
    warm = tmp_path / "warmup.jsonl"
    warm.write_text("".join((QUICKSTART / "warmup.jsonl").read_text().splitlines(True)[:16]))
    lines = (QUICKSTART / "test.jsonl").read_text().splitlines()[:14]
    lines[3] = "{broken"
    lines[9] = lines[1]  # a duplicate in the other shard
    samples = tmp_path / "samples.jsonl"
    samples.write_text("\n".join(lines) + "\n")
    config = tmp_path / "score.yaml"
    config.write_text("\n".join([
        f"target_model_name_or_path: '{TINY_TARGET}'", "target_dtype: float64", f"warmup_data: {warm}",
        "warmup_epochs: 1", "warmup_batch_size: 8", "warmup_lora_r: 4", "warmup_lora_alpha: 8",
        "warmup_max_length: 128", f"influence_validation_data: {val}", "influence_dtype: float64",
        "influence_batch_size: 4", "influence_max_length: 128", ""]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RUBRIC_RL_LOG_LEVEL": "WARNING"}
    run_dir = tmp_path / "run"

    def score(launcher, name):
        cmd = [*launcher, "-m", "rubric_rl.cli", "score", "--config", str(config), "--output_dir", str(run_dir),
               "--samples", str(samples), "--output", str(tmp_path / f"{name}.jsonl"), "--select_top", "4",
               "--selected", str(tmp_path / f"{name}.top.jsonl"), "--chunk_size", "4"]
        t = time.monotonic()
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return json.loads(res.stdout[res.stdout.index("{"):]), time.monotonic() - t

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml")]
    two, two_s = score(launch, "two")
    one, one_s = score([sys.executable], "one")
    print(f"accelerate launch, 2 processes: {two_s:.1f} s (warm-up included); one process: {one_s:.1f} s")
    assert two["shards"] == 2 and two["total"] == 14 and two["unscored"] == {"bad_format": 1, "duplicate": 1}
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert (tmp_path / "two.top.jsonl").read_bytes() == (tmp_path / "one.top.jsonl").read_bytes()
    assert not list(tmp_path.glob("two.jsonl.*"))  # no shard file, lock or temporary left
