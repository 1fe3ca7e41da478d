"""Every PML loss and miner inside the wrapper, with real trainers, for a few iterations on CPU."""

import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners, trainers

import catalog
import factory
from helpers import IndexedDataset, Recorder

D, C = catalog.D, catalog.C
LOSSES, REFUSED, ABSTRACT = catalog.LOSSES, catalog.REFUSED, catalog.ABSTRACT
MINERS, REFUSED_MINERS = catalog.MINERS, catalog.REFUSED_MINERS
UPSTREAM_BROKEN = catalog.UPSTREAM_BROKEN


def exported(module, base):
    return {n for n, o in vars(module).items() if isinstance(o, type) and issubclass(o, base)}


def test_every_exported_pml_loss_is_covered():
    # a loss added to PML shows up here: add it to LOSSES, or to REFUSED with a clear error
    assert exported(losses, torch.nn.Module) - ABSTRACT == set(LOSSES) | set(REFUSED)


def test_every_exported_pml_miner_is_covered():
    assert exported(miners, miners.BaseMiner) - {"BaseMiner"} == set(MINERS) | set(REFUSED_MINERS)


@pytest.fixture(scope="module")
def small_digits(digits):
    keep = np.arange(0, len(digits), 3)  # 599 images, all 10 classes
    return IndexedDataset(digits.data[keep].numpy(), digits.labels[keep])


@pytest.fixture(scope="module")
def fragmented_digits(digits):
    """Digits where classes 7-9 have 5 images each, and classes 0-4 and 5-9 lie far apart (a large offset on a few
    pixels): the split into 2 clusters gives each about 5 classes, fewer than a batch of 8 groups needs, and one
    image of class 9 lies with classes 0-4, a fragment smaller than m."""
    labels = digits.labels
    keep = np.concatenate([np.flatnonzero(labels == c)[: 60 if c < 7 else 5] for c in range(10)])
    keep.sort()
    data, labels = digits.data[keep].numpy().copy(), labels[keep]
    far = labels >= 5
    far[np.flatnonzero(labels == 9)[0]] = False  # one image of class 9 with the near classes: a fragment of 1 < m
    data[far, :8] += 8.0
    return IndexedDataset(data, labels)


def run_few(dataset, loss=None, miner=None, mode="fixed", epochs=4, heads="shared", batch_size=16, m=4, **kw):
    """Epoch 1: K=1; split after it; epoch 2: K=2 (heads resized); epoch 3: full embedding on cluster batches;
    epoch 4: all data. ``batch_counts`` (returned in parts) holds the per-class counts of every batch. ``kw``: of
    PML's trainer."""
    losses_seen, batch_counts = [], []
    recorder = Recorder()

    def after_iteration(trainer):
        losses_seen.append(float(trainer.losses["total_loss"]))
        batch_counts.append(np.unique(dataset.labels[recorder.last], return_counts=True)[1])

    kw.setdefault("data_and_label_getter", recorder)
    run = factory.make(
        dataset, num_learners=2, mode=mode, recluster_every=1, full_embedding_epoch=3, all_data_epoch=4, loss=loss,
        miner=miner, embedding_size=D, heads=heads, batch_size=batch_size, m=m,
    )  # fmt: skip
    parts = factory.pml(run, end_of_iteration_hook=after_iteration, **{"iterations_per_epoch": 3, **kw})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=epochs)
    parts["batch_counts"] = batch_counts
    return parts, losses_seen


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, raises=RuntimeError, reason="PML 2.9.0 bug"))
        if n in UPSTREAM_BROKEN
        else n
        for n in sorted(LOSSES)
    ],
)
def test_loss_trains_inside_the_wrapper_through_splits_and_small_class_fragments(fragmented_digits, name):
    """Batches of 8 groups of m=2 from 2 clusters of 10 digit classes: at least one cluster has fewer than 8 classes
    with 2 samples, so some classes give several groups (SmoothAPLoss gets equal counts for every class instead)."""
    loss = LOSSES[name]()
    parts, seen = run_few(fragmented_digits, loss=loss, batch_size=16, m=2, iterations_per_epoch=6)
    assert len(seen) == 24 and np.isfinite(seen).all()
    w = parts["wrapper"]
    assert w.phase == "all_data" and w.num_active == 2
    assert "fragments" in parts["sampler"].clusters.warned  # class fragments smaller than m were there, and left out
    in_clusters = parts["batch_counts"][6:18]  # epochs 2 and 3: batches from 2 clusters
    if name == "SmoothAPLoss":
        assert all(len(set(c.tolist())) == 1 for c in parts["batch_counts"])
        assert any(c[0] > 2 for c in in_clusters)  # a cluster with few classes: 4 or 8 samples of each
    else:
        assert any(len(set(c.tolist())) > 1 for c in in_clusters)  # the case SmoothAPLoss cannot take was reached


def test_upstream_broken_losses_fail_without_the_wrapper_too():
    loss = losses.DynamicSoftMarginLoss()
    y = torch.arange(4).repeat_interleave(4)
    loss(torch.randn(16, 8, requires_grad=True), y).backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss(torch.randn(16, 8, requires_grad=True), y).backward()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_losses_without_labels_are_refused_with_the_reason(name):
    from pml_divide_conquer import ClusterSampler, DivideConquerWrapper, SubspaceMaskedEmbedder

    with pytest.raises(ValueError, match="does not use class labels"):
        DivideConquerWrapper(
            REFUSED[name](),
            embedder=SubspaceMaskedEmbedder(D, 2),
            sampler=ClusterSampler(np.repeat(np.arange(4), 5), batch_size=4, m=2),
        )


@pytest.mark.parametrize("name", sorted(MINERS))
def test_miner_works_per_learner(small_digits, name):
    parts, seen = run_few(small_digits, loss=losses.ContrastiveLoss(), miner=MINERS[name]())
    assert np.isfinite(seen).all()
    miner_copies = parts["wrapper"].miners
    assert set(miner_copies.keys()) == {"learner0", "learner1", "full"}
    assert len({id(m) for m in miner_copies.values()}) == 3


def test_packaged_triplets_miner_is_refused(small_digits):
    with pytest.raises(ValueError, match="EmbeddingsAlreadyPackagedAsTriplets"):
        factory.pml(
            factory.make(
                small_digits, num_learners=4, miner=miners.EmbeddingsAlreadyPackagedAsTriplets(), heads="shared"
            )
        )


@pytest.mark.parametrize("name", ["ArcFaceLoss", "ProxyAnchorLoss", "SoftTripleLoss", "P2SGradLoss"])
def test_classification_heads_are_inherited_on_split_each_child_its_half(small_digits, name):
    """After epoch 1 (K=1, one 16-dim learner) the split gives learner 0 the parent's rows 0-7 and learner 1 its
    rows 8-15, Adam moments alike, and each child's loss is the parent's head restricted to its half."""
    from pml_divide_conquer import heads

    parts = factory.pml(
        factory.make(
            small_digits, num_learners=2, recluster_every=1, heads="per_learner", loss=LOSSES[name](), embedding_size=D
        ),
        iterations_per_epoch=3,
    )
    w, t = parts["wrapper"], parts["trainer"]
    opt = parts["optimizers"]["metric_loss_optimizer"]
    before = {}

    def hook(trainer):
        [(qual, _, _, p, dim)] = list(heads.head_params(w.learners["learner0"]))
        before.update(qual=qual, dim=dim, head=p.detach().clone(), moment=opt.state[p]["exp_avg"].clone())
        return w.end_of_epoch_hook(trainer)

    t.end_of_epoch_hook = hook
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w.prepare(t)
        t.train(num_epochs=1)
    dim, half = before["dim"], D // 2
    assert w.num_active == 2
    for k, rows in ((0, slice(0, half)), (1, slice(half, D))):
        [(_, _, _, p, _)] = list(heads.head_params(w.learners[f"learner{k}"]))
        assert p.shape == before["head"].shape  # storage keeps its size; the child uses its first 8 rows
        index = torch.arange(rows.start, rows.stop)
        assert torch.equal(p.detach().narrow(dim, 0, half), before["head"].index_select(dim, index))
        assert torch.equal(opt.state[p]["exp_avg"].narrow(dim, 0, half), before["moment"].index_select(dim, index))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.train(start_epoch=2, num_epochs=2)  # and training goes on with them


def test_per_learner_arcface_heads_receive_gradient_and_change(small_digits):
    parts, _ = run_few(small_digits, loss=losses.ArcFaceLoss(C, D), epochs=1, heads="per_learner")
    w = parts["wrapper"]
    before = {k: m.W.detach().clone() for k, m in w.learners.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["trainer"].train(start_epoch=2, num_epochs=4)
    for k in ("learner0", "learner1", "full"):
        assert not torch.equal(before[k], w.learners[k].W), f"{k}'s head did not change"
    # labels are mapped to 0..C-1 whatever the dataset's ids
    assert torch.equal(w.map_labels(torch.tensor([0, 9])), torch.tensor([0, 9]))


def test_arcface_with_offset_labels_is_mapped_into_range(digits):
    shifted = IndexedDataset(digits.data[:600].numpy(), digits.labels[:600] + 100)
    parts, seen = run_few(shifted, loss=losses.ArcFaceLoss(C, D))
    assert np.isfinite(seen).all()


def test_classification_loss_built_for_the_wrong_size_is_refused(small_digits):
    with pytest.raises(ValueError, match="embedding_size=16"):
        factory.pml(
            factory.make(small_digits, num_learners=4, loss=losses.ArcFaceLoss(C, 8), embedding_size=D, heads="shared")
        )
    with pytest.raises(ValueError, match="num_classes=10"):
        factory.pml(
            factory.make(small_digits, num_learners=4, loss=losses.ArcFaceLoss(5, D), embedding_size=D, heads="shared")
        )


def test_train_with_classifier(small_digits):
    torch.manual_seed(0)
    classifier = torch.nn.Linear(D, C)
    parts = factory.pml(
        factory.make(small_digits, num_learners=2, embedding_size=D, recluster_every=1, heads="shared"),
        trainer_cls=trainers.TrainWithClassifier,
        iterations_per_epoch=3,
        loss_weights={"metric_loss": 1, "classifier_loss": 1},
        extra_models={"classifier": classifier},
        extra_loss_funcs={"classifier_loss": torch.nn.CrossEntropyLoss()},
        extra_optimizers={"classifier_optimizer": torch.optim.Adam(classifier.parameters())},
    )
    seen = []
    parts["trainer"].end_of_iteration_hook = lambda t: seen.append(float(t.losses["classifier_loss"]))
    before = classifier.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=2)
    assert parts["wrapper"].num_active == 2 and not torch.equal(before, classifier.weight)
    assert len(seen) == 6 and all(v > 0 for v in seen)


def test_trainers_that_cannot_work_are_refused(small_digits):
    parts = factory.pml(factory.make(small_digits, num_learners=2, embedding_size=D, heads="shared"))
    for cls in (trainers.TwoStreamMetricLoss, trainers.CascadedEmbeddings, trainers.DeepAdversarialMetricLearning):
        parts["trainer"].__class__ = cls
        with pytest.raises(TypeError, match="not supported"):
            parts["wrapper"].prepare(parts["trainer"])


def test_cross_batch_memory_is_kept_per_learner(small_digits):
    loss = losses.CrossBatchMemory(losses.ContrastiveLoss(), D, memory_size=64)
    parts, _ = run_few(small_digits, loss=loss, epochs=2)  # epoch 2 trains both learners at K=2
    w = parts["wrapper"]
    m0, m1, mc = (w.learners[k] for k in ("learner0", "learner1", "full"))
    assert m0.embedding_memory is not m1.embedding_memory
    assert m0.embedding_memory.shape == m1.embedding_memory.shape == (64, D // 2)
    assert mc.embedding_memory.shape == (64, D)
    assert m0.queue_idx > 0 and m1.queue_idx > 0  # each filled by its own cluster's batches
    assert not torch.equal(m0.embedding_memory, m1.embedding_memory)


def test_classification_heads_follow_pml_lr_schedulers(small_digits):
    loss = losses.ArcFaceLoss(C, D)
    parts = factory.pml(
        factory.make(small_digits, num_learners=2, loss=loss, embedding_size=D, recluster_every=1, heads="shared"),
        iterations_per_epoch=3,
    )
    opt = parts["optimizers"]["metric_loss_optimizer"]
    parts["trainer"].lr_schedulers = {
        "metric_loss_scheduler_by_epoch": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=3)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5**3)
    assert parts["wrapper"].num_active == 2


@pytest.mark.parametrize("same_module", [False, True])
def test_inherit_gives_the_child_its_half_of_the_parent_head_and_adam_moments(same_module):
    from pml_divide_conquer import heads

    parent = losses.ArcFaceLoss(C, D)
    opt = torch.optim.Adam(parent.parameters())
    parent(torch.randn(8, D), torch.arange(8) % C).backward()
    opt.step()
    W, m = parent.W.detach().clone(), opt.state[parent.W]["exp_avg"].clone()
    child = parent if same_module else losses.ArcFaceLoss(C, D)
    if not same_module:
        opt.add_param_group({"params": list(child.parameters())})
    half = torch.arange(D // 2, D)
    heads.inherit(parent, child, half, [opt])
    assert child.W.shape == (D, C)  # heads are never resized: the child uses its first D/2 rows
    assert torch.equal(child.W[: D // 2], W[half]) and torch.equal(opt.state[child.W]["exp_avg"][: D // 2], m[half])
