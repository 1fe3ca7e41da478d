"""Classification heads: one shared head that each learner trains a part of, or one head per learner."""

import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses

from pml_divide_conquer import heads
from pml_divide_conquer.learners import ImprintedHeads

import factory
from helpers import IndexedDataset

D, C = 16, 10


@pytest.fixture(scope="module")
def small_digits(digits):
    keep = np.arange(0, len(digits), 3)
    return IndexedDataset(digits.data[keep].numpy(), digits.labels[keep])


def trained(dataset, loss, epochs, heads_mode="shared", mode="fixed", full_embedding_epoch=4, all_data_epoch=5, **spec):
    run = factory.make(
        dataset, num_learners=2, mode=mode, recluster_every=1, full_embedding_epoch=full_embedding_epoch,
        all_data_epoch=all_data_epoch, heads=heads_mode, loss=loss, embedding_size=D, **spec,
    )  # fmt: skip
    parts = factory.pml(run, iterations_per_epoch=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=epochs)
    return parts


@pytest.mark.parametrize("name", ["ArcFaceLoss", "ProxyAnchorLoss", "SoftTripleLoss"])
def test_shared_head_each_fixed_chunk_learner_trains_its_slice(small_digits, name):
    make = {
        "ArcFaceLoss": lambda d: losses.ArcFaceLoss(C, d),
        "ProxyAnchorLoss": lambda d: losses.ProxyAnchorLoss(C, d),
        "SoftTripleLoss": lambda d: losses.SoftTripleLoss(C, d, centers_per_class=2),
    }[name]
    parts = trained(small_digits, make(D), epochs=2)  # epoch 2 at K=2: learners on chunks 0:8 and 8:16
    w = parts["wrapper"]
    assert w.num_active == 2 and str(w.phase) == "divide"
    assert all(not list(w.learners[k].parameters()) for k in ("learner0", "learner1"))  # one copy of the head
    [(qual, _, _, head, dim)] = list(heads.head_params(w.learners["full"]))
    assert head.shape[dim] == D

    x, y = torch.nn.functional.normalize(torch.randn(8, D // 2), dim=1), torch.arange(8) % C
    reference = make(D // 2)
    with torch.no_grad():
        getattr(reference, qual).copy_(head.narrow(dim, D // 2, D // 2))
    w.zero_grad()
    got = w.controller.learners.loss("learner1", x, y, None, dims=slice(D // 2, D))
    assert torch.allclose(got, reference(x, y), atol=1e-6)
    got.backward()
    grad = head.grad
    assert grad.narrow(dim, 0, D // 2).abs().sum() == 0 and grad.narrow(dim, D // 2, D // 2).abs().sum() > 0


def test_shared_head_is_the_one_the_full_embedding_phases_go_on_training(small_digits):
    parts = trained(small_digits, losses.ArcFaceLoss(C, D), epochs=2)
    w = parts["wrapper"]
    W = w.learners["full"].W
    after_divide = W.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["trainer"].train(start_epoch=3, num_epochs=5)
    assert w.learners["full"].W is W and str(w.phase) == "all_data"
    assert not torch.equal(after_divide, W)
    # it went on from the trained head, not from a fresh one: still close to where the divide phase left it
    assert torch.nn.functional.cosine_similarity(after_divide.flatten(), W.detach().flatten(), dim=0) > 0.9


def test_shared_head_with_learned_masks_is_the_whole_head_on_the_masked_embedding(small_digits):
    parts = trained(small_digits, losses.ArcFaceLoss(C, D), epochs=2, mode="learned")
    w = parts["wrapper"]
    x, y = torch.nn.functional.normalize(torch.randn(8, D), dim=1), torch.arange(8) % C
    reference = losses.ArcFaceLoss(C, D)
    with torch.no_grad():
        reference.W.copy_(w.learners["full"].W)
    assert torch.allclose(w.controller.learners.loss("learner0", x, y, None), reference(x, y), atol=1e-6)


def test_per_learner_full_head_starts_from_the_learners_heads_put_together(small_digits):
    parts = trained(small_digits, losses.ArcFaceLoss(C, D), epochs=2, heads_mode="per_learner", full_head="assembled")
    w = parts["wrapper"]
    halves = [w.learners[k].W.detach()[: D // 2].clone() for k in ("learner0", "learner1")]  # their 8 dims
    w.end_epoch(3)  # into the full-embedding phase (epoch 4)
    assert str(w.phase) == "full_embedding"
    assert torch.equal(w.learners["full"].W, torch.cat(halves, dim=0))


def test_per_learner_full_head_with_learned_masks_takes_each_class_from_its_cluster(small_digits):
    parts = trained(
        small_digits,
        losses.ArcFaceLoss(C, D),
        epochs=2,
        heads_mode="per_learner",
        mode="learned",
        full_head="assembled",
    )
    w, sampler = parts["wrapper"], parts["sampler"]
    own = [w.learners[k].W.detach().clone() for k in ("learner0", "learner1")]
    # each class's owner counted here, from the clusters the sampler holds: the cluster with most of its samples
    owners = [np.bincount(sampler.assignment[sampler.labels == c], minlength=2).argmax() for c in range(C)]
    assert len(set(owners)) == 2  # both learners own classes, so taking the wrong one would show
    w.end_epoch(3)
    full = w.learners["full"].W
    for c in range(C):
        assert torch.equal(full[:, c], own[owners[c]][:, c])


@pytest.mark.parametrize("mode", ["fixed", "learned"])
def test_per_learner_full_head_is_imprinted_from_the_class_means_of_the_full_embedding(small_digits, mode):
    parts = trained(small_digits, losses.ArcFaceLoss(C, D), epochs=2, heads_mode="per_learner", mode=mode)
    w = parts["wrapper"]
    assert isinstance(w.full_head, ImprintedHeads)
    w.end_epoch(3)  # into the full-embedding phase (epoch 4)
    with torch.no_grad():
        x = torch.as_tensor(small_digits.data)
        parts["trunk"].eval(), parts["embedder"].eval()
        emb = torch.nn.functional.normalize(parts["embedder"](parts["trunk"](x)), dim=1)
    labels = torch.as_tensor(small_digits.labels)
    W = w.learners["full"].W.detach()
    for c in range(C):
        mean = torch.nn.functional.normalize(emb[labels == c].mean(0), dim=0)
        assert torch.allclose(W[:, c], mean, atol=1e-5)  # the class mean, at unit norm


def test_full_head_must_be_imprint_or_assembled(small_digits):
    with pytest.raises(ValueError, match="full_head"):
        trained(small_digits, losses.ArcFaceLoss(C, D), epochs=0, heads_mode="per_learner", full_head="fresh")


def test_imprint_points_one_vector_per_class_at_its_mean_and_leaves_the_rest():
    emb = torch.nn.functional.normalize(torch.randn(12, 6), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 0, 1, 2])  # class 3 has no sample
    for loss, get, keeps_norm in (
        (losses.ArcFaceLoss(4, 6), lambda m: m.W.detach().t(), False),
        (losses.ProxyAnchorLoss(4, 6), lambda m: m.proxies.detach(), False),
        (losses.LargeMarginSoftmaxLoss(4, 6), lambda m: m.W.detach().t(), True),  # logits grow with |W|
    ):
        before = get(loss).clone()
        assert heads.imprint(loss, emb, labels) == 1
        after = get(loss)
        for c in range(3):
            mean = torch.nn.functional.normalize(emb[labels == c].mean(0), dim=0)
            assert torch.allclose(after[c], mean * (before[c].norm() if keeps_norm else 1), atol=1e-6)
        assert torch.equal(after[3], before[3])
    several = losses.SubCenterArcFaceLoss(num_classes=4, embedding_size=6, sub_centers=2)
    before = several.W.detach().clone()
    assert heads.imprint(several, emb, labels) == 0 and torch.equal(several.W, before)


def test_assemble_averages_the_columns_of_classes_no_cluster_owns():
    """A head built for more classes than the training set has (ArcFaceLoss(num_classes=5) on 4 training
    classes): the column of class 4 has no owner and starts from the parts' mean; the others from their owner."""
    torch.manual_seed(0)
    parts = [losses.ArcFaceLoss(5, 6), losses.ArcFaceLoss(5, 6)]
    dst = losses.ArcFaceLoss(5, 6)
    heads.assemble(parts, dst, dims=[None, None], class_owner=np.array([1, 0, 1, 1]))
    for c, owner in enumerate([1, 0, 1, 1]):
        assert torch.equal(dst.W[:, c], parts[owner].W[:, c])
    assert torch.allclose(dst.W[:, 4], (parts[0].W[:, 4] + parts[1].W[:, 4]) / 2)
    assert not torch.equal(dst.W[:, 4], parts[0].W[:, 4]) and not torch.equal(dst.W[:, 4], parts[1].W[:, 4])


def test_assemble_takes_all_sub_centers_of_a_class_from_its_owner():
    torch.manual_seed(0)
    parts = [losses.SubCenterArcFaceLoss(num_classes=3, embedding_size=4, sub_centers=2) for _ in range(2)]
    dst = losses.SubCenterArcFaceLoss(num_classes=3, embedding_size=4, sub_centers=2)
    heads.assemble(parts, dst, dims=[None, None], class_owner=np.array([1, 0, 1]))
    for col in range(6):  # columns class * sub_centers + center, as PML reshapes them
        assert torch.equal(dst.W[:, col], parts[[1, 0, 1][col // 2]].W[:, col])


def test_a_graph_the_loop_keeps_across_a_split_does_not_break_the_next_backward(small_digits):
    """A plain loop keeps its last ``loss`` (and so its graph) alive across dc.end_epoch(): heads split there keep
    their shapes, so the next backward still fits (a head resized in place broke it: "invalid gradient ...")."""
    import factory

    parts = factory.plain(factory.make(small_digits, num_learners=2, loss=losses.ArcFaceLoss(C, D), embedding_size=D))
    model, dc, opt = parts["model"], parts["wrapper"], parts["optimizer"]
    shapes = {n: p.shape for n, p in dc.named_parameters()}
    for _epoch in range(3):
        for x, y, _ in parts["loader"]:
            opt.zero_grad()
            loss = dc(model(x), y)  # the last one stays alive across end_epoch()
            loss.backward()
            opt.step()
        dc.end_epoch()
    assert dc.num_active == 2 and {n: p.shape for n, p in dc.named_parameters()} == shapes


@pytest.mark.parametrize("mode", ["fixed", "learned"])
@pytest.mark.parametrize("heads_mode", ["shared", "per_learner"])
def test_heads_without_metric_loss_optimizer_are_refused_at_prepare(small_digits, mode, heads_mode):
    parts = factory.pml(
        factory.make(
            small_digits, num_learners=2, mode=mode, heads=heads_mode, loss=losses.ArcFaceLoss(C, D), embedding_size=D
        )
    )
    del parts["trainer"].optimizers["metric_loss_optimizer"]
    with pytest.raises(ValueError, match="that no optimizer holds"):
        parts["wrapper"].prepare(parts["trainer"])


def test_per_learner_heads_train_through_a_split_without_a_loss_optimizer_when_frozen(small_digits):
    # heads kept fixed on purpose (requires_grad=False) train through a split: no stale gradient breaks a step
    loss = losses.ProxyAnchorLoss(C, D)
    loss.proxies.requires_grad_(False)
    parts = factory.pml(
        factory.make(small_digits, num_learners=2, heads="per_learner", loss=loss, embedding_size=D),
        iterations_per_epoch=3,
    )
    parts["trainer"].optimizers.pop("metric_loss_optimizer", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=3)
    assert parts["wrapper"].num_active == 2
