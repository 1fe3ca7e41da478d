"""Torch/PML glue: checking the loss, miner and trainer a wrapper is given, restarting the trainer's iterator,
freezing its trunk, moving optimizer state with a reshaped parameter, loading state from any device."""

import copy
import inspect

import torch
from pytorch_metric_learning import trainers
from pytorch_metric_learning.losses import SmoothAPLoss
from pytorch_metric_learning.miners import BaseMiner, EmbeddingsAlreadyPackagedAsTriplets
from pytorch_metric_learning.utils.distributed import DistributedMinerWrapper

# Trainers whose loss call is not ``loss(embeddings, labels, indices_tuple)`` on one batch of the sampler.
UNSUPPORTED_TRAINERS = (
    trainers.TwoStreamMetricLoss,
    trainers.CascadedEmbeddings,
    trainers.DeepAdversarialMetricLearning,
)


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


# Losses that need the same number of samples of every class in a batch (they raise otherwise)
EQUAL_COUNT_LOSSES = (SmoothAPLoss,)


def needs_equal_counts(loss):
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


def check_trainer_type(trainer):
    if isinstance(trainer, UNSUPPORTED_TRAINERS) or not isinstance(trainer, trainers.MetricLossOnly):
        raise TypeError(
            f"{type(trainer).__name__} is not supported by DivideConquerWrapper: use trainers.MetricLossOnly or "
            "trainers.TrainWithClassifier, which call the metric loss once per batch of the sampler."
        )


def calling_trainer():
    """The PML trainer whose method is on the call stack, if any (used only to word an error)."""
    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, trainers.BaseTrainer):
            return owner
        frame = frame.f_back
    return None


def check_trainer(trainer, wrapper):
    """Raise a clear error if ``trainer`` cannot run ``wrapper``."""
    check_trainer_type(trainer)
    # the loss_funcs keys holding the wrapper, itself or inside e.g. DistributedLossWrapper
    holders = [k for k, v in trainer.loss_funcs.items() if any(m is wrapper for m in v.modules())]
    if not holders:
        raise ValueError("this DivideConquerWrapper is not among the trainer's loss_funcs")
    if trainer.sampler is not wrapper.sampler:
        raise ValueError(
            "the trainer's sampler is not the wrapper's ClusterSampler: pass sampler=<the same ClusterSampler> to "
            f"the trainer (it has {type(trainer.sampler).__name__})."
        )
    if int(trainer.batch_size) != wrapper.sampler.batch_size:
        raise ValueError(
            f"the trainer's batch_size={trainer.batch_size} differs from ClusterSampler's batch_size="
            f"{wrapper.sampler.batch_size}; use the same value in both."
        )
    if unwrap(trainer.models.get("embedder")) is not wrapper.embedder:
        raise ValueError(
            'models["embedder"] must be the SubspaceMaskedEmbedder given to DivideConquerWrapper, so that testers '
            "see the full embedding and the masks are trained"
        )
    if set(holders) & set(trainer.freeze_these):
        raise ValueError(
            f"freeze_these contains {holders}: PML puts frozen losses in eval mode, where DivideConquerWrapper "
            "trains no learner. To freeze classification heads, set requires_grad=False on them instead."
        )
    wrapper.sampler.check_rank(ValueError)
    if "subset_batch_miner" in trainer.mining_funcs:
        raise ValueError(
            "a subset_batch_miner drops samples from the sampler's batches, which breaks m-per-class cluster batches; "
            "remove it (give a tuple miner to DivideConquerWrapper(miner=...) instead)"
        )


def unwrap(model):
    """The module inside DistributedDataParallel / DataParallel, or the model itself."""
    return (
        model.module if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else model
    )


def check_end_of_epoch_hook(trainer, wrapper):
    """Raise if the trainer's end-of-epoch hook surely does not take the D&C step (it would train a baseline)."""
    hook = trainer.end_of_epoch_hook
    if getattr(hook, "divide_conquer_wrapper", None) is wrapper:
        return
    qualname = getattr(hook, "__qualname__", "")
    if hook is None or qualname == "return_input" or qualname.startswith("HookContainer."):
        what = "PML's default (none)" if hook is None or qualname == "return_input" else qualname
        raise ValueError(
            f"the trainer's end_of_epoch_hook is {what}, which does not take the D&C step: no reclustering, split or "
            "phase change would happen and the run would train a baseline. Pass "
            "end_of_epoch_hook=wrapper.get_end_of_epoch_hook(then=<your hook, e.g. HookContainer's>) to the trainer."
        )
    # a hook of the user's own may call wrapper.end_of_epoch_hook(trainer): the first batch of epoch 2 checks it


def check_optimizers(trainer, wrapper):
    """Raise if an optimizer is not one, or if the wrapper has trainable parameters (classification heads, a learned
    beta) that no optimizer holds."""
    for key, opt in trainer.optimizers.items():
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f'optimizers["{key}"] is {type(opt).__name__}, not a torch optimizer: PML\'s trainer steps and zeroes '
                "every entry of optimizers, and DivideConquerWrapper carries their state when clusters split. Give "
                "it an optimizer, or leave the key out."
            )
    held = {id(p) for opt in trainer.optimizers.values() for group in opt.param_groups for p in group["params"]}
    missing = [name for name, p in wrapper.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ValueError(
            f"DivideConquerWrapper has trainable parameters that no optimizer of the trainer holds ({shown}): they "
            'would never train. Add optimizers["metric_loss_optimizer"] = torch.optim.Adam(wrapper.parameters(), '
            "lr=...), or set requires_grad=False on them to keep them fixed."
        )


FROZEN_LR_KEY = "pml_dc_frozen_lr"  # saved with the optimizer's state_dict, so a resumed run stays frozen


def set_trunk_frozen(trainer, frozen):
    """Set the trunk optimizer's learning rates to 0 (keeping them to restore), or restore them."""
    opt = getattr(trainer, "optimizers", {}).get("trunk_optimizer")
    if opt is None:
        return
    for group in opt.param_groups:
        if frozen and FROZEN_LR_KEY not in group:
            group[FROZEN_LR_KEY] = group["lr"]
            group["lr"] = 0.0
        elif not frozen and FROZEN_LR_KEY in group:
            group["lr"] = group.pop(FROZEN_LR_KEY)


def restart_iterator(trainer):
    """Drop batches the trainer's DataLoader has already prefetched, so that the next batch is a fresh draw."""
    if getattr(trainer, "dataloader", None) is None:
        return
    old = getattr(trainer, "dataloader_iter", None)
    release_workers(trainer.dataloader, old)
    trainer.dataloader_iter = None
    del old
    trainer.dataloader_iter = iter(trainer.dataloader)


def release_iterator(trainer):
    """At the end of an epoch: shut the trainer's iterator's workers down (PML makes a new iterator when the next
    batch is asked for). Else the last epoch's iterator outlives training with live workers, and once the trainer
    is garbage, workers forked later in the process (a second run, a tester) may collect it and print "can only
    test a child process" tracebacks."""
    loader = getattr(trainer, "dataloader", None)
    if loader is None or getattr(loader, "persistent_workers", False):
        return
    release_workers(loader, getattr(trainer, "dataloader_iter", None))
    trainer.dataloader_iter = iter(())  # exhausted: PML's next get_batch() starts a new one


def release_workers(loader, iterator):
    """Shut down the workers of ``loader``'s abandoned ``iterator`` before a new iterator forks its own: workers
    forked while it is alive inherit it and later print "can only test a child process" tracebacks when they
    collect it. A loader with persistent workers keeps them: its next ``iter()`` resets the same iterator (shutting
    it down would close the queues it reuses)."""
    if iterator is None or getattr(loader, "persistent_workers", False):
        return
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def to_cpu(state):
    """``state`` (nested dicts/lists) with every tensor moved to the CPU."""
    if torch.is_tensor(state):
        return state.cpu()
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(v) for v in state)
    return state


def carry_optimizer_state(optimizers, src, dst, index=None, dim=0):
    """Give parameter ``dst`` the optimizer state of ``src`` (e.g. Adam's moments), restricted the way ``dst`` was
    made from ``src``: ``dst = src.index_select(dim, index)`` (``index=None``: a plain copy). ``src`` may be ``dst``
    (a parameter reshaped in place, after its old state was read). A parameter without state gets none."""
    for opt in optimizers:
        state = opt.state.get(src)
        if not state:
            opt.state.pop(dst, None)
            continue
        new = {}
        for key, value in state.items():
            if torch.is_tensor(value) and index is not None and value.shape == src.shape:
                value = value.index_select(dim, torch.as_tensor(index, dtype=torch.long, device=value.device))
            new[key] = value.clone() if torch.is_tensor(value) else copy.deepcopy(value)
        opt.state[dst] = new
