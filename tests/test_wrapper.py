"""DivideConquerWrapper, the loss: each training batch to its cluster's learner on its subspace, the full learner
outside the divide phase and in eval mode, what it exposes read-only."""

import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners

from pml_divide_conquer import ClusterSampler, DivideConquerSchedule, DivideConquerWrapper, SubspaceMaskedEmbedder

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
    with pytest.raises(FloatingPointError, match="non-finite"):  # outside training, too
        w.eval()(torch.full((8, 8), float("nan")), torch.zeros(8, dtype=torch.long))
    parts = factory.plain(factory.make(random_set, embedding_size=8, batch_size=8))
    w, batches = parts["wrapper"], iter(parts["loader"])
    for bad in (float("nan"), float("inf")):
        x, y, _ = next(batches)
        e = parts["model"](x).detach()
        e[3, 2] = bad
        with pytest.raises(FloatingPointError, match="non-finite"):
            w(e, y)
    x, y, _ = next(batches)  # the bad batches were taken: the next one is routed as usual
    assert torch.isfinite(w(parts["model"](x), y))


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


def test_a_nan_loss_from_the_wrapper_s_own_parameters_is_raised_before_the_caller_steps(digits):
    """Learned masks turned NaN: the embeddings are finite, the loss is not; the trunk must not be stepped."""
    parts = factory.plain(factory.make(digits, num_learners=2, mode="learned", grow=False))
    with torch.no_grad():
        parts["embedder"].masks.fill_(float("nan"))  # (the masks' parameter, as a diverged optimizer leaves it)
    x, y, _ = next(iter(parts["loader"]))
    embeddings = parts["trunk"](x) @ torch.ones(32, 16)  # finite: computed without the masks
    with pytest.raises(FloatingPointError, match="loss DivideConquerWrapper computed is NaN or inf while its embed"):
        parts["wrapper"](embeddings, y)


def half_epoch(parts, bad_batches):
    """One epoch with float16 embeddings (as under float16 autocast); batches in ``bad_batches`` overflow to inf
    and, as a GradScaler does, are not stepped."""
    dc, model, opt = parts["wrapper"], parts["model"], parts["optimizer"]
    overflowed = []
    for step, (x, y, idx) in enumerate(parts["loader"]):
        opt.zero_grad()
        e = model(x).half()
        if step in bad_batches:
            e = e * torch.tensor(float("inf"), dtype=torch.float16)
            overflowed += idx.tolist()
        loss = dc(e, y)
        if step not in bad_batches:
            loss.backward()
            opt.step()
    return overflowed


def test_float16_overflows_are_counted_and_said_at_the_epoch_end_and_kept_out_of_the_feature_memory(digits):
    """Under float16 autocast an overflow is an event a GradScaler recovers from (it skips the step): the wrapper
    goes on, says at the epoch end how many batches overflowed, and keeps their rows out of the feature memory;
    only an epoch in which every batch overflowed is an error."""
    spec = dict(num_learners=2, recluster=dict(cluster_on="embedding", features_from="training"))
    parts = factory.plain(factory.make(digits, **spec))
    overflowed = half_epoch(parts, bad_batches={2, 5})
    batches = len(parts["loader"])
    # their rows count as none: the next reclustering embeds those samples afresh (checked once, when it reads)
    rows, stale = parts["wrapper"].feature_memory.features_for_clustering()
    assert set(overflowed) <= set(stale.tolist()) and np.isfinite(np.delete(rows, stale, axis=0)).all()
    with pytest.warns(UserWarning, match=f"2 of the {batches} batches since the last end-of-epoch step had non-f"):
        parts["wrapper"].end_epoch()
    half_epoch(parts, bad_batches=set(range(batches)))
    with pytest.raises(FloatingPointError, match="every batch since the last end-of-epoch step"):
        parts["wrapper"].end_epoch()


def test_a_float16_overflow_that_would_enter_a_cross_batch_memory_is_an_error(digits):
    """With CrossBatchMemory an overflowed batch is no event to skip: its NaN rows would stay in the memory and
    every later loss would be NaN. Raised before the loss sees the batch (on the CPU; at the epoch end on a
    device), and the memory holds nothing of it."""
    xbm = losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=16, memory_size=64)
    parts = factory.plain(factory.make(digits, num_learners=2, loss=xbm))
    with pytest.raises(FloatingPointError, match="a float16 batch overflowed .* keeps a CrossBatchMemory"):
        half_epoch(parts, bad_batches={1})
    for memory in parts["wrapper"].modules():
        if isinstance(memory, losses.CrossBatchMemory):
            assert torch.isfinite(memory.embedding_memory).all()


def test_building_a_wrapper_with_a_schedule_that_cannot_reach_K_warns():
    labels = np.repeat(np.arange(16), 8)
    embedder = SubspaceMaskedEmbedder(16, 8)
    sampler = ClusterSampler(labels, batch_size=8, m=4)
    with pytest.warns(UserWarning, match="the divide phase ends after epoch 3 with K=2 of its 8 learners"):
        DivideConquerWrapper(
            losses.ContrastiveLoss(), embedder=embedder, sampler=sampler,
            schedule=DivideConquerSchedule.journal(num_epochs=6, num_learners=8),
        )  # fmt: skip


def test_a_nan_loss_caught_by_the_loop_leaves_the_records_of_its_own_batch(digits):
    """On the CPU a NaN loss from finite embeddings raises at once; what record-keeper reads is that batch's
    (its learner, its NaN loss), not the batch before's."""

    class NaNAfterFirst(torch.nn.Module):
        calls = 0

        def forward(self, embeddings, labels, indices_tuple=None):
            NaNAfterFirst.calls += 1
            return embeddings.sum() * (1.0 if NaNAfterFirst.calls == 1 else float("nan"))

    parts = factory.plain(factory.make(digits, num_learners=2, grow=False, loss=NaNAfterFirst()))
    dc, model = parts["wrapper"], parts["model"]
    batches = iter(parts["loader"])
    x, y, _ = next(batches)
    dc(model(x), y)
    x, y, idx = next(batches)
    with pytest.raises(FloatingPointError, match="the loss DivideConquerWrapper computed is NaN"):
        dc(model(x), y)
    learner = int(parts["sampler"].assignment[idx[0]])
    assert dc.current_learner == learner and torch.isnan(getattr(dc, f"learner{learner}_loss"))
