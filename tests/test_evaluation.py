"""Looking inside a D&C model: retrieval per subspace, cluster purity."""

import warnings

import numpy as np
import pytest

from pml_divide_conquer.evaluation import cluster_purity, evaluate_subspaces

import factory
from helpers import IndexedDataset


@pytest.fixture(scope="module")
def small(digits):
    keep = np.arange(0, len(digits), 3)
    return IndexedDataset(digits.data[keep].numpy(), digits.labels[keep])


def test_per_subspace_evaluation_and_cluster_purity(small):
    parts, _seen = (
        factory.pml(
            factory.make(small, num_learners=2, mode="fixed", recluster_every=1, heads="shared"),
            iterations_per_epoch=20,
        ),
        None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=2)
    w = parts["wrapper"]
    results = evaluate_subspaces(
        parts["trunk"], parts["embedder"], small, w.num_active, data_and_label_getter=factory.drop_index
    )
    assert set(results) == {"full", "learner0", "learner1"}
    # each learner's figures are PML's AccuracyCalculator on that learner's subspace of the embeddings (computed
    # here independently: the model in eval mode on every sample, then the chunk, normalised)
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    parts["trunk"].eval(), parts["embedder"].eval()
    with torch.no_grad():
        emb = parts["embedder"](parts["trunk"](torch.as_tensor(small.data)))
    labels = torch.as_tensor(small.labels)
    calc = AccuracyCalculator(include=("precision_at_1", "NMI"), k="max_bin_count")
    spaces = {"full": torch.nn.functional.normalize(emb, dim=1)}
    for k in range(2):
        spaces[f"learner{k}"] = torch.nn.functional.normalize(emb[:, 8 * k : 8 * (k + 1)], dim=1)
    for name, space in spaces.items():
        expected = calc.get_accuracy(space, labels)
        for metric in ("precision_at_1", "NMI"):
            assert results[name][metric] == pytest.approx(expected[metric], abs=1e-6), (name, metric)
    assert results["learner0"] != results["learner1"]
    per_cluster, overall = cluster_purity(parts["sampler"].assignment, small.labels, 2)
    assert per_cluster.shape == (2,) and 0.1 <= overall <= 1.0
    assert np.all((per_cluster > 0) & (per_cluster <= 1))


def test_cluster_purity_by_hand():
    per, overall = cluster_purity([0, 0, 0, 2, 2], [1, 1, 2, 3, 3], num_clusters=3)
    assert np.allclose(per[[0, 2]], [2 / 3, 1.0]) and np.isnan(per[1])
    assert overall == pytest.approx(4 / 5)
