"""The influence task: which parameters are tracked, and that every requires_grad flag comes back."""

import pytest
from torch import nn

from rubric_rl.configs.influence import InfluenceConfig
from rubric_rl.influence.task import InfluenceTask


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=False)


def test_tracked_parameters_and_their_flags_restored():
    model = Toy()
    model.head.weight.requires_grad_(False)  # frozen stays frozen
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    assert InfluenceTask("tokens").tracked_names(model) == ["embed.weight", "proj.weight", "proj.bias",
                                                           "norm.weight", "norm.bias"]
    linear = InfluenceTask("tokens", tracked="linear")
    assert linear.tracked_names(model) == ["proj.weight", "proj.bias"]
    with linear.tracking(model):
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["proj.weight", "proj.bias"]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    with pytest.raises(RuntimeError), linear.tracking(model):
        raise RuntimeError("a failing scorer")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_the_task_of_a_config_and_bad_values():
    assert InfluenceTask.of(InfluenceConfig(influence_objective="choices")) == InfluenceTask("choices", "trainable")
    with pytest.raises(ValueError, match="objective must be one of"):
        InfluenceTask("loss")
    with pytest.raises(ValueError, match="tracked must be one of"):
        InfluenceTask("tokens", tracked="all")
