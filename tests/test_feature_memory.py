"""recluster_from="training": the features training computed replace the embedding pass of a reclustering."""

import gc
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pml_divide_conquer import reclustering
from pml_divide_conquer.feature_memory import FeatureMemory, InputCapture

import factory


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_memory_keeps_the_latest_normalised_row_and_knows_what_is_stale(data):
    n, d = data.draw(st.integers(2, 30)), data.draw(st.integers(1, 6))
    memory = FeatureMemory(n)
    assert memory.features_for_clustering()[0] is None  # nothing recorded: every sample is stale
    expected = {}
    for _ in range(data.draw(st.integers(1, 5))):
        idx = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
        rows = torch.randn(len(idx), d) + 0.1
        memory.update(np.array(idx), rows)
        for i, r in zip(idx, rows):
            expected[i] = torch.nn.functional.normalize(r, dim=0)
    features, stale = memory.features_for_clustering()
    assert features.dtype == np.float32 and features.shape == (n, d)
    assert memory.features.dtype == torch.float16 and memory.nbytes == n * d * 2
    assert sorted(stale) == sorted(set(range(n)) - set(expected))
    for i, r in expected.items():
        np.testing.assert_allclose(features[i], r.numpy(), atol=2e-3)  # float16
    memory.mark_used()
    assert len(memory.features_for_clustering()[1]) == n  # after a reclustering, nothing is fresh until updated
    memory.update(np.array([0]), torch.ones(1, d))
    assert 0 not in memory.features_for_clustering()[1]


def test_memory_state_round_trip_and_bad_input():
    memory = FeatureMemory(5)
    memory.update(np.array([1, 3]), torch.randn(2, 4))
    memory.mark_used()
    memory.update(np.array([2]), torch.randn(1, 4))
    again = FeatureMemory(5)
    again.load_state_dict(memory.state_dict())
    assert torch.equal(again.features, memory.features) and torch.equal(again.stamps, memory.stamps)
    assert (again.step, again.used_until) == (memory.step, memory.used_until)
    np.testing.assert_array_equal(again.features_for_clustering()[1], [0, 1, 3, 4])
    with pytest.raises(ValueError, match="holds 5 samples, this training set 6"):
        FeatureMemory(6).load_state_dict(memory.state_dict())
    with pytest.raises(ValueError, match="2 sample indices for 3 rows"):
        memory.update(np.array([0, 1]), torch.randn(3, 4))
    with pytest.raises(ValueError, match="features of size 3, but the memory holds rows of 4"):
        memory.update(np.array([0]), torch.randn(1, 3))


def test_bad_recluster_from_is_refused(digits):
    with pytest.raises(ValueError, match='features_from must be "training" or "pass"'):
        factory.pml(factory.make(digits, num_learners=4, heads="shared", recluster=dict(features_from="memory")))
    with pytest.raises(ValueError, match="dataset .* would be ignored"):
        factory.pml(
            factory.make(
                digits, num_learners=4, heads="shared", recluster=dict(features_from="training", dataset=digits)
            )
        )


def test_default_reclusters_from_training_features_unless_a_cluster_dataset_is_given(digits):
    assert factory.pml(factory.make(digits, num_learners=4, heads="shared"))["wrapper"].recluster_from == "training"
    assert factory.pml(factory.make(digits, num_learners=4, heads="shared"))["wrapper"].feature_memory is not None
    with_dataset = factory.pml(factory.make(digits, num_learners=4, heads="shared", recluster=dict(dataset=digits)))[
        "wrapper"
    ]
    assert with_dataset.recluster_from == "pass" and with_dataset.feature_memory is None


@pytest.mark.parametrize("cluster_on", ["trunk", "embedding"])
def test_reclustering_embeds_only_the_samples_training_did_not_see(digits, cluster_on, monkeypatch):
    """With the model unchanged (lr 0) the recorded rows equal a fresh embedding pass; the pass is gone but for
    the samples no batch held since the last reclustering."""
    parts = factory.pml(
        factory.make(
            digits,
            num_learners=2,
            recluster_every=1,
            heads="shared",
            recluster=dict(features_from="training", cluster_on=cluster_on),
        ),
        iterations_per_epoch=40,
    )
    w, t = parts["wrapper"], parts["trainer"]
    for opt in parts["optimizers"].values():
        for group in opt.param_groups:
            group["lr"] = 0.0
    embedded = []
    real = reclustering.embed_dataset

    def counting(parts, capture, dataset, *args):
        embedded.append(len(dataset))
        return real(parts, capture, dataset, *args)

    monkeypatch.setattr(reclustering, "embed_dataset", counting)
    w.prepare(t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.train(num_epochs=1)  # 40 batches of 16 of 1797 samples, then the split into 2 clusters
    memory = w.feature_memory
    seen = np.flatnonzero(memory.stamps.numpy() > 0)
    assert 0 < len(seen) <= 40 * 16
    assert embedded == [len(digits) - len(seen)]  # only the unseen samples were embedded
    assert w.num_active == 2 and w.controller.fresh_samples == embedded[0]
    fresh = w.embed_training_set(t)  # the pass the memory replaces
    np.testing.assert_allclose(memory.features.float().numpy()[seen], fresh[seen], atol=3e-3)


def test_the_embedder_hook_is_installed_once_and_goes_with_the_wrapper(digits):
    parts = factory.pml(factory.make(digits, num_learners=2, heads="shared", recluster=dict(features_from="training")))
    embedder = parts["embedder"]
    parts["wrapper"].prepare(parts["trainer"])
    parts["wrapper"].prepare(parts["trainer"])  # prepared again: still one hook
    assert len(embedder._forward_pre_hooks) == 1
    del parts
    gc.collect()
    assert len(embedder._forward_pre_hooks) == 0


def test_input_capture_hands_each_training_input_once_and_collects_inside_a_pass():
    layer = torch.nn.Linear(3, 2)
    capture = InputCapture(layer)
    x = torch.randn(4, 3, requires_grad=True)
    layer(x)
    taken = capture.take()
    assert torch.equal(taken, x.detach()) and not taken.requires_grad
    assert capture.take() is None
    layer.eval()
    layer(torch.randn(2, 3))  # eval mode (a validation forward): not a training batch
    assert capture.take() is None
    with capture.collecting() as rows:
        layer(torch.randn(2, 3))
        layer(torch.randn(5, 3))
    assert [len(r) for r in rows] == [2, 5] and capture.take() is None
    capture.remove()
    layer.train()
    layer(torch.randn(1, 3))
    assert capture.take() is None
