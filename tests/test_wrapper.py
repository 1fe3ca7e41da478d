"""DivideConquerWrapper, the loss: each training batch to its cluster's learner on its subspace, the full learner
outside the divide phase and in eval mode, what it exposes read-only."""

import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners

from pml_divide_conquer import DivideConquerSchedule

import factory
from helpers import IndexedDataset

LABELS = np.repeat(np.arange(8), 10)


@pytest.fixture(scope="module")
def random_set():
    """80 random 64-d inputs of 8 classes: the model is irrelevant, the tests call the wrapper on embeddings."""
    return IndexedDataset(np.random.default_rng(0).normal(size=(len(LABELS), 64)).astype(np.float32), LABELS)


def prepared(dataset, **spec):
    """A run of ``spec`` on ``dataset`` in PML's trainer, set up (the step before epoch 1 taken)."""
    spec = {"embedding_size": 8, "batch_size": 8, "loss": losses.ContrastiveLoss(), **spec}
    parts = factory.pml(factory.make(dataset, **spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])
    return parts


def test_labels_missing_and_non_finite_embeddings(random_set):
    w = factory.make(random_set, embedding_size=8, batch_size=8)["wrapper"]
    with pytest.raises(ValueError, match="needs the batch labels"):
        w(torch.randn(8, 8))
    bad = torch.randn(8, 8)
    bad[3, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        w(bad, torch.zeros(8, dtype=torch.long))
    bad[3, 2] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite"):
        w(bad, torch.zeros(8, dtype=torch.long))


def test_miner_given_twice_is_refused(random_set):
    w = factory.make(random_set, embedding_size=8, batch_size=8, miner=miners.PairMarginMiner())["wrapper"]
    with pytest.raises(ValueError, match="miner only to the wrapper"):
        w(torch.randn(8, 8), torch.zeros(8, dtype=torch.long), (torch.tensor([0]),) * 4)


def test_eval_mode_uses_the_full_embedding_and_no_ticket(random_set):
    w = factory.make(random_set, embedding_size=8, batch_size=8, loss=losses.ContrastiveLoss())["wrapper"].eval()
    e, y = torch.randn(8, 8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    expected = losses.ContrastiveLoss()(torch.nn.functional.normalize(e), y)
    assert torch.allclose(w(e, y), expected)


def test_learner_loss_is_the_wrapped_loss_on_its_subspace_plus_orthogonality(random_set):
    schedule = DivideConquerSchedule(num_learners=2, grow=False)  # K=2 from the start
    parts = prepared(random_set, mode="learned", schedule=schedule, orthogonality_weight=0.5)
    w, emb, sampler = parts["wrapper"], parts["embedder"], parts["sampler"]
    with torch.no_grad():  # masks that overlap on some dims (0, 3, 6) and not on others
        emb.masks.copy_(
            torch.tensor([[1.0, 0.5, -0.3, 2.0, 0.1, -1.0, 0.7, 0.2], [0.3, -0.5, 1.0, 1.5, -0.2, 0.8, 0.9, -0.4]])
        )
    sampler.set_assignment(LABELS % 2)  # clusters of our choosing
    assert w.num_active == 2
    it = iter(sampler)
    idx = [next(it) for _ in range(8)]
    e = torch.randn(8, 8)
    got = w(e, torch.as_tensor(LABELS[idx]))
    k = int(LABELS[idx[0]] % 2)
    ref = losses.ContrastiveLoss()(emb.subspace(e, k, 2), torch.as_tensor(LABELS[idx]))
    assert w.current_learner == k
    assert torch.allclose(got, ref + 0.5 * emb.orthogonality_loss(2))
    # the term's gradient reaches the masks: the total's gradient is the loss's plus 0.5 x the term's
    grad_total = torch.autograd.grad(got, emb.masks)[0]
    grad_loss = torch.autograd.grad(ref, emb.masks)[0]
    grad_term = torch.autograd.grad(emb.orthogonality_loss(2), emb.masks)[0]
    assert grad_term.abs().sum() > 0 and torch.allclose(grad_total, grad_loss + 0.5 * grad_term, atol=1e-6)


def test_the_orthogonality_term_pulls_the_masks_apart(digits):
    """Trained with the term, the masks overlap less (mean cosine of relu(masks)) than with weight 0."""
    overlaps = {}
    for weight in (0.0, 1.0):
        parts = factory.plain(
            factory.make(digits, num_learners=2, mode="learned", recluster_every=1, orthogonality_weight=weight)
        )
        factory.train_plain(parts, 3)
        overlaps[weight] = float(parts["embedder"].orthogonality_loss(2))
    assert overlaps[1.0] < overlaps[0.0] - 0.05, overlaps


def test_recluster_keeps_K_and_missed_steps_are_refused(digits):
    parts = factory.pml(factory.make(digits, num_learners=4, full_embedding_epoch=3, all_data_epoch=3, heads="shared"))
    w, t = parts["wrapper"], parts["trainer"]
    with pytest.raises(ValueError, match="keeps K=1"):
        w.recluster(t, num_learners=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w.prepare(t)
        with pytest.raises(RuntimeError, match="end-of-epoch step was last taken after epoch 0"):
            t.train(start_epoch=4, num_epochs=4)  # a fresh wrapper, as if its state had not been loaded
    with pytest.raises(RuntimeError, match="never taken"):
        w.end_epoch(3)


@pytest.mark.parametrize("mode", ["fixed", "learned"])
def test_full_embedding_phase_is_the_base_loss_on_the_whole_normalised_embedding_of_a_cluster_batch(random_set, mode):
    schedule = DivideConquerSchedule(num_learners=2, grow=False, full_embedding_epoch=1)
    parts = prepared(random_set, mode=mode, schedule=schedule, orthogonality_weight=1.0)
    w, sampler = parts["wrapper"], parts["sampler"]
    assert str(w.phase) == "full_embedding" and sampler.num_clusters == 2  # clustered into K=2 at set-up
    it = iter(sampler)
    idx = [next(it) for _ in range(8)]
    assert len(set(sampler.assignment[idx])) == 1  # a batch from one cluster
    e = torch.randn(8, 8)
    got = w(e, torch.as_tensor(LABELS[idx]))
    expected = losses.ContrastiveLoss()(torch.nn.functional.normalize(e), torch.as_tensor(LABELS[idx]))
    assert torch.allclose(got, expected) and w.current_learner == 2  # no orthogonality term either


def test_the_epoch_state_is_the_controllers_and_read_only(random_set):
    parts = prepared(random_set, schedule=DivideConquerSchedule(num_learners=2, grow=False))
    w = parts["wrapper"]
    assert (w.last_epoch, w.num_active, str(w.phase)) == (0, 2, "divide")
    assert (w.last_epoch, w.num_active) == (w.controller.last_epoch, w.controller.num_active)
    assert w.recluster_seconds == w.controller.recluster_seconds > 0
    for name in ("last_epoch", "num_active", "phase", "recluster_seconds", "clustering_seconds"):
        with pytest.raises(AttributeError):
            setattr(w, name, 1)
