"""The features training last computed for every training sample, to recluster without an embedding pass.

Training computes every sample's trunk output and embedding an epoch at a time; :class:`FeatureMemory` keeps the
latest of them (L2-normalised, float16) so that a reclustering can run k-means on it instead of embedding the whole
training set once more. The price: the features come from training-mode forward passes on augmented inputs, and are
up to T epochs old (their model changed since). A sample that no batch held since the last reclustering (e.g. a
class fragment too small to give m samples) is embedded afresh at the next one.

Under torch.distributed every rank records the samples of its own batches; :meth:`FeatureMemory.synchronize` gives
every rank the newest row of every sample (it runs at the end of each epoch, so that the checkpoint rank 0 saves
holds all of them).
"""

import contextlib

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_metric_learning.utils import common_functions as c_f

from . import distributed


class FeatureMemory:
    """One float16 row per training sample: the L2-normalised features of its latest training step.

    Args:
        num_samples: size of the training set (rows are sample indices of the sampler's labels).
        device: where the rows live: ``"cpu"`` (default) or the trainer's device.

    ``nbytes`` is ``num_samples * dim * 2`` once the first batch has given the feature size.

    Examples:
        >>> memory = FeatureMemory(60_000)
        >>> memory.update(batch_indices, trunk_output)       # during training
        >>> features, stale = memory.features_for_clustering()   # at a reclustering
    """

    def __init__(self, num_samples, device="cpu"):
        self.num_samples = int(num_samples)
        self.device = torch.device(device)
        self.features = None  # (num_samples, dim) float16, allocated by the first update
        self.stamps = torch.zeros(self.num_samples, dtype=torch.long)  # step of each row's update, 0: never
        self.step = 0  # updates so far (the same on every rank: one per training step)
        self.used_until = 0  # the step of the last reclustering: rows with a later stamp are fresh
        self.synced_at = 0  # the step of the last synchronisation (the same on every rank)

    @property
    def nbytes(self):
        return 0 if self.features is None else self.features.numel() * self.features.element_size()

    def update(self, indices, features):
        """Keep ``features`` (one row per sample of ``indices``), L2-normalised, as these samples' rows."""
        indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if len(indices) != len(features):
            raise ValueError(f"{len(indices)} sample indices for {len(features)} rows of features")
        rows = F.normalize(features.detach().flatten(1).float(), dim=1).to(self.device, torch.float16)
        if self.features is None:
            self.features = torch.zeros(self.num_samples, rows.shape[1], dtype=torch.float16, device=self.device)
        elif rows.shape[1] != self.features.shape[1]:
            raise ValueError(f"features of size {rows.shape[1]}, but the memory holds rows of {self.features.shape[1]}")
        self.step += 1
        self.features[indices.to(self.device)] = rows
        self.stamps[indices] = self.step

    def synchronize(self):
        """Give every rank the newest row of every sample (a no-op in one process, or with no update since the
        last synchronisation: the end-of-epoch step and a reclustering right after it exchange the rows once)."""
        if not distributed.is_distributed() or self.features is None or self.synced_at == self.step:
            return
        _, rank = distributed.world_size_and_rank()
        device = distributed._device()
        stamps = self.stamps.to(device)
        newest = stamps.clone()
        dist.all_reduce(newest, op=dist.ReduceOp.MAX)
        # the lowest rank holding the newest row gives it (after a synchronisation all ranks hold the same rows)
        owner = torch.where(stamps == newest, torch.full_like(stamps, rank), torch.full_like(stamps, 1 << 30))
        dist.all_reduce(owner, op=dist.ReduceOp.MIN)
        mine = (owner == rank).to(self.features.device)
        rows = torch.where(mine[:, None], self.features.float(), torch.zeros((), device=self.features.device))
        rows = rows.to(device)
        dist.all_reduce(rows)
        self.features = rows.to(self.features.device, torch.float16)
        self.stamps = newest.cpu()
        self.synced_at = self.step

    def consolidate(self, to=0):
        """Every row on rank ``to`` (a collective; see DivideConquerWrapper.consolidate_state_dict)."""
        self.synchronize()

    def features_for_clustering(self):
        """(features as float32 numpy, indices of the samples with no row since the last reclustering)."""
        self.synchronize()
        stale = torch.nonzero(self.stamps <= self.used_until).flatten().numpy()
        if self.features is None:
            return None, np.arange(self.num_samples)
        return self.features.float().cpu().numpy(), stale

    def mark_used(self):
        """A reclustering used the rows: from now on only newer ones count as fresh."""
        self.used_until = self.step

    def state_dict(self):
        return {
            "features": None if self.features is None else self.features.detach().cpu().clone(),
            "stamps": self.stamps.clone(),
            "step": self.step,
            "used_until": self.used_until,
        }

    def load_state_dict(self, state):
        features = state["features"]
        if len(state["stamps"]) != self.num_samples:
            raise ValueError(
                f"the saved feature memory holds {len(state['stamps'])} samples, this training set {self.num_samples}"
            )
        self.features = None if features is None else features.cpu().to(self.device, torch.float16).clone()
        self.stamps = state["stamps"].cpu().long().clone()
        self.step = int(state["step"])
        self.used_until = int(state["used_until"])
        self.synced_at = self.step  # saved after the end-of-epoch synchronisation: every row is there


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
    be captured) as the rows of the samples ``indices``; warn once when they do not fit."""
    n = len(indices)
    if features is None or len(features) != n:
        if not getattr(memory, "warned_capture", False):
            memory.warned_capture = True
            c_f.LOGGER.warning(
                "D&C: recluster_from='training' could not capture this batch's trunk output (got %s rows for %d "
                "samples): those samples are embedded afresh at the next reclustering",
                None if features is None else len(features),
                n,
            )
        return
    memory.update(indices, features)
