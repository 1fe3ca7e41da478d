"""The planner of 0.2 (before 0.3 made planning O(N log N)), kept for benchmarks/scale.py to time side by side.

:class:`~pml_divide_conquer.ClusterSampler` keeps the state (seed, assignment, position, tickets) and validation;
everything here is numpy in, numpy out, and deterministic in the generator it is given.
"""

import numpy as np


def as_int_array(values, what):
    """``values`` (a list, numpy array or torch tensor on any device) as an int64 numpy array."""
    if hasattr(values, "detach"):  # a torch tensor, maybe on a GPU (checkpoints loaded with map_location="cuda")
        values = values.detach().cpu().numpy()
    out = np.asarray(values)
    if out.size and not np.issubdtype(out.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {out.dtype}")
    return out.astype(np.int64)


def class_pools(labels, assignment, cluster):
    """The samples of ``cluster``, one array per class."""
    members = np.flatnonzero(assignment == cluster)
    classes, inverse = np.unique(labels[members], return_inverse=True)
    return [members[inverse == i] for i in range(len(classes))]


def servable_pools(labels, assignment, num_clusters, m, batch_size):
    """``{cluster: [samples of each class with >= m of them]}`` for the clusters that can fill a batch of
    ``batch_size`` distinct samples, ``m`` per class (a class with too few samples in its cluster is left out)."""
    per_batch = batch_size // m
    pools = {}
    for c in range(num_clusters):
        usable = [p for p in class_pools(labels, assignment, c) if len(p) >= m]
        if usable and sum(len(p) // m for p in usable) >= per_batch:
            pools[c] = usable
    return pools


def fragments(labels, assignment, num_clusters, m):
    """The class fragments (samples of one class in one cluster) too small to give ``m`` distinct samples."""
    return [p for c in range(num_clusters) for p in class_pools(labels, assignment, c) if len(p) < m]


def batches_per_cluster(pools, batch_size):
    """Batches each cluster gives in a pass: as many as the largest cluster needs (small clusters oversampled)."""
    return max(1, max(sum(len(p) for p in ps) for ps in pools.values()) // batch_size)


def plan_pass(pools, batch_size, m, rng):
    """One pass: ``(cluster, indices)`` batches, the clusters round-robin, each ``batch_size`` long."""
    clusters = sorted(pools)
    n = batches_per_cluster(pools, batch_size)
    per_cluster = [cluster_batches(pools[c], n, batch_size // m, m, rng) for c in clusters]
    return [(c, per_cluster[j][i]) for i in range(n) for j, c in enumerate(clusters)]


def cluster_batches(pools, n_batches, per_batch, m, rng):
    """``n_batches`` batches of ``per_batch`` groups of ``m`` samples from the classes ``pools`` (each >= m samples),
    no sample twice in a batch.

    Classes are drawn with probability proportional to their unused samples; each class is used without
    replacement until fewer than m samples remain, then starts a new round (leftovers first). When there are
    fewer classes than groups, some classes give several groups (never more than they hold).
    """
    counts = np.array([len(p) for p in pools])
    capacity = counts // m
    queues = [rng.permutation(p) for p in pools]
    heads = np.zeros(len(pools), dtype=np.int64)
    batches = []
    for _ in range(n_batches):
        left = counts - heads
        weight = np.where(left < m, counts, left).astype(np.float64)  # a class about to start a new round is full
        groups = np.zeros(len(pools), dtype=np.int64)
        if per_batch <= len(pools):
            groups[rng.choice(len(pools), per_batch, replace=False, p=weight / weight.sum())] = 1
        else:  # every class once, then extra groups from classes that still have distinct samples to give
            groups[:] = 1
            for _ in range(per_batch - len(pools)):
                w = np.where(groups < capacity, weight, 0.0)
                groups[rng.choice(len(pools), p=w / w.sum())] += 1
        parts = []
        for i in np.flatnonzero(groups)[rng.permutation(int((groups > 0).sum()))]:
            need = int(groups[i]) * m
            if left[i] >= need:
                parts.append(queues[i][heads[i] : heads[i] + need])
                heads[i] += need
                continue
            rest = queues[i][heads[i] :]
            fresh = rng.permutation(pools[i])
            fresh = np.concatenate([fresh[~np.isin(fresh, rest)], fresh[np.isin(fresh, rest)]])
            parts.append(np.concatenate([rest, fresh[: need - len(rest)]]))
            queues[i], heads[i] = fresh, need - len(rest)
        batches.append(np.concatenate(parts))
    return batches
