import inspect
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pml_divide_conquer import ClusterSampler


def take_pass(sampler):
    """Consume the next pass over the clusters (from wherever the stream stands), as the wrapper would, epoch after
    epoch; returns [(cluster, indices)]."""
    out, pass_index = [], None
    while True:
        flat = list(iter(sampler))  # the rest of the epoch
        for i in range(0, len(flat), sampler.batch_size):
            b = np.array(flat[i : i + sampler.batch_size])
            ticket = sampler.stream.next_ticket()
            if pass_index is None:
                pass_index = ticket.pass_index
            if ticket.pass_index != pass_index:
                return out
            assert np.array_equal(ticket.indices, b)
            sampler.stream.consume(ticket)
            out.append((ticket.cluster, b))
        sampler.stream.start_epoch()


@st.composite
def clustered_data(draw):
    m = draw(st.sampled_from([1, 2, 4]))
    per_batch = draw(st.integers(1, 4))
    num_classes = draw(st.integers(per_batch, 12))
    sizes = draw(st.lists(st.integers(1, 15), min_size=num_classes, max_size=num_classes))
    labels = np.repeat(np.arange(num_classes), sizes)
    if max(sizes) < m:
        sizes[0] = m
        labels = np.repeat(np.arange(num_classes), sizes)
    k = draw(st.integers(1, 4))
    assignment = np.array(draw(st.lists(st.integers(0, k - 1), min_size=len(labels), max_size=len(labels))))
    seed = draw(st.integers(0, 2**16))
    return labels, m, per_batch * m, assignment, k, seed


def servable(labels, assignment, c, m, batch_size):
    """Whether cluster c can fill a batch of distinct samples, m per class (by brute counting)."""
    _, counts = np.unique(labels[assignment == c], return_counts=True)
    return (counts // m).sum() >= batch_size // m


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clustered_data())
def test_every_batch_is_one_cluster_m_per_class_with_distinct_samples_and_clusters_get_equal_batches(case):
    labels, m, batch_size, assignment, k, seed = case
    if batch_size > len(labels):
        return
    _, counts = np.unique(labels, return_counts=True)
    if (counts // m).sum() < batch_size // m or len(counts) < batch_size // m:
        with pytest.raises(ValueError):
            ClusterSampler(labels, batch_size=batch_size, m=m, seed=seed)
        return
    s = ClusterSampler(labels, batch_size=batch_size, m=m, seed=seed)
    served = {c for c in range(k) if servable(labels, assignment, c, m, batch_size)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not served:
            with pytest.raises(RuntimeError, match="no cluster can fill a batch"):
                s.set_assignment(assignment, k)
            return
        s.set_assignment(assignment, k)
        batches = take_pass(s)
    assert len(batches) == s.batches_per_pass()
    assert len(s) == (len(labels) // batch_size) * batch_size  # epoch length: one pass over the data, any K
    seen = {c: 0 for c in served}
    for c, b in batches:
        assert len(b) == batch_size and len(set(b.tolist())) == batch_size  # no sample twice in a batch
        assert (assignment[b] == c).all()  # a single cluster, the one on the ticket
        _, per_class = np.unique(labels[b], return_counts=True)
        assert (per_class % m == 0).all()  # m per class (2m, 3m, ... only when the cluster has few classes)
        seen[c] += 1
    assert set(seen) == served and len(set(seen.values())) == 1  # round-robin, small clusters oversampled


def test_without_replacement_while_a_class_has_samples_left():
    labels = np.repeat(np.arange(4), 12)  # 12 per class, m=4: each image once per 3 uses of its class
    s = ClusterSampler(labels, batch_size=8, m=4, seed=3)
    batches = take_pass(s)
    used = {c: [] for c in range(4)}
    for _, b in batches:
        for c in range(4):
            used[c].extend(b[labels[b] == c].tolist())
    for seq in used.values():
        for start in range(0, len(seq) - 11, 12):  # every full round of a class has no repeat
            assert len(set(seq[start : start + 12])) == 12


def test_class_fragments_smaller_than_m_are_left_out_with_one_warning():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 2 + [3] * 12)
    with pytest.warns(UserWarning, match="2 of 34 samples belong to classes with fewer than m=4") as record:
        s = ClusterSampler(labels, batch_size=8, m=4, seed=0)
        s.set_assignment(np.zeros(len(labels), dtype=int), 1)
        batches = take_pass(s) + take_pass(s)
    assert sum("fewer than m" in str(w.message) for w in record) == 1
    used = np.concatenate([b for _, b in batches])
    assert not np.isin(used, np.flatnonzero(labels == 2)).any()
    assert all(len(set(b.tolist())) == len(b) for _, b in batches)


def test_a_class_left_out_of_the_first_single_cluster_is_named_when_its_batches_are_drawn(recwarn):
    """The journal schedule's first epochs draw from one cluster of all the data: a class with fewer than m samples
    is left out of them from the start, and the sampler says so when it plans them (not when it is built: a CVPR
    run is given its K clusters at set-up and never draws from the single cluster)."""
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3)
    s = ClusterSampler(labels, batch_size=8, m=4, seed=0)
    assert not [w for w in recwarn if "fewer than m" in str(w.message)]
    with pytest.warns(UserWarning, match=r"3 of 23 samples .* fewer than m=4 samples \(in the one cluster of all"):
        used = np.concatenate([b for _, b in take_pass(s)])
    assert not np.isin(used, np.flatnonzero(labels == 2)).any()
    take_pass(ClusterSampler(labels, batch_size=6, m=3, seed=0))  # m=3: every class can give m samples
    assert not [w for w in recwarn if "fewer than m=3" in str(w.message)]


def test_the_single_cluster_warning_does_not_silence_the_first_split_s():
    """Fragments of the single cluster, then fragments of the first K > 1 assignment: a warning for each."""
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3 + [3] * 10)
    s = ClusterSampler(labels, batch_size=8, m=4, seed=0)
    with pytest.warns(UserWarning, match=r"3 of 33 samples .* \(in the one cluster of all"):
        take_pass(s)
    split = np.zeros(len(labels), dtype=int)
    split[[0, 1, 2, 10, 11]] = 1  # classes 0 and 1 leave fragments of 3 and 2 samples in cluster 1
    split[20:] = 1
    with pytest.warns(UserWarning, match=r"of 33 samples belong to classes with fewer than m=4 samples in their"):
        s.set_assignment(split, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.set_assignment(split, 2)  # (once: the same fragments again say nothing)
        take_pass(s)


def test_a_cvpr_run_given_its_clusters_before_any_batch_never_hears_of_the_single_cluster(recwarn):
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3 + [3] * 10)
    s = ClusterSampler(labels, batch_size=8, m=4, seed=0)
    s.set_assignment((labels >= 2).astype(int), 2)  # class 2 keeps its 3 samples with class 3
    take_pass(s)
    said = [str(w.message) for w in recwarn if "fewer than m" in str(w.message)]
    assert len(said) == 1 and "in their cluster" in said[0]


def test_deterministic_for_a_seed_and_reshuffled_every_pass():
    labels = np.repeat(np.arange(10), 20)
    a = ClusterSampler(labels, batch_size=12, m=4, seed=7)
    b = ClusterSampler(labels, batch_size=12, m=4, seed=7)
    assignment = labels % 3
    a.set_assignment(assignment)
    b.set_assignment(assignment)
    pa1, pb1 = take_pass(a), take_pass(b)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(pa1, pb1))
    pa2 = take_pass(a)
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(pa1, pa2))
    c = ClusterSampler(labels, batch_size=12, m=4, seed=8)
    c.set_assignment(assignment)
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(pa1, take_pass(c)))


def test_state_dict_resumes_the_same_stream_mid_pass():
    labels = np.repeat(np.arange(10), 20)
    a = ClusterSampler(labels, batch_size=20, m=4, seed=1)
    a.set_assignment(labels % 2)
    it = iter(a)
    flat = [next(it) for _ in range(3 * 20)]
    for i in range(3):
        assert np.array_equal(a.stream.next_ticket().indices, flat[20 * i : 20 * (i + 1)])
        a.stream.consume(a.stream.next_ticket())
    state = a.state_dict()
    rest_a = list(it) + list(iter(a))
    b = ClusterSampler(labels, batch_size=20, m=4, seed=99)
    b.load_state_dict(state)
    rest_b = list(iter(b))
    assert rest_b == rest_a[: len(rest_b)]


def test_new_iterator_drops_tickets_of_abandoned_prefetch():
    labels = np.repeat(np.arange(4), 10)
    s = ClusterSampler(labels, batch_size=8, m=4)
    it = iter(s)
    _ = [next(it) for _ in range(16)]  # two batches "prefetched", never consumed
    it2 = iter(s)
    first = [next(it2) for _ in range(8)]
    assert np.array_equal(s.stream.next_ticket().indices, first) and len(s.stream.waiting_tickets()) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=10, m=4), "not a multiple of m"),
        (dict(batch_size=40, m=4), "only 4 classes"),
        (dict(batch_size=20, m=20), "largest class has only 10"),
        (dict(batch_size=80, m=4), "larger than the dataset"),
    ],
)
def test_bad_batch_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClusterSampler(np.repeat(np.arange(4), 10), **kwargs)


def test_bad_labels_and_assignments_raise():
    with pytest.raises(ValueError, match="1-D"):
        ClusterSampler(np.zeros((4, 2), dtype=int), batch_size=2, m=1)
    s = ClusterSampler(np.repeat(np.arange(4), 10), batch_size=8, m=4)
    with pytest.raises(ValueError, match="one id per sample"):
        s.set_assignment(np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="out of range"):
        s.set_assignment(np.full(40, 5), num_clusters=2)


def test_cluster_with_few_classes_takes_several_groups_per_class_without_repeating_a_sample():
    labels = np.repeat(np.arange(6), 10)
    s = ClusterSampler(labels, batch_size=12, m=4)
    s.set_assignment((labels >= 4).astype(int))  # cluster 1 holds 2 classes of 10: 3 groups of 4 need 2 from one
    batches = take_pass(s)
    from_1 = [b for c, b in batches if c == 1]
    assert from_1 and all(len(set(b.tolist())) == 12 for b in from_1)
    assert all(sorted(np.unique(labels[b], return_counts=True)[1].tolist()) == [4, 8] for b in from_1)


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 20), min_size=1, max_size=7),
    m=st.sampled_from([1, 2, 4]),
    per_batch=st.sampled_from([2, 4, 6, 8]),
    seed=st.integers(0, 2**16),
)
def test_equal_counts_give_every_class_of_a_batch_as_many_samples(sizes, m, per_batch, seed):
    """For losses such as SmoothAPLoss: a cluster with fewer than batch_size/m classes gives per_batch/g classes g
    groups each (g the smallest divisor of per_batch that the classes can give), or no batches when none can."""
    # cluster 0: per_batch classes of m samples (one batch); cluster 1: classes of the given sizes
    labels = np.repeat(np.arange(per_batch + len(sizes)), [m] * per_batch + sizes)
    assignment = np.repeat([0, 1], [per_batch * m, sum(sizes)])
    capacity = np.array(sizes) // m
    able = [g for g in range(1, per_batch + 1) if per_batch % g == 0 and (capacity >= g).sum() >= per_batch // g]
    s = ClusterSampler(labels, batch_size=per_batch * m, m=m, seed=seed, equal_counts=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.set_assignment(assignment, 2)
    from_1 = [b for c, b in take_pass(s) if c == 1]
    assert bool(from_1) == bool(able)
    assert bool(able) != any("clusters [1] cannot fill a batch" in str(w.message) for w in caught)
    for b in from_1:
        counts = np.unique(labels[b], return_counts=True)[1]
        assert len(set(b.tolist())) == len(b) and set(counts.tolist()) == {min(able) * m}


def test_cluster_that_cannot_fill_a_batch_with_distinct_samples_is_skipped_with_a_warning():
    labels = np.repeat(np.arange(6), 10)
    s = ClusterSampler(labels, batch_size=12, m=4)
    with pytest.warns(UserWarning, match=r"clusters \[1\] cannot fill a batch of 12 distinct samples"):
        s.set_assignment((labels == 0).astype(int))  # cluster 1: a single class of 10 gives 2 groups of 4, not 3
    batches = take_pass(s)
    assert batches and all(c == 0 and len(set(b.tolist())) == 12 for c, b in batches)


def test_batch_size_and_m_are_keyword_only():
    with pytest.raises(TypeError, match="batch_size and m as keywords"):
        ClusterSampler(np.repeat(np.arange(4), 10), 8, 4)


@pytest.mark.parametrize(
    "kwargs", [{}, {"m": 4}, {"batch_size": 8}, {"batch_size": None, "m": 4}, {"batch_size": 8, "m": None}]
)
def test_a_call_missing_batch_size_or_m_is_told_how_to_write_it(kwargs):
    with pytest.raises(TypeError, match=r"ClusterSampler takes batch_size and m as keywords: ClusterSampler\(labels"):
        ClusterSampler(np.repeat(np.arange(4), 10), **kwargs)
    with pytest.raises(TypeError, match="batch_size and m as keywords"):
        ClusterSampler(labels=np.repeat(np.arange(4), 10), **kwargs)


def test_the_signature_is_the_real_one_batch_size_and_m_required_keywords():
    params = inspect.signature(ClusterSampler).parameters
    assert list(params)[:3] == ["labels", "batch_size", "m"]
    for name in ("batch_size", "m"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default is inspect.Parameter.empty
    assert params["seed"].default == 0 and params["batches_per_epoch"].default is None
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'labels'"):
        ClusterSampler()  # (Python's own message: nothing was passed)
    with pytest.raises(TypeError, match="unexpected keyword argument 'n'"):
        ClusterSampler(np.repeat(np.arange(4), 10), batch_size=8, m=4, n=2)
    s = ClusterSampler(labels=np.repeat(np.arange(4), 10), batch_size=8, m=4, seed=3)
    assert (s.batch_size, s.m, s.seed) == (8, 4, 3)
