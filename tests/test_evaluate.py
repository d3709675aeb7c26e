"""`rubric-rl evaluate` on tiny models: a source whose data matches the test distribution beats one whose data
does not, the report files, sources and config parsing, and the synthesis plan shared by all sources."""

import json
import struct

import pytest

from rubric_rl.config import merge_repeated
from rubric_rl.evaluate import (EvalArguments, EvalConfig, Source, correlation, distinct_n, evaluate, format_paired,
                                parse_sources, resolve_source, synthesize_dataset)
from rubric_rl.configs.influence import InfluenceConfig
from rubric_rl.rubric import Rubric
from rubric_rl.configs.teacher import TeacherConfig

TARGET = "tiny:hidden=32,layers=2,heads=4,seed=1"
RELATIONS = ["the condition it treats", "the drug class", "its mechanism", "the dose", "contraindications",
             "the side effect"]
# What the held-out items look like: multiple choice, step-by-step answer ending in "The answer is (X)."
MATCHING = [{"prompt_related": [f"Write a multiple-choice question with four options about {r}."],
             "response_related": ["Explain step by step and end with the final answer letter."]} for r in RELATIONS]
# What they do not look like: true/false statements with a one-word verdict.
MISMATCHING = [{"prompt_related": [f"Write a true or false statement about {r}."],
                "response_related": ["Give a concise answer."]} for r in RELATIONS]


def _configs(quickstart_dir, **over):
    eval_kw = dict(eval_documents=str(quickstart_dir / "documents.jsonl"),
                   eval_test_data=str(quickstart_dir / "test.jsonl"), eval_target_model_name_or_path=TARGET,
                   eval_num_samples=96, eval_epochs=4, eval_learning_rate=3e-3, eval_batch_size=16,
                   eval_seeds=[0], eval_influence=False, eval_progress=False, eval_torch_num_threads=1)
    eval_kw.update(over)
    influence = InfluenceConfig(target_model_name_or_path=TARGET, warmup_data=str(quickstart_dir / "warmup.jsonl"),
                                warmup_epochs=1, warmup_learning_rate=1e-3,
                                influence_validation_data=str(quickstart_dir / "validation.jsonl"),
                                influence_proj_dim=256)
    return EvalConfig(**eval_kw), TeacherConfig(teacher_backend="template"), influence


@pytest.fixture(scope="module")
def rubric_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rubrics")
    (d / "match.json").write_text(json.dumps(MATCHING))
    (d / "mismatch.json").write_text(json.dumps(MISMATCHING))
    return d


@pytest.fixture(scope="module")
def report_run(tmp_path_factory, quickstart_dir, rubric_files):
    out = tmp_path_factory.mktemp("report")
    cfg, teacher_cfg, influence_cfg = _configs(quickstart_dir, eval_seeds=[0, 1])
    sources = {"match": str(rubric_files / "match.json"), "mismatch": str(rubric_files / "mismatch.json")}
    return evaluate(cfg, teacher_cfg, influence_cfg, sources, out), out


def test_matching_source_beats_mismatching_source(report_run):
    report, _ = report_run
    s = report["summary"]
    assert report["ranking"] == ["match", "mismatch"]
    # on every seed, on the held-out answer loss, and both improve on the untrained target
    assert report["paired"]["match>mismatch"]["wins"] == 2
    assert format_paired(report) == "Paired wins on test loss (same seed): match > mismatch in 2/2"
    for r in report["runs"]:
        assert r["heldout"]["loss"] < report["baseline"]["loss"]
        assert r["dataset"]["samples"] == 96
    assert s["match"]["loss"]["mean"] < s["mismatch"]["loss"]["mean"] - 0.5
    # the datasets are what the rubrics asked for
    match_formats = {f for r in report["runs"] if r["source"] == "match" for f in r["dataset"]["formats"]}
    assert match_formats == {"mc/reasoning+letter"}
    assert all(f.startswith("tf/") for r in report["runs"] if r["source"] == "mismatch" for f in r["dataset"]["formats"])


def test_report_files(report_run):
    report, out = report_run
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["ranking"] == report["ranking"] and on_disk["seeds"] == [0, 1]
    for key in ("baseline", "runs", "summary", "paired", "correlation", "config", "sources", "timing"):
        assert key in on_disk
    run = on_disk["runs"][0]
    for key in ("loss", "acc", "acc_norm", "gold_choice_nll"):
        assert isinstance(run["heldout"][key], float)
    assert run["heldout"]["mc_items"] == 96
    for key in ("tokens", "answer_tokens", "distinct_1", "distinct_2", "samples"):
        assert key in run["dataset"]
    assert 0 < run["synthesis"]["validity_rate"] <= 1
    assert on_disk["summary"]["match"]["loss"]["n"] == 2 and on_disk["summary"]["match"]["loss"]["std"] >= 0
    md = (out / "report.md").read_text()
    assert "| **match** | file |" in md and "(untrained target)" in md and "Pearson r" in md
    for png in report["plots"]:
        head = (out / png).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        w, h = struct.unpack(">II", head[16:24])
        assert w > 100 and h > 100
    assert "heldout.png" in report["plots"]
    assert (out / "datasets" / "match" / "seed1.jsonl").exists()


class StubGenerator:
    """A rubric generator that writes the matching rubric for even documents and garbage for odd ones."""

    def __init__(self):
        self.calls = []

    def generate(self, texts, seed=0, batch_size=16):
        self.calls.append(seed)
        return [Rubric.from_dict(MATCHING[i % 6]) if i % 2 == 0 else None for i in range(len(texts))]


def test_generator_source_influence_and_reward_curve(tmp_path, quickstart_dir):
    # an export folder naming its training run (metrics.jsonl) -> reward curve; influence on
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "reward": 0.1 * i, "valid_rate": 0.9}) + "\n"
                                               for i in range(1, 11)))
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    (export / "rubric_rl_export.json").write_text(json.dumps({"run_dir": str(run)}))
    cfg, teacher_cfg, influence_cfg = _configs(quickstart_dir, eval_num_samples=24, eval_epochs=1,
                                               eval_influence=True, eval_finetune="lora")
    stub = StubGenerator()
    report = evaluate(cfg, teacher_cfg, influence_cfg, {"gen": str(export), "none": "none"}, tmp_path / "out",
                      generators={"gen": stub})
    gen_run = next(r for r in report["runs"] if r["source"] == "gen")
    assert gen_run["synthesis"]["rejected"].get("rubric_unparseable", 0) > 0
    assert gen_run["synthesis"]["validity_rate"] == pytest.approx(0.5, abs=0.1)
    assert gen_run["dataset"]["samples"] == 24
    for r in report["runs"]:
        assert r["influence"]["scored"] == 24 and isinstance(r["influence"]["mean"], float)
        assert r["finetune"]["steps"] == 2 and r["heldout"]["loss"] < report["baseline"]["loss"]  # LoRA trains
    assert report["reward_curves"]["gen"]["available"] and report["reward_curves"]["gen"]["steps"] == list(range(1, 11))
    assert "reward_curve_gen.png" in report["plots"] and (tmp_path / "out" / "reward_curve_gen.png").exists()
    assert "influence_vs_gain.png" in report["plots"]
    assert (tmp_path / "out" / "influence" / "warmup").is_dir()


def test_sources_share_documents_and_teacher_seeds(quickstart_dir, rubric_files):
    from rubric_rl.data.documents import load_documents
    from rubric_rl.synth.engine import SampleSynthesizer
    from rubric_rl.teachers.template import TemplateTeacher

    docs = load_documents(quickstart_dir / "documents.jsonl")
    teacher = TemplateTeacher([d["text"] for d in docs])
    got = {}
    for name in ("none", "match"):
        src = resolve_source(name, "none" if name == "none" else str(rubric_files / "match.json"))
        samples, stats = synthesize_dataset(src, docs, SampleSynthesizer(teacher), num_samples=60, max_items=120, seed=3)
        assert stats["accepted"] == 60 and stats["validity_rate"] == 1.0
        got[name] = [(s["doc_id"], s["item"]) for s in samples]
    assert got["none"] == got["match"]  # same items -> same documents in the same order
    again, _ = synthesize_dataset(resolve_source("none", "none"), docs, SampleSynthesizer(teacher), num_samples=60,
                                  max_items=120, seed=3)
    assert [(s["doc_id"], s["item"]) for s in again] == got["none"]
    other, _ = synthesize_dataset(resolve_source("none", "none"), docs, SampleSynthesizer(teacher), num_samples=60,
                                  max_items=120, seed=4)
    assert [s["doc_id"] for s in other] != [d for d, _ in got["none"]]


def test_budget_caps_items(quickstart_dir):
    from rubric_rl.data.documents import load_documents
    from rubric_rl.synth.engine import SampleSynthesizer
    from rubric_rl.teachers.template import TemplateTeacher

    docs = load_documents(quickstart_dir / "documents.jsonl")
    stub = StubGenerator()
    samples, stats = synthesize_dataset(Source("g", "generator", "stub"), docs,
                                        SampleSynthesizer(TemplateTeacher([d["text"] for d in docs])),
                                        num_samples=40, max_items=50, seed=0, generator=stub)
    assert stats["items_tried"] == 50 and stats["budget_exhausted"] and len(samples) == 25
    assert stats["teacher_queries"] == 25 and stats["rejected"] == {"rubric_unparseable": 25}
    assert stats["rubric_parse_rate"] == 0.5


def test_parse_sources_and_cli_merging(tmp_path, rubric_files):
    assert parse_sources(["a=none", "b=x/y=z"]) == {"a": "none", "b": "x/y=z"}
    for bad in (["a"], ["=none"], ["a=none", "a=none"], ["a b=none"]):
        with pytest.raises(ValueError, match="sources"):
            parse_sources(bad)
    argv = ["--config", "c.yaml", "--sources", "a=none", "--eval_epochs", "2", "--sources", "b=x", "c=y",
            "--sources=d=z"]
    assert merge_repeated(argv) == ["--config", "c.yaml", "--eval_epochs", "2", "--sources", "a=none", "b=x", "c=y",
                                     "d=z"]
    assert EvalArguments(sources={"a": "none"}, output="o").sources == ["a=none"]
    with pytest.raises(ValueError, match="--output"):
        EvalArguments(sources=["a=none"])
    with pytest.raises(ValueError, match="neither"):
        resolve_source("x", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="neither an exported rubric generator .no config.json. nor a closed-loop"):
        resolve_source("x", str(tmp_path))
    assert resolve_source("m", str(rubric_files / "match.json")).kind == "file"


@pytest.mark.parametrize("field,value", [("eval_finetune", "half"), ("eval_primary_metric", "bleu"),
                                         ("eval_num_samples", 0), ("eval_seeds", [1, 1]), ("eval_epochs", 0),
                                         ("eval_mc_context", "letters"), ("eval_max_queries_per_sample", 0.5)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        EvalConfig(**{field: value})


def test_cmd_parses_config_and_flags(tmp_path, quickstart_dir):
    from rubric_rl.config import parse_config

    yaml = tmp_path / "c.yaml"
    yaml.write_text("eval_epochs: 7\nteacher_backend: template\ntarget_model_name_or_path: 'tiny:hidden=8'\n"
                    "sources: {a: none}\n")
    ea, cfg, tc, ic = parse_config((EvalArguments, EvalConfig, TeacherConfig, InfluenceConfig),
                                   merge_repeated(["--config", str(yaml), "--sources", "b=none", "--sources", "c=none",
                                                    "--output", "o", "--eval_seeds", "4", "5"]))
    assert cfg.eval_epochs == 7 and cfg.eval_seeds == [4, 5] and parse_sources(ea.sources) == {"b": "none", "c": "none"}
    assert ic.target_model_name_or_path == "tiny:hidden=8" and tc.teacher_backend == "template"


def test_the_training_config_serves_evaluate_too(quickstart_dir):
    from pathlib import Path

    from rubric_rl.config import parse_config

    root = Path(__file__).resolve().parents[1]
    ea, cfg, tc, ic = parse_config((EvalArguments, EvalConfig, TeacherConfig, InfluenceConfig),
                                   ["--config", str(root / "configs" / "quickstart.yaml"), "--sources", "a=none",
                                    "--output", "o"], shared_config=True)
    assert ic.influence_validation_data and tc.teacher_backend == "template"
    ea, cfg, tc, ic = parse_config((EvalArguments, EvalConfig, TeacherConfig, InfluenceConfig),
                                   ["--config", str(root / "configs" / "evaluate_quickstart.yaml"), "--sources",
                                    "a=none", "--output", "o"])
    assert cfg.eval_seeds == [0, 1, 2] and ic.target_model_name_or_path == "tiny:hidden=64,layers=2,heads=4,seed=1"


def test_statistics_helpers():
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    c = correlation([1, 2, 3, 4, 5], [2, 4, 6, 8, 10.5], permutations=500)
    assert c["pearson_r"] == pytest.approx(0.9995, abs=1e-3) and c["spearman_rho"] == pytest.approx(1.0)
    assert c["p_permutation"] < 0.05
    assert correlation([1, 2], [3, 4])["pearson_r"] is None  # too few points
    assert correlation([1, 1, 1], [1, 2, 3])["pearson_r"] is None  # no variance
