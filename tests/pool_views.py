"""Per-cluster views of planning, for the tests: pools of samples per class in each cluster, and passes planned from
them. The package plans from :class:`~pml_divide_conquer.planning.Runs` (one sort of all samples); these build
the same plans from plain lists, which is how a test states a case."""

from typing import List

import numpy as np

from pml_divide_conquer.planning import Runs, group_runs, layouts, plan_layouts


def servable_pools(labels, assignment, num_clusters, m, batch_size, equal_counts=False):
    """``{cluster: [samples of each class it draws from]}`` for the clusters that can fill a batch of
    ``batch_size`` distinct samples, ``m`` per class (a class with too few samples in its cluster is left out)."""
    runs = group_runs(labels, assignment)
    return {
        c: [runs.of(r) for r in lay.runs] for c, lay in layouts(runs, num_clusters, m, batch_size, equal_counts).items()
    }


def fragments(labels, assignment, num_clusters, m):
    """The class fragments (samples of one class in one cluster) too small to give ``m`` distinct samples."""
    runs = group_runs(labels, assignment)
    return [runs.of(r) for r in np.flatnonzero(runs.sizes < m)]


def _runs_of_pools(pools_by_cluster):
    """Runs (and their clusters) from ``{cluster: [samples of each class]}``."""
    members, sizes, clusters = [], [], []
    for c in sorted(pools_by_cluster):
        for p in pools_by_cluster[c]:
            members.append(np.asarray(p, dtype=np.int64))
            sizes.append(len(p))
            clusters.append(c)
    sizes = np.asarray(sizes, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    flat = np.concatenate(members) if members else np.zeros(0, dtype=np.int64)
    clusters = np.asarray(clusters, dtype=np.int64)
    return Runs(flat, starts, sizes, clusters, np.arange(len(sizes)))


def plan_pass(pools, batch_size, m, rng, equal_counts=False):
    """One pass: ``(cluster, indices)`` batches, the clusters round-robin, each ``batch_size`` long."""
    runs = _runs_of_pools(pools)
    k = int(runs.clusters.max()) + 1 if len(runs.clusters) else 0
    return plan_layouts(runs, layouts(runs, k, m, batch_size, equal_counts), m, rng)


def cluster_batches(pools, n_batches, per_batch, m, rng, equal_counts=False) -> List[np.ndarray]:
    """``n_batches`` batches of ``per_batch`` groups of ``m`` samples from the classes ``pools`` (each >= m samples),
    no sample twice in a batch (one cluster)."""
    runs = _runs_of_pools({0: pools})
    lay = layouts(runs, 1, m, per_batch * m, equal_counts)
    if not lay:
        raise ValueError("these classes cannot fill a batch of distinct samples")
    return list(plan_layouts(runs, lay, m, rng, n=n_batches).batches)
