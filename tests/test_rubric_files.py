"""The shipped rubric files pass the rubric parser's quality gate, and so do the SFT warm start's targets: a gate
that rejected them would make the quickstart penalise its own warm start."""

import re
from pathlib import Path

import pytest
import yaml

from rubric_rl.data.documents import load_rubric_file
from rubric_rl.errors import DataFileError
from rubric_rl.preflight import check_sft_targets
from rubric_rl.rubric import Rubric, check_rubric, parse_completion

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def referenced_rubric_files() -> set[Path]:
    """Every existing .json file a config names, in a field or in its comments (calibrate_smollm2.yaml lists
    its sources in a comment), plus data/calibration/*.json and the quickstart's seed rubrics."""
    found = {ROOT / "data" / "quickstart" / "seed_rubrics.json", *(ROOT / "data" / "calibration").glob("*.json")}
    for config in CONFIGS:
        for name in re.findall(r"[\w./-]+\.json\b", config.read_text()):
            if (ROOT / name).is_file():
                found.add(ROOT / name)
    return found


def test_the_file_list_is_not_empty():
    names = {p.relative_to(ROOT).as_posix() for p in referenced_rubric_files()}
    assert {"data/quickstart/seed_rubrics.json", "data/calibration/mc_stepwise.json"} <= names
    assert len(names) >= 7


@pytest.mark.parametrize("path", sorted(referenced_rubric_files()), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shipped_rubrics_pass_the_gate_in_every_format(path):
    rubrics = load_rubric_file(path)
    for i, rubric in enumerate(rubrics):
        assert check_rubric(rubric) is rubric, i
        assert parse_completion(rubric.as_completion("json"), "json") == rubric, i
        assert parse_completion(rubric.as_completion("list"), "list").num_items == rubric.num_items, i
    check_sft_targets(rubrics, path, "json")
    check_sft_targets(rubrics, path, "list")


@pytest.mark.parametrize("config", [c for c in CONFIGS if (yaml.safe_load(c.read_text()) or {}).get(
    "policy_sft_warmstart")], ids=lambda c: c.name)
def test_the_sft_targets_of_every_warm_started_config_pass_the_gate(config):
    raw = yaml.safe_load(config.read_text())
    fmt = raw.get("rubric_format", "json")
    path = ROOT / raw["seed_rubrics"]
    rubrics = load_rubric_file(path)
    assert len(rubrics) == 12
    check_sft_targets(rubrics, path, fmt)  # raises on the first target the gate rejects


def test_check_sft_targets_names_the_rubric_the_format_and_the_reason(tmp_path):
    good = Rubric.from_dict({"prompt_related": ["Ask about the dose."], "technical": ["Use plain text."]})
    list_only = Rubric.from_dict({"prompt_related": ["Ask about the dose."], "technical": ["Be brief."]})
    check_sft_targets([good, list_only], "seeds.json", "json")
    # the list format skips bullets of fewer than 3 words: one item is left, too few
    with pytest.raises(DataFileError, match=r"^seed_rubrics: seeds.json: rubric 1: .*'list'.*too_few_items"):
        check_sft_targets([good, list_only], "seeds.json", "list")
    salad = Rubric.from_dict({"prompt_related": ["Reason step by step by step."]})
    with pytest.raises(DataFileError, match=r"rubric 0: .*stuttering: prompt_related\[0\]"):
        check_sft_targets([salad], "seeds.json", "json")
