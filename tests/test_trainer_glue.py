"""Torch/PML glue: checks of what the wrapper is given, optimizer state that follows a reshaped parameter."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners

from pml_divide_conquer import trainer_glue


def adam_with_state(param):
    opt = torch.optim.Adam([param])
    param.grad = torch.randn_like(param)
    opt.step()
    return opt


def test_optimizer_state_follows_a_gather_of_rows_in_place():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = adam_with_state(p)
    before = opt.state[p]["exp_avg"].clone()
    rows = np.array([0, 0, 1, 1])  # K=2 -> 4: rows 2c and 2c+1 start from row c
    trainer_glue.carry_optimizer_state([opt], p, p, rows)
    assert torch.equal(opt.state[p]["exp_avg"], before[rows])
    assert opt.state[p]["step"] == 1


def test_optimizer_state_follows_a_restriction_to_another_parameter_or_is_dropped():
    src, dst = torch.nn.Parameter(torch.randn(6, 2)), torch.nn.Parameter(torch.randn(3, 2))
    opt = adam_with_state(src)
    opt.add_param_group({"params": [dst]})
    trainer_glue.carry_optimizer_state([opt], src, dst, [3, 4, 5], dim=0)
    assert torch.equal(opt.state[dst]["exp_avg_sq"], opt.state[src]["exp_avg_sq"][3:])
    fresh = torch.nn.Parameter(torch.randn(6, 2))
    trainer_glue.carry_optimizer_state([opt], fresh, dst)  # a source without state: the copy has none either
    assert dst not in opt.state


def test_loss_and_miner_checks():
    trainer_glue.check_loss(losses.ContrastiveLoss())
    with pytest.raises(TypeError, match="must be a PML loss"):
        trainer_glue.check_loss(lambda x, labels: x)
    with pytest.raises(ValueError, match="does not use class labels"):
        trainer_glue.check_loss(losses.VICRegLoss())
    trainer_glue.check_miner(None)
    with pytest.raises(ValueError, match="EmbeddingsAlreadyPackagedAsTriplets"):
        trainer_glue.check_miner(miners.EmbeddingsAlreadyPackagedAsTriplets())


def test_state_moves_to_the_cpu_whatever_its_nesting():
    state = {"a": torch.zeros(2), "b": [torch.ones(1), {"c": 3}], "d": (torch.ones(1),)}
    out = trainer_glue.to_cpu(state)
    assert out["b"][1] == {"c": 3} and isinstance(out["d"], tuple) and out["a"].device.type == "cpu"


def test_prepare_names_an_optimizer_that_is_none(digits):
    from helpers import build

    parts = build(digits, num_learners=2, extra_optimizers={"embedder_optimizer": None})
    with pytest.raises(TypeError, match=r'optimizers\["embedder_optimizer"\] is NoneType, not a torch optimizer'):
        parts["wrapper"].prepare(parts["trainer"])
