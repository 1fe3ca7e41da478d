"""DivideConquerWrapper: bad input gets a clear error; the loss itself behaves."""

import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners, samplers, trainers

from conftest import build
from pml_divide_conquer import ClusterSampler, DivideConquerWrapper, SubspaceMaskedEmbedder


def wrapper_for(labels, loss=None, num_learners=2, **kw):
    emb = SubspaceMaskedEmbedder(8, num_learners)
    sampler = ClusterSampler(labels, 8, 4)
    return DivideConquerWrapper(loss or losses.ContrastiveLoss(), embedder=emb, sampler=sampler, **kw)


LABELS = np.repeat(np.arange(4), 10)


def test_more_learners_than_classes():
    with pytest.raises(ValueError, match="larger than the number of training classes"):
        wrapper_for(LABELS, num_learners=8)


def test_embedding_size_not_divisible_in_fixed_mode():
    with pytest.raises(ValueError, match="not divisible by num_learners"):
        SubspaceMaskedEmbedder(10, 4)


def test_batch_size_or_m_no_cluster_can_satisfy():
    with pytest.raises(ValueError, match="only 4 classes"):
        ClusterSampler(LABELS, batch_size=40, m=2)
    with pytest.raises(ValueError, match="largest class"):
        ClusterSampler(LABELS, batch_size=16, m=16)


def test_sampler_and_embedder_types_are_checked():
    emb = SubspaceMaskedEmbedder(8, 2)
    with pytest.raises(TypeError, match="must be a ClusterSampler"):
        DivideConquerWrapper(losses.ContrastiveLoss(), embedder=emb, sampler=samplers.MPerClassSampler(LABELS, 4))
    with pytest.raises(TypeError, match="SubspaceMaskedEmbedder"):
        DivideConquerWrapper(losses.ContrastiveLoss(), embedder=torch.nn.Identity(), sampler=ClusterSampler(LABELS, 8, 4))
    with pytest.raises(TypeError, match="PML miner"):
        DivideConquerWrapper(losses.ContrastiveLoss(), torch.nn.Identity(), embedder=emb, sampler=ClusterSampler(LABELS, 8, 4))


@pytest.mark.parametrize(
    "loss", [losses.SelfSupervisedLoss(losses.TripletMarginLoss()), losses.VICRegLoss()], ids=lambda l: type(l).__name__
)
def test_losses_without_labels_are_refused(loss):
    with pytest.raises(ValueError, match="does not use class labels"):
        wrapper_for(LABELS, loss=loss)


def test_labels_missing_and_non_finite_embeddings():
    w = wrapper_for(LABELS)
    with pytest.raises(ValueError, match="needs the batch labels"):
        w(torch.randn(8, 8))
    bad = torch.randn(8, 8)
    bad[3, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        w(bad, torch.zeros(8, dtype=torch.long))
    bad[3, 2] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite"):
        w(bad, torch.zeros(8, dtype=torch.long))


def test_trainer_with_another_sampler_is_refused(digits):
    other = samplers.MPerClassSampler(digits.labels, 4, batch_size=16)
    parts = build(digits, trainer_sampler=other)
    with pytest.raises(ValueError, match="not the wrapper's ClusterSampler"):
        parts["wrapper"].prepare(parts["trainer"])
    # without prepare(): the first batch cannot be routed, and says so
    with pytest.raises(RuntimeError, match="did not draw"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["trainer"].train(num_epochs=1)


def test_trainer_batch_size_differing_from_sampler_is_refused(digits):
    parts = build(digits, trainer_batch_size=12)
    with pytest.raises(ValueError, match="batch_size=12 differs"):
        parts["wrapper"].prepare(parts["trainer"])
    with pytest.raises(RuntimeError, match="batch of 12 samples"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["trainer"].train(num_epochs=1)


def test_fixed_K_without_prepare_is_refused(digits):
    parts = build(digits, grow=False)
    with pytest.raises(RuntimeError, match="prepare"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["trainer"].train(num_epochs=1)


def test_miner_given_twice_is_refused():
    w = wrapper_for(LABELS, loss=losses.ContrastiveLoss())
    w.miners = torch.nn.ModuleDict({k: miners.PairMarginMiner() for k in w.learners})
    with pytest.raises(ValueError, match="miner only to the wrapper"):
        w(torch.randn(8, 8), torch.zeros(8, dtype=torch.long), (torch.tensor([0]),) * 4)


def test_eval_mode_uses_the_full_embedding_and_no_ticket():
    w = wrapper_for(LABELS).eval()
    e, y = torch.randn(8, 8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    expected = losses.ContrastiveLoss()(torch.nn.functional.normalize(e), y)
    assert torch.allclose(w(e, y), expected)


def test_learner_loss_is_the_wrapped_loss_on_its_subspace_plus_orthogonality():
    labels = np.repeat(np.arange(4), 10)
    emb = SubspaceMaskedEmbedder(8, 2, mode="learned")
    with torch.no_grad():
        emb.masks.copy_(torch.randn(2, 8))
    sampler = ClusterSampler(labels, 8, 4, seed=0)
    w = DivideConquerWrapper(losses.ContrastiveLoss(), embedder=emb, sampler=sampler, orthogonality_weight=0.5)
    sampler.set_assignment(labels % 2)
    w.num_active = 2
    it = iter(sampler)
    idx = [next(it) for _ in range(8)]
    e = torch.randn(8, 8)
    got = w(e, torch.as_tensor(labels[idx]))
    k = int(labels[idx[0]] % 2)
    ref = losses.ContrastiveLoss()(emb.subspace(e, k, 2), torch.as_tensor(labels[idx]))
    assert w.current_learner == k
    assert torch.allclose(got, ref + 0.5 * emb.orthogonality_loss(2))


def test_frozen_wrapper_is_refused(digits):
    parts = build(digits, freeze_these=("metric_loss",))
    with pytest.raises(ValueError, match="freeze_these"):
        parts["wrapper"].prepare(parts["trainer"])
    with pytest.raises(RuntimeError, match="eval mode but gradients"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["trainer"].train(num_epochs=1)


def test_sampler_built_for_another_rank_is_refused():
    labels = np.repeat(np.arange(4), 10)
    sampler = ClusterSampler(labels, 4, 2, num_replicas=2, rank=1)  # but this process is not distributed
    w = DivideConquerWrapper(losses.ContrastiveLoss(), embedder=SubspaceMaskedEmbedder(8, 2), sampler=sampler)
    with pytest.raises(RuntimeError, match="rank 1 of 2, but this process is rank 0 of 1"):
        w(torch.randn(4, 8), torch.zeros(4, dtype=torch.long))


def test_recluster_keeps_K_and_missed_steps_are_refused(digits):
    parts = build(digits, num_learners=4, conquer_epoch=3)
    w, t = parts["wrapper"], parts["trainer"]
    with pytest.raises(ValueError, match="keeps K=1"):
        w.recluster(t, num_learners=4)
    with pytest.raises(RuntimeError, match="never taken"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.train(start_epoch=4, num_epochs=4)  # a fresh wrapper, as if its state had not been loaded


def test_error_before_training_names_the_missing_step(digits):
    parts = build(digits, num_learners=4, conquer_epoch=1)
    with pytest.raises(RuntimeError, match="conquer phase before the first epoch"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["trainer"].train(num_epochs=1)
