import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pml_divide_conquer import KMeansSettings, clustering


def blobs(k, per=30, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 10
    x = np.concatenate([c + rng.normal(size=(per, d)) for c in centers]).astype(np.float32)
    return x, np.repeat(np.arange(k), per)


def same_partition(a, b):
    return all(len(np.unique(b[a == c])) == 1 for c in np.unique(a))


def test_kmeans_recovers_separated_blobs():
    x, truth = blobs(4)
    ids = clustering.kmeans(x, 4, KMeansSettings(seed=1, gpu=False))
    assert ids.dtype == np.int64 and set(ids) == {0, 1, 2, 3}
    assert same_partition(truth, ids) and same_partition(ids, truth)


def test_kmeans_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        clustering.kmeans(np.full((10, 2), np.nan, dtype=np.float32), 2)
    with pytest.raises(ValueError, match="cannot make 20 clusters"):
        clustering.kmeans(np.zeros((10, 2), dtype=np.float32), 20)


def test_split_gives_children_2c_and_2c_plus_1():
    x, truth = blobs(4)
    parent = truth // 2  # clusters {0,1} and {2,3}
    child = clustering.split_clusters(x, parent, settings=KMeansSettings(seed=0, gpu=False))
    assert np.array_equal(child // 2, parent)
    assert same_partition(truth, child) and same_partition(child, truth)


def test_kmeans_with_retries_warns_when_clusters_stay_degenerate():
    x, _ = blobs(3, per=20)
    labels = np.repeat(np.arange(3), 20)  # each blob is one class: any 3-clustering has 1 class per cluster
    with pytest.warns(UserWarning, match="without 2 classes"):
        clustering.kmeans_with_retries(x, 3, labels, KMeansSettings(max_retries=2, gpu=False))


def test_matching_undoes_a_three_cycle():
    old = np.repeat([0, 1, 2], 5)
    cycle = np.array([1, 2, 0])  # 0->1->2->0, not its own inverse
    new = cycle[old]
    assert np.array_equal(clustering.match_clusters(old, new, 3), old)


@settings(max_examples=200, deadline=None)
@given(perm=st.permutations(list(range(8))), sizes=st.lists(st.integers(1, 20), min_size=8, max_size=8))
def test_matching_undoes_any_relabelling_of_8_clusters(perm, sizes):
    old = np.repeat(np.arange(8), sizes)
    new = np.asarray(perm)[old]
    assert np.array_equal(clustering.match_clusters(old, new, 8), old)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_matching_maximises_overlap(data):
    k = data.draw(st.integers(2, 6))
    n = data.draw(st.integers(k, 60))
    old = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    new = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    matched = clustering.match_clusters(old, new, k)
    # a relabelling of new: same partition
    assert same_partition(new, matched) and same_partition(matched, new)
    # no other relabelling keeps more samples in their old cluster
    import itertools

    best = max((np.asarray(p)[new] == old).sum() for p in itertools.permutations(range(k)))
    assert (matched == old).sum() == best


def test_split_retries_until_both_children_have_two_classes():
    rng = np.random.default_rng(0)
    # one cluster: a far-away pair of points of one class, and 4 classes in a blob; the first 2-means split
    # isolates the pair (a one-class child), a valid split needs other seeds or is impossible
    x = np.concatenate([rng.normal(size=(40, 4)), 50 + rng.normal(size=(2, 4))]).astype(np.float32)
    labels = np.concatenate([np.repeat(np.arange(4), 10), [9, 9]])
    parent = np.zeros(len(x), dtype=np.int64)
    plain = clustering.split_clusters(x, parent, settings=KMeansSettings(seed=0, gpu=False))
    assert clustering.invalid_clusters(plain, labels, 2)  # without labels: the degenerate split is kept
    with pytest.warns(UserWarning, match="left a child without 2 classes"):
        clustering.split_clusters(x, parent, labels, settings=KMeansSettings(seed=0, max_retries=3, gpu=False))


def test_split_with_labels_gives_valid_children_when_possible():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(20, 4)), 30 + rng.normal(size=(20, 4))]).astype(np.float32)
    labels = np.tile([0, 1], 20)  # both far-apart groups hold both classes
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        child = clustering.split_clusters(
            x, np.zeros(40, dtype=np.int64), labels, settings=KMeansSettings(seed=0, gpu=False)
        )
    assert not clustering.invalid_clusters(child, labels, 2)
    assert set(child[:20]) != set(child[20:])


def _objective(x, ids):
    return sum(((x[ids == c] - x[ids == c].mean(0)) ** 2).sum() for c in np.unique(ids))


@pytest.mark.parametrize("k, blobs", [(2, 6), (8, 24), (8, 8)])
def test_torch_kmeans_is_as_good_as_faiss(k, blobs):
    """The torch k-means (the GPU path when faiss-gpu is missing), run here on the CPU, over 10 seeds: its adjusted
    Rand index against faiss (same seed) as high as faiss's against itself with the next seed (within 0.02: both
    are means over seeds of local optima), its objective within 1 % of faiss's."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(blobs, 16))
    x = centers[rng.integers(0, blobs, 3000)] + 0.6 * rng.normal(size=(3000, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    faiss_runs = [clustering.kmeans(x, k, KMeansSettings(seed=s, gpu=False)) for s in range(11)]
    torch_runs = [clustering.kmeans(x, k, KMeansSettings(seed=s, backend="torch", gpu=False)) for s in range(10)]
    faiss_faiss = np.mean([adjusted_rand_score(faiss_runs[s], faiss_runs[s + 1]) for s in range(10)])
    faiss_torch = np.mean([adjusted_rand_score(faiss_runs[s], torch_runs[s]) for s in range(10)])
    assert faiss_torch >= faiss_faiss - 0.02, (faiss_torch, faiss_faiss)
    objective = np.mean([_objective(x, t) for t in torch_runs]) / np.mean([_objective(x, f) for f in faiss_runs[:10]])
    assert objective <= 1.01, objective
    assert all(sorted(np.unique(t)) == list(range(k)) for t in torch_runs)
    assert np.array_equal(
        torch_runs[0], clustering.kmeans(x, k, KMeansSettings(seed=0, backend="torch", gpu=False))
    )  # deterministic


def test_torch_kmeans_refills_empty_clusters_and_subsamples_like_faiss():
    x = np.repeat(np.eye(3, dtype=np.float32), [50, 50, 2], axis=0)  # 3 tight groups, one tiny
    ids = clustering.torch_kmeans(x, 5, niter=20, seed=0)
    assert len(np.unique(ids)) >= 3 and all((ids[x[:, j] == 1] == ids[x[:, j] == 1][0]).all() for j in range(2))
    sub = clustering.torch_kmeans(x, 2, niter=5, seed=0, max_points_per_centroid=10)
    assert sub.shape == (102,)
    with pytest.raises(ValueError, match='backend must be "faiss" or "torch"'):
        clustering.choose_backend("sklearn")
    assert clustering.choose_backend(None, gpu=False) == "faiss"


def test_the_keywords_of_0_3_still_work_with_a_future_warning_naming_the_settings_object():
    x, _ = blobs(3)
    with pytest.warns(FutureWarning, match=r"pass settings=KMeansSettings\(seed=1, gpu=False\)"):
        old = clustering.kmeans(x, 3, seed=1, gpu=False)
    assert np.array_equal(old, clustering.kmeans(x, 3, KMeansSettings(seed=1, gpu=False)))
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        clustering.kmeans(x, 3, n_iter=3)


def test_kmeans_settings_refuse_what_cannot_run():
    with pytest.raises(ValueError, match="niter must be a positive integer"):
        KMeansSettings(niter=0)
    with pytest.raises(ValueError, match='"faiss" or "torch"'):
        KMeansSettings(backend="sklearn")
    with pytest.raises(TypeError):
        KMeansSettings(n_iter=3)  # unknown names are refused


def test_the_settings_docstring_examples_run():
    import doctest

    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.IGNORE_EXCEPTION_DETAIL)
    for test in finder.find(KMeansSettings, globs={"KMeansSettings": KMeansSettings}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries >= 2
