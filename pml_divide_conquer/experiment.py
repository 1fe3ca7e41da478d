"""One configurable training run (baseline or D&C) with PML's own trainers and testers.

Used by the demo (``python -m pml_divide_conquer.demo``), the end-to-end tests and the benchmarks, so that all
of them measure the same thing. Every run is seeded; the baseline and D&C share trunk, loss, epochs and batches.
"""

import logging
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch
from pytorch_metric_learning import losses, miners, samplers, testers, trainers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from .embedder import SubspaceMaskedEmbedder
from .sampler import ClusterSampler
from .wrapper import DivideConquerWrapper

METRICS = ("precision_at_1", "NMI", "mean_average_precision_at_r")


@dataclass(frozen=True)
class RunConfig:
    method: str = "dc"  # "baseline" (the loss and miner alone) or "dc"
    loss: str = "triplet"  # "triplet", "contrastive" or "margin"
    epochs: int = 10
    batch_size: int = 32
    m: int = 8
    embedding_size: int = 32
    hidden: int = 128
    lr: float = 1e-3
    num_learners: int = 2
    mode: str = "fixed"
    recluster_every: int = 2
    conquer_epoch: Optional[int] = None
    orthogonality_weight: float = 0.01
    mask_lr_multiplier: float = 10.0
    cluster_on: str = "embedding"
    seed: int = 0
    num_workers: int = 0

    def but(self, **changes):
        return replace(self, **changes)


def make_loss_and_miner(name):
    if name == "triplet":
        return losses.TripletMarginLoss(margin=0.1), miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard")
    if name == "contrastive":
        return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.5), miners.PairMarginMiner(0.0, 0.5)
    if name == "margin":
        return losses.MarginLoss(margin=0.2, beta=1.2), miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    raise ValueError(f'unknown loss {name!r}: use "triplet", "contrastive" or "margin"')


def build_models(input_dim, cfg):
    torch.manual_seed(cfg.seed)
    trunk = torch.nn.Sequential(
        torch.nn.Linear(input_dim, cfg.hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(cfg.hidden, cfg.hidden),
        torch.nn.ReLU(),
    )
    head = torch.nn.Linear(cfg.hidden, cfg.embedding_size)
    num_learners = cfg.num_learners if cfg.method == "dc" else 1
    embedder = SubspaceMaskedEmbedder(cfg.embedding_size, num_learners, mode=cfg.mode, embedder=head)
    return trunk, embedder


def evaluate(trunk, embedder, test_set, batch_size=256):
    """R@1 (precision_at_1), NMI and MAP@R on ``test_set`` (query = reference), full normalised embedding."""
    calc = AccuracyCalculator(include=METRICS, k="max_bin_count", device=torch.device("cpu"))
    tester = testers.GlobalEmbeddingSpaceTester(
        accuracy_calculator=calc, batch_size=batch_size, dataloader_num_workers=0, data_device=torch.device("cpu")
    )
    acc = tester.test({"test": test_set}, 0, trunk, embedder)["test"]
    return {k: float(acc[f"{k}_level0"]) for k in METRICS}


def train(train_set, cfg, end_of_epoch_hook=None):
    """Train a model on ``train_set`` with ``cfg``; returns (trunk, embedder, trainer, wrapper or None)."""
    labels = np.asarray(train_set.labels)
    input_dim = train_set[0][0].numel()
    trunk, embedder = build_models(input_dim, cfg)
    loss, miner = make_loss_and_miner(cfg.loss)
    optimizers = {
        "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=cfg.lr),
        "embedder_optimizer": torch.optim.Adam(
            embedder.parameter_groups(lr=cfg.lr, mask_lr_multiplier=cfg.mask_lr_multiplier)
        ),
    }
    wrapper = None
    if cfg.method == "dc":
        sampler = ClusterSampler(labels, cfg.batch_size, cfg.m, seed=cfg.seed)
        wrapper = DivideConquerWrapper(
            loss,
            miner,
            embedder=embedder,
            sampler=sampler,
            recluster_every=cfg.recluster_every,
            conquer_epoch=cfg.conquer_epoch,
            orthogonality_weight=cfg.orthogonality_weight,
            cluster_on=cfg.cluster_on,
            seed=cfg.seed,
        )
        loss_funcs, mining_funcs = {"metric_loss": wrapper}, {}
        hook = wrapper.get_end_of_epoch_hook(then=end_of_epoch_hook)
    elif cfg.method == "baseline":
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)  # PML's MPerClassSampler draws from numpy's global RNG
        sampler = samplers.MPerClassSampler(labels, cfg.m, batch_size=cfg.batch_size, length_before_new_iter=len(labels))
        loss_funcs, mining_funcs = {"metric_loss": loss}, {"tuple_miner": miner}
        hook = end_of_epoch_hook
    else:
        raise ValueError(f'method must be "baseline" or "dc", got {cfg.method!r}')
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
    torch.manual_seed(cfg.seed)
    trainer.train(num_epochs=cfg.epochs)
    return trunk, embedder, trainer, wrapper


def untrained(train_set, test_set, cfg):
    trunk, embedder = build_models(train_set[0][0].numel(), cfg)
    return evaluate(trunk, embedder, test_set)


def quiet_pml():
    logging.getLogger("PML").setLevel(logging.WARNING)
