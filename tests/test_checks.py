"""Checks of what a wrapper is given: its loss, miner, embedder, sampler, heads and schedule, and the
optimizers its parameters need."""

import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners, samplers

from pml_divide_conquer import (
    ClusterSampler,
    DivideConquerSchedule,
    DivideConquerWrapper,
    SubspaceMaskedEmbedder,
    checks,
)

import factory


def test_loss_and_miner_checks():
    checks.check_loss(losses.ContrastiveLoss())
    with pytest.raises(TypeError, match="must be a PML loss"):
        checks.check_loss(lambda x, labels: x)
    with pytest.raises(ValueError, match="does not use class labels"):
        checks.check_loss(losses.VICRegLoss())
    checks.check_miner(None)
    with pytest.raises(ValueError, match="EmbeddingsAlreadyPackagedAsTriplets"):
        checks.check_miner(miners.EmbeddingsAlreadyPackagedAsTriplets())


def test_losses_that_need_equal_class_counts_are_recognised_inside_other_losses():
    assert checks.needs_equal_counts(losses.SmoothAPLoss())
    assert checks.needs_equal_counts(losses.MultipleLosses([losses.ContrastiveLoss(), losses.SmoothAPLoss()]))
    assert not checks.needs_equal_counts(losses.ContrastiveLoss())


LABELS = np.repeat(np.arange(4), 10)


def wrapper(labels=LABELS, loss=None, num_learners=2, **kwargs):
    return DivideConquerWrapper(
        loss or losses.ContrastiveLoss(), embedder=SubspaceMaskedEmbedder(8, num_learners),
        sampler=ClusterSampler(labels, batch_size=8, m=4), **kwargs,
    )  # fmt: skip


def test_more_learners_than_classes():
    with pytest.raises(ValueError, match="larger than the number of training classes"):
        wrapper(num_learners=8)


def test_sampler_embedder_miner_and_heads_are_checked():
    emb = SubspaceMaskedEmbedder(8, 2)
    with pytest.raises(TypeError, match="must be a ClusterSampler"):
        DivideConquerWrapper(losses.ContrastiveLoss(), embedder=emb, sampler=samplers.MPerClassSampler(LABELS, 4))
    with pytest.raises(TypeError, match="SubspaceMaskedEmbedder"):
        DivideConquerWrapper(
            losses.ContrastiveLoss(), embedder=torch.nn.Identity(), sampler=ClusterSampler(LABELS, batch_size=8, m=4)
        )
    with pytest.raises(TypeError, match="PML miner"):
        DivideConquerWrapper(
            losses.ContrastiveLoss(),
            torch.nn.Identity(),
            embedder=emb,
            sampler=ClusterSampler(LABELS, batch_size=8, m=4),
        )
    with pytest.raises(ValueError, match='heads must be "shared" or "per_learner"'):
        wrapper(heads="one")
    with pytest.raises(ValueError, match="the SubspaceMaskedEmbedder 2"):
        wrapper(schedule=DivideConquerSchedule.journal(20, 4))


@pytest.mark.parametrize(
    "loss", [losses.SelfSupervisedLoss(losses.TripletMarginLoss()), losses.VICRegLoss()], ids=lambda x: type(x).__name__
)
def test_losses_without_labels_are_refused(loss):
    with pytest.raises(ValueError, match="does not use class labels"):
        wrapper(loss=loss)


def test_a_loss_parameter_no_optimizer_holds_is_named():
    dc = wrapper(loss=losses.ArcFaceLoss(4, 8))
    with pytest.raises(ValueError, match=r"trainable parameters that no optimizer holds \(learners\.learner0\.W"):
        checks.check_parameters_are_optimized(dc, [torch.optim.Adam(torch.nn.Linear(2, 2).parameters())])
    checks.check_parameters_are_optimized(dc, [torch.optim.Adam(dc.parameters())])


def test_a_loss_that_is_not_pml_s_is_named_with_what_is_supported():
    with pytest.raises(TypeError, match="CrossEntropyLoss is not a PML loss: DivideConquerWrapper wraps pytorch-metr"):
        wrapper(loss=torch.nn.CrossEntropyLoss())

    class Own(losses.BaseMetricLossFunction):  # one's own, on PML's base class: fine
        def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
            return self.zero_losses()

    wrapper(loss=Own())


def test_one_s_own_module_called_as_pml_calls_a_loss_trains_as_in_0_3(digits):
    """A module of one's own (not on PML's base class) whose forward takes (embeddings, labels, indices_tuple) is
    accepted, as 0.3 accepted it: only torch's own losses are refused."""

    class OwnContrastive(torch.nn.Module):
        def forward(self, embeddings, labels, indices_tuple=None):
            same = labels[:, None] == labels[None, :]
            d = torch.cdist(embeddings, embeddings)
            return d[same].mean() + torch.relu(1 - d[~same]).mean()

    parts = factory.plain(factory.make(digits, num_learners=2, batch_size=32, m=4, loss=OwnContrastive()))
    seen = []
    factory.train_plain(parts, 2, after_step=lambda epoch, indices, loss: seen.append(loss))
    assert seen and all(torch.isfinite(loss) for loss in seen)
    assert parts["wrapper"].last_epoch == 2


@pytest.mark.parametrize(
    "batch_size, m, missing", [(8, 1, "no positive pair"), (4, 4, "no negative")], ids=["m=1", "one-class"]
)
def test_batches_without_pairs_for_a_pair_loss_are_named_when_the_wrapper_sees_the_loss(batch_size, m, missing):
    labels = np.repeat(np.arange(8), 6)

    def build(loss):
        sampler = ClusterSampler(labels, batch_size=batch_size, m=m)
        return DivideConquerWrapper(loss, embedder=SubspaceMaskedEmbedder(8, 1), sampler=sampler)

    with pytest.warns(UserWarning, match=f"TripletMarginLoss compares samples within a batch.*{missing}"):
        build(losses.TripletMarginLoss())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a classification loss trains on any batch: no warning
        build(losses.ArcFaceLoss(8, 8))


def test_a_module_that_cannot_be_called_as_a_loss_and_a_subclass_of_torch_s_are_told_what_fits():
    class TwoArguments(torch.nn.Module):
        def forward(self, embeddings, labels):
            return embeddings.sum()

    with pytest.raises(TypeError, match=r"cannot be called as the wrapper calls a loss, loss\(embeddings, labels, "):
        wrapper(loss=TwoArguments())

    class Smoothed(torch.nn.CrossEntropyLoss):
        pass

    with pytest.raises(TypeError, match="Smoothed is not a PML loss"):
        wrapper(loss=Smoothed())


def test_one_s_own_loss_on_torch_s_base_class_is_accepted_and_torch_s_three_tensor_losses_are_refused():
    class OnTorchsBase(torch.nn.modules.loss._Loss):
        def forward(self, embeddings, labels, indices_tuple=None):
            return embeddings.sum()

    wrapper(loss=OnTorchsBase())
    with pytest.raises(TypeError, match="TripletMarginLoss is not a PML loss"):
        wrapper(loss=torch.nn.TripletMarginLoss())  # (torch's: it takes three tensors, so the call would bind)
