"""ClusterSampler: batches drawn from one cluster at a time, m samples per class.

The sampler yields flat indices (the DataLoader groups them into batches of ``batch_size``), batch after batch,
and keeps a *ticket* for every batch it starts: which cluster it came from and which indices it holds. The
:class:`~pml_divide_conquer.DivideConquerWrapper` takes the tickets in order, checks each one against the labels it
actually received, and routes the batch to that cluster's learner. Torch always iterates a sampler in the main
process, in order, whatever the number of DataLoader workers, so the order of tickets is the order of batches.

Batches form one stream: passes over the clusters (:meth:`ClusterSampler.plan_pass`), one after the other, each a
pure function of the seed, the cluster assignment and the pass number. An epoch is the next
``batches_per_epoch`` batches of that stream, whatever K: ``len(loader)`` is what the loop receives.
"""

import sys
import warnings
import zlib
from collections import deque
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler

from . import planning
from .distributed import world_size_and_rank
from .planning import as_int_array


class Ticket(NamedTuple):
    version: int  # which cluster assignment it was drawn from
    pass_index: int
    position: int  # batch number within the pass
    cluster: int
    indices: np.ndarray  # this rank's share of the batch
    fingerprint: int  # of the whole cluster batch (all ranks): equal on all ranks when their plans agree
    step: int  # batches consumed before this one since training started (the same on all ranks)


class ClusterSampler(Sampler):
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
        batch_size: keyword-only; must equal the DataLoader's (or the trainer's) ``batch_size``.
        m: keyword-only; samples per class in a batch; ``batch_size`` must be a multiple of it. (PML's
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

    def __init__(
        self,
        labels,
        *positional,
        batch_size=None,
        m=None,
        seed=0,
        num_replicas=None,
        rank=None,
        equal_counts=False,
        batches_per_epoch=None,
    ):
        if positional or batch_size is None or m is None:
            raise TypeError(
                "ClusterSampler takes batch_size and m as keywords: ClusterSampler(labels, batch_size=..., m=...) "
                "(PML's MPerClassSampler takes (labels, m, batch_size), in the other order)"
            )
        self.labels = as_int_array(labels, "labels")
        if self.labels.ndim != 1:
            raise ValueError(
                f"ClusterSampler needs one label per sample (a 1-D array), got shape {self.labels.shape}. For "
                "hierarchical labels pass the column the loop uses (PML's label_hierarchy_level)."
            )
        if self.labels.size == 0:
            raise ValueError("ClusterSampler got an empty label array")
        self.batch_size = int(batch_size)
        self.m = int(m)
        self.seed = int(seed)
        if self.m < 1 or self.batch_size < 1:
            raise ValueError(f"batch_size and m must be positive, got batch_size={batch_size}, m={m}")
        if self.batch_size % self.m:
            raise ValueError(
                f"batch_size={self.batch_size} is not a multiple of m={self.m}: a batch holds batch_size/m classes "
                "with m samples each. Choose a batch_size divisible by m."
            )
        self.equal_counts = bool(equal_counts)
        self._replicas = (None if num_replicas is None else int(num_replicas), None if rank is None else int(rank))
        self._epoch_length = None if batches_per_epoch is None else self._positive(batches_per_epoch)
        self._checked_world = None
        self._plan_cache = (None, None)
        self._pools_cache = (None, None)
        self._runs_cache = (None, None)
        self._check_world()
        self.assignment = np.zeros(len(self.labels), dtype=np.int64)
        self.num_clusters = 1
        self.epoch = 0  # the last set_epoch() value (informational)
        self.version = 0
        self._pass = 0  # consumption position: the next batch to be consumed is (pass, pos) of this version
        self._pos = 0
        self._consumed = 0  # batches consumed since training started
        self._epoch_start = 0  # _consumed when the current epoch started (the last end-of-epoch step)
        self._generation = 0
        self._tickets = deque()
        self._warned = set()

    # ---------------------------------------------------------------- assignment

    def set_assignment(self, assignment, num_clusters=None):
        """Give each sample its cluster id (0..K-1). Starts a new pass from the new assignment."""
        self._check_world()
        a = as_int_array(assignment, "the assignment (one cluster id per sample)")
        if a.shape != self.labels.shape:
            raise ValueError(f"assignment has shape {a.shape}, expected one id per sample {self.labels.shape}")
        if a.size and a.min() < 0:
            raise ValueError("cluster ids must be non-negative integers")
        k = int(a.max()) + 1 if num_clusters is None else int(num_clusters)
        if a.max() >= k:
            raise ValueError(f"cluster id {a.max()} is out of range for num_clusters={k}")
        self.assignment = a
        self.num_clusters = k
        self.version += 1
        self._pass, self._pos = 0, 0
        self._plan_cache = (None, None)
        self._check_clusters()

    def require_equal_counts(self):
        """From now on every class of a batch gives the same number of samples (see ``equal_counts``)."""
        if not self.equal_counts:
            self.equal_counts = True
            self._pools_cache = (None, None)
            self._plan_cache = (None, None)

    @property
    def num_replicas(self):
        """DDP processes: as given, else torch.distributed's world size now (so a sampler built before
        ``init_process_group``, e.g. in a LightningModule's ``__init__``, follows the processes started later)."""
        return self._replicas[0] if self._replicas[0] is not None else world_size_and_rank()[0]

    @property
    def rank(self):
        return self._replicas[1] if self._replicas[1] is not None else world_size_and_rank()[1]

    def _check_world(self):
        """Check the settings against the number of processes, when it changed since the last check."""
        world, rank = self.num_replicas, self.rank
        if self._checked_world == (world, rank):
            return
        if not 0 <= rank < world:
            raise ValueError(f"rank={rank} is out of range for num_replicas={world}")
        n = len(self.labels)
        ranks = f" x {world} ranks" if world > 1 else ""
        if self.batch_size * world > n:
            raise ValueError(f"batch_size={self.batch_size}{ranks} is larger than the dataset ({n} samples)")
        classes, counts = np.unique(self.labels, return_counts=True)
        per_batch = self.batch_size * world // self.m
        if per_batch > len(classes):
            need = -(-self.batch_size * world // len(classes))
            fits = [d for d in range(need, self.batch_size + 1) if self.batch_size % d == 0]
            raise ValueError(
                f"batch_size/m = {per_batch} classes per batch{ranks}, but the dataset has only {len(classes)} "
                "classes. Lower batch_size or raise m" + (f" (for example m={fits[0]})." if fits else ".")
            )
        if self.m > counts.max():
            raise ValueError(
                f"m={self.m} samples per class, but the largest class has only {counts.max()} samples: no cluster "
                "can fill a batch. Lower m."
            )
        if (counts // self.m).sum() < per_batch:
            raise ValueError(
                f"a batch needs {per_batch} groups of m={self.m} distinct samples{ranks}, but the classes with at "
                f"least m samples give only {(counts // self.m).sum()}. Lower batch_size or m."
            )
        self._checked_world = (world, rank)
        self._plan_cache = (None, None)
        self._pools_cache = (None, None)

    @property
    def batches_per_epoch(self):
        """Batches in an epoch: as set, else one baseline epoch, ``len(labels) // (batch_size * num_replicas)``."""
        if self._epoch_length is not None:
            return self._epoch_length
        return len(self.labels) // self.global_batch_size

    @staticmethod
    def _positive(batches):
        if not isinstance(batches, (int, np.integer)) or isinstance(batches, bool) or batches < 1:
            raise ValueError(f"batches_per_epoch must be a positive integer, got {batches!r}")
        return int(batches)

    def check_rank(self, error=RuntimeError):
        """Raise ``error`` if this process is not the rank (of the world size) the sampler was built for."""
        world, rank = world_size_and_rank()
        if (self.num_replicas, self.rank) != (world, rank):
            raise error(
                f"ClusterSampler was built for rank {self.rank} of {self.num_replicas}, but this process is rank "
                f"{rank} of {world}: build it after torch.distributed.init_process_group()"
            )

    @property
    def global_batch_size(self):
        """Samples per step over all ranks: one cluster batch."""
        return self.batch_size * self.num_replicas

    def cluster_sizes(self):
        return np.bincount(self.assignment, minlength=self.num_clusters)

    def classes_per_cluster(self):
        return np.bincount(self._runs().clusters, minlength=self.num_clusters).astype(np.int64)

    def _warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def _check_clusters(self):
        sizes = self.cluster_sizes()
        empty = np.flatnonzero(sizes == 0).tolist()
        if empty:
            self._warn_once(
                f"empty-v{self.version}",
                f"clusters {empty} are empty: their learners get no batches until the next reclustering.",
            )
        served = self._layouts()
        left_out = [c for c in range(self.num_clusters) if sizes[c] > 0 and c not in served]
        if left_out:
            self._warn_once(
                f"unservable-v{self.version}",
                f"clusters {left_out} cannot fill a batch of {self.global_batch_size} distinct samples with m={self.m} "
                "per class: their learners get no batches until the next reclustering. Use fewer learners, a "
                "smaller batch_size or a smaller m.",
            )
        if not served:
            raise RuntimeError(
                f"no cluster can fill a batch of {self.global_batch_size} distinct samples with m={self.m} per class "
                f"(cluster sizes {sizes.tolist()}): use fewer learners, a smaller batch_size or a smaller m"
            )
        runs = self._runs()
        dropped = int(runs.sizes[runs.sizes < self.m].sum())
        if dropped:
            self._warn_once(
                "fragments",
                f"{dropped} of {len(self.labels)} samples belong to classes with fewer than m={self.m} samples in "
                "their cluster: they cannot give m distinct samples, so they are left out of the batches until the "
                "next reclustering (no sample appears twice in a batch). A smaller m keeps more of them.",
            )

    # ---------------------------------------------------------------- planning

    def _runs(self):
        """The samples grouped by (cluster, class), for the current assignment."""
        if self._runs_cache[0] != self.version:
            self._runs_cache = (self.version, planning.group_runs(self.labels, self.assignment))
            self._pools_cache = (None, None)
        return self._runs_cache[1]

    def _layouts(self):
        """{cluster: how it fills its batches} for the clusters that can fill a batch (planning.layouts)."""
        self._check_world()
        if self._pools_cache[0] != self.version:
            layouts = planning.layouts(
                self._runs(), self.num_clusters, self.m, self.global_batch_size, self.equal_counts
            )
            self._pools_cache = (self.version, layouts)
        return self._pools_cache[1]

    def batches_per_pass(self):
        """Batches in one pass over the clusters (it need not match an epoch)."""
        return planning.batches_per_pass(self._layouts())

    def _plan(self, pass_index):
        key = (self.version, pass_index)
        if self._plan_cache[0] == key:
            return self._plan_cache[1]
        plan = self.plan_pass(pass_index)
        self._plan_cache = (key, plan)
        return plan

    def plan_pass(self, pass_index):
        """The ``(cluster, indices)`` batches of one pass over all ranks (each ``global_batch_size`` long).

        Deterministic in (seed, assignment version, pass), so every rank plans the same pass.
        """
        rng = np.random.default_rng([self.seed, self.version, pass_index])
        return planning.plan_layouts(self._runs(), self._layouts(), self.m, rng)

    # ---------------------------------------------------------------- epochs

    def __len__(self):
        """Indices in an epoch, ``batches_per_epoch * batch_size`` (it counts indices, like PML's
        MPerClassSampler: ``len(DataLoader(ds, batch_size=..., sampler=sampler))`` is ``batches_per_epoch``)."""
        self._check_world()
        return self.batches_per_epoch * self.batch_size

    def set_batches_per_epoch(self, batches):
        """Set the epoch length in batches (e.g. PML's ``iterations_per_epoch``); None: one baseline epoch."""
        self._epoch_length = None if batches is None else self._positive(batches)

    def set_epoch(self, epoch):
        """Record the epoch number, as loops call it on samplers (Lightning every epoch, like
        ``DistributedSampler.set_epoch``). The batches do not depend on it: they follow one stream whose position
        the end-of-epoch steps and :meth:`state_dict` keep, so runs stay reproducible and resumable."""
        self.epoch = int(epoch)

    def start_epoch(self):
        """The end-of-epoch step was taken: the batches consumed from now on belong to the next epoch."""
        self._epoch_start = self._consumed

    @property
    def batches_this_epoch(self):
        """Batches consumed since the current epoch started."""
        return self._consumed - self._epoch_start

    def batch_sampler(self):
        """A batch view of this sampler, for ``DataLoader(dataset, batch_sampler=sampler.batch_sampler())``:
        yields lists of ``batch_size`` indices, and its ``len`` is ``batches_per_epoch``."""
        return ClusterBatchSampler(self)

    # ---------------------------------------------------------------- iteration and tickets

    def __iter__(self):
        """The rest of the current epoch (a full epoch when the last one is complete), as flat indices.

        A new iterator (each epoch, or PML's restart of an exhausted one) drops the tickets of batches an abandoned
        iterator had prefetched: they will never be consumed, and the new one draws them again."""
        self._check_dataloader(sys._getframe(1))
        self._check_world()
        self._generation += 1
        self._tickets.clear()
        done = self.batches_this_epoch % self.batches_per_epoch
        return self._iterate(self.batches_per_epoch - done, self._generation, self.version)

    def _check_dataloader(self, frame):
        # A DataLoader's iterator calls iter() on its index sampler: refuse, with what to pass instead, a
        # ClusterSampler given as batch_sampler= (torch would fail with "'int' object is not iterable") or one
        # batched with another batch size (each batch would span several tickets).
        owner = frame.f_locals.get("self")  # a DataLoader iterator, or the BatchSampler it iterates
        if getattr(owner, "_index_sampler", None) is self:
            raise TypeError(
                "ClusterSampler yields sample indices, but the DataLoader got it as batch_sampler=. Pass "
                "DataLoader(dataset, batch_size=..., sampler=sampler) or "
                "DataLoader(dataset, batch_sampler=sampler.batch_sampler())."
            )
        batch_size = getattr(owner, "batch_size", None)
        if getattr(owner, "sampler", None) is self and isinstance(batch_size, int) and batch_size != self.batch_size:
            raise ValueError(
                f"the DataLoader's batch_size={batch_size} differs from ClusterSampler's batch_size="
                f"{self.batch_size}: give the DataLoader batch_size={self.batch_size}, or pass "
                "batch_sampler=sampler.batch_sampler() instead of batch_size= and sampler=."
            )

    def _iterate(self, count, generation, version):
        pass_index, pos, step = self._pass, self._pos, self._consumed
        plan = self._plan(pass_index)
        for _ in range(count):
            if generation != self._generation or version != self.version:
                return  # superseded by a newer iterator or a new assignment
            if pos >= len(plan):
                pass_index, pos = pass_index + 1, 0
                plan = self._plan(pass_index)
            cluster, batch = plan[pos]
            # this rank's share; each class's samples are contiguous groups of m, so every share is m-per-class too
            indices = batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            fingerprint = zlib.crc32(batch.astype(np.int64).tobytes()) & 0x7FFFFFFF
            self._tickets.append(Ticket(version, pass_index, pos, cluster, indices, fingerprint, step))
            pos, step = pos + 1, step + 1
            yield from indices.tolist()

    def pop_ticket(self, labels, batch_size_holder="the DataLoader (or trainer)", num_labels=None):
        """Take the ticket of the next batch and check it against the labels the loss received (``labels=None``:
        only their number, ``num_labels``; the caller checks them, e.g. on their device)."""
        if not self._tickets:
            raise RuntimeError(
                "DivideConquerWrapper received a batch that its ClusterSampler did not draw. Give the same "
                "ClusterSampler to the DataLoader (sampler=...) as to the wrapper, and do not call the wrapper on "
                "batches from another DataLoader while it is in train() mode (a validation loss: call "
                "wrapper.eval() first; a second call on the same batch: use `with wrapper.one_batch():`)."
            )
        ticket = self._tickets[0]
        got = None if labels is None else as_int_array(labels, "the batch's labels")
        if got is not None and got.ndim != 1:
            raise ValueError(f"expected 1-D labels, got shape {got.shape}")
        size = len(got) if got is not None else num_labels
        if size != len(ticket.indices):
            raise RuntimeError(
                f"the loss received a batch of {size} samples, but ClusterSampler draws batches of "
                f"{self.batch_size}. Give {batch_size_holder} batch_size={self.batch_size} (the sampler's), and do "
                "not drop samples from the batch (e.g. with PML's subset_batch_miner)."
            )
        if got is not None and not np.array_equal(got, self.labels[ticket.indices]):
            raise RuntimeError(
                "the labels the loss received do not match the batch ClusterSampler drew, so the batch cannot be "
                "routed to its learner. Build ClusterSampler from the labels exactly as the loop hands them to "
                "the loss (after PML's set_min_label_to_zero / dataset_labels / label_hierarchy_level), in dataset "
                "order. (Calling the loss twice for one batch, as LBFGS or SAM closures do: wrap the calls in "
                "`with wrapper.one_batch():`.)"
            )
        if ticket.version != self.version:
            raise RuntimeError(
                "a batch drawn before the last reclustering reached the loss. Change clusters only through the "
                "wrapper's end-of-epoch step (or recluster()), between epochs; after a reclustering inside an "
                "epoch, start a new iterator over the DataLoader, so that no stale prefetched batch is trained on."
            )
        self._tickets.popleft()
        self._pass, self._pos = ticket.pass_index, ticket.position + 1
        self._consumed = ticket.step + 1
        return ticket

    # ---------------------------------------------------------------- state

    def state_dict(self):
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "m": self.m,
            "num_replicas": self.num_replicas,
            "assignment": torch.from_numpy(self.assignment.copy()),  # a tensor: loadable with weights_only
            "num_clusters": self.num_clusters,
            "epoch": self.epoch,
            "version": self.version,
            "pass": self._pass,
            "pos": self._pos,
            "consumed": self._consumed,
            "epoch_start": self._epoch_start,
            "batches_per_epoch": self._epoch_length,
            "warned": sorted(self._warned),
        }

    def load_state_dict(self, state):
        if len(state["assignment"]) != len(self.labels):
            raise ValueError(
                f"the saved sampler state has {len(state['assignment'])} samples, this dataset has "
                f"{len(self.labels)}: it was saved for another dataset"
            )
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
        self.seed = int(state["seed"])
        # (a checkpoint loaded with map_location="cuda" - PML's HookContainer on a GPU - holds CUDA tensors)
        self.assignment = as_int_array(state["assignment"], "the saved assignment").copy()
        self.num_clusters = int(state["num_clusters"])
        self.epoch = int(state.get("epoch", 0))
        self.version = int(state["version"])
        self._pass, self._pos = int(state["pass"]), int(state["pos"])
        self._consumed = int(state.get("consumed", 0))
        self._epoch_start = int(state.get("epoch_start", self._consumed))
        self._epoch_length = state.get("batches_per_epoch", self._epoch_length)
        self._tickets.clear()
        self._generation += 1  # a live iterator stops: the next one starts at the loaded position
        self._plan_cache = (None, None)
        self._pools_cache = (None, None)
        self._runs_cache = (None, None)
        self._warned = set(state.get("warned", []))


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

    def __init__(self, sampler):
        if not isinstance(sampler, ClusterSampler):
            raise TypeError(f"ClusterBatchSampler takes a ClusterSampler, got {type(sampler).__name__}")
        super().__init__(sampler, sampler.batch_size, drop_last=True)
