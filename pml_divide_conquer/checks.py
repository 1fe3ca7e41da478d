"""Checks of the loss and miner a DivideConquerWrapper is given (no trainer involved)."""

import inspect

import numpy as np
import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction, CrossBatchMemory, SmoothAPLoss
from pytorch_metric_learning.losses.base_loss_wrapper import BaseLossWrapper
from pytorch_metric_learning.miners import BaseMiner, EmbeddingsAlreadyPackagedAsTriplets

from . import heads, notices
from .compat import DistributedMinerWrapper
from .embedder import SubspaceMaskedEmbedder
from .learners import HEAD_MODES, PER_LEARNER, SHARED
from .reclustering import Reclusterer
from .sampler import ClusterSampler

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


def is_pml_loss(loss):
    """A loss of pytorch-metric-learning's (or of one's own built on its BaseMetricLossFunction)."""
    pml = type(loss).__module__.startswith("pytorch_metric_learning.")
    return pml or isinstance(loss, (BaseMetricLossFunction, BaseLossWrapper))


def _check_own_loss(loss):
    """A loss that is not PML's: refused if it is torch's (or keeps torch's forward: logits or pairs, not
    embeddings and labels; some take three tensors, so the call check would not catch them), or if it cannot be
    called as PML calls a loss."""
    if (getattr(type(loss).forward, "__module__", None) or "").startswith("torch."):
        raise TypeError(
            f"{type(loss).__name__} is not a PML loss: DivideConquerWrapper wraps pytorch-metric-learning's "
            "label-based losses (pytorch_metric_learning.losses: TripletMarginLoss, ContrastiveLoss, MarginLoss, "
            "MultiSimilarityLoss, ArcFaceLoss, NormalizedSoftmaxLoss, ...) or one's own BaseMetricLossFunction "
            "subclass. For cross-entropy over the training classes, take a classification loss such as "
            "losses.NormalizedSoftmaxLoss(num_classes, embedding_size)."
        )
    try:
        inspect.signature(loss.forward).bind("embeddings", "labels", "indices_tuple")
    except TypeError:
        raise TypeError(
            f"{type(loss).__name__}.forward cannot be called as the wrapper calls a loss, "
            "loss(embeddings, labels, indices_tuple): give it forward(self, embeddings, labels, "
            "indices_tuple=None), or subclass PML's BaseMetricLossFunction"
        ) from None


def check_loss(loss):
    """Raise a clear error unless ``loss`` is a loss that takes class labels: PML's, or one's own module called as
    PML calls a loss, ``loss(embeddings, labels, indices_tuple)``; not one of torch's (``torch.nn.*Loss``)."""
    if not isinstance(loss, torch.nn.Module):
        raise TypeError(f"loss must be a PML loss (a torch.nn.Module), got {type(loss).__name__}")
    if not is_pml_loss(loss):
        _check_own_loss(loss)
    params = inspect.signature(loss.forward).parameters
    if "labels" not in params or _declares_labels_not_supported(loss):
        raise ValueError(
            f"{type(loss).__name__} does not use class labels: Divide & Conquer builds batches of m samples per "
            "class within a "
            "cluster, so it needs a loss computed from class labels. Self-supervised losses on pairs of views "
            "(SelfSupervisedLoss, VICRegLoss, ManifoldLoss) are not supported."
        )


def has_memory(loss):
    """Whether ``loss`` (or a loss inside it) keeps embeddings of earlier batches (PML's CrossBatchMemory)."""
    return any(isinstance(m, CrossBatchMemory) for m in loss.modules())


def check_shapes(embeddings, labels):
    """One 1-D label per embedding (the messages of PML 2's ``check_shapes``)."""
    if labels is not None and embeddings.shape[0] != labels.shape[0]:
        raise ValueError("Number of embeddings must equal number of labels")
    if labels is not None and labels.ndim != 1:
        raise ValueError("labels must be a 1D tensor of shape (batch_size,)")


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


def check_wrapper_arguments(loss, miner, embedder, sampler, heads_mode):
    """Raise a clear error when DivideConquerWrapper's loss, miner, embedder, sampler or heads do not fit."""
    check_loss(loss)
    check_miner(miner)
    if not isinstance(embedder, SubspaceMaskedEmbedder):
        raise TypeError(f"embedder must be a SubspaceMaskedEmbedder, got {type(embedder).__name__}")
    if not isinstance(sampler, ClusterSampler):
        raise TypeError(
            f"sampler must be a ClusterSampler, got {type(sampler).__name__}: batches must come from one "
            "cluster each, and the wrapper must know which"
        )
    if heads_mode not in HEAD_MODES:
        raise ValueError(f'heads must be "{SHARED}" or "{PER_LEARNER}", got {heads_mode!r}')
    num_classes = len(np.unique(sampler.labels))
    if embedder.num_learners > num_classes:
        raise ValueError(
            f"num_learners={embedder.num_learners} is larger than the number of training classes "
            f"({num_classes}): every cluster needs several classes. Use at most {num_classes // 2 or 1} learners."
        )
    heads.check_fits(loss, embedder.embedding_size, num_classes)
    warn_if_batches_give_no_tuples(loss, sampler)


def warn_if_batches_give_no_tuples(loss, sampler):
    """Warn when the sampler's batches hold no positive pair (m=1) or no negative (one class a batch) for a loss that
    needs them: a pair or triplet loss (a classification loss, or one with a cross-batch memory, needs neither)."""
    if heads.has_heads(loss) or has_memory(loss):
        return
    classes = sampler.global_batch_size // sampler.m
    if sampler.m >= 2 and classes >= 2:
        return
    missing = "positive pair (m=1: one sample per class)" if sampler.m < 2 else "negative (one class a batch)"
    notices.warn(
        f"{type(loss).__name__} compares samples within a batch, but ClusterSampler(batch_size="
        f"{sampler.batch_size}, m={sampler.m}) gives batches with no {missing}: its loss is 0 on every batch and "
        "nothing trains. Give each batch at least 2 classes of at least m=2 samples (e.g. batch_size=32, m=4), or "
        "use a classification loss (ArcFaceLoss, NormalizedSoftmaxLoss), which trains on any batch."
    )


def check_not_mined_twice(indices_tuple, miners):
    """A batch mined by the loop (an ``indices_tuple``) may not reach a wrapper that mines itself."""
    if indices_tuple is not None and miners is not None:
        raise ValueError(
            "got an indices_tuple and a miner in DivideConquerWrapper: give the miner only to the wrapper, which "
            "mines in each learner's subspace. (Under DDP, wrap the inner loss and miner in PML's "
            "DistributedLossWrapper / DistributedMinerWrapper rather than the wrapper.)"
        )


def reclusterer(value):
    """The wrapper's Reclusterer: ``value``, or the default one for None."""
    if value is None:
        return Reclusterer()
    if not isinstance(value, Reclusterer):
        raise TypeError(f"reclusterer must be a Reclusterer, got {type(value).__name__}")
    return value


def check_parameters_are_optimized(wrapper, optimizers):
    """Raise a clear error if a trainable parameter of ``wrapper`` (a classification head, a learnable beta) is in
    none of ``optimizers``: it would never train."""
    held = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    missing = [name for name, p in wrapper.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ValueError(
            f"DivideConquerWrapper has trainable parameters that no optimizer holds ({shown}): they would never "
            'train. Give them to an optimizer (PML\'s trainers: optimizers["metric_loss_optimizer"] = '
            "torch.optim.Adam(dc.parameters(), lr=...)), or set requires_grad=False on them to keep them fixed."
        )
