"""ClusterAssignment (assignment.py): each sample's cluster, versioned; what each cluster can serve, cached for the
version; the warnings about what it cannot; its state, range-checked."""

import warnings

import numpy as np
import pytest
import torch

from pml_divide_conquer.assignment import ClusterAssignment, check_batch_size_and_m

LABELS = np.repeat(np.arange(6), 5)  # 6 classes of 5


def test_a_new_assignment_is_checked_and_bumps_the_version():
    a = ClusterAssignment(LABELS)
    assert (a.num_clusters, a.version) == (1, 0) and a.sizes().tolist() == [30]
    a.set(LABELS % 2)
    assert (a.num_clusters, a.version) == (2, 1) and a.sizes().tolist() == [15, 15]
    assert a.classes_per_cluster().tolist() == [3, 3]
    with pytest.raises(ValueError, match="cluster id 1 is out of range for num_clusters=1"):
        a.set(LABELS % 2, 1)
    with pytest.raises(ValueError, match="non-negative"):
        a.set(-(LABELS % 2))
    with pytest.raises(ValueError, match="expected one id per sample"):
        a.set(np.zeros(3, dtype=np.int64))
    assert (a.num_clusters, a.version) == (2, 1)  # a refused assignment changes nothing


def test_one_layout_is_cached_for_what_it_depends_on():
    a = ClusterAssignment(LABELS)
    a.set(LABELS % 2)
    first = a.layouts(m=2, batch_size=4)
    assert a.layouts(m=2, batch_size=4) is first
    assert a.layouts(m=2, batch_size=6) is not first  # another batch size (e.g. more ranks)
    a.set(LABELS % 3)
    assert sorted(a.layouts(m=2, batch_size=4)) == [0, 1, 2]


def test_what_clusters_cannot_serve_is_said_once_and_nothing_servable_is_an_error():
    a = ClusterAssignment(LABELS)
    a.set((LABELS == 0).astype(np.int64), 3)  # cluster 1: one class of 5 (one group of 4); cluster 2: empty
    with pytest.warns(UserWarning) as record:
        a.check_servable(m=4, batch_size=8)
        a.check_servable(m=4, batch_size=8)
    messages = [str(w.message) for w in record]
    assert (
        sum("[2] are empty" in m for m in messages) == 1 and sum("clusters [1] cannot fill" in m for m in messages) == 1
    )
    a.set(np.arange(len(LABELS)) % 30, 30)  # every sample alone
    with pytest.raises(RuntimeError, match="no cluster can fill a batch"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.check_servable(m=2, batch_size=4)


def test_batch_settings_that_no_assignment_can_serve_are_refused():
    with pytest.raises(ValueError, match="not a multiple of m=3"):
        check_batch_size_and_m(8, 3)
    a = ClusterAssignment(LABELS)
    with pytest.raises(ValueError, match="only 6 classes"):
        a.check_batch_settings(batch_size=16, m=2)
    with pytest.raises(ValueError, match="largest class has only 5"):
        a.check_batch_settings(batch_size=12, m=6)
    with pytest.raises(ValueError, match="larger than the dataset"):
        a.check_batch_settings(batch_size=20, m=2, world=2)


def test_state_round_trips_and_a_corrupted_one_is_refused():
    a = ClusterAssignment(LABELS)
    a.set(LABELS % 2)
    state = a.state_dict()
    b = ClusterAssignment(LABELS)
    b.load_state_dict(state)
    assert np.array_equal(b.ids, a.ids) and (b.num_clusters, b.version) == (2, 1)
    bad = dict(state, assignment=state["assignment"].clone())
    bad["assignment"][0] = 64  # one bit flipped
    with pytest.raises(ValueError, match="cluster id 64 is out of range for num_clusters=2 in the saved assignment"):
        b.load_state_dict(bad)
    with pytest.raises(ValueError, match="saved for another dataset"):
        ClusterAssignment(LABELS[:10]).load_state_dict(state)
    assert torch.equal(torch.as_tensor(b.ids), state["assignment"])  # the refused one changed nothing


def test_the_docstring_example_runs():
    import doctest

    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(ClusterAssignment, globs={"ClusterAssignment": ClusterAssignment}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries >= 3
