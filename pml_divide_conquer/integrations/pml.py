"""PML's trainers (``MetricLossOnly``, ``TrainWithClassifier``): a thin adapter over the trainer-free core.

``dc.prepare(trainer)`` checks that the trainer runs the wrapper correctly, reads from it what the end-of-epoch step
needs (models, dataset, optimizers, data handling) and sets the wrapper up; ``dc.get_end_of_epoch_hook()`` is the
trainer's end-of-epoch hook that takes the step. Around the core, this module handles the trainer's DataLoader
iterator: restarted when clusters change inside an epoch, its workers shut down at each epoch end.

Examples:
    >>> trainer = trainers.MetricLossOnly(..., sampler=sampler, loss_funcs={"metric_loss": dc},
    ...                                   end_of_epoch_hook=dc.get_end_of_epoch_hook())
    >>> dc.prepare(trainer)
    >>> trainer.train(num_epochs=20)
"""

import weakref

import torch
from pytorch_metric_learning import trainers
from pytorch_metric_learning.utils import common_functions as c_f

from ..sampler import ClusterBatchSampler
from ..torch_utils import unwrap
from ..training import LoopHints, TrainingParts, as_optimizer_list

# Trainers whose loss call is not ``loss(embeddings, labels, indices_tuple)`` on one batch of the sampler.
UNSUPPORTED_TRAINERS = (
    trainers.TwoStreamMetricLoss,
    trainers.CascadedEmbeddings,
    trainers.DeepAdversarialMetricLearning,
)

HINTS = LoopHints(
    setup="call dc.prepare(trainer) before trainer.train()",
    end_epoch="pass end_of_epoch_hook=dc.get_end_of_epoch_hook(then=<your hook>) to the trainer",
    batch_size_holder="the trainer",
)


def check_trainer_type(trainer):
    if isinstance(trainer, UNSUPPORTED_TRAINERS) or not isinstance(trainer, trainers.MetricLossOnly):
        raise TypeError(
            f"{type(trainer).__name__} is not supported by DivideConquerWrapper: use trainers.MetricLossOnly or "
            "trainers.TrainWithClassifier, which call the metric loss once per batch of the sampler."
        )


def check_trainer(trainer, wrapper):
    """Raise a clear error if ``trainer`` cannot run ``wrapper``."""
    check_trainer_type(trainer)
    # the loss_funcs keys holding the wrapper, itself or inside e.g. DistributedLossWrapper
    holders = [k for k, v in trainer.loss_funcs.items() if any(m is wrapper for m in v.modules())]
    if not holders:
        raise ValueError("this DivideConquerWrapper is not among the trainer's loss_funcs")
    sampler = trainer.sampler.sampler if isinstance(trainer.sampler, ClusterBatchSampler) else trainer.sampler
    if sampler is not wrapper.sampler:
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


class _Chain(torch.nn.Module):
    """``embedder(trunk(x))``, as PML's trainers and testers compute embeddings."""

    def __init__(self, trunk, embedder):
        super().__init__()
        self.trunk, self.embedder = trunk, embedder

    def forward(self, x):
        return self.embedder(self.trunk(x))


def parts_from_trainer(trainer):
    """What the end-of-epoch step needs, read from a PML trainer."""
    optimizers = as_optimizer_list(trainer.optimizers, "optimizers")
    trunk = unwrap(trainer.models["trunk"])
    level, mapper = trainer.label_hierarchy_level, trainer.label_mapper
    ref = weakref.ref(trainer)

    def restart():
        t = ref()
        if t is not None:
            release_iterator(t)

    return TrainingParts(
        model=_Chain(trunk, unwrap(trainer.models["embedder"])),
        dataset=trainer.dataset,
        optimizers=optimizers,
        trunk_params=list(trunk.parameters()),
        device=trainer.data_device,
        dtype=trainer.dtype,
        data_and_label_getter=trainer.data_and_label_getter,
        collate_fn=trainer.collate_fn,
        num_workers=trainer.dataloader_num_workers,
        label_transform=lambda labels: c_f.process_label(labels, level, mapper),
        on_clusters_changed=restart,
        current_epoch=lambda: getattr(ref(), "epoch", None),
        hints=HINTS,
    )


def prepare(wrapper, trainer):
    """Check that ``trainer`` runs ``wrapper`` correctly, then set the wrapper up and take the step before epoch 1.

    It raises a clear error when the trainer's sampler, batch size, embedder, optimizers or end-of-epoch hook do
    not fit, and clusters the data when the schedule starts with K > 1. When resuming, load the saved state first:
    a step already taken is not repeated.
    """
    check_trainer(trainer, wrapper)
    check_end_of_epoch_hook(trainer, wrapper)
    if trainer.iterations_per_epoch:  # PML's epochs, not one baseline epoch: the sampler's epochs follow them
        wrapper.sampler.set_batches_per_epoch(int(trainer.iterations_per_epoch))
    wrapper.setup_parts(parts_from_trainer(trainer))


def end_of_epoch_hook(wrapper, trainer, consolidate=True):
    check_trainer(trainer, wrapper)
    if not wrapper.controller.is_set_up:
        raise RuntimeError(f"DivideConquerWrapper's end-of-epoch hook ran before set-up: {HINTS.setup}")
    epoch = getattr(trainer, "epoch", None)
    if not isinstance(epoch, int):
        raise RuntimeError(
            "DivideConquerWrapper's end-of-epoch hook was called with a trainer that has no epoch yet: PML's "
            "trainer.train() calls it after each epoch; outside PML's trainers call dc.end_epoch()"
        )
    wrapper.end_epoch(epoch)
    if consolidate:  # the hook after it may save a checkpoint on rank 0 (under DDP: gathers what rank 0 lacks)
        wrapper.consolidate_state_dict(to=0)
    release_iterator(trainer)
    return True


def get_end_of_epoch_hook(wrapper, then=None):
    def hook(trainer):
        end_of_epoch_hook(wrapper, trainer, consolidate=then is not None)
        return True if then is None else then(trainer)

    hook.divide_conquer_wrapper = wrapper  # lets prepare() see that the trainer's hook takes the D&C step
    return hook


# ----------------------------------------------------------------------------------------- the trainer's iterator


def release_iterator(trainer):
    """Drop the trainer's DataLoader iterator: PML makes a new one when the next batch is asked for, which then
    starts where training stands in the sampler's stream (batches prefetched before a reclustering are drawn
    afresh). Its workers are shut down first: else a last epoch's iterator outlives training with live workers,
    and once the trainer is garbage, workers forked later in the process (a second run, a tester) may collect it
    and print "can only test a child process" tracebacks. (No new iterator is made here: making one draws from
    torch's random generator, and a loop of one's own makes none at that point either.)"""
    loader = getattr(trainer, "dataloader", None)
    if loader is None:
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
