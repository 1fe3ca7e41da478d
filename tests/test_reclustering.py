"""Reclustering: the training set embedded as PML's testers embed it, clustered, matched to the learners."""

import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import testers

from pml_divide_conquer import KMeansSettings, Reclusterer
from pml_divide_conquer.feature_memory import InputCapture
from pml_divide_conquer.reclustering import FeatureSource
from pml_divide_conquer.training import TrainingParts

import factory
from helpers import IndexedDataset


def test_hungarian_matching_keeps_learners_on_their_data(digits, monkeypatch):
    from pml_divide_conquer import clustering

    parts = factory.pml(factory.make(digits, num_learners=4, grow=False, recluster_every=1, heads="shared"))
    w, trainer, sampler = parts["wrapper"], parts["trainer"], parts["sampler"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w.prepare(trainer)
        first = sampler.assignment.copy()
        # k-means finds the same clusters but numbers them differently (a 4-cycle, not its own inverse) ...
        cycle = np.array([1, 2, 3, 0])
        monkeypatch.setattr(clustering, "kmeans_with_retries", lambda *a, **k: cycle[first])
        # ... and reclustering gives each learner back the cluster it trained on
        w.recluster(trainer)
    assert np.array_equal(sampler.assignment, first)


def test_the_embedding_pass_gives_what_pml_testers_give(digits):
    parts = factory.pml(factory.make(digits, num_learners=2, heads="shared", recluster=dict(cluster_on="embedding")))
    parts["wrapper"].prepare(parts["trainer"])
    emb = parts["wrapper"].embed_training_set()
    tester = testers.BaseTester(
        data_device=torch.device("cpu"), dataloader_num_workers=0, data_and_label_getter=lambda b: b[:2]
    )
    ref, _ = tester.get_all_embeddings(digits, parts["trunk"], parts["embedder"], return_as_numpy=True)
    assert np.allclose(emb, ref, atol=1e-6)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    trunk_parts = factory.pml(factory.make(digits, num_learners=2, heads="shared"))
    assert trunk_parts["wrapper"].reclusterer.settings.cluster_on == "trunk"  # the default, as in the reference code
    trunk_parts["wrapper"].prepare(trunk_parts["trainer"])
    trunk_emb = trunk_parts["wrapper"].embed_training_set()
    ref, _ = tester.get_all_embeddings(digits, trunk_parts["trunk"], torch.nn.Identity(), return_as_numpy=True)
    assert trunk_emb.shape == (len(digits), 32) and np.allclose(trunk_emb, ref, atol=1e-6)


def test_a_split_reclusters_at_the_current_K_matches_then_splits_every_cluster_in_two():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 6))
    labels = np.repeat(np.arange(16), 20)
    emb = (centers[labels // 2] + 0.05 * rng.normal(size=(len(labels), 6))).astype(np.float32)
    r = Reclusterer(kmeans=KMeansSettings(seed=0))
    current = r.cluster(emb, labels, np.zeros(len(labels), dtype=np.int64), current_k=1, k=2, split=True)
    new = r.cluster(emb, labels, 1 - current, current_k=2, k=4, split=True)  # the same clusters, numbered 1, 0
    assert set(np.unique(new)) == {0, 1, 2, 3}
    assert np.array_equal(new // 2, 1 - current)  # children 2c and 2c+1 of (the match of) cluster c
    with pytest.raises(ValueError, match="cannot split 2 clusters into 3"):
        r.cluster(emb, labels, current, current_k=2, k=3, split=True)


def test_cluster_space_and_the_time_of_each_part(digits):
    with pytest.raises(ValueError, match='cluster_on must be "trunk" or "embedding"'):
        Reclusterer(cluster_on="features")
    parts = factory.pml(factory.make(digits, num_learners=2, heads="shared"))
    model = torch.nn.Sequential(parts["trunk"], parts["embedder"])
    capture = InputCapture(parts["embedder"])
    source = FeatureSource(TrainingParts(model=model, dataset=digits), capture)
    s = parts["sampler"]
    result = Reclusterer().assign(source, s.labels, s.assignment, current_k=1, k=2, split=True)
    assert sorted(np.unique(result.assignment)) == [0, 1] and 0 < result.clustering_seconds < result.seconds
    assert result.fresh_samples == len(digits)  # an embedding pass: every sample embedded


def test_a_cluster_dataset_is_what_reclustering_embeds(digits):
    """cluster_dataset (e.g. the training images with test-time transforms): the pass embeds it, not the training
    set; one whose samples are not in the training set's order is refused."""
    from helpers import IndexedDataset

    shifted = IndexedDataset(digits.data.numpy() * 0.5 + 0.25, digits.labels)  # another view of the same samples
    parts = factory.pml(
        factory.make(digits, num_learners=2, heads="shared", recluster=dict(dataset=shifted, cluster_on="embedding"))
    )
    w = parts["wrapper"]
    assert w.recluster_from == "pass"
    w.prepare(parts["trainer"])
    emb = w.embed_training_set()
    with torch.no_grad():
        parts["trunk"].eval(), parts["embedder"].eval()
        expected = torch.nn.functional.normalize(parts["embedder"](parts["trunk"](shifted.data)), dim=1).numpy()
        of_training = torch.nn.functional.normalize(parts["embedder"](parts["trunk"](digits.data)), dim=1).numpy()
    np.testing.assert_allclose(emb, expected, atol=1e-6)
    assert not np.allclose(emb, of_training, atol=1e-3)
    order = np.argsort(digits.labels, kind="stable")
    shuffled = IndexedDataset(digits.data.numpy()[order], digits.labels[order])
    bad = factory.pml(factory.make(digits, num_learners=2, heads="shared", recluster=dict(dataset=shuffled)))
    bad["wrapper"].prepare(bad["trainer"])
    with pytest.raises(ValueError, match="in the same order"):
        bad["wrapper"].embed_training_set()


def test_samples_whose_features_are_not_finite_are_named(digits):
    """inf in one training image (the CVPR schedule clusters at set-up, before any step): the message names the
    sample and says its input may be the cause."""
    data = digits.data.numpy().copy()
    data[7, 3] = float("inf")
    broken = IndexedDataset(data, digits.labels)
    parts = factory.plain(factory.make(broken, num_learners=2, grow=False), setup=False)
    with pytest.raises(FloatingPointError, match=r"the features of 1 of 1797 training samples .* \(samples 7, by th"):
        parts["wrapper"].setup(parts["model"], broken, optimizers=[parts["optimizer"]])
    with pytest.raises(FloatingPointError, match="their inputs may hold NaN or inf"):
        parts["wrapper"].setup(parts["model"], broken, optimizers=[parts["optimizer"]])


def test_a_reclustering_that_fails_leaves_the_feature_memory_s_rows_fresh(digits):
    """The rows count as used only once a reclustering succeeded: a retry after a failure re-embeds only what is
    stale, not every sample."""
    parts = factory.plain(factory.make(digits, num_learners=2, recluster=dict(features_from="training")))
    dc, memory = parts["wrapper"], parts["wrapper"].feature_memory
    factory.train_plain(parts, 1)
    for x, y, _ in parts["loader"]:  # an epoch's rows, not yet used by a reclustering
        dc(parts["model"](x), y)
    used, cluster = memory.used_until, dc.reclusterer.cluster

    def failing(*args, **kwargs):
        raise ValueError("k-means failed")

    dc.reclusterer.cluster = failing
    with pytest.raises(ValueError, match="k-means failed"):
        dc.recluster()
    assert memory.used_until == used
    dc.reclusterer.cluster = cluster
    dc.recluster()
    assert memory.used_until > used
