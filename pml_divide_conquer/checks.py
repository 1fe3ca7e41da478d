"""Checks of the loss and miner a DivideConquerWrapper is given (no trainer involved)."""

import inspect

import torch
from pytorch_metric_learning.losses import SmoothAPLoss
from pytorch_metric_learning.miners import BaseMiner, EmbeddingsAlreadyPackagedAsTriplets
from pytorch_metric_learning.utils.distributed import DistributedMinerWrapper

# Losses that need the same number of samples of every class in a batch (they raise otherwise)
EQUAL_COUNT_LOSSES = (SmoothAPLoss,)


def _declares_labels_not_supported(loss):
    # PML marks label-free losses (VICRegLoss, ManifoldLoss) by calling c_f.labels_not_supported in compute_loss;
    # look inside wrappers too (DistributedLossWrapper, MultipleLosses, ...)
    for module in loss.modules():
        method = getattr(type(module), "compute_loss", None)
        try:
            if method is not None and "labels_not_supported" in inspect.getsource(method):
                return True
        except (OSError, TypeError):
            pass
    return False


def check_loss(loss):
    """Raise a clear error unless ``loss`` is a PML loss that takes class labels."""
    if not isinstance(loss, torch.nn.Module):
        raise TypeError(f"loss must be a PML loss (a torch.nn.Module), got {type(loss).__name__}")
    params = inspect.signature(loss.forward).parameters
    if "labels" not in params or _declares_labels_not_supported(loss):
        raise ValueError(
            f"{type(loss).__name__} does not use class labels: Divide & Conquer builds batches of m samples per "
            "class within a "
            "cluster, so it needs a loss computed from class labels. Self-supervised losses on pairs of views "
            "(SelfSupervisedLoss, VICRegLoss, ManifoldLoss) are not supported."
        )


def needs_equal_counts(loss):
    """Whether ``loss`` (or a loss inside it) needs every class of a batch to give the same number of samples."""
    return any(isinstance(m, EQUAL_COUNT_LOSSES) for m in loss.modules())


def check_miner(miner):
    """Raise a clear error unless ``miner`` is None or a PML tuple miner that fits m-per-class batches."""
    if miner is not None and not isinstance(miner, (BaseMiner, DistributedMinerWrapper)):
        raise TypeError(f"miner must be a PML miner (pytorch_metric_learning.miners), got {type(miner).__name__}")
    if isinstance(getattr(miner, "miner", miner), EmbeddingsAlreadyPackagedAsTriplets):
        raise ValueError(
            "EmbeddingsAlreadyPackagedAsTriplets needs batches laid out as (anchor, positive, negative) triplets, "
            "but ClusterSampler draws m samples per class: use another miner, e.g. TripletMarginMiner"
        )
