"""The features training last computed for every training sample, to recluster without an embedding pass.

Training computes every sample's trunk output and embedding an epoch at a time; :class:`FeatureMemory` keeps the
latest of them (L2-normalised, float16) so that a reclustering can run k-means on it instead of embedding the whole
training set once more. The price: the features come from training-mode forward passes on augmented inputs, and are
up to T epochs old (their model changed since). A sample that no batch held since the last reclustering (e.g. a
class fragment too small to give m samples) is embedded afresh at the next one.

Under torch.distributed the rows are sharded: sample i lives on rank ``i % world_size`` (a rank's own batches
change every pass, so "the rows it trained" would not be bounded). Each rank stages the rows it computes and sends
them to their owners in bounded pieces (every ``flush_rows`` staged rows, and at each epoch end); rank 0 gathers
all rows, float16 in chunks, only when it clusters (or to save them: ``consolidate``). A rank holds ``N / world``
rows, its staging (at most a tenth of that) and 8 bytes of bookkeeping per own row.
"""

import contextlib

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import distributed
from .compat import LOGGER

CHUNK_BYTES = 64 << 20  # staging and gathers move at most this much at a time


class FeatureMemory:
    """One float16 row per training sample: the L2-normalised features of its latest training step.

    Args:
        num_samples: size of the training set (rows are sample indices of the sampler's labels).
        device: where the rows live: ``"cpu"`` (default) or the training device.
        flush_rows: staged rows that trigger a flush (default: a tenth of the rows a rank owns, at most 64 MiB).

    Examples:
        >>> memory = FeatureMemory(60_000)
        >>> memory.update(batch_indices, trunk_output)       # during training (no host sync)
        >>> features, stale = memory.features_for_clustering()   # at a reclustering (rank 0 gets the rows)
    """

    def __init__(self, num_samples, device="cpu", flush_rows=None):
        self.num_samples = int(num_samples)
        self.device = torch.device(device)
        self.flush_rows = flush_rows
        self.world, self.rank = None, None  # fixed by the first update (processes may start after construction)
        self.features = None  # (own rows, dim) float16, allocated by the first update
        self.stamps = None  # (own rows,) step of each row's update, 0: never
        self.step = 0  # updates so far (the same on every rank: one per training step)
        self.used_until = 0  # the step of the last reclustering: rows with a later stamp are fresh
        self.warned_capture = False
        self._staged, self._staged_rows = [], 0
        self._consolidated = None  # (all rows, all stamps) on the rank they were consolidated to
        self._layout()

    # ------------------------------------------------------------------ layout

    def _layout(self):
        world, rank = distributed.world_size_and_rank()
        if (world, rank) == (self.world, self.rank):
            return
        if self.features is not None and self.world is not None:
            raise RuntimeError(
                f"the feature memory holds rows for rank {self.rank} of {self.world}, but this process is rank "
                f"{rank} of {world}: resume with the same number of processes"
            )
        self.world, self.rank = world, rank
        self.own = np.arange(rank, self.num_samples, world)  # the samples whose rows live here
        self.stamps = torch.zeros(len(self.own), dtype=torch.long)

    def local(self, indices):
        """Positions in this rank's rows of samples it owns."""
        return np.asarray(indices) // self.world

    @property
    def nbytes(self):
        """Bytes of the rows this rank holds (its shard)."""
        return 0 if self.features is None else self.features.numel() * self.features.element_size()

    @property
    def bookkeeping_nbytes(self):
        """Bytes of the rest: stamps, staged rows and their indices."""
        staged = sum(r.numel() * r.element_size() + i.nbytes + 8 for i, r, _ in self._staged)
        return self.stamps.numel() * self.stamps.element_size() + staged

    # ------------------------------------------------------------------ training

    def update(self, indices, features):
        """Keep ``features`` (one row per sample of ``indices``), L2-normalised, as these samples' rows (staged: no
        host sync; written at the next flush)."""
        self._layout()
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) != len(features):
            raise ValueError(f"{len(indices)} sample indices for {len(features)} rows of features")
        rows = F.normalize(features.detach().flatten(1).float(), dim=1).to(torch.float16)
        if self.features is None:
            self.features = torch.zeros(len(self.own), rows.shape[1], dtype=torch.float16, device=self.device)
        elif rows.shape[1] != self.features.shape[1]:
            raise ValueError(f"features of size {rows.shape[1]}, but the memory holds rows of {self.features.shape[1]}")
        if self.flush_rows is None:
            limit = max(1, CHUNK_BYTES // (2 * rows.shape[1]))
            self.flush_rows = int(max(len(indices), min(limit, len(self.own) // 10)))
        self.step += 1
        self._consolidated = None
        self._staged.append((indices, rows, self.step))
        self._staged_rows += len(indices)
        if self._staged_rows >= self.flush_rows:  # the same step on every rank: each stages one batch a step
            self.flush()

    def flush(self):
        """Write the staged rows into their owners' memory (a collective under DDP: all ranks call it together)."""
        if self.features is None:
            return
        if self._staged:
            indices = np.concatenate([i for i, _, _ in self._staged])
            rows = torch.cat([r for _, r, _ in self._staged])
            steps = np.concatenate([np.full(len(i), s, dtype=np.int64) for i, _, s in self._staged])
        else:
            indices, steps = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
            rows = torch.zeros(0, self.features.shape[1], dtype=torch.float16)
        self._staged, self._staged_rows = [], 0
        if distributed.is_distributed():
            indices, rows, steps = self._exchange(indices, rows, steps)
        self._write(indices, rows, steps)

    def _write(self, indices, rows, steps):
        if not len(indices):
            return
        # the newest row of each sample (a sample is in one rank's batch share at a step: no ties)
        order = np.lexsort((steps, indices))
        last = np.append(indices[order][1:] != indices[order][:-1], True)
        pick = order[last]
        local = torch.as_tensor(self.local(indices[pick]))
        new = torch.as_tensor(steps[pick])
        newer = new > self.stamps[local]
        local, pick = local[newer], torch.as_tensor(pick)[newer]
        self.features[local.to(self.device)] = rows[pick.to(rows.device)].to(self.device)
        self.stamps[local] = new[newer]

    def _exchange(self, indices, rows, steps):
        """Send every staged row to the rank that owns it; return the rows this rank owns."""
        world, device = self.world, distributed.collective_device()
        owner = indices % world
        order = np.argsort(owner, kind="stable")
        indices, steps, rows = indices[order], steps[order], rows[torch.as_tensor(order).to(rows.device)]
        send = torch.as_tensor(np.bincount(owner, minlength=world), device=device)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send)
        send_sizes, recv_sizes = send.tolist(), recv.tolist()
        total = sum(recv_sizes)
        got_rows = torch.empty(total, rows.shape[1], dtype=torch.float16, device=device)
        dist.all_to_all_single(got_rows, rows.to(device).contiguous(), recv_sizes, send_sizes)
        meta = torch.as_tensor(np.stack([indices, steps], axis=1), device=device)
        got_meta = torch.empty(total, 2, dtype=torch.long, device=device)
        dist.all_to_all_single(got_meta, meta.contiguous(), recv_sizes, send_sizes)
        got_meta = got_meta.cpu().numpy()
        return got_meta[:, 0], got_rows, got_meta[:, 1]

    def synchronize(self):
        """Flush the staged rows (the end-of-epoch step runs it on every rank)."""
        self.flush()

    # ------------------------------------------------------------------ reclustering

    def _gather(self, what, to=0):
        """All rows (``what="features"``: (N, dim) float16) or stamps on rank ``to``, in chunks; None elsewhere."""
        local = self.features if what == "features" else self.stamps
        if not distributed.is_distributed():
            return local.cpu()
        device = distributed.collective_device()
        width = 1 if local.dim() == 1 else local.shape[1]
        rows_per_rank = len(range(0, self.num_samples, self.world))
        chunk = max(1, CHUNK_BYTES // (self.world * width * local.element_size()))
        out = None
        if self.rank == to:
            out = torch.zeros((self.num_samples,) + tuple(local.shape[1:]), dtype=local.dtype)
        for start in range(0, rows_per_rank, chunk):
            part = torch.zeros((chunk,) + tuple(local.shape[1:]), dtype=local.dtype, device=device)
            mine = local[start : start + chunk]
            part[: len(mine)] = mine.to(device)
            parts = [torch.empty_like(part) for _ in range(self.world)]
            dist.all_gather(parts, part)  # (gloo has no gather of tensors on every backend)
            if self.rank == to:
                for r, got in enumerate(parts):
                    samples = np.arange(r, self.num_samples, self.world)[start : start + chunk]
                    out[torch.as_tensor(samples)] = got[: len(samples)].cpu()
        return out

    def features_for_clustering(self):
        """(features as float32 numpy on rank 0 - None on the others, or when nothing was recorded -, indices of
        the samples with no row since the last reclustering, on every rank). A collective under DDP."""
        self._layout()
        self.flush()
        mine = torch.as_tensor(self.own)[self.stamps <= self.used_until].numpy()
        stale = distributed.all_gather_varying(mine)
        if self.features is None:
            return None, np.arange(self.num_samples)
        rows = self._gather("features")
        emb = None if rows is None else rows.float().numpy()
        # a row that is not finite (a float16 batch that overflowed) counts as none: its sample is embedded afresh.
        # Checked here, once a reclustering, not at each write (which would wait for the device every flush)
        bad = np.zeros(self.num_samples, dtype=np.int64)
        if emb is not None:
            bad = (~np.isfinite(emb).all(axis=1)).astype(np.int64)
        bad = distributed.broadcast_array(bad)  # (rank 0 holds the rows)
        return emb, np.union1d(stale, np.flatnonzero(bad))

    def mark_used(self):
        """A reclustering used the rows: from now on only newer ones count as fresh."""
        self.used_until = self.step

    # ------------------------------------------------------------------ state

    def consolidate(self, to=0):
        """Every row on rank ``to`` until the next update, for its ``state_dict`` (a collective; see
        ``DivideConquerWrapper.consolidate_state_dict``)."""
        self.flush()
        if not distributed.is_distributed() or self.features is None:
            return
        features, stamps = self._gather("features", to), self._gather("stamps", to)
        self._consolidated = None if features is None else (features, stamps)

    def state_dict(self):
        """This rank's rows (all rows in one process, or on the rank they were consolidated to). Never
        communicates; staged rows are written first."""
        if not distributed.is_distributed():
            self.flush()  # (under DDP the end-of-epoch step has flushed on every rank)
        full = self._consolidated is not None or self.world == 1
        if self._consolidated is not None:
            features, stamps = self._consolidated
        else:
            features, stamps = self.features, self.stamps
        return {
            "features": None if features is None else features.detach().cpu().clone(),
            "stamps": stamps.clone(),
            "step": self.step,
            "used_until": self.used_until,
            "world": 1 if full else self.world,
            "rank": 0 if full else self.rank,
            "num_samples": self.num_samples,
        }

    def check_state(self, state):
        """Raise a ValueError if ``state`` is not a feature memory of this training set."""
        missing = [k for k in ("features", "stamps", "step", "used_until") if k not in state]
        if missing:
            raise ValueError(f"the saved feature memory lacks {missing}: it is not a FeatureMemory's state_dict()")
        n = int(state.get("num_samples", len(state["stamps"])))
        if n != self.num_samples:
            raise ValueError(f"the saved feature memory holds {n} samples, this training set {self.num_samples}")

    def load_state_dict(self, state):
        self.check_state(state)
        self._layout()
        world, rank = int(state.get("world", 1)), int(state.get("rank", 0))
        features, stamps = state["features"], state["stamps"].cpu().long()
        self.step, self.used_until = int(state["step"]), int(state["used_until"])
        self._staged, self._staged_rows, self._consolidated = [], 0, None
        if features is None:
            self.features, self.stamps = None, torch.zeros(len(self.own), dtype=torch.long)
            return
        features = features.cpu().to(torch.float16)
        if world == 1:  # all rows: take this rank's
            own = torch.as_tensor(self.own)
            self.features = features[own].to(self.device).clone()
            self.stamps = stamps[own].clone()
        elif (world, rank) == (self.world, self.rank):
            self.features, self.stamps = features.to(self.device).clone(), stamps.clone()
        else:  # another rank's shard: this rank's rows are missing, embedded afresh at the next reclustering
            self.features = torch.zeros(len(self.own), features.shape[1], dtype=torch.float16, device=self.device)
            self.stamps = torch.zeros(len(self.own), dtype=torch.long)
            LOGGER.info(
                "D&C: the checkpoint holds the feature rows of rank %d of %d only (call dc.consolidate_state_dict() "
                "on every rank before saving): this rank's rows are embedded afresh at the next reclustering",
                rank,
                world,
            )


class InputCapture:
    """Keeps the latest input a module received in training mode (a forward pre-hook), until it is taken; inside
    :meth:`collecting`, every input instead (an embedding pass in eval mode).

    On the :class:`~pml_divide_conquer.SubspaceMaskedEmbedder` it captures the trunk's output, the features that
    ``cluster_on="trunk"`` clusters, whether the model is a trunk and an embedder or one module ending with it.
    """

    def __init__(self, module):
        self.latest = None
        self._collected = None
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        x = args[0] if args else None
        if not torch.is_tensor(x):
            return
        if self._collected is not None:
            self._collected.append(x.detach())
        elif module.training:
            self.latest = x.detach()

    def take(self):
        out, self.latest = self.latest, None
        return out

    @contextlib.contextmanager
    def collecting(self):
        """Collect every input while the block runs; yields the list they go to."""
        self._collected = rows = []
        try:
            yield rows
        finally:
            self._collected = None

    def remove(self):
        self.handle.remove()
        self.latest = None


def record_batch(memory, features, indices):
    """recluster_from="training": keep ``features`` (this batch's trunk output or embedding; None when it could not
    be captured) as the rows of the samples ``indices``; warn once when they do not fit. (Inside PML's
    DistributedLossWrapper the loss gets the gathered embeddings: this rank's rows come first.)"""
    n = len(indices)
    features = None if features is None else features[:n] if len(features) > n else features
    if features is None or len(features) != n:
        if not getattr(memory, "warned_capture", False):
            memory.warned_capture = True
            LOGGER.warning(
                "D&C: recluster_from='training' could not capture this batch's trunk output (got %s rows for %d "
                "samples): those samples are embedded afresh at the next reclustering",
                None if features is None else len(features),
                n,
            )
        return
    memory.update(indices, features)
