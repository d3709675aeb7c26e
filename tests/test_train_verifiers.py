"""The RL step's verifiers are configured like synthesize's (the reward_* verifier fields of train)."""

import pytest

from rubric_rl.synth.grounding import GroundingVerifier
from rubric_rl.synth.safety import SafetyVerifier
from rubric_rl.train import train_verifiers
from tests.test_train_e2e import make_args


def kinds(chain):
    return [type(v).__name__ for v in chain]


def test_defaults_match_synthesize_and_each_switch_is_honoured(tmp_path, quickstart_dir):
    args = make_args(tmp_path, quickstart_dir, tmp_path / "run")[0]
    default = train_verifiers(args, None)
    assert any(isinstance(v, GroundingVerifier) for v in default) and any(isinstance(v, SafetyVerifier)
                                                                          for v in default)
    args = make_args(tmp_path, quickstart_dir, tmp_path / "run", "--reward_grounding", "false",
                     "--reward_safety", "false")[0]
    assert kinds(train_verifiers(args, None)) == ["FormatVerifier", "NonTrivialVerifier"]
    args = make_args(tmp_path, quickstart_dir, tmp_path / "run", "--reward_grounding_min_overlap", "0.9")[0]
    g = [v for v in train_verifiers(args, None) if isinstance(v, GroundingVerifier)][0]
    assert g.min_overlap == 0.9


def test_bad_values_and_a_missing_blocklist_name_the_field(tmp_path, quickstart_dir):
    from rubric_rl.errors import UserError
    from rubric_rl.preflight import check_train

    with pytest.raises((ValueError, SystemExit)):
        make_args(tmp_path, quickstart_dir, tmp_path / "run", "--reward_grounding_min_overlap", "0")
    parsed = make_args(tmp_path, quickstart_dir, tmp_path / "run", "--reward_blocklist_file", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="reward_blocklist_file"):
        check_train(*parsed)
