"""``synthesize`` as users share datasets: ``synth_hf_dataset`` (parquet + dataset card, the hub's layout) and
``synth_push_to_hub`` (HF_TOKEN, checked first; the upload through a stand-in ``HfApi``: no network)."""

import hashlib
import json
from types import SimpleNamespace

import pytest

import rubric_rl
from rubric_rl.cli import main
from rubric_rl.configs.teacher import TeacherConfig
from rubric_rl.errors import UserError
from rubric_rl.rubric import Rubric
from rubric_rl.synth import hub
from rubric_rl.synth.commands import SynthConfig, synthesize
from rubric_rl.synth.pipeline import RubricSource
from rubric_rl.teachers.base import TeacherResult
from rubric_rl.teachers.template import TemplateTeacher


@pytest.fixture()
def q(quickstart_dir):
    return {k: str(quickstart_dir / f) for k, f in (("docs", "documents.jsonl"), ("rubrics", "seed_rubrics.json"),
                                                     ("val", "validation.jsonl"), ("test", "test.jsonl"))}


def cfg(q, **kw):
    return SynthConfig(synth_eval_files=[q["val"], q["test"]], synth_progress=False, synth_batch_size=8, **kw)


def lines(path):
    return [json.loads(x) for x in open(path, encoding="utf-8") if x.strip()]


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def load(folder):
    import datasets

    return datasets.load_dataset(str(folder), split="train")


def card(folder):
    from huggingface_hub import DatasetCard

    return DatasetCard.load(folder / "README.md")


class FakeApi:
    """``huggingface_hub.HfApi`` without the network: records the calls and what the upload would send."""

    calls: list = []
    fail: Exception | None = None

    def __init__(self, token=None, **kw):
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, folder_path, repo_id, **kw):
        from pathlib import Path

        files = {str(p.relative_to(folder_path)): p.read_bytes() for p in sorted(Path(folder_path).rglob("*"))
                 if p.is_file()}
        self.calls.append(("upload_folder", {"repo_id": repo_id, "folder_path": folder_path, "files": files, **kw}))
        if self.fail is not None:
            raise self.fail
        return SimpleNamespace(commit_url=f"https://huggingface.co/datasets/{repo_id}/commit/0123")


@pytest.fixture()
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeApi.calls, FakeApi.fail = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("RUBRIC_RL_DEBUG", raising=False)
    return FakeApi


def test_hf_dataset_loads_back_equal_to_the_jsonl_with_a_card(q, tmp_path):
    out, folder = tmp_path / "s.jsonl", tmp_path / "ds"
    s = synthesize(cfg(q, synth_hf_dataset=str(folder), synth_hf_license="cc-by-4.0"), TeacherConfig(),
                   rubric_source=q["rubrics"], documents=q["docs"], output=str(out), num_samples=20,
                   command_line="rubric-rl synthesize --num_samples 20")
    rows = lines(out)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "data"]
    assert [p.name for p in (folder / "data").iterdir()] == ["train-00000-of-00001.parquet"]
    ds = load(folder)
    assert len(ds) == 20 and [hub.jsonl_record(r) for r in ds] == rows  # the jsonl, line for line
    for r, row in zip(ds, rows):  # the provenance fields as columns
        p = row["provenance"]
        assert (r["doc_id"], r["item"], r["rubric_source"], r["rubric_text"], r["teacher"], r["strategy"], r["seed"]) \
            == (row["doc_id"], p["item"], p["rubric_source"], p["rubric_text"], p["teacher"], p["strategy"], p["seed"])
        assert r["verifiers"] == p["verifiers"] and r["seed_sample"] is None
    assert "influence" not in ds.column_names
    assert s["hf_dataset"] == {"dir": str(folder), "rows": 20, "shards": 1, "influence": None}
    assert json.loads((tmp_path / "s.summary.json").read_text())["hf_dataset"]["rows"] == 20

    c = card(folder)
    meta = c.data.to_dict()
    assert meta["license"] == "cc-by-4.0" and set(meta["tags"]) >= {"synthetic", "rubric-rl"}
    assert meta["size_categories"] == ["n<1K"] and "text-generation" in meta["task_categories"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert meta["dataset_info"]["splits"] == [{"name": "train", "num_bytes": meta["dataset_info"]["dataset_size"],
                                               "num_examples": 20}]
    from datasets.utils.metadata import MetadataConfigs

    assert MetadataConfigs.from_dataset_card_data(c.data)["default"]["data_files"][0]["path"] == "data/train-*"
    text, made = c.text, rubric_rl.provenance.provenance()
    for needed in (sha256(q["docs"]), sha256(q["rubrics"]), sha256(q["val"]), "Kind `file`", "12 rubric(s)",
                   "| backend | `template` |", "| temperature | `0.7` |", "`new_question` (requested)",
                   "| accepted | `20` |", f"/ {s['budget']}`", "rubric-rl synthesize --num_samples 20",
                   f"| rubric-rl | `{rubric_rl.__version__}` |", f"| git commit | `{made['commit']}` |",
                   "| datasets |", "## How it was made, and its limits", "offline template teacher"):
        assert needed in text, needed
    assert "no license was set" not in text and "## Influence" not in text


def test_rerun_replaces_the_folder_and_a_foreign_folder_is_refused_first(q, tmp_path):
    folder = tmp_path / "ds"
    kw = dict(rubric_source="none", documents=q["docs"], output=str(tmp_path / "s.jsonl"), num_samples=6)
    synthesize(cfg(q, synth_hf_dataset=str(folder)), TeacherConfig(), **kw)
    assert "license" not in card(folder).data.to_dict() and "no license was set" in card(folder).text
    assert "Kind `none`" in card(folder).text
    # the finished run is reused (the hub fields are not in its fingerprint); the folder is rewritten
    s = synthesize(cfg(q, synth_hf_dataset=str(folder), synth_hf_license="apache-2.0"), TeacherConfig(), **kw)
    assert s["resumed"] and card(folder).data.license == "apache-2.0" and len(load(folder)) == 6
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary folders left

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    out = tmp_path / "other.jsonl"
    with pytest.raises(UserError, match="synth_hf_dataset: .*mine exists and is not a dataset rubric-rl wrote"):
        synthesize(cfg(q, synth_hf_dataset=str(foreign)), TeacherConfig(), rubric_source="none", documents=q["docs"],
                   output=str(out), num_samples=2)
    assert not out.exists() and (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="synth_hf_dataset: .*new holds --output"):
        synthesize(cfg(q, synth_hf_dataset=str(tmp_path / "new")), TeacherConfig(), rubric_source="none",
                   documents=q["docs"], output=str(tmp_path / "new" / "s.jsonl"), num_samples=2)
    assert not (tmp_path / "new").exists()


def test_scored_samples_get_an_influence_column_and_summary(q, tmp_path):
    out = tmp_path / "s.jsonl"
    summary = synthesize(cfg(q), TeacherConfig(), rubric_source="none", documents=q["docs"], output=str(out),
                         num_samples=8)
    rows = lines(out)
    values = [0.5, -1.0, 2.0, None, 0.25, 1.5, -0.5, 3.0]
    scored = tmp_path / "scored.jsonl"
    scored.write_text("".join(json.dumps({**r, "influence": v}) + "\n" for r, v in zip(rows, values)))
    folder = tmp_path / "ds"
    res = hub.write_dataset(scored, folder, summary=summary, synth_cfg=cfg(q, synth_dedup=False),
                            teacher_cfg=TeacherConfig(), documents=q["docs"], num_documents=48,
                            source=RubricSource.resolve("none"), command_line="x")
    ds = load(folder)
    assert ds["influence"] == values and [hub.jsonl_record(r) for r in ds] == lines(scored)
    assert ds.features["influence"].dtype == "float64"
    st = res["influence"]
    finite = [v for v in values if v is not None]
    assert st["n"] == 7 and st["mean"] == pytest.approx(sum(finite) / 7) and st["median"] == 0.5
    assert st["min"] == -1.0 and st["max"] == 3.0
    import statistics

    assert st["std"] == pytest.approx(statistics.stdev(finite))
    text = card(folder).text
    assert "## Influence" in text and "7 of 8 samples carry an influence score" in text
    assert f"| mean | `{st['mean']:.6g}` |" in text and "| q95 |" in text
    assert hub.influence_summary([None, float("nan")]) is None
    assert "(dedup: off in this run)" in text and "| near-duplicate Jaccard threshold | `off` |" in text


def test_export_source_card_names_the_training_run_and_its_reward_settings(q, tmp_path, monkeypatch):
    run_dir, export = tmp_path / "run", tmp_path / "run" / "export"
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
    (export / hub.EXPORT_META_FILE).write_text(json.dumps({"run_dir": str(run_dir), "base_model": "tiny:base",
                                                           "temperature": 1.0, "rubric_format": "json"}))
    (run_dir / "rubric_rl_args.json").write_text(json.dumps({
        "rubric_rl": {"reward_if_scaling": "rank", "reward_invalid_penalty": -1.0, "documents": "d.jsonl"},
        "influence": {"influence_estimator": "adam", "target_model_name_or_path": "tiny:target"},
        "grpo": {"max_steps": 30, "num_generations": 4}}))
    (run_dir / "run_summary.json").write_text(json.dumps(
        {"reward": {"steps": 30, "first_mean": -0.25, "last_mean": 0.5}}))
    seed_rubrics = [Rubric.from_dict(r) for r in json.load(open(q["rubrics"]))]

    class FakeGenerator:
        def generate(self, texts, seed=0):
            return [seed_rubrics[i % len(seed_rubrics)] for i in range(len(texts))]

    import rubric_rl.generator as gen_module

    monkeypatch.setattr(gen_module.RubricGenerator, "from_pretrained",
                        classmethod(lambda cls, path, **kw: FakeGenerator()))
    assert hub.EXPORT_META_FILE == gen_module.EXPORT_META
    folder = tmp_path / "ds"
    synthesize(cfg(q, synth_hf_dataset=str(folder)), TeacherConfig(), rubric_source=str(export), documents=q["docs"],
               output=str(tmp_path / "g.jsonl"), num_samples=5)
    text = card(folder).text
    for needed in ("Kind `generator`", "| base_model | `tiny:base` |", f"| training run | `{run_dir}` |",
                   "| reward_if_scaling | `rank` |", "| reward_invalid_penalty | `-1.0` |",
                   "| influence_estimator | `adam` |", "| max_steps | `30` |", "`-0.25 -> 0.5 (30 steps)`"):
        assert needed in text, needed
    assert "documents |" not in text.split("## Teacher")[0].split("## Rubric source")[1]  # reward_* and named keys only


def test_push_uploads_the_folder_and_its_card(q, tmp_path, fake_hub):
    out = tmp_path / "s.jsonl"
    s = synthesize(cfg(q, synth_push_to_hub="my-org/rubric-data"), TeacherConfig(), rubric_source=q["rubrics"],
                   documents=q["docs"], output=str(out), num_samples=6)
    folder = tmp_path / "s.hf"  # the default folder beside OUT
    assert s["hf_dataset"]["dir"] == str(folder) and len(load(folder)) == 6
    calls = dict(fake_hub.calls)
    assert calls["init"] == {"token": "hf_test_token"}
    assert calls["create_repo"] == {"repo_id": "my-org/rubric-data", "repo_type": "dataset", "private": True,
                                    "exist_ok": True}
    up = calls["upload_folder"]
    assert up["repo_id"] == "my-org/rubric-data" and up["repo_type"] == "dataset" and up["folder_path"] == str(folder)
    assert up["delete_patterns"] == ["data/*"]  # shards of an earlier push go
    assert set(up["files"]) == {"README.md", "data/train-00000-of-00001.parquet"}
    uploaded = up["files"]["README.md"].decode()
    assert uploaded == (folder / "README.md").read_text(encoding="utf-8")
    assert "load_dataset('my-org/rubric-data', split='train')" in uploaded and "- rubric-rl" in uploaded
    assert s["hub"] == {"pushed": True, "repo_id": "my-org/rubric-data", "private": True,
                        "url": "https://huggingface.co/datasets/my-org/rubric-data/commit/0123"}
    assert json.loads((tmp_path / "s.summary.json").read_text())["hub"]["pushed"] is True

    fake_hub.calls.clear()
    synthesize(cfg(q, synth_push_to_hub="my-org/rubric-data", synth_push_private=False,
                   synth_hf_dataset=str(tmp_path / "pub")), TeacherConfig(), rubric_source=q["rubrics"],
               documents=q["docs"], output=str(out), num_samples=6)
    assert dict(fake_hub.calls)["create_repo"]["private"] is False


def test_push_failure_is_loud_nonzero_and_keeps_the_local_dataset(q, tmp_path, fake_hub, capsys):
    fake_hub.fail = ConnectionError("hub unreachable")
    out, folder = tmp_path / "s.jsonl", tmp_path / "ds"
    with pytest.raises(SystemExit) as info:
        main(["synthesize", "--rubric_source", "none", "--documents", q["docs"], "--output", str(out),
              "--num_samples", "4", "--synth_progress", "false", "--synth_hf_dataset", str(folder),
              "--synth_push_to_hub", "my-org/rubric-data"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rubric-rl synthesize: error: pushing ") and "my-org/rubric-data failed" in last
    assert "hub unreachable" in last and f"kept in {folder}" in last
    assert len(load(folder)) == 4 and len(lines(out)) == 4  # nothing lost
    hub_entry = json.loads((tmp_path / "s.summary.json").read_text())["hub"]
    assert hub_entry["pushed"] is False and "hub unreachable" in hub_entry["error"]
    command = dict((k, v) for k, v in fake_hub.calls if k == "upload_folder")["upload_folder"]["files"]["README.md"]
    assert b"rubric-rl synthesize --rubric_source none" in command  # the card records the command line

    fake_hub.fail, fake_hub.calls[:] = None, []  # rerun: the finished run is reused and only pushed
    main(["synthesize", "--rubric_source", "none", "--documents", q["docs"], "--output", str(out),
          "--num_samples", "4", "--synth_progress", "false", "--synth_hf_dataset", str(folder),
          "--synth_push_to_hub", "my-org/rubric-data"])
    assert json.loads((tmp_path / "s.summary.json").read_text())["hub"]["pushed"] is True


def test_missing_token_or_offline_is_one_line_exit_2_before_any_generation(q, tmp_path, fake_hub, monkeypatch, capsys):
    import rubric_rl.synth.commands as commands

    def no_generation(*a, **kw):
        raise AssertionError("synthesize ran before the token check")

    out = tmp_path / "s.jsonl"
    argv = ["synthesize", "--rubric_source", "none", "--documents", q["docs"], "--output", str(out),
            "--synth_push_to_hub", "my-org/rubric-data"]
    monkeypatch.delenv("HF_TOKEN")
    with monkeypatch.context() as m:
        m.setattr(commands, "synthesize", no_generation)
        for env, needle in ((None, "HF_TOKEN is not set"), ("1", "HF_HUB_OFFLINE is set")):
            if env:
                m.setenv("HF_TOKEN", "hf_x")
                m.setenv("HF_HUB_OFFLINE", env)
            with pytest.raises(SystemExit) as info:
                main(argv)
            err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
            assert info.value.code == 2 and len(err) == 1, err
            assert err[0].startswith("rubric-rl synthesize: error: synth_push_to_hub my-org/rubric-data: ")
            assert needle in err[0]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UserError, match="HF_TOKEN is not set"):  # the function checks too, before any work
        synthesize(cfg(q, synth_push_to_hub="my-org/rubric-data"), TeacherConfig(), rubric_source="none",
                   documents=q["docs"], output=str(out), num_samples=2)
    assert not out.exists() and fake_hub.calls == []


def test_nothing_accepted_writes_and_pushes_nothing(q, tmp_path, fake_hub):
    class Junk(TemplateTeacher):
        def generate(self, requests, **kw):
            return [TeacherResult(text="no question here") for _ in requests]

    s = synthesize(cfg(q, synth_push_to_hub="my-org/rubric-data", synth_budget=4), TeacherConfig(),
                   rubric_source="none", documents=q["docs"], output=str(tmp_path / "s.jsonl"), num_samples=2,
                   teacher=Junk())
    assert s["accepted"] == 0 and "hf_dataset" not in s and "hub" not in s
    assert not (tmp_path / "s.hf").exists() and fake_hub.calls == []


@pytest.mark.parametrize("kwargs, field", [
    ({"synth_push_to_hub": "no-namespace"}, "synth_push_to_hub"),
    ({"synth_push_to_hub": "org/bad name"}, "synth_push_to_hub"),
    ({"synth_push_to_hub": "org/a..b"}, "synth_push_to_hub"),
    ({"synth_hf_license": "Apache 2.0"}, "synth_hf_license"),
    ({"synth_hf_dataset": ""}, "synth_hf_dataset"),
    ({"synth_hf_dataset": "same", "synth_save_dataset": "same"}, "synth_hf_dataset"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SynthConfig(**kwargs)


def test_size_categories():
    assert [hub.size_category(n) for n in (0, 999, 1000, 54_321, 2_000_000)] == \
        ["n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M"]


def test_large_datasets_are_sharded_and_a_rerun_leaves_no_stale_shard(q, tmp_path, monkeypatch):
    out, folder = tmp_path / "s.jsonl", tmp_path / "ds"
    kw = dict(rubric_source="none", documents=q["docs"], output=str(out), num_samples=9)
    monkeypatch.setattr(hub, "MAX_SHARD_BYTES", 2000)  # a few rows per shard
    s = synthesize(cfg(q, synth_hf_dataset=str(folder)), TeacherConfig(), **kw)
    shards = sorted(p.name for p in (folder / "data").iterdir())
    assert s["hf_dataset"]["shards"] == len(shards) > 2 and shards[0] == f"train-00000-of-{len(shards):05d}.parquet"
    assert [hub.jsonl_record(r) for r in load(folder)] == lines(out)  # the shards, in order
    monkeypatch.setattr(hub, "MAX_SHARD_BYTES", 10**9)
    synthesize(cfg(q, synth_hf_dataset=str(folder)), TeacherConfig(), **kw)
    assert [p.name for p in (folder / "data").iterdir()] == ["train-00000-of-00001.parquet"]
    assert [hub.jsonl_record(r) for r in load(folder)] == lines(out)
