"""policy_update_num_threads: the policy's training step on its own thread count, the rollouts on the process's."""

import torch

from rubric_rl.devices import torch_threads
from rubric_rl.train import with_update_threads


class _Trainer:
    """Shaped like TRL's trainers here: training_step calls _prepare_inputs (generation and reward) first."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        rollout = self._prepare_inputs(inputs)
        return {"update": torch.get_num_threads(), "rollout": rollout}

    def _prepare_inputs(self, inputs):
        return torch.get_num_threads()


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with torch_threads(0):
        assert torch.get_num_threads() == before


def test_update_runs_on_its_threads_and_rollouts_on_the_process_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        cls = with_update_threads(_Trainer, 2)
        assert cls.__name__ == "_Trainer" and issubclass(cls, _Trainer)
        assert cls().training_step(None, None) == {"update": 2, "rollout": 1}
        assert torch.get_num_threads() == 1
        assert with_update_threads(_Trainer, 0) is _Trainer
    finally:
        torch.set_num_threads(before)
