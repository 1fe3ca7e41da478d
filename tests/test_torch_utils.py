"""Torch glue: optimizer state that follows a reshaped parameter, state moved to the CPU, wrapped modules."""

import numpy as np
import torch

from pml_divide_conquer import torch_utils


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
    torch_utils.carry_optimizer_state([opt], p, p, rows)
    assert torch.equal(opt.state[p]["exp_avg"], before[rows])
    assert opt.state[p]["step"] == 1


def test_optimizer_state_follows_a_restriction_to_another_parameter_or_is_dropped():
    src, dst = torch.nn.Parameter(torch.randn(6, 2)), torch.nn.Parameter(torch.randn(3, 2))
    opt = adam_with_state(src)
    opt.add_param_group({"params": [dst]})
    torch_utils.carry_optimizer_state([opt], src, dst, [3, 4, 5], dim=0)
    assert torch.equal(opt.state[dst]["exp_avg_sq"], opt.state[src]["exp_avg_sq"][3:])
    fresh = torch.nn.Parameter(torch.randn(6, 2))
    torch_utils.carry_optimizer_state([opt], fresh, dst)  # a source without state: the copy has none either
    assert dst not in opt.state


def test_state_moves_to_the_cpu_whatever_its_nesting():
    state = {"a": torch.zeros(2), "b": [torch.ones(1), {"c": 3}], "d": (torch.ones(1),)}
    out = torch_utils.to_cpu(state)
    assert out["b"][1] == {"c": 3} and isinstance(out["d"], tuple) and out["a"].device.type == "cpu"


def test_unwrap_sees_through_ddp_dataparallel_and_torch_compile():
    inner = torch.nn.Linear(2, 2)
    assert torch_utils.unwrap(torch.nn.DataParallel(inner)) is inner
    compiled = torch.compile(inner)
    assert torch_utils.unwrap(compiled) is inner
    assert torch_utils.contains(torch.nn.Sequential(torch.nn.ReLU(), compiled), inner)
