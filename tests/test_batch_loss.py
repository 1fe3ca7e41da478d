"""BatchLoss, one batch's loss built from the parts it is handed: the full learner outside training, the learner of
the ticket's cluster on its subspace (with the orthogonality term of learned masks) in the divide phase, and what
record-keeper reads of it returned, not written onto an owner."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses

from pml_divide_conquer import ClusterSampler, DivideConquerSchedule, Reclusterer, SubspaceMaskedEmbedder
from pml_divide_conquer.batch_loss import BatchLoss
from pml_divide_conquer.controller import EpochController
from pml_divide_conquer.learners import PER_LEARNER, Learners
from pml_divide_conquer.routing import Router, Ticket

LABELS = np.repeat(np.arange(8), 10)


def parts(mode="learned", k=2, loss=None):
    """BatchLoss and its collaborators for K=``k`` learners from the start (no set-up: the controller's K and phase
    are the schedule's before epoch 1)."""
    loss = loss or losses.ContrastiveLoss()
    embedder = SubspaceMaskedEmbedder(8, k, mode=mode)
    sampler = ClusterSampler(LABELS, batch_size=8, m=4)
    schedule = DivideConquerSchedule(num_learners=k, grow=False)
    learners = Learners(loss, None, k, PER_LEARNER, embedder.subspace_size(k), np.unique(LABELS))
    controller = EpochController(schedule, sampler, embedder, learners, Reclusterer())
    controller.last_epoch = 0  # (as after the step before epoch 1: K learners, the divide phase)
    return BatchLoss(controller, Router(sampler), learners, embedder, None, loss), embedder


def ticket(cluster):
    return Ticket(1, 0, 0, cluster, np.arange(8), 0, 0)


def test_outside_training_the_full_learner_on_the_full_space_and_no_gradients():
    batch_loss, _ = parts()
    e, y = torch.randn(8, 8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    expected = losses.ContrastiveLoss()(torch.nn.functional.normalize(e), y)
    assert torch.allclose(batch_loss.eval_loss(e, y, None, None, None), expected)
    with pytest.raises(RuntimeError, match="eval mode but gradients are being computed"):
        batch_loss.eval_loss(e.requires_grad_(), y, None, None, None)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_the_ticket_s_learner_on_its_subspace_plus_the_weighted_orthogonality_term(weight):
    batch_loss, embedder = parts()
    e, y = torch.randn(8, 8), torch.as_tensor(LABELS[:8] // 2 * 2 + np.tile([0, 1], 4))
    loss, recorded = batch_loss.learner_loss(ticket(1), e, y, None, None, None, weight)
    ortho = embedder.orthogonality_loss(2)
    expected = losses.ContrastiveLoss()(embedder.subspace(e, 1, 2), y) + weight * ortho
    assert torch.allclose(loss, expected)
    assert set(recorded) == {"current_learner", "learner1_loss", "orthogonality"}
    assert recorded["current_learner"] == 1 and torch.allclose(recorded["orthogonality"], ortho)


def test_fixed_chunks_record_no_orthogonality_and_a_cluster_beyond_k_is_refused():
    batch_loss, embedder = parts(mode="fixed")
    e, y = torch.randn(8, 8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss, recorded = batch_loss.learner_loss(ticket(0), e, y, None, None, None, 0.5)
    assert torch.allclose(loss, losses.ContrastiveLoss()(embedder.subspace(e, 0, 2), y))
    assert set(recorded) == {"current_learner", "learner0_loss"}
    with pytest.raises(RuntimeError, match="batch from cluster 2 but only 2 learners are active"):
        batch_loss.learner_loss(ticket(2), e, y, None, None, None, 0.0)


def test_a_training_batch_before_set_up_is_refused_with_the_fix():
    batch_loss, _ = parts()
    with pytest.raises(RuntimeError, match="DivideConquerWrapper was not set up"):
        batch_loss.training_loss(
            torch.randn(8, 8), torch.zeros(8, dtype=torch.long), None, None, None, False, 0.0, print
        )


def test_a_loss_with_a_cross_batch_memory_is_known():
    xbm = losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=8, memory_size=32)
    assert parts(loss=xbm)[0].loss_has_memory and not parts()[0].loss_has_memory
