"""ClusterSampler: the stream of cluster batches, m samples per class, and a *ticket* for each batch it draws.

It yields flat indices (the DataLoader groups them into batches), pass after pass over the clusters of its
:class:`~pml_divide_conquer.assignment.ClusterAssignment`, each pass a pure function of the seed, the assignment and
the pass number; it records which cluster and indices each batch holds. The wrapper's
:class:`~pml_divide_conquer.routing.Router` takes the tickets in order (torch iterates a sampler in the main process,
in order, whatever the number of workers) and checks each batch against its ticket.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from torch.utils.data import BatchSampler, Sampler

from . import planning
from .assignment import ClusterAssignment, check_batch_size_and_m, keywords_checked
from .distributed import Replicas
from .routing import FirstIndex, Ticket
from .stream import TicketStream

SAVED = ("seed", "batch_size", "m", "assignment", "num_clusters", "pass", "pos")  # what every saved state holds


class ClusterSampler(Sampler[int]):
    """Sampler whose batches each come from a single cluster, ``m`` samples per class, no sample twice in a batch.

    Within a cluster, a class's samples are used without replacement until fewer than ``m`` remain, then the
    class starts a new round (its leftover samples first). A class with fewer than ``m`` samples in a cluster
    cannot give ``m`` distinct samples, so it is left out of that cluster's batches until the next reclustering
    (one warning; the reference code likewise drops classes with a single sample in a cluster). A cluster with
    fewer classes than ``batch_size / m`` takes 2m, 3m, ... distinct samples from some classes (with
    ``equal_counts``, the same number from every class of the batch); a cluster that cannot fill a batch with
    distinct samples at all gets no batches (one warning). A pass visits the clusters round-robin, each giving as
    many batches as the largest cluster needs, so small clusters are oversampled.

    **Epochs.** Passes follow each other as one stream; an epoch is the next ``batches_per_epoch`` batches of it
    (default ``len(labels) // (batch_size * num_replicas)``, as many steps as a baseline epoch), so
    ``len(DataLoader)`` is exactly the number of batches a loop receives per epoch, whatever K, and an LR
    scheduler sized from it is right. A pass may end inside an epoch, or run on into the next one. Each iterator
    (``iter(loader)``) yields the rest of the current epoch; the wrapper's end-of-epoch step starts the next one.
    ``set_epoch`` only records the epoch number (Lightning calls it every epoch): the stream does not depend on
    it, and :meth:`state_dict` saves the position in it, so a run resumed from it draws the same batches.

    Args:
        labels: one integer label per sample of the training dataset, as the loop passes them to the loss. Labels
            that are strings or other objects: encode them first, e.g. ``np.unique(labels, return_inverse=True)[1]``.
        batch_size: keyword-only, required; must equal the DataLoader's (or the trainer's) ``batch_size``.
        m: keyword-only, required; samples per class in a batch; ``batch_size`` must be a multiple of it. (PML's
            ``MPerClassSampler(labels, m, batch_size)`` takes them in the other order, hence keywords here.)
        seed: seed of the sampler's own random generator (PML's global numpy RNG is not touched).
        num_replicas: number of DDP processes (default: torch.distributed's world size when it is initialised,
            else 1). At every step all ranks draw from the same cluster, each ``batch_size`` disjoint samples, so
            that the batch gathered across ranks is one cluster batch of ``batch_size * num_replicas``. Use the
            same seed on every rank.
        rank: this process's rank (default: torch.distributed's rank when it is initialised, else 0).
        equal_counts: every class of a batch gives the same number of samples (m, or 2m, 4m, ... when a cluster has
            fewer than ``batch_size / m`` classes), as losses such as ``SmoothAPLoss`` require.
            :class:`~pml_divide_conquer.DivideConquerWrapper` turns it on for such losses.
        batches_per_epoch: batches in an epoch (default: one baseline epoch, see above).

    Examples:
        >>> sampler = ClusterSampler(train_labels, batch_size=32, m=4, seed=0)
        >>> loader = torch.utils.data.DataLoader(train_set, batch_size=32, sampler=sampler)
        >>> len(loader) == len(train_labels) // 32
        True
        >>> loader = torch.utils.data.DataLoader(
        ...     train_set, batch_sampler=sampler.batch_sampler())
    """

    @keywords_checked
    def __init__(
        self,
        labels: ArrayLike,
        *,
        batch_size: int,
        m: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        equal_counts: bool = False,
        batches_per_epoch: int | None = None,
    ) -> None:
        self.clusters = ClusterAssignment(labels)
        self.batch_size, self.m = check_batch_size_and_m(batch_size, m)
        self.seed = int(seed)
        self.equal_counts = bool(equal_counts)
        self._replicas = Replicas(num_replicas, rank)
        self._epoch_length: int | None = None if batches_per_epoch is None else self._positive(batches_per_epoch)
        self._checked_world: tuple[int, int] | None = None
        self._check_world()
        self.epoch = 0  # the last set_epoch() value (informational)
        # (what the plan depends on, the plan of that pass)
        self._plan_cache: tuple[tuple[int, int, int, bool] | None, planning.Plan | None] = (None, None)
        self.stream = TicketStream()  # the position in the stream of batches, the tickets of those drawn

    # what the assignment (``self.clusters``) holds
    @property
    def labels(self) -> np.ndarray:
        """The training labels, one per sample."""
        return self.clusters.labels

    @property
    def assignment(self) -> np.ndarray:
        """Each sample's cluster id (0..K-1), int64."""
        return self.clusters.ids

    @property
    def num_clusters(self) -> int:
        """K of the assignment (1 before the first)."""
        return self.clusters.num_clusters

    @property
    def version(self) -> int:
        """Bumped by every new assignment."""
        return self.clusters.version

    # ---------------------------------------------------------------- assignment

    def set_assignment(self, assignment: ArrayLike, num_clusters: int | None = None) -> None:
        """Give each sample its cluster id (0..K-1). Starts a new pass from the new assignment."""
        self._check_world()
        self.clusters.set(assignment, num_clusters)
        self.stream.restart()
        self.clusters.check_servable(self.m, self.global_batch_size, self.equal_counts)

    def require_equal_counts(self) -> None:
        """From now on every class of a batch gives the same number of samples (see ``equal_counts``)."""
        self.equal_counts = True

    @property
    def num_replicas(self) -> int:
        """DDP processes: as given, else torch.distributed's world size now (so a sampler built before
        ``init_process_group``, e.g. in a LightningModule's ``__init__``, follows the processes started later)."""
        return self._replicas.world

    @property
    def rank(self) -> int:
        """This process's rank: as given, else torch.distributed's rank now."""
        return self._replicas.rank

    def _check_world(self) -> None:
        """Check the settings against the number of processes, when it changed since the last check."""
        world, rank = self.num_replicas, self.rank
        if self._checked_world == (world, rank):
            return
        if not 0 <= rank < world:
            raise ValueError(f"rank={rank} is out of range for num_replicas={world}")
        self.clusters.check_batch_settings(self.batch_size, self.m, world)
        self._checked_world = (world, rank)

    @property
    def batches_per_epoch(self) -> int:
        """Batches in an epoch: as set, else one baseline epoch, ``len(labels) // (batch_size * num_replicas)``."""
        if self._epoch_length is not None:
            return self._epoch_length
        return len(self.labels) // self.global_batch_size

    @staticmethod
    def _positive(batches: int) -> int:
        if not isinstance(batches, (int, np.integer)) or isinstance(batches, bool) or batches < 1:
            raise ValueError(f"batches_per_epoch must be a positive integer, got {batches!r}")
        return int(batches)

    def check_rank(self, error: type[Exception] = RuntimeError) -> None:
        """Raise ``error`` if this process is not the rank (of the world size) the sampler was built for."""
        self._replicas.check("ClusterSampler", error)

    @property
    def global_batch_size(self) -> int:
        """Samples per step over all ranks: one cluster batch."""
        return self.batch_size * self.num_replicas

    def cluster_sizes(self) -> np.ndarray:
        """Samples per cluster."""
        return self.clusters.sizes()

    def classes_per_cluster(self) -> np.ndarray:
        """Classes per cluster."""
        return self.clusters.classes_per_cluster()

    # ---------------------------------------------------------------- planning

    def _layouts(self) -> dict[int, planning.ClusterLayout]:
        self._check_world()
        return self.clusters.layouts(self.m, self.global_batch_size, self.equal_counts)

    def batches_per_pass(self) -> int:
        """Batches in one pass over the clusters (it need not match an epoch)."""
        return planning.batches_per_pass(self._layouts())

    def _plan(self, pass_index: int) -> planning.Plan:
        key = (self.version, pass_index, self.global_batch_size, self.equal_counts)
        cached_key, cached = self._plan_cache
        if cached_key == key and cached is not None:
            return cached
        if self.version == 0:  # batches from the single cluster of all the data, before any assignment
            self.clusters.warn_fragments(self.m)
        plan = self.plan_pass(pass_index)
        self._plan_cache = (key, plan)
        return plan

    def plan_pass(self, pass_index: int) -> planning.Plan:
        """The ``(cluster, indices)`` batches of one pass over all ranks (each ``global_batch_size`` long).

        Deterministic in (seed, assignment version, pass), so every rank plans the same pass.
        """
        rng = np.random.default_rng([self.seed, self.version, pass_index])
        return planning.plan_layouts(self.clusters.runs(), self._layouts(), self.m, rng)

    # ---------------------------------------------------------------- epochs

    def __len__(self) -> int:
        """Indices in an epoch, ``batches_per_epoch * batch_size`` (it counts indices, like PML's
        MPerClassSampler: ``len(DataLoader(ds, batch_size=..., sampler=sampler))`` is ``batches_per_epoch``)."""
        self._check_world()
        return self.batches_per_epoch * self.batch_size

    def set_batches_per_epoch(self, batches: int | None) -> None:
        """Set the epoch length in batches (e.g. PML's ``iterations_per_epoch``); None: one baseline epoch."""
        self._epoch_length = None if batches is None else self._positive(batches)

    def set_epoch(self, epoch: int) -> None:
        """Record the epoch number, as loops call it on samplers (Lightning every epoch, like
        ``DistributedSampler.set_epoch``). The batches do not depend on it: they follow one stream whose position
        the end-of-epoch steps and :meth:`state_dict` keep, so runs stay reproducible and resumable."""
        self.epoch = int(epoch)

    def batch_sampler(self) -> ClusterBatchSampler:
        """A batch view of this sampler, for ``DataLoader(dataset, batch_sampler=sampler.batch_sampler())``:
        yields lists of ``batch_size`` indices, and its ``len`` is ``batches_per_epoch``."""
        return ClusterBatchSampler(self)

    # ---------------------------------------------------------------- iteration and tickets

    def __iter__(self) -> Iterator[int]:
        """The rest of the current epoch (a full epoch when the last one is complete), as flat indices.

        A new iterator (each epoch, or PML's restart of an exhausted one) drops the tickets of batches an abandoned
        iterator had prefetched: they will never be consumed, and the new one draws them again."""
        self._check_world()
        generation = self.stream.new_iterator()
        done = self.stream.batches_this_epoch % self.batches_per_epoch
        return self._iterate(self.batches_per_epoch - done, generation, self.version)

    def _iterate(self, count: int, generation: int, version: int) -> Iterator[int]:
        stream = self.stream
        pass_index, pos, step = stream.pass_index, stream.pos, stream.consumed
        plan = self._plan(pass_index)
        first = True
        for _ in range(count):
            if generation != stream.generation or version != self.version:
                return  # superseded by a newer iterator or a new assignment
            if pos >= len(plan):
                pass_index, pos = pass_index + 1, 0
                plan = self._plan(pass_index)
            cluster, batch = plan[pos]
            # this rank's share; each class's samples are contiguous groups of m, so every share is m-per-class too
            indices = batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            fingerprint = zlib.crc32(batch.astype(np.int64).tobytes()) & 0x7FFFFFFF
            stream.drew(Ticket(version, pass_index, pos, cluster, indices, fingerprint, step))
            pos, step = pos + 1, step + 1
            out = indices.tolist()
            if first:  # an index that says what is wrong if the DataLoader took the sampler as batch_sampler=
                out[0], first = FirstIndex(out[0]), False
            yield from out

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state: its settings, the assignment and the position in the stream of batches."""
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "m": self.m,
            "num_replicas": self.num_replicas,
            **self.clusters.state_dict(),  # assignment, num_clusters, version, warned
            "epoch": self.epoch,
            **self.stream.state_dict(),  # pass, pos, consumed, epoch_start
            "batches_per_epoch": self._epoch_length,
        }

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Raise a ValueError naming what does not fit if ``state`` cannot be loaded into this sampler."""
        missing = [k for k in SAVED if k not in state]
        if missing:
            raise ValueError(f"the saved sampler state lacks {missing}: it is not a ClusterSampler's state_dict()")
        self.clusters.check_state(state)
        if state.get("num_replicas", 1) != self.num_replicas:
            raise ValueError(
                f"the saved sampler ran on {state.get('num_replicas', 1)} processes, this one on {self.num_replicas}: "
                "resume with the same number of processes"
            )
        if (state["batch_size"], state["m"]) != (self.batch_size, self.m):
            raise ValueError(
                f"the saved sampler used batch_size={state['batch_size']}, m={state['m']}; this one uses "
                f"batch_size={self.batch_size}, m={self.m}"
            )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict` (checked first): the batches go on from its position."""
        self.check_state(state)
        self.seed = int(state["seed"])
        self.clusters.load_state_dict(state)
        self.epoch = int(state.get("epoch", 0))
        self._epoch_length = state.get("batches_per_epoch", self._epoch_length)
        self.stream.load_state_dict(state)  # a live iterator stops: the next one starts at the loaded position


class ClusterBatchSampler(BatchSampler):
    """The batch view of a :class:`ClusterSampler`: lists of ``batch_size`` indices, ``len`` = batches per epoch.

    For ``DataLoader(dataset, batch_sampler=...)``; its ``sampler`` is the ClusterSampler (Lightning calls
    ``set_epoch`` on it). Get it from :meth:`ClusterSampler.batch_sampler`.

    Examples:
        >>> loader = torch.utils.data.DataLoader(
        ...     train_set, batch_sampler=sampler.batch_sampler())
        >>> len(loader) == sampler.batches_per_epoch
        True
    """

    def __init__(self, sampler: ClusterSampler) -> None:
        if not isinstance(sampler, ClusterSampler):
            raise TypeError(f"ClusterBatchSampler takes a ClusterSampler, got {type(sampler).__name__}")
        super().__init__(sampler, sampler.batch_size, drop_last=True)
