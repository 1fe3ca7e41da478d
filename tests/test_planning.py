"""Pass planning, pure: labels, assignment, m, batch size and a generator in; batches out."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pml_divide_conquer import planning

import pool_views


def test_one_integer_array_coercion_for_lists_arrays_and_tensors():
    assert planning.as_int_array([1, 2], "x").dtype == np.int64
    assert np.array_equal(planning.as_int_array(torch.tensor([3, 4]), "x"), [3, 4])
    assert planning.as_int_array(np.zeros((2, 2), dtype=np.int32), "x").shape == (2, 2)
    with pytest.raises(ValueError, match="x must be integers"):
        planning.as_int_array([0.5], "x")
    with pytest.raises(ValueError, match=r"got dtype <U5: encode .* np\.unique\(labels, return_inverse=True\)"):
        planning.as_int_array(["apple", "pear"], "x")  # (issue 16 item 8)


def test_servable_pools_leave_out_fragments_and_clusters_that_cannot_fill_a_batch():
    labels = np.array([0] * 6 + [1] * 6 + [2] * 3 + [3] * 7)
    assignment = np.array([0] * 12 + [0] * 3 + [1] * 7)
    pools = pool_views.servable_pools(labels, assignment, 2, m=4, batch_size=8)
    assert set(pools) == {0}  # cluster 1: one class of 7 gives one group of 4 distinct samples, a batch needs 2
    assert [len(p) for p in pools[0]] == [6, 6]  # class 2 (3 samples) left out of cluster 0
    assert [len(f) for f in pool_views.fragments(labels, assignment, 2, m=4)] == [3]


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 12), min_size=1, max_size=8),
    m=st.sampled_from([1, 2, 3]),
    groups=st.integers(1, 6),
    n_batches=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_cluster_batches_never_repeat_a_sample_and_take_whole_groups(sizes, m, groups, n_batches, seed):
    start = np.cumsum([0] + sizes)
    pools = [np.arange(start[i], start[i + 1]) for i in range(len(sizes)) if sizes[i] >= m]
    if not pools or sum(len(p) // m for p in pools) < groups:
        return
    batches = pool_views.cluster_batches(pools, n_batches, groups, m, np.random.default_rng(seed))
    owner = np.repeat(np.arange(len(sizes)), sizes)
    for b in batches:
        assert len(b) == groups * m and len(set(b.tolist())) == len(b)
        assert all(c % m == 0 for c in np.unique(owner[b], return_counts=True)[1])


def test_a_pass_visits_the_clusters_round_robin():
    labels = np.repeat(np.arange(8), 10)
    assignment = np.repeat([0, 0, 0, 0, 0, 0, 1, 1], 10)  # 60 and 20 samples
    pools = pool_views.servable_pools(labels, assignment, 2, m=2, batch_size=4)
    plan = pool_views.plan_pass(pools, 4, 2, np.random.default_rng(0))
    assert [c for c, _ in plan] == [0, 1] * 15  # as many batches as the larger cluster needs


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=2, max_size=25),
    k=st.integers(1, 4),
    m=st.sampled_from([1, 2, 3, 4]),
    per_batch=st.integers(1, 6),
    equal_counts=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_a_pass_draws_every_servable_sample_and_nothing_twice_in_a_batch(sizes, k, m, per_batch, equal_counts, seed):
    """Every sample of a class with at least m samples in a cluster that can fill a batch is drawn at least once a
    pass (with equal counts: of a class that can give the batch's units), and no batch holds a sample twice."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    assignment = rng.integers(0, k, len(labels))
    runs = planning.group_runs(labels, assignment)
    lay = planning.layouts(runs, k, m, per_batch * m, equal_counts)
    plan = planning.plan_layouts(runs, lay, m, np.random.default_rng(seed))
    assert len(plan) == planning.batches_per_pass(lay)
    drawn = np.zeros(len(labels), dtype=int)
    for cluster, batch in plan:
        assert len(batch) == per_batch * m and len(np.unique(batch)) == len(batch)
        assert (assignment[batch] == cluster).all()
        counts = np.unique(labels[batch], return_counts=True)[1]
        assert (counts % m == 0).all() and (not equal_counts or len(set(counts.tolist())) == 1)
        np.add.at(drawn, batch, 1)
    for layout in lay.values():
        for r in layout.runs:
            assert (drawn[runs.of(r)] >= 1).all()
    servable = np.concatenate([runs.of(r) for layout in lay.values() for r in layout.runs] or [np.zeros(0, int)])
    assert (drawn[np.setdiff1d(np.arange(len(labels)), servable)] == 0).all()


def test_grouping_by_cluster_and_class_is_one_sort():
    labels = np.array([3, 1, 3, 1, 2, 3])
    assignment = np.array([1, 0, 0, 1, 0, 1])
    runs = planning.group_runs(labels, assignment)
    assert runs.clusters.tolist() == [0, 0, 0, 1, 1] and runs.classes.tolist() == [1, 2, 3, 1, 3]
    assert [runs.of(r).tolist() for r in range(5)] == [[1], [4], [2], [3], [0, 5]]
