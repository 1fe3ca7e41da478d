"""The learners (learners.py): a copy of the loss and miner per learner, heads shared or per learner, the loss
on a subspace, the split in two, the full heads' start, and the state their modules leave out."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners

from pml_divide_conquer.learners import (
    AssembledHeads,
    HeadStart,
    HeadStartContext,
    ImprintedHeads,
    LabelMap,
    Learners,
    head_start,
)

C, D = 4, 8


def test_labels_are_mapped_to_the_range_of_the_heads_without_a_sync_when_known():
    m = LabelMap([3, 7, 9])
    assert m(torch.tensor([9, 3, 7])).tolist() == [2, 0, 1]
    assert m(torch.tensor([9, 5])) is None and m(torch.tensor([9, 5]), known=True) is not None


def test_shared_heads_one_copy_each_learner_its_slice():
    learners = Learners(losses.ArcFaceLoss(C, D), None, 2, "shared", D // 2, np.arange(C))
    assert not list(learners.losses["learner0"].parameters()) and learners.full.W.shape == (D, C)
    x, y = F.normalize(torch.randn(6, D // 2), dim=1), torch.tensor([0, 0, 1, 1, 2, 3])
    reference = losses.ArcFaceLoss(C, D // 2)
    with torch.no_grad():
        reference.W.copy_(learners.full.W[D // 2 :])
    got = learners.loss("learner1", x, y, None, dims=slice(D // 2, D))
    assert torch.allclose(got, reference(x, y), atol=1e-6)
    got.backward()
    assert learners.full.W.grad[: D // 2].abs().sum() == 0 and learners.full.W.grad[D // 2 :].abs().sum() > 0


def test_per_learner_heads_use_their_first_rows_and_split_into_their_halves():
    learners = Learners(losses.ArcFaceLoss(C, D), None, 4, "per_learner", D // 2, np.arange(C))
    parent = learners.losses["learner0"].W.detach().clone()
    learners.split(1, halves=[np.arange(0, D // 2), np.arange(D // 2, D)], size=D // 4)
    assert torch.equal(learners.losses["learner0"].W[: D // 2], parent[: D // 2])
    assert torch.equal(learners.losses["learner1"].W[: D // 2], parent[D // 2 :])
    x, y = F.normalize(torch.randn(6, D // 2), dim=1), torch.tensor([0, 0, 1, 1, 2, 3])
    reference = losses.ArcFaceLoss(C, D // 2)
    with torch.no_grad():
        reference.W.copy_(learners.losses["learner1"].W[: D // 2])
    assert torch.allclose(learners.loss("learner1", x, y, None), reference(x, y), atol=1e-6)


def test_each_learner_mines_in_its_own_view():
    learners = Learners(losses.ContrastiveLoss(), miners.PairMarginMiner(), 2, "per_learner", D, np.arange(C))
    assert learners.miners["learner0"] is not learners.miners["learner1"]
    x, y = F.normalize(torch.randn(8, D), dim=1), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    expected = losses.ContrastiveLoss()(x, y, miners.PairMarginMiner()(x, y))
    assert torch.allclose(learners.loss("learner0", x, y, None), expected)


def test_the_full_heads_start_is_an_object_a_name_or_refused():
    assert isinstance(head_start("imprint"), ImprintedHeads) and isinstance(head_start("assembled"), AssembledHeads)
    mine = HeadStart()
    assert head_start(mine) is mine
    with pytest.raises(ValueError, match='full_head must be "imprint", "assembled" or a HeadStart'):
        head_start("fresh")


def test_a_head_start_of_ones_own_gets_what_it_needs_and_only_with_per_learner_heads():
    calls = []

    class Record(HeadStart):
        def start(self, learners, context):
            calls.append((learners, context.num_active, context.dims, context.class_owner.tolist()))

    context = HeadStartContext(2, [slice(0, 4), slice(4, 8)], np.array([0, 1, 1, 0]), embed=lambda: None)
    per_learner = Learners(losses.ArcFaceLoss(C, D), None, 2, "per_learner", 4, np.arange(C), full_head=Record())
    per_learner.start_full_heads(context)
    assert calls == [(per_learner, 2, [slice(0, 4), slice(4, 8)], [0, 1, 1, 0])]
    Learners(losses.ArcFaceLoss(C, D), None, 2, "shared", 4, np.arange(C), full_head=Record()).start_full_heads(context)
    assert len(calls) == 1  # a shared head is the full learner's already


def test_the_extra_state_fits_only_learners_like_these():
    learners = Learners(
        losses.CrossBatchMemory(losses.ContrastiveLoss(), D, memory_size=8), None, 2, "per_learner", 4, [0, 1]
    )
    state = learners.extra_state()
    assert state["memory_sizes"] == {"learner0": 4, "learner1": 4, "full": D}
    learners.check_extra_state(state)
    with pytest.raises(
        ValueError, match=r"the checkpoint holds 4 learners, this wrapper 2: it was written with num_learners=4"
    ):
        learners.check_extra_state(dict(state, memory_sizes={**state["memory_sizes"], "learner2": 2, "learner3": 2}))
    with pytest.raises(ValueError, match='written with heads="shared"'):
        learners.check_extra_state(dict(state, mode="shared"))
