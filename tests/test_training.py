"""What the epoch step needs from the loop (training.py): TrainingParts, and how each loop's messages name its
calls."""

import pytest
import torch
from pytorch_metric_learning import losses

from pml_divide_conquer import DivideConquerWrapper
from pml_divide_conquer.training import (
    NOT_SET_UP,
    PLAIN_LOOP,
    TrainingParts,
    as_optimizer_list,
    default_data_and_label_getter,
    plain_loop_parts,
)

import factory


def test_the_default_getter_takes_a_batchs_first_two_items_and_says_what_to_pass_otherwise():
    assert default_data_and_label_getter((1, 2, 3)) == (1, 2)
    with pytest.raises(TypeError, match="pass data_and_label_getter="):
        default_data_and_label_getter({"x": 1})


def test_optimizers_in_any_container_and_a_none_named():
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    assert as_optimizer_list(opt) == [opt] and as_optimizer_list({"a": opt}) == [opt] and as_optimizer_list(None) == []
    with pytest.raises(TypeError, match=r'optimizers\["embedder_optimizer"\] is NoneType'):
        as_optimizer_list({"embedder_optimizer": None})


def test_a_plain_loops_trunk_is_what_is_neither_the_embedder_nor_the_loss(digits):
    parts = factory.make(digits, loss=losses.ArcFaceLoss(10, 16))
    dc: DivideConquerWrapper = parts["wrapper"]
    loop = plain_loop_parts((dc.embedder, dc), parts["model"], digits, [])
    assert {id(p) for p in loop.trunk_params} == {id(p) for p in parts["trunk"].parameters()}
    assert loop.hints is PLAIN_LOOP and loop.input_device() == torch.device("cpu")
    assert TrainingParts(model=torch.nn.Identity(), dataset=digits).input_device() == torch.device("cpu")
    assert "dc.setup(" in NOT_SET_UP.setup and "DivideConquerCallback" in NOT_SET_UP.setup
