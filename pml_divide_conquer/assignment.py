"""ClusterAssignment: which cluster each training sample is in, and what each cluster can serve.

It owns the labels, each sample's cluster id (0..K-1), K and a version that every change bumps; from them, the
samples grouped by (cluster, class) and how each cluster fills its batches (:mod:`pml_divide_conquer.planning`),
cached for the current version; and the warnings about what a cluster cannot serve. The
:class:`~pml_divide_conquer.ClusterSampler` draws its stream of batches from one.
Also the checks of the sampler's batch settings (``batch_size``, ``m``), and how its constructor tells a call
that passes them positionally.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import numpy as np
import torch

from . import notices, planning
from .planning import as_int_array

P = ParamSpec("P")
R = TypeVar("R")


def check_batch_size_and_m(batch_size, m):
    """``(batch_size, m)`` as ints if a batch can hold ``batch_size / m`` classes of ``m`` samples; else a ValueError
    saying what to choose."""
    batch_size, m = int(batch_size), int(m)
    if m < 1 or batch_size < 1:
        raise ValueError(f"batch_size and m must be positive, got batch_size={batch_size}, m={m}")
    if batch_size % m:
        raise ValueError(
            f"batch_size={batch_size} is not a multiple of m={m}: a batch holds batch_size/m classes with m samples "
            "each. Choose a batch_size divisible by m."
        )
    return batch_size, m


class ClusterAssignment:
    """Each training sample's cluster, versioned, and what each cluster can serve.

    Args:
        labels: one integer label per training sample (1-D).

    Examples:
        >>> clusters = ClusterAssignment([0, 0, 1, 1, 2, 2])
        >>> clusters.set([0, 0, 0, 1, 1, 1], 2)
        >>> clusters.sizes().tolist(), clusters.version
        ([3, 3], 1)
    """

    def __init__(self, labels):
        self.labels = as_int_array(labels, "labels")
        if self.labels.ndim != 1:
            raise ValueError(
                f"ClusterSampler needs one label per sample (a 1-D array), got shape {self.labels.shape}. For "
                "hierarchical labels pass the column the loop uses (PML's label_hierarchy_level)."
            )
        if self.labels.size == 0:
            raise ValueError("ClusterSampler got an empty label array")
        self.ids = np.zeros(len(self.labels), dtype=np.int64)
        self.num_clusters = 1
        self.version = 0
        self.warned = set()  # the warnings given (each once per assignment, or once a run)
        self._cache = (None, None, None)  # (key, runs, layouts): the layout of the current version

    def check_batch_settings(self, batch_size, m, world=1):
        """Raise a ValueError saying what to change if these samples cannot fill batches of ``batch_size`` (per
        rank, ``world`` ranks) with ``m`` distinct samples per class, whatever the clusters."""
        n = len(self.labels)
        ranks = f" x {world} ranks" if world > 1 else ""
        if batch_size * world > n:
            raise ValueError(f"batch_size={batch_size}{ranks} is larger than the dataset ({n} samples)")
        classes, counts = np.unique(self.labels, return_counts=True)
        per_batch = batch_size * world // m
        if per_batch > len(classes):
            need = -(-batch_size * world // len(classes))
            fits = [d for d in range(need, batch_size + 1) if batch_size % d == 0]
            raise ValueError(
                f"batch_size/m = {per_batch} classes per batch{ranks}, but the dataset has only {len(classes)} "
                "classes. Lower batch_size or raise m" + (f" (for example m={fits[0]})." if fits else ".")
            )
        if m > counts.max():
            raise ValueError(
                f"m={m} samples per class, but the largest class has only {counts.max()} samples: no cluster "
                "can fill a batch. Lower m."
            )
        if (counts // m).sum() < per_batch:
            raise ValueError(
                f"a batch needs {per_batch} groups of m={m} distinct samples{ranks}, but the classes with at "
                f"least m samples give only {(counts // m).sum()}. Lower batch_size or m."
            )

    # ---------------------------------------------------------------- changes

    def checked(self, ids, num_clusters=None, what="the assignment (one cluster id per sample)"):
        """``(ids as int64, K)`` if ``ids`` is a valid assignment of these samples to ``num_clusters`` clusters
        (default: max id + 1); a ValueError saying what is wrong otherwise."""
        a = as_int_array(ids, what)
        if a.shape != self.labels.shape:
            raise ValueError(f"{what} has shape {a.shape}, expected one id per sample {self.labels.shape}")
        if a.size and a.min() < 0:
            raise ValueError(f"cluster ids must be non-negative integers, got {a.min()} in {what}")
        k = int(a.max()) + 1 if num_clusters is None else int(num_clusters)
        if k < 1:
            raise ValueError(f"num_clusters must be at least 1, got {k}")
        if a.max() >= k:
            raise ValueError(f"cluster id {a.max()} is out of range for num_clusters={k} in {what}")
        return a, k

    def set(self, ids, num_clusters=None):
        """Give each sample its cluster id (0..K-1): a new version."""
        self.ids, self.num_clusters = self.checked(ids, num_clusters)
        self.version += 1

    # ---------------------------------------------------------------- what the clusters hold

    def sizes(self):
        """Samples per cluster."""
        return np.bincount(self.ids, minlength=self.num_clusters)

    def classes_per_cluster(self):
        """Classes with at least one sample, per cluster."""
        return np.bincount(self.runs().clusters, minlength=self.num_clusters).astype(np.int64)

    def runs(self):
        """The samples grouped by (cluster, class) (:class:`~pml_divide_conquer.planning.Runs`)."""
        if self._cache[0] is None or self._cache[0][0] != self.version:
            self._cache = ((self.version,), planning.group_runs(self.labels, self.ids), None)
        return self._cache[1]

    def layouts(self, m, batch_size, equal_counts=False):
        """``{cluster: ClusterLayout}`` for the clusters that can fill a batch of ``batch_size`` distinct samples,
        ``m`` per class (:func:`~pml_divide_conquer.planning.layouts`), for the current version."""
        key = (self.version, m, batch_size, equal_counts)
        runs = self.runs()
        if self._cache[0] != key:
            self._cache = (key, runs, planning.layouts(runs, self.num_clusters, m, batch_size, equal_counts))
        return self._cache[2]

    def check_servable(self, m, batch_size, equal_counts=False):
        """Warn (once per version) about clusters that are empty or cannot fill a batch, and (once) about samples
        left out of the batches; raise if no cluster can fill a batch."""
        sizes = self.sizes()
        empty = np.flatnonzero(sizes == 0).tolist()
        if empty:
            self.warn_once(
                f"empty-v{self.version}",
                f"clusters {empty} are empty: their learners get no batches until the next reclustering.",
            )
        served = self.layouts(m, batch_size, equal_counts)
        left_out = [c for c in range(self.num_clusters) if sizes[c] > 0 and c not in served]
        if left_out:
            self.warn_once(
                f"unservable-v{self.version}",
                f"clusters {left_out} cannot fill a batch of {batch_size} distinct samples with m={m} per class: "
                "their learners get no batches until the next reclustering. Use fewer learners, a smaller "
                "batch_size or a smaller m.",
            )
        if not served:
            raise RuntimeError(
                f"no cluster can fill a batch of {batch_size} distinct samples with m={m} per class (cluster sizes "
                f"{sizes.tolist()}): use fewer learners, a smaller batch_size or a smaller m"
            )
        self.warn_fragments(m)

    def warn_fragments(self, m):
        """Warn about samples of classes with fewer than ``m`` samples in their cluster: left out of the batches.
        Once for the single cluster of all the data (the batches before the first assignment, or K=1), and once for
        the first assignment of K > 1 that leaves some out (so the first does not silence the second)."""
        runs = self.runs()
        dropped = int(runs.sizes[runs.sizes < m].sum())
        if dropped:
            where = "in their cluster" if self.num_clusters > 1 else "(in the one cluster of all the data)"
            self.warn_once(
                "fragments" if self.num_clusters > 1 else "fragments-single",
                f"{dropped} of {len(self.labels)} samples belong to classes with fewer than m={m} samples {where}: "
                "they cannot give m distinct samples, so they are left out of the batches until the next "
                "reclustering (no sample appears twice in a batch). A smaller m keeps more of them.",
            )

    def warn_once(self, key, message):
        if key not in self.warned:
            self.warned.add(key)
            notices.warn(message)

    # ---------------------------------------------------------------- state

    def state_dict(self):
        return {
            "assignment": torch.from_numpy(self.ids.copy()),  # a tensor: loadable with weights_only
            "num_clusters": self.num_clusters,
            "version": self.version,
            "warned": sorted(self.warned),
        }

    def check_state(self, state):
        """The saved ids and K, checked against these samples (a ValueError naming what is wrong)."""
        if len(state["assignment"]) != len(self.labels):
            raise ValueError(
                f"the saved sampler state has {len(state['assignment'])} samples, this dataset has "
                f"{len(self.labels)}: it was saved for another dataset"
            )
        # (a checkpoint loaded with map_location="cuda" - PML's HookContainer on a GPU - holds CUDA tensors)
        return self.checked(state["assignment"], state["num_clusters"], "the saved assignment")

    def load_state_dict(self, state):
        self.ids, self.num_clusters = self.check_state(state)
        self.ids = self.ids.copy()
        self.version = int(state["version"])
        self.warned = set(state.get("warned", []))
        self._cache = (None, None, None)


def keywords_checked(init: Callable[P, R]) -> Callable[P, R]:
    """``ClusterSampler.__init__`` (its signature unchanged: ``inspect``, ``help`` and the checker see it) that first
    tells a call which passes ``batch_size`` and ``m`` positionally, or leaves one out, how to write it: PML's
    MPerClassSampler takes them positionally, in the other order, and Python's own message would not say so."""

    @functools.wraps(init)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        given = len(args) > 1 or bool(kwargs)  # (self, then the call's arguments; no argument at all: no labels)
        if given and (len(args) > 2 or kwargs.get("batch_size") is None or kwargs.get("m") is None):
            raise TypeError(
                "ClusterSampler takes batch_size and m as keywords: ClusterSampler(labels, batch_size=..., m=...) "
                "(PML's MPerClassSampler takes (labels, m, batch_size), in the other order)"
            )
        return init(*args, **kwargs)

    return checked
