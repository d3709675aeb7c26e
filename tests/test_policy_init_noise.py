"""policy_init_noise: a tiny deterministic perturbation of the policy's initial weights (the `perturb` condition of
scripts/reproduce_quickstart.py), drawn from its own generator."""

from types import SimpleNamespace

import pytest
import torch

from rubric_rl.configs.train import RubricRLArguments
from rubric_rl.models import add_weight_noise
from rubric_rl.rundir import is_free


def _model():
    torch.manual_seed(123)
    emb = torch.nn.Embedding(50, 16)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight = emb.weight  # tied, as embeddings and LM heads often are: perturbed once
    return torch.nn.Sequential(emb, torch.nn.Linear(16, 16), head)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_noise_is_deterministic_seeded_by_its_own_seed_and_leaves_the_global_rng_alone():
    base = _weights(_model())
    a, b, c = _model(), _model(), _model()
    state = torch.get_rng_state()
    n = add_weight_noise(a, 1e-3, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # the run's own random draws are unchanged
    add_weight_noise(b, 1e-3, seed=0)
    add_weight_noise(c, 1e-3, seed=1)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert n == 50 * 16 + 16 * 16 + 16  # the tied weight counted once
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(not torch.equal(wa[k], wc[k]) for k in wa)
    diff = torch.cat([(wa[k] - base[k]).flatten() for k in wa])
    assert 0.8e-3 < diff.std().item() < 1.2e-3 and abs(diff.mean().item()) < 2e-4
    assert torch.equal(wa["0.weight"], wa["2.weight"])  # still tied


def test_zero_noise_changes_nothing():
    model = _model()
    before = _weights(model)
    assert add_weight_noise(model, 0.0, seed=0) == 0
    assert all(torch.equal(before[k], v) for k, v in _weights(model).items())


@pytest.mark.parametrize("value", [-1e-6, float("nan"), float("inf")])
def test_a_bad_std_is_refused_naming_the_field(value):
    with pytest.raises(ValueError, match="policy_init_noise"):
        RubricRLArguments(policy_init_noise=value)


def test_the_noise_is_part_of_what_the_run_computes():
    from rubric_rl.warmstart import warmstart_spec

    grpo = SimpleNamespace(seed=0)
    plain = warmstart_spec(RubricRLArguments(), grpo)
    assert "init_noise" not in plain  # warm starts made before the field existed are still reused
    noisy = warmstart_spec(RubricRLArguments(policy_init_noise=1e-6, policy_init_noise_seed=3), grpo)
    assert noisy == {**plain, "init_noise": [1e-6, 3]}  # another noise never reuses this warm start
    assert not is_free("policy_init_noise") and not is_free("policy_init_noise_seed")  # a resume may not change it
