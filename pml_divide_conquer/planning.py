"""Planning one pass of cluster batches: pure functions (labels, assignment, m, batch size, rng -> batches).

:class:`~pml_divide_conquer.ClusterSampler` keeps the state (seed, assignment, position, tickets) and validation;
everything here is numpy in, numpy out, and deterministic in the generator it is given. The cost of a pass grows
as N log N in the number of samples N (sorts and vectorised numpy; Python loops only over rounds, clusters and the
few classes of clusters that have fewer than ``batch_size / m`` of them).

A pass, for each cluster that can fill a batch:

- its **units** are groups of ``m`` samples of one class (``2m``, ``4m``, ... under ``equal_counts`` when the
  cluster has few classes); a batch holds ``batch_size / m`` groups, each class at most one unit;
- every class gets at least as many units as cover its samples, ``ceil(size / unit)``, so that **a pass draws
  every sample it can serve** (only classes with fewer than ``m`` samples in their cluster stay out); the rest of
  the pass's units go to classes in proportion to their size, so samples are used about equally often;
- each class's units take its samples as a stream of rounds, each a random permutation of the class (without
  replacement until a round is used up; a unit that crosses into the next round finds its own samples at the end
  of that round, so no batch holds a sample twice), in the order of the pass;
- which classes share a batch is random (a column fill, each column's rows shuffled).

Every cluster gives the same number of batches (as many as the cluster that needs most: small clusters are
oversampled), and the clusters take turns.
"""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


def as_int_array(values, what):
    """``values`` (a list, numpy array or torch tensor on any device) as an int64 numpy array."""
    if hasattr(values, "detach"):  # a torch tensor, maybe on a GPU (checkpoints loaded with map_location="cuda")
        values = values.detach().cpu().numpy()
    out = np.asarray(values)
    if out.size and not np.issubdtype(out.dtype, np.integer):
        raise ValueError(
            f"{what} must be integers, got dtype {out.dtype}: encode other labels (strings, ...) as integers first, "
            "e.g. classes, ids = np.unique(labels, return_inverse=True), and pass ids"
        )
    return out.astype(np.int64)


# --------------------------------------------------------------------------------------------- grouping


class Runs(NamedTuple):
    """The samples grouped by (cluster, class): run r holds ``members[starts[r] : starts[r] + sizes[r]]``."""

    members: np.ndarray  # sample indices sorted by (cluster, class, index)
    starts: np.ndarray
    sizes: np.ndarray
    clusters: np.ndarray  # the cluster of each run
    classes: np.ndarray  # the class of each run

    def of(self, r):
        return self.members[self.starts[r] : self.starts[r] + self.sizes[r]]


def group_runs(labels, assignment):
    """Group the samples by (cluster, class) with one sort: O(N log N)."""
    labels, assignment = np.asarray(labels), np.asarray(assignment)
    members = np.lexsort((labels, assignment))  # stable: samples in index order within a run
    if len(members) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Runs(members, empty, empty, empty, empty)
    a, y = assignment[members], labels[members]
    cuts = np.flatnonzero((a[1:] != a[:-1]) | (y[1:] != y[:-1])) + 1
    starts = np.concatenate([[0], cuts]).astype(np.int64)
    sizes = np.diff(np.append(starts, len(members)))
    return Runs(members.astype(np.int64), starts, sizes, a[starts], y[starts])


def groups_per_class(capacity, per_batch):
    """The number g of m-sample groups each class gives to a batch of ``per_batch`` groups when every class of the
    batch must give the same number of samples: the smallest divisor g of ``per_batch`` such that ``per_batch / g``
    classes can each give g groups of distinct samples (``capacity``: groups each class can give). None if none."""
    capacity = np.asarray(capacity)
    for g in range(1, per_batch + 1):
        if per_batch % g == 0 and int((capacity >= g).sum()) >= per_batch // g:
            return g
    return None


@dataclass
class ClusterLayout:
    """How one cluster fills its batches: the runs it draws from, the unit (``unit`` samples of a class), the units
    per batch, the most units a class gives to one batch, and the units each run needs to cover its samples."""

    cluster: int
    runs: np.ndarray  # run ids
    unit: int
    per_batch: int
    max_per_batch: np.ndarray  # per run
    cover: np.ndarray  # per run: units that cover its samples
    several: bool  # a class may give several units to a batch (fewer classes than groups, no equal counts)

    def batches_needed(self):
        return int(max(-(-self.cover.sum() // self.per_batch), (-(-self.cover // self.max_per_batch)).max()))


def layouts(runs, num_clusters, m, batch_size, equal_counts=False):
    """{cluster: ClusterLayout} of the clusters that can fill a batch of ``batch_size`` distinct samples, ``m`` per
    class (classes with fewer than m samples in the cluster left out)."""
    per_batch = batch_size // m
    usable = np.flatnonzero(runs.sizes >= m)
    by_cluster = np.split(usable, np.searchsorted(runs.clusters[usable], np.arange(1, num_clusters)))
    out = {}
    for c, ids in enumerate(by_cluster):
        capacity = runs.sizes[ids] // m
        if len(ids) == 0 or capacity.sum() < per_batch:
            continue
        if len(ids) >= per_batch:
            unit, units, several, keep = m, per_batch, False, np.ones(len(ids), bool)
        elif equal_counts:
            g = groups_per_class(capacity, per_batch)
            if g is None:
                continue
            unit, units, several, keep = g * m, per_batch // g, False, capacity >= g
        else:
            unit, units, several, keep = m, per_batch, True, np.ones(len(ids), bool)
        ids = ids[keep]
        sizes = runs.sizes[ids]
        max_per_batch = sizes // m if several else np.ones(len(ids), dtype=np.int64)
        out[c] = ClusterLayout(c, ids, unit, units, max_per_batch, -(-sizes // unit), several)
    return out


# --------------------------------------------------------------------------------------------- one pass


class Plan:
    """The batches of one pass: ``plan[i]`` is ``(cluster, indices)``, indices over all ranks."""

    def __init__(self, clusters, batches):
        self.clusters, self.batches = clusters, batches

    def __len__(self):
        return len(self.clusters)

    def __getitem__(self, i):
        return int(self.clusters[i]), self.batches[i]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def allocate(minimum, maximum, weights, total, rng):
    """Integers ``minimum <= a <= maximum`` summing to ``total``, the part above the minimum drawn in proportion to
    ``weights`` (minimums scaled down when they exceed the total)."""
    minimum = np.minimum(minimum, maximum).astype(np.int64)
    if minimum.sum() > total:
        minimum = np.floor(minimum * (total / minimum.sum())).astype(np.int64)
    a = minimum.copy()
    while a.sum() < total:
        room = maximum - a
        w = np.where(room > 0, weights, 0).astype(np.float64)
        a += np.minimum(rng.multinomial(total - a.sum(), w / w.sum()), room)
    return a


def unit_streams(runs, run_ids, unit, counts, rng):
    """``counts[i]`` units of ``unit`` samples from each run ``run_ids[i]``, as one flat array (run after run).

    A run's samples come as rounds, each a random permutation of the run; the samples of a unit that crosses from
    one round into the next go to the end of that next round, so no unit holds a sample twice. Vectorised over the
    runs, one loop iteration per round.
    """
    sizes = runs.sizes[run_ids]
    need = counts * unit
    offsets = np.concatenate([[0], np.cumsum(need)])
    out = np.empty(offsets[-1], dtype=np.int64)
    rounds = -(-need // sizes)
    late = np.zeros(len(runs.members), dtype=bool)  # by position in members: goes to the end of the next round
    # blocks of runs of about BLOCK samples, one after the other: the temporary arrays stay that size
    ends = np.searchsorted(np.cumsum(sizes), np.arange(BLOCK, sizes.sum() + BLOCK, BLOCK), side="right")
    for lo, hi in zip(np.concatenate([[0], ends[:-1]]), ends):
        if hi > lo:
            _streams_of_block(runs, run_ids, sizes, need, offsets, rounds, late, out, unit, rng, lo, hi)
    return out, offsets


BLOCK = 1 << 17  # samples: the temporaries of a round of a block, about 60 bytes a sample, stay under 8 MiB


def _streams_of_block(runs, run_ids, sizes, need, offsets, rounds, late, out, unit, rng, lo, hi):
    active = lo + np.flatnonzero(rounds[lo:hi] > 0)
    r = 0
    while len(active):
        s = sizes[active]
        first = np.concatenate([[0], np.cumsum(s)[:-1]])
        owner = np.repeat(np.arange(len(active), dtype=np.int32), s)
        pos = np.arange(int(s.sum()), dtype=np.int64) - first[owner]  # position within the run
        where = runs.starts[run_ids[active]][owner] + pos  # into members
        keys = rng.random(len(where))
        keys += late[where]
        late[where] = False
        keys /= 2.0
        keys += owner
        order = np.argsort(keys, kind="stable")  # each run's samples, in this round's order
        del keys
        where = where[order]
        del order
        at = r * s[owner] + pos  # position in the run's stream
        keep = at < need[active][owner]
        out[offsets[active][owner[keep]] + at[keep]] = runs.members[where[keep]]
        del keep
        # the last ((r+1) * s) % unit samples of this round go with the first unit of the next
        crossing = ((r + 1) * s) % unit
        goes_on = rounds[active] > r + 1
        late[where[(pos >= (s - crossing)[owner]) & goes_on[owner]]] = True
        active, r = active[goes_on], r + 1


def _column_rows(column_runs, n, rng):
    """Rows (batches) of the units laid out column after column (``column_runs``: the run of each unit, n units a
    column): each column's rows shuffled, a run split between two columns kept on distinct rows."""
    rows = np.empty(len(column_runs), dtype=np.int64)
    for k in range(len(column_runs) // n):
        lo = k * n
        col = column_runs[lo : lo + n]
        if k and col[0] == column_runs[lo - 1]:  # a run continued from the previous column
            y = int(np.argmin(col == col[0])) if not (col == col[0]).all() else n
            taken = np.zeros(n, dtype=bool)
            taken[rows[lo - n : lo][column_runs[lo - n : lo] == col[0]]] = True
            free = rng.permutation(np.flatnonzero(~taken))
            rows[lo : lo + y] = free[:y]
            rows[lo + y : lo + n] = rng.permutation(np.concatenate([np.flatnonzero(taken), free[y:]]))
        else:
            rows[lo : lo + n] = rng.permutation(n)
    return rows


def cluster_batches_single(runs, layout, n, rng):
    """n batches (an n x batch_size array) of one cluster whose classes give at most one unit a batch."""
    ids, units = layout.runs, layout.per_batch
    counts = allocate(layout.cover, np.full(len(ids), n), runs.sizes[ids], n * units, rng)
    order = rng.permutation(len(ids))  # the classes in a random order, laid out column after column
    unit_run = np.repeat(order, counts[order])  # index into ids
    rows = _column_rows(unit_run, n, rng)
    columns = np.arange(len(unit_run)) // n
    # each run's units in batch order take its stream's units in order (a round is used up before the next)
    by_run = np.lexsort((rows, unit_run))
    rank = np.empty(len(unit_run), dtype=np.int64)
    rank[by_run] = np.arange(len(unit_run)) - np.repeat(np.cumsum(counts) - counts, counts)[np.arange(len(by_run))]
    flat, offsets = unit_streams(runs, ids, layout.unit, counts, rng)
    cells = np.empty((n, units), dtype=np.int64)
    cells[rows, columns] = offsets[unit_run] // layout.unit + rank  # the unit's place in the flat stream
    return flat.reshape(-1, layout.unit)[cells.reshape(-1)].reshape(n, units * layout.unit)


def cluster_batches_several(runs, layout, n, m, rng):
    """n batches of a cluster with fewer classes than groups a batch: classes give several groups to a batch (never
    more than they hold distinct samples), taken together from the class's stream."""
    ids, per_batch = layout.runs, layout.per_batch
    sizes = runs.sizes[ids]
    counts = allocate(layout.cover, layout.max_per_batch * n, sizes, n * per_batch, rng)
    order = rng.permutation(len(ids))
    unit_run = np.repeat(order, counts[order])
    groups = np.zeros((n, len(ids)), dtype=np.int64)  # groups of each class in each batch: a column fill
    np.add.at(groups, (np.arange(len(unit_run)) % n, unit_run), 1)
    groups = groups[rng.permutation(n)]
    parts = []
    for i in order:
        pool = runs.of(ids[i])
        queue, head, chunks = rng.permutation(pool), 0, []
        for need in groups[:, i] * m:
            if need == 0:
                chunks.append(pool[:0])
                continue
            if len(queue) - head >= need:
                chunks.append(queue[head : head + need])
                head += need
                continue
            rest = queue[head:]  # a new round; the rest's samples go to its end
            fresh = rng.permutation(pool)
            late = np.isin(fresh, rest)
            queue = np.concatenate([fresh[~late], fresh[late]])
            chunks.append(np.concatenate([rest, queue[: need - len(rest)]]))
            head = need - len(rest)
        parts.append(chunks)
    return np.stack([np.concatenate([parts[j][b] for j in range(len(order))]) for b in range(n)])


def plan_layouts(runs, cluster_layouts, m, rng, n=None):
    """One pass over ``cluster_layouts`` (from :func:`layouts`): every cluster ``n`` batches (default: as many as
    the cluster that needs most, to cover its samples), the clusters in turn."""
    if not cluster_layouts:
        return Plan(np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.int64))
    clusters = sorted(cluster_layouts)
    n = max(cluster_layouts[c].batches_needed() for c in clusters) if n is None else n
    per_cluster = []
    for c in clusters:
        layout = cluster_layouts[c]
        if layout.several:
            per_cluster.append(cluster_batches_several(runs, layout, n, m, rng))
        else:
            per_cluster.append(cluster_batches_single(runs, layout, n, rng))
    batches = np.stack(per_cluster, axis=1).reshape(n * len(clusters), -1)  # batch i of every cluster, in turn
    return Plan(np.tile(np.asarray(clusters, dtype=np.int64), n), batches)


def batches_per_pass(cluster_layouts):
    if not cluster_layouts:
        return 0
    return len(cluster_layouts) * max(layout.batches_needed() for layout in cluster_layouts.values())
