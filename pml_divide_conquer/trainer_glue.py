"""Torch/PML glue for the end-of-epoch step: embedding the training set, checking the trainer, moving state."""

import inspect

import numpy as np
import torch
from pytorch_metric_learning import testers, trainers
from pytorch_metric_learning.utils import common_functions as c_f

from . import distributed

# Trainers whose loss call is not ``loss(embeddings, labels, indices_tuple)`` on one batch of the sampler.
UNSUPPORTED_TRAINERS = (
    trainers.TwoStreamMetricLoss,
    trainers.CascadedEmbeddings,
    trainers.DeepAdversarialMetricLearning,
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
    return model.module if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else model


def embed_dataset(trainer, dataset, use_trunk_output, batch_size, num_workers):
    """Embed ``dataset`` in eval mode, no grad, with PML's own tester machinery. Returns (embeddings, labels).

    Embeddings are L2-normalised float32 numpy; labels are processed the way the trainer processes them. Under
    torch.distributed each rank embeds every W-th sample and the shards are gathered, so every rank gets all.
    """
    n = len(dataset)
    world, rank = distributed.world_size_and_rank()
    if distributed.is_distributed():
        dataset = torch.utils.data.Subset(dataset, distributed.shard_indices(n, world, rank).tolist())
    tester = testers.BaseTester(
        normalize_embeddings=True,
        use_trunk_output=use_trunk_output,
        batch_size=batch_size,
        dataloader_num_workers=num_workers,
        data_device=trainer.data_device,
        dtype=trainer.dtype,
        data_and_label_getter=trainer.data_and_label_getter,
    )
    was_training = {k: m.training for k, m in trainer.models.items()}
    try:
        # the plain modules, not their DDP wrappers: ranks embed shards of different lengths, and DDP's forward
        # would start collectives (buffer broadcasts) that the ranks do not all reach
        emb, labels = tester.get_all_embeddings(
            dataset,
            unwrap(trainer.models["trunk"]),
            unwrap(trainer.models["embedder"]),
            collate_fn=trainer.collate_fn,
            return_as_numpy=True,
        )
    finally:
        for k, m in trainer.models.items():
            m.train(was_training[k])
    labels = c_f.process_label(labels, trainer.label_hierarchy_level, trainer.label_mapper)
    labels = np.asarray(labels).reshape(len(emb), -1)[:, 0] if np.ndim(labels) > 1 else np.asarray(labels)
    emb = distributed.gather_shards(emb.astype(np.float32), n)
    labels = distributed.gather_shards(labels.astype(np.int64), n)
    return emb, labels


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
    """Raise if the wrapper has trainable parameters (classification heads, a learned beta) that no optimizer holds."""
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
    # shut the old iterator's workers down before the new one forks its own: workers forked while it is alive
    # inherit it and later print "can only test a child process" tracebacks when they collect it
    shutdown = getattr(old, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    trainer.dataloader_iter = None
    del old
    trainer.dataloader_iter = iter(trainer.dataloader)


def to_cpu(state):
    """``state`` (nested dicts/lists) with every tensor moved to the CPU."""
    if torch.is_tensor(state):
        return state.cpu()
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(v) for v in state)
    return state


def gather_optimizer_rows(param, rows, optimizers=()):
    """After ``param[:len(rows)] = param[rows]``, apply the same gather to the optimizer state of ``param``."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    for opt in optimizers:
        state = opt.state.get(param)
        if not state:
            continue
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                with torch.no_grad():
                    value[: len(rows)] = value[rows.to(value.device)].clone()
