"""Fine-tuning on the training classes, from the pretrained trunk: the baseline (PML's ``MetricLossOnly`` +
``MPerClassSampler`` + loss + miner) or D&C (``ClusterSampler`` + ``DivideConquerWrapper`` around the same loss and
miner).

The loss and miner are ``lab.experiment.make_loss_and_miner``'s (the same modules as the other benchmarks), the
PML logger is quieted by ``lab.experiment.quiet_pml``. The rest is this benchmark's own, not
``lab.experiment.build_trainer``'s: its optimizers have weight decay and a trunk learning rate of their own, its
k-means is seeded by the settings' default 0 (not the run's seed), its RNGs are seeded once at the start (not again
before the baseline's sampler), its data stay on the device with whole-batch collation, and the pretrained trunk's
BatchNorm is frozen: sharing that code would change the runs.
"""

import time

import numpy as np
import torch

from benchmarks.han.ablations import FullLearnerScale, RandomReclusterer, RestartedHeads, imprint
from benchmarks.han.curves import curve_hooks
from benchmarks.han.trunks import make_trunk
from lab.experiment import make_loss_and_miner, quiet_pml
from pml_divide_conquer import (
    ClusterSampler,
    DivideConquerSchedule,
    DivideConquerWrapper,
    KMeansSettings,
    Phase,
    Reclusterer,
    ReclusterSettings,
    SubspaceMaskedEmbedder,
)


def training_set(cfg, ds):
    """The training split, or the fixed subset of ``cfg.train_classes`` of its classes (the same for every seed and
    method), labels 0..C-1."""
    if not cfg.train_classes:
        return ds
    from lab.datasets import BatchArrayDataset

    classes = np.random.default_rng(0).permutation(int(ds.labels.max()) + 1)[: cfg.train_classes]
    keep = np.flatnonzero(np.isin(ds.labels, classes))
    labels = np.unique(ds.labels[keep], return_inverse=True)[1]
    return BatchArrayDataset(ds.data.cpu()[torch.as_tensor(keep)], labels, device=ds.device)


def make_embedder(cfg, dim):
    """A linear embedding of the trunk's ``dim`` features, in K subspaces for D&C (one for the baseline)."""
    num_learners = cfg.num_learners if cfg.method == "dc" else 1
    mode = cfg.mode if cfg.method == "dc" else "fixed"
    return SubspaceMaskedEmbedder(
        cfg.embedding_size, num_learners, mode=mode, embedder=torch.nn.Linear(dim, cfg.embedding_size)
    )


def make_schedule(cfg):
    """D&C's phases: K grown or fixed, reclustering every T epochs, the full-embedding and all-data epochs."""
    full, all_data = cfg.phase_epochs()
    return DivideConquerSchedule(
        num_learners=cfg.num_learners,
        recluster_every=cfg.recluster_every,
        full_embedding_epoch=full,
        all_data_epoch=all_data,
        grow=cfg.grow,
        freeze_trunk_epochs=cfg.freeze_trunk_epochs,
    )


def learner_scale(cfg, loss, schedule):
    """The scale of the learners' copies of the loss (research: ``cfg.learner_scale``), or 0 where they have none
    of their own: the baseline, a loss without a scale, and a schedule whose first epoch does not divide (the
    learners never train) leave the run as it is without the option."""
    if not cfg.learner_scale or schedule is None or not hasattr(loss, "scale"):
        return 0.0
    if schedule.phase_in_epoch(1) != Phase.DIVIDE:
        return 0.0
    if cfg.heads != "per_learner":
        raise ValueError(
            "learner_scale needs per-learner heads (heads='per_learner'): the full learner gets its own scale back "
            "from its head start (full_head=), which the wrapper runs with per-learner heads only"
        )
    return cfg.learner_scale


def make_loss(cfg, num_classes, schedule=None):
    """(loss, miner, full_head): the loss and miner the run trains (D&C copies them for each learner) and, for D&C,
    how the full-embedding head starts (``full_head=``)."""
    loss, miner = make_loss_and_miner(cfg.loss, num_classes, cfg.embedding_size)
    if cfg.scale:
        loss.scale = cfg.scale  # ArcFace's scale, in every copy of the loss
    if cfg.unit_head:
        with torch.no_grad():
            loss.W.copy_(torch.nn.functional.normalize(loss.W, dim=0))
    if schedule is None:
        return loss, miner, None
    full_head = cfg.full_head if cfg.assemble == "concat" else RestartedHeads(cfg.assemble)
    scale = learner_scale(cfg, loss, schedule)
    if scale:  # the copies are made at the learners' scale; the full learner's is given back at the phase change
        full_head = FullLearnerScale(full_head, loss.scale)
        loss.scale = scale
    return loss, miner, full_head


def make_optimizers(cfg, trunk, embedder):
    """Adam for the trunk (at ``lr`` x ``trunk_lr_multiplier``) and the embedder (masks at ``mask_lr_multiplier``)."""
    return {
        "trunk_optimizer": torch.optim.Adam(
            trunk.parameters(), lr=cfg.lr * cfg.trunk_lr_multiplier, weight_decay=cfg.weight_decay
        ),
        "embedder_optimizer": torch.optim.Adam(
            embedder.parameter_groups(
                lr=cfg.lr, weight_decay=cfg.weight_decay, mask_lr_multiplier=cfg.mask_lr_multiplier, mask_weight_decay=0
            )
        ),
    }


def make_wrapper(cfg, loss, miner, embedder, sampler, schedule, full_head):
    """D&C around the loss and miner: the research parts through the wrapper's public arguments."""
    settings = ReclusterSettings(
        cluster_on=cfg.cluster_on,
        features_from=cfg.recluster_from,
        batch_size=512,
        kmeans=KMeansSettings(gpu=False),
    )
    return DivideConquerWrapper(
        loss,
        miner,
        embedder=embedder,
        sampler=sampler,
        schedule=schedule,
        reclusterer=(RandomReclusterer if cfg.random_clusters else Reclusterer)(settings),
        heads=cfg.heads,
        full_head=full_head,
        orthogonality_weight=cfg.orthogonality_weight,
    )


def finetune(cfg, data, trunk_state, device):
    """Fine-tune a copy of the pretrained trunk with the metric loss; returns (trunk, embedder, seconds, stats)."""
    from pytorch_metric_learning import samplers, trainers

    quiet_pml()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # PML's MPerClassSampler draws from numpy's global RNG
    trunk, dim = make_trunk(cfg)
    trunk.load_state_dict(trunk_state)
    ds = training_set(cfg, data["train"])
    labels = ds.labels
    embedder = make_embedder(cfg, dim)
    trunk.to(device), embedder.to(device)
    schedule = make_schedule(cfg) if cfg.method == "dc" else None
    loss, miner, full_head = make_loss(cfg, len(np.unique(labels)), schedule)
    optimizers = make_optimizers(cfg, trunk, embedder)
    wrapper = None
    if cfg.method == "dc":
        sampler = ClusterSampler(labels, batch_size=cfg.batch_size, m=cfg.m, seed=cfg.seed)
        wrapper = make_wrapper(cfg, loss, miner, embedder, sampler, schedule, full_head).to(device)
        loss_funcs, mining_funcs = {"metric_loss": wrapper}, {}
        hook = wrapper.get_end_of_epoch_hook()
    else:
        sampler = samplers.MPerClassSampler(
            labels, cfg.m, batch_size=cfg.batch_size, length_before_new_iter=len(labels)
        )
        loss_funcs, mining_funcs = {"metric_loss": loss.to(device)}, ({"tuple_miner": miner} if miner else {})
        hook = None
    params = [p for p in loss_funcs["metric_loss"].parameters() if p.requires_grad]
    if params:
        optimizers["metric_loss_optimizer"] = torch.optim.Adam(params, lr=cfg.loss_lr)
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers=optimizers,
        batch_size=cfg.batch_size,
        loss_funcs=loss_funcs,
        mining_funcs=mining_funcs,
        dataset=ds,
        sampler=sampler,
        dataloader_num_workers=0,
        data_device=device,
        collate_fn=ds.collate_fn,
        end_of_epoch_hook=hook,
        iterations_per_epoch=len(labels) // cfg.batch_size,
        freeze_trunk_batchnorm=cfg.freeze_batchnorm,
    )
    stats = {}
    curve, on_iteration, on_epoch, curve_seconds = [], None, (lambda t: True), [0.0]
    if cfg.curve:
        curve, on_iteration, on_epoch, curve_seconds = curve_hooks(cfg, trainer, trunk, embedder, data, device, wrapper)
        trainer.end_of_iteration_hook = on_iteration
        trainer.end_of_epoch_hook = on_epoch
    if cfg.imprint_epoch and wrapper is None:
        then = on_epoch

        def on_epoch(t):
            if t.epoch == cfg.imprint_epoch:
                imprint(loss.W, t, lambda y: torch.as_tensor(y))
            return then(t)

        trainer.end_of_epoch_hook = on_epoch
    start = time.perf_counter()
    if wrapper is not None:
        seconds = []
        trainer.end_of_epoch_hook = wrapper.get_end_of_epoch_hook(
            then=lambda t: seconds.append((wrapper.recluster_seconds, wrapper.clustering_seconds)) or on_epoch(t)
        )
        wrapper.prepare(trainer)
        trainer.train(num_epochs=cfg.epochs)
        stats = dict(
            reclusterings=len({s for s in seconds if s[0] > 0}),
            recluster_seconds=float(np.mean([s[0] for s in seconds if s[0] > 0] or [0])),
            kmeans_seconds=float(np.mean([s[1] for s in seconds if s[0] > 0] or [0])),
        )
    else:
        trainer.train(num_epochs=cfg.epochs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - start - curve_seconds[0]
    if cfg.curve:
        stats["curve_points"] = curve
        stats["curve_seconds"] = round(curve_seconds[0], 1)
    if wrapper is not None:
        # what a reclustering's embedding pass costs: one no-grad pass over the training set, timed once here
        pass_start = time.perf_counter()
        wrapper.embed_training_set()
        if device.type == "cuda":
            torch.cuda.synchronize()
        stats["pass_seconds"] = time.perf_counter() - pass_start
        memory = wrapper.feature_memory
        stats["feature_memory_bytes"] = 0 if memory is None else memory.nbytes
    return trunk, embedder, train_seconds, stats
