"""One configurable training run (baseline or D&C) with PML's own trainers and testers.

Used by the demo (``python -m lab.demo``), the end-to-end tests and the benchmarks, so that all
of them measure the same thing. Every run is seeded; the baseline and D&C share trunk, loss, epochs and batches.

Example:
    >>> train_set, test_set = load_dataset("glyphs")
    >>> cfg = RunConfig(method="dc", loss="triplet", trunk="conv", num_learners=4, full_embedding_epoch=5)
    >>> trunk, embedder, trainer, wrapper = train(train_set, cfg)
    >>> evaluate(trunk, embedder, test_set)["recall_at_1"]
"""

import logging
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch
from pytorch_metric_learning import losses, miners, samplers, testers, trainers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from pml_divide_conquer import (
    ClusterSampler,
    DivideConquerSchedule,
    DivideConquerWrapper,
    KMeansSettings,
    Reclusterer,
    SubspaceMaskedEmbedder,
)

METRICS = ("precision_at_1", "NMI", "mean_average_precision_at_r")
RECALL_KS = (1, 2, 4, 8)
LOSSES = ("triplet", "contrastive", "margin", "arcface")
CLASSIFICATION_LOSSES = ("arcface",)


@dataclass(frozen=True)
class RunConfig:
    method: str = "dc"  # "baseline" (the loss and miner alone) or "dc"
    loss: str = "triplet"  # "triplet", "contrastive", "margin" or "arcface"
    trunk: str = "mlp"  # "mlp" (flattened input) or "conv" (images, N x C x H x W)
    epochs: int = 10
    batch_size: int = 32
    m: int = 8
    embedding_size: int = 32
    hidden: int = 128
    conv_width: int = 32  # channels of the first conv block (trunk="conv")
    lr: float = 1e-3
    num_learners: int = 2
    mode: str = "fixed"
    recluster_every: int = 2
    full_embedding_epoch: Optional[int] = None  # loss on the full embedding, batches still from clusters
    all_data_epoch: Optional[int] = None  # m-per-class batches over all data
    heads: str = "shared"  # classification losses: one head the learners share, or one per learner
    freeze_trunk_epochs: int = 0
    orthogonality_weight: float = 0.01
    mask_lr_multiplier: float = 10.0
    cluster_on: str = "trunk"
    seed: int = 0
    num_workers: int = 0
    grow: bool = True
    loss_lr: float = 1e-2  # learning rate of the loss's own parameters (ArcFace's class weights)

    def but(self, **changes):
        return replace(self, **changes)


def make_loss_and_miner(name, num_classes=None, embedding_size=None):
    """The loss and miner of one benchmark row (the miner is None for classification losses)."""
    if name == "arcface":
        if num_classes is None or embedding_size is None:
            raise ValueError("arcface needs num_classes and embedding_size")
        return losses.ArcFaceLoss(num_classes=num_classes, embedding_size=embedding_size), None
    if name == "triplet":
        return losses.TripletMarginLoss(margin=0.1), miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard")
    if name == "contrastive":
        return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.5), miners.PairMarginMiner(0.0, 0.5)
    if name == "margin":
        return losses.MarginLoss(margin=0.2, beta=1.2), miners.DistanceWeightedMiner(
            cutoff=0.5, nonzero_loss_cutoff=1.4
        )
    raise ValueError(f"unknown loss {name!r}: use one of {LOSSES}")


def conv_trunk(in_channels, out_dim, width=32):
    """A small CNN for 16x16 to 32x32 images: three conv blocks, then a linear layer to ``out_dim``."""
    nn = torch.nn

    def block(i, o, pool):
        layers = [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
        return layers + ([nn.MaxPool2d(2)] if pool else [])

    return nn.Sequential(
        *block(in_channels, width, True),
        *block(width, 2 * width, True),
        *block(2 * width, 4 * width, False),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * width, out_dim),
        nn.ReLU(),
    )


def build_models(input_shape, cfg):
    """(trunk, SubspaceMaskedEmbedder) for inputs of ``input_shape`` (one sample's shape, or its size)."""
    torch.manual_seed(cfg.seed)
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    if cfg.trunk == "conv":
        if len(shape) != 3:
            raise ValueError(f'trunk="conv" needs images of shape (C, H, W), got samples of shape {shape}')
        trunk = conv_trunk(shape[0], cfg.hidden, cfg.conv_width)
    elif cfg.trunk == "mlp":
        trunk = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(int(np.prod(shape)), cfg.hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(cfg.hidden, cfg.hidden),
            torch.nn.ReLU(),
        )
    else:
        raise ValueError(f'trunk must be "mlp" or "conv", got {cfg.trunk!r}')
    head = torch.nn.Linear(cfg.hidden, cfg.embedding_size)
    num_learners = cfg.num_learners if cfg.method == "dc" else 1
    embedder = SubspaceMaskedEmbedder(cfg.embedding_size, num_learners, mode=cfg.mode, embedder=head)
    return trunk, embedder


def recall_at_k(embeddings, labels, ks=RECALL_KS, chunk=2048):
    """Recall@k (the paper's R@k): fraction of queries with a same-class sample among their k nearest others."""
    x = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=1)
    y = torch.as_tensor(np.asarray(labels))
    hits = {k: 0 for k in ks}
    for start in range(0, len(x), chunk):
        sim = x[start : start + chunk] @ x.t()
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = -float("inf")  # a query is not its own neighbour
        nn_labels = y[sim.topk(max(ks), dim=1).indices]
        match = nn_labels == y[start : start + chunk, None]
        for k in ks:
            hits[k] += int(match[:, :k].any(dim=1).sum())
    return {k: hits[k] / len(x) for k in ks}


def evaluate(trunk, embedder, test_set, batch_size=256):
    """R@1 (precision_at_1), NMI, MAP@R and recall_at_{1,2,4,8} on ``test_set`` (query = reference), with the
    full L2-normalised embedding, as PML's ``GlobalEmbeddingSpaceTester`` computes it."""
    calc = AccuracyCalculator(include=METRICS, k="max_bin_count", device=torch.device("cpu"))
    tester = testers.GlobalEmbeddingSpaceTester(
        accuracy_calculator=calc, batch_size=batch_size, dataloader_num_workers=0, data_device=torch.device("cpu")
    )
    acc = tester.test({"test": test_set}, 0, trunk, embedder)["test"]
    out = {k: float(acc[f"{k}_level0"]) for k in METRICS}
    emb, labels = tester.get_all_embeddings(test_set, trunk, embedder, return_as_numpy=True)
    out.update({f"recall_at_{k}": v for k, v in recall_at_k(emb, labels[:, 0]).items()})
    return out


def load_dataset(name, split="test", **kwargs):
    """(train, evaluation) datasets by name: "digits", "fashion" (Fashion-MNIST) or "glyphs".

    ``split="val"`` returns (train minus validation classes, validation classes) where the dataset has a
    validation split (glyphs), for tuning without touching the test classes.
    """
    from . import datasets

    if name == "digits":
        return datasets.load_digits(**kwargs)
    if name == "fashion":
        if split != "test":
            raise ValueError("Fashion-MNIST has 5 training classes: no validation classes to hold out")
        return datasets.load_fashion_mnist(**kwargs)
    if name == "glyphs":
        return datasets.load_glyphs(split, **kwargs)
    raise ValueError(f'unknown dataset {name!r}: use "digits", "fashion" or "glyphs"')


def _dense_labels(train_set):
    """``train_set`` with labels mapped to 0..C-1 (classification heads have one row per class)."""
    from .datasets import ArrayDataset

    classes, dense = np.unique(np.asarray(train_set.labels), return_inverse=True)
    if np.array_equal(classes, np.arange(len(classes))):
        return train_set
    out = ArrayDataset.__new__(ArrayDataset)
    out.data, out.labels = train_set.data, dense.astype(np.int64)
    return out


def train(train_set, cfg, end_of_epoch_hook=None):
    """Train a model on ``train_set`` with ``cfg``; returns (trunk, embedder, trainer, wrapper or None)."""
    trainer, wrapper = build_trainer(train_set, cfg, end_of_epoch_hook)
    torch.manual_seed(cfg.seed)
    trainer.train(num_epochs=cfg.epochs)
    return trainer.models["trunk"], trainer.models["embedder"], trainer, wrapper


def build_trainer(train_set, cfg, end_of_epoch_hook=None):
    """The PML trainer of one run, ready for ``trainer.train``; returns (trainer, wrapper or None)."""
    if cfg.loss in CLASSIFICATION_LOSSES:
        train_set = _dense_labels(train_set)
    labels = np.asarray(train_set.labels)
    trunk, embedder = build_models(tuple(train_set[0][0].shape), cfg)
    loss, miner = make_loss_and_miner(cfg.loss, len(np.unique(labels)), cfg.embedding_size)
    optimizers = {
        "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=cfg.lr),
        "embedder_optimizer": torch.optim.Adam(
            embedder.parameter_groups(lr=cfg.lr, mask_lr_multiplier=cfg.mask_lr_multiplier)
        ),
    }
    wrapper = None
    if cfg.method == "dc":
        sampler = ClusterSampler(labels, batch_size=cfg.batch_size, m=cfg.m, seed=cfg.seed)
        wrapper = DivideConquerWrapper(
            loss,
            miner,
            embedder=embedder,
            sampler=sampler,
            schedule=DivideConquerSchedule(
                num_learners=cfg.num_learners,
                recluster_every=cfg.recluster_every,
                full_embedding_epoch=cfg.full_embedding_epoch,
                all_data_epoch=cfg.all_data_epoch,
                grow=cfg.grow,
                freeze_trunk_epochs=cfg.freeze_trunk_epochs,
            ),
            reclusterer=Reclusterer(cluster_on=cfg.cluster_on, kmeans=KMeansSettings(seed=cfg.seed)),
            heads=cfg.heads,
            orthogonality_weight=cfg.orthogonality_weight,
        )
        loss_funcs, mining_funcs = {"metric_loss": wrapper}, {}
        hook = wrapper.get_end_of_epoch_hook(then=end_of_epoch_hook)
    elif cfg.method == "baseline":
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)  # PML's MPerClassSampler draws from numpy's global RNG
        sampler = samplers.MPerClassSampler(
            labels, cfg.m, batch_size=cfg.batch_size, length_before_new_iter=len(labels)
        )
        loss_funcs, mining_funcs = {"metric_loss": loss}, ({"tuple_miner": miner} if miner is not None else {})
        hook = end_of_epoch_hook
    else:
        raise ValueError(f'method must be "baseline" or "dc", got {cfg.method!r}')
    loss_params = [p for p in loss_funcs["metric_loss"].parameters() if p.requires_grad]
    if loss_params:
        optimizers["metric_loss_optimizer"] = torch.optim.Adam(loss_params, lr=cfg.loss_lr)
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers=optimizers,
        batch_size=cfg.batch_size,
        loss_funcs=loss_funcs,
        mining_funcs=mining_funcs,
        dataset=train_set,
        sampler=sampler,
        dataloader_num_workers=cfg.num_workers,
        data_device=torch.device("cpu"),
        end_of_epoch_hook=hook,
        iterations_per_epoch=len(labels) // cfg.batch_size,
    )
    if wrapper is not None:
        wrapper.prepare(trainer)
    return trainer, wrapper


def untrained(train_set, test_set, cfg):
    trunk, embedder = build_models(tuple(train_set[0][0].shape), cfg)
    return evaluate(trunk, embedder, test_set)


def quiet_pml():
    logging.getLogger("PML").setLevel(logging.WARNING)
