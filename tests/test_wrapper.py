"""DivideConquerWrapper: bad input gets a clear error; the loss itself behaves."""

import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners, samplers, testers, trainers

from lab.datasets import ArrayDataset
from pml_divide_conquer import ClusterSampler, DivideConquerSchedule, DivideConquerWrapper, SubspaceMaskedEmbedder

from helpers import build


def wrapper_for(labels, loss=None, num_learners=2, **kw):
    emb = SubspaceMaskedEmbedder(8, num_learners)
    sampler = ClusterSampler(labels, batch_size=8, m=4)
    return DivideConquerWrapper(loss or losses.ContrastiveLoss(), embedder=emb, sampler=sampler, **kw)


def trainer_for(wrapper, labels, dim=8):
    """A real PML trainer around ``wrapper`` (random inputs), prepared."""
    ds = ArrayDataset(np.random.default_rng(0).normal(size=(len(labels), dim)).astype(np.float32), labels)
    groups = wrapper.embedder.parameter_groups(lr=1e-3)
    optimizers = {"embedder_optimizer": torch.optim.Adam(groups)} if groups else {}
    if any(p.requires_grad for p in wrapper.parameters()):
        optimizers["metric_loss_optimizer"] = torch.optim.Adam(wrapper.parameters(), lr=1e-3)
    trainer = trainers.MetricLossOnly(
        models={"trunk": torch.nn.Identity(), "embedder": wrapper.embedder},
        optimizers=optimizers,
        batch_size=wrapper.sampler.batch_size,
        loss_funcs={"metric_loss": wrapper},
        dataset=ds,
        sampler=wrapper.sampler,
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
        end_of_epoch_hook=wrapper.get_end_of_epoch_hook(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper.prepare(trainer)
    return trainer


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


@pytest.mark.parametrize(
    "loss", [losses.SelfSupervisedLoss(losses.TripletMarginLoss()), losses.VICRegLoss()], ids=lambda x: type(x).__name__
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
    # without prepare(): the first batch says so
    with pytest.raises(RuntimeError, match="was not set up"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["trainer"].train(num_epochs=1)


def test_trainer_batch_size_differing_from_sampler_is_refused(digits):
    parts = build(digits, trainer_batch_size=12)
    with pytest.raises(ValueError, match="batch_size=12 differs"):
        parts["wrapper"].prepare(parts["trainer"])


@pytest.mark.parametrize("grow", [True, False])
def test_training_without_prepare_is_refused_at_the_first_batch(digits, grow):
    parts = build(digits, grow=grow)
    with (
        pytest.raises(RuntimeError, match=r"call dc.prepare\(trainer\) before trainer.train"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        parts["trainer"].train(num_epochs=1)


def test_unsupported_trainer_is_named_at_prepare(digits):
    parts = build(digits, num_learners=2)
    parts["trainer"].__class__ = trainers.TwoStreamMetricLoss  # calls the loss with its own batch layout
    with pytest.raises(TypeError, match="TwoStreamMetricLoss is not supported"):
        parts["wrapper"].prepare(parts["trainer"])


def test_missing_end_of_epoch_hook_is_refused_at_prepare(digits):
    from pytorch_metric_learning.utils import logging_presets

    parts = build(digits, num_learners=2, end_of_epoch_hook=None)
    with pytest.raises(ValueError, match="does not take the D&C step"):
        parts["wrapper"].prepare(parts["trainer"])
    hooks = logging_presets.HookContainer(None)
    parts["trainer"].end_of_epoch_hook = hooks.end_of_epoch_hook(testers.GlobalEmbeddingSpaceTester(), {}, "unused")
    with pytest.raises(ValueError, match="HookContainer.end_of_epoch_hook"):
        parts["wrapper"].prepare(parts["trainer"])


def test_a_hook_of_ones_own_that_skips_the_step_is_caught_at_the_next_epoch(digits):
    parts = build(digits, num_learners=2, end_of_epoch_hook=lambda trainer: True, iterations_per_epoch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])  # cannot tell what a user's own hook does ...
        with pytest.raises(RuntimeError, match="end-of-epoch step was last taken after epoch 0"):
            parts["trainer"].train(num_epochs=2)  # ... but the first batch of epoch 2 can
    # a hook of one's own that does call it is fine
    parts = build(digits, num_learners=2, iterations_per_epoch=2)
    w = parts["wrapper"]
    parts["trainer"].end_of_epoch_hook = lambda trainer: w.end_of_epoch_hook(trainer) and True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w.prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=2)
    assert w.last_epoch == 2 and w.num_active == 2


def test_trunk_is_frozen_in_the_first_epoch_after_each_reclustering(digits):
    lrs = []
    parts = build(
        digits,
        num_learners=2,
        recluster_every=2,
        freeze_trunk_epochs=1,
        iterations_per_epoch=3,
        end_of_iteration_hook=lambda t: lrs.append((t.epoch, t.optimizers["trunk_optimizer"].param_groups[0]["lr"])),
    )
    trunk = parts["trunk"]
    snapshots = []
    w = parts["wrapper"]
    parts["trainer"].end_of_epoch_hook = w.get_end_of_epoch_hook(
        then=lambda t: snapshots.append([p.detach().clone() for p in trunk.parameters()]) or True
    )
    before = [p.detach().clone() for p in trunk.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w.prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=4)
    changed = [any(not torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip([before] + snapshots, snapshots)]
    assert changed == [False, True, False, True]  # Adam with lr 0 leaves the trunk where it was
    # the learning rate is 0 only inside the optimizer's steps: between them, schedulers see the real one
    assert [lr for e, lr in lrs] == [1e-3] * 12
    with pytest.raises(ValueError, match="holds the trunk's parameters"):
        p2 = build(digits, num_learners=2, recluster_every=2, freeze_trunk_epochs=1)
        del p2["trainer"].optimizers["trunk_optimizer"]
        p2["wrapper"].prepare(p2["trainer"])


def freezing_run(digits, num_epochs, stop_after=None, buf=None):
    """Trunk frozen in epochs 1, 3, 5 (T=2), StepLR(gamma=0.5) on the trunk each epoch; optionally stopped after
    epoch ``stop_after`` into a checkpoint, or resumed from ``buf`` (the epoch after is a frozen one)."""
    import io

    torch.manual_seed(0)
    parts = build(digits, num_learners=2, recluster_every=2, freeze_trunk_epochs=1, iterations_per_epoch=3)
    t, w = parts["trainer"], parts["wrapper"]
    scheduler = torch.optim.lr_scheduler.StepLR(t.optimizers["trunk_optimizer"], step_size=1, gamma=0.5)
    t.lr_schedulers = {"trunk_scheduler_by_epoch": scheduler}
    lrs, trunks = [], []
    t.end_of_epoch_hook = w.get_end_of_epoch_hook(
        then=lambda t: (
            lrs.append(t.optimizers["trunk_optimizer"].param_groups[0]["lr"])
            or trunks.append([p.detach().clone() for p in parts["trunk"].parameters()])
            or True
        )
    )
    start = 1
    if buf is not None:
        state = torch.load(buf, weights_only=True)
        for k, m in t.models.items():
            m.load_state_dict(state["models"][k])
        for k, o in t.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        scheduler.load_state_dict(state["scheduler"])
        w.load_state_dict(state["wrapper"])
        start = w.last_epoch + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w.prepare(t)
        t.train(start_epoch=start, num_epochs=stop_after or num_epochs)
    if stop_after is not None:
        buf = io.BytesIO()
        torch.save(
            {
                "models": {k: m.state_dict() for k, m in t.models.items()},
                "optimizers": {k: o.state_dict() for k, o in t.optimizers.items()},
                "scheduler": scheduler.state_dict(),
                "wrapper": w.state_dict(),
            },
            buf,
        )
        buf.seek(0)
    return lrs, trunks, buf


def test_trunk_freezing_composes_with_an_lr_scheduler_and_a_checkpoint_in_a_frozen_epoch(digits):
    """StepLR halves the trunk's learning rate after every epoch, frozen or not; a run stopped after epoch 2
    (epoch 3 frozen) resumes bit for bit."""
    lrs, trunks, _ = freezing_run(digits, 4)
    assert lrs == [1e-3 * 0.5**e for e in range(1, 5)]
    changed = [not all(torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip(trunks, trunks[1:])]
    assert changed == [True, False, True]  # epochs 2 and 4 trained the trunk, epoch 3 did not
    first, _, buf = freezing_run(digits, 4, stop_after=2)
    resumed, resumed_trunks, _ = freezing_run(digits, 4, buf=buf)
    assert first + resumed == lrs
    for a, b in zip(trunks[2:], resumed_trunks):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_schedule_given_whole_or_in_parts_not_both():
    sched = DivideConquerSchedule.journal(20, 2)
    w = wrapper_for(LABELS, schedule=sched)
    assert w.schedule is sched
    with pytest.raises(ValueError, match="not both"):
        wrapper_for(LABELS, schedule=sched, recluster_every=3)
    with pytest.raises(ValueError, match="num_learners=4"):
        wrapper_for(LABELS, schedule=DivideConquerSchedule.journal(20, 4))
    with pytest.warns(FutureWarning, match="conquer_epoch is deprecated"):
        w = wrapper_for(LABELS, conquer_epoch=5)
    assert (w.schedule.full_embedding_epoch, w.schedule.all_data_epoch) == (5, 5)


def test_miner_given_twice_is_refused():
    emb, sampler = SubspaceMaskedEmbedder(8, 2), ClusterSampler(LABELS, batch_size=8, m=4)
    w = DivideConquerWrapper(losses.ContrastiveLoss(), miners.PairMarginMiner(), embedder=emb, sampler=sampler)
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
    sampler = ClusterSampler(labels, batch_size=8, m=4, seed=0)
    w = DivideConquerWrapper(
        losses.ContrastiveLoss(),
        embedder=emb,
        sampler=sampler,
        schedule=DivideConquerSchedule(num_learners=2, grow=False),  # K=2 from the start
        orthogonality_weight=0.5,
    )
    trainer_for(w, labels)
    sampler.set_assignment(labels % 2)  # clusters of our choosing
    assert w.num_active == 2
    it = iter(sampler)
    idx = [next(it) for _ in range(8)]
    e = torch.randn(8, 8)
    got = w(e, torch.as_tensor(labels[idx]))
    k = int(labels[idx[0]] % 2)
    ref = losses.ContrastiveLoss()(emb.subspace(e, k, 2), torch.as_tensor(labels[idx]))
    assert w.current_learner == k
    assert torch.allclose(got, ref + 0.5 * emb.orthogonality_loss(2))
    # the term's gradient reaches the masks: the total's gradient is the loss's plus 0.5 x the term's
    grad_total = torch.autograd.grad(got, emb.masks)[0]
    grad_loss = torch.autograd.grad(ref, emb.masks)[0]
    grad_term = torch.autograd.grad(emb.orthogonality_loss(2), emb.masks)[0]
    assert grad_term.abs().sum() > 0 and torch.allclose(grad_total, grad_loss + 0.5 * grad_term, atol=1e-6)


def test_the_orthogonality_term_pulls_the_masks_apart(digits):
    """Trained with the term, the masks overlap less (mean cosine of relu(masks)) than with weight 0."""
    from helpers import build_plain, train_plain

    overlaps = {}
    for weight in (0.0, 1.0):
        parts = build_plain(
            digits, num_learners=2, mode="learned", recluster_every=1, wrapper_kwargs=dict(orthogonality_weight=weight)
        )
        train_plain(parts, 3)
        overlaps[weight] = float(parts["embedder"].orthogonality_loss(2))
    assert overlaps[1.0] < overlaps[0.0] - 0.05, overlaps


def test_frozen_wrapper_is_refused(digits):
    parts = build(digits, freeze_these=("metric_loss",))
    with pytest.raises(ValueError, match="freeze_these"):
        parts["wrapper"].prepare(parts["trainer"])
    with pytest.raises(RuntimeError, match="eval mode but gradients"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["trainer"].train(num_epochs=1)


def test_sampler_built_for_another_rank_is_refused():
    labels = np.repeat(np.arange(4), 10)
    sampler = ClusterSampler(labels, batch_size=4, m=2, num_replicas=2, rank=1)  # but this process is not distributed
    w = DivideConquerWrapper(losses.ContrastiveLoss(), embedder=SubspaceMaskedEmbedder(8, 2), sampler=sampler)
    with pytest.raises(ValueError, match="rank 1 of 2, but this process is rank 0 of 1"):
        trainer_for(w, labels)


def test_recluster_keeps_K_and_missed_steps_are_refused(digits):
    parts = build(digits, num_learners=4, full_embedding_epoch=3, all_data_epoch=3)
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
def test_full_embedding_phase_is_the_base_loss_on_the_whole_normalised_embedding_of_a_cluster_batch(mode):
    labels = np.repeat(np.arange(8), 10)
    emb = SubspaceMaskedEmbedder(8, 2, mode=mode, embedder=torch.nn.Linear(8, 8))
    sampler = ClusterSampler(labels, batch_size=8, m=4, seed=0)
    w = DivideConquerWrapper(
        losses.ContrastiveLoss(),
        embedder=emb,
        sampler=sampler,
        grow=False,
        full_embedding_epoch=1,
        orthogonality_weight=1.0,
    )
    trainer_for(w, labels)  # prepare(): clusters into K=2, then the full-embedding phase from epoch 1
    assert str(w.phase) == "full_embedding" and sampler.num_clusters == 2
    it = iter(sampler)
    idx = [next(it) for _ in range(8)]
    assert len(set(sampler.assignment[idx])) == 1  # a batch from one cluster
    e = torch.randn(8, 8)
    got = w(e, torch.as_tensor(labels[idx]))
    expected = losses.ContrastiveLoss()(torch.nn.functional.normalize(e), torch.as_tensor(labels[idx]))
    assert torch.allclose(got, expected) and w.current_learner == 2  # no orthogonality term either
