"""The same D&C run through the three kinds of training loop: a plain PyTorch loop, a Lightning Trainer and PML's
MetricLossOnly. Used by the tests that check the loops agree (tests/test_lightning.py).

Every loop gets the same model (one seed), the same single Adam optimizer, the same ClusterSampler and the same
wrapper settings; each records, for every step, the indices of its batch, the learner it trained and its loss, and
the cluster assignment after every epoch.

Example:
    >>> records = {loop: run(loop, LoopConfig(epochs=6)) for loop in LOOPS}
    >>> records["plain"]["learners"] == records["lightning"]["learners"]
    True
"""

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_metric_learning import losses, miners, testers, trainers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from pml_divide_conquer import (
    ClusterSampler,
    DivideConquerSchedule,
    DivideConquerWrapper,
    KMeansSettings,
    Reclusterer,
    SubspaceMaskedEmbedder,
)

from . import datasets

LOOPS = ("plain", "lightning", "pml")


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 8
    num_learners: int = 2
    batch_size: int = 32
    m: int = 8
    embedding_size: int = 16
    hidden: int = 64
    lr: float = 1e-3
    seed: int = 0
    mode: str = "fixed"
    loss: str = "margin"  # "margin" (with the distance-weighted miner) or "arcface" (per-learner heads)


class IndexedDigits(torch.utils.data.Dataset):
    """(x, y) items that remember which sample each batch held (``last`` after the loop's forward)."""

    def __init__(self, data, labels):
        self.data, self.labels = data.data, np.asarray(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.data[i], int(self.labels[i]), i


def _parts(cfg, train_set):
    torch.manual_seed(cfg.seed)
    trunk = torch.nn.Sequential(
        torch.nn.Linear(64, cfg.hidden), torch.nn.ReLU(), torch.nn.Linear(cfg.hidden, cfg.hidden), torch.nn.ReLU()
    )
    embedder = SubspaceMaskedEmbedder(
        cfg.embedding_size, cfg.num_learners, mode=cfg.mode, embedder=torch.nn.Linear(cfg.hidden, cfg.embedding_size)
    )
    sampler = ClusterSampler(train_set.labels, batch_size=cfg.batch_size, m=cfg.m, seed=cfg.seed)
    if cfg.loss == "arcface":
        loss, miner = losses.ArcFaceLoss(len(np.unique(train_set.labels)), cfg.embedding_size), None
    else:
        loss = losses.MarginLoss(margin=0.2, beta=1.2)
        miner = miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    dc = DivideConquerWrapper(
        loss,
        miner,
        embedder=embedder,
        sampler=sampler,
        schedule=DivideConquerSchedule.journal(cfg.epochs, cfg.num_learners),
        reclusterer=Reclusterer(kmeans=KMeansSettings(seed=cfg.seed)),
    )
    groups = [{"params": trunk.parameters()}] + embedder.parameter_groups(lr=cfg.lr, mask_lr_multiplier=10)
    if any(p.requires_grad for p in dc.parameters()):
        groups.append({"params": dc.parameters(), "lr": 10 * cfg.lr})
    optimizer = torch.optim.Adam(groups, lr=cfg.lr)
    return trunk, embedder, sampler, dc, optimizer


class _Recorder:
    def __init__(self, dc, sampler):
        self.dc, self.sampler = dc, sampler
        self.indices, self.learners, self.losses, self.assignments = [], [], [], []

    def step(self, idx, loss):
        self.indices.append(np.asarray(idx).copy())
        self.learners.append(self.dc.current_learner)
        self.losses.append(float(loss))

    def epoch(self):
        self.assignments.append(self.sampler.assignment.copy())


def _plain(cfg, train_set, parts, rec):
    trunk, embedder, sampler, dc, optimizer = parts
    model = torch.nn.Sequential(trunk, embedder)
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler)
    dc.setup(model, train_set, optimizers=[optimizer])
    for _epoch in range(1, cfg.epochs + 1):
        model.train()
        for x, y, idx in loader:
            optimizer.zero_grad()
            loss = dc(model(x), y)
            loss.backward()
            optimizer.step()
            rec.step(idx, loss.detach())
        dc.end_epoch()
        rec.epoch()
    return model


def _lightning(cfg, train_set, parts, rec):
    from pml_divide_conquer.integrations.lightning import DivideConquerCallback, pl

    trunk, embedder, sampler, dc, optimizer = parts

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.trunk, self.embedder, self.dc = trunk, embedder, dc

        def forward(self, x):
            return self.embedder(self.trunk(x))

        def training_step(self, batch, batch_idx):
            x, y, idx = batch
            loss = self.dc(self(x), y)
            rec.step(idx, loss.detach())
            return loss

        def on_train_epoch_end(self):
            rec.epoch()  # (after the callback's step: callbacks' hooks run first)

        def configure_optimizers(self):
            return optimizer

        def train_dataloader(self):
            return torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler)

    module = Module()
    trainer = pl.Trainer(
        max_epochs=cfg.epochs,
        accelerator="cpu",
        devices=1,
        callbacks=[DivideConquerCallback()],
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module)
    return torch.nn.Sequential(trunk, embedder)


def _pml(cfg, train_set, parts, rec):
    trunk, embedder, sampler, dc, optimizer = parts
    seen = {}

    def getter(batch):
        x, y, idx = batch
        seen["idx"] = idx
        return x, y

    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers={"trunk_optimizer": optimizer},  # one optimizer for all, as in the other loops
        batch_size=cfg.batch_size,
        loss_funcs={"metric_loss": dc},
        dataset=train_set,
        sampler=sampler,
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
        data_and_label_getter=getter,
        end_of_iteration_hook=lambda t: rec.step(seen["idx"], t.losses["metric_loss"].detach()),
        end_of_epoch_hook=dc.get_end_of_epoch_hook(then=lambda t: rec.epoch() or True),
    )
    dc.prepare(trainer)
    trainer.train(num_epochs=cfg.epochs)
    return torch.nn.Sequential(trunk, embedder)


def recall_at_1(model, test_set):
    tester = testers.BaseTester(data_device=torch.device("cpu"), dataloader_num_workers=0)
    emb, labels = tester.get_all_embeddings(
        torch.utils.data.TensorDataset(test_set.data, torch.as_tensor(test_set.labels)), model, torch.nn.Identity()
    )
    calc = AccuracyCalculator(include=("precision_at_1",), k=1)
    return 100 * calc.get_accuracy(emb, labels.squeeze(1))["precision_at_1"]


def run(loop, cfg=LoopConfig()):
    """Train ``cfg`` through ``loop`` ("plain", "lightning" or "pml") on digits 0-4; test R@1 on digits 5-9."""
    train, test = datasets.load_digits(num_train_classes=5)
    train_set = IndexedDigits(train, train.labels)
    parts = _parts(cfg, train_set)
    rec = _Recorder(parts[3], parts[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = {"plain": _plain, "lightning": _lightning, "pml": _pml}[loop](cfg, train_set, parts, rec)
    model.eval()
    return dict(
        loop=loop,
        indices=rec.indices,
        learners=rec.learners,
        losses=rec.losses,
        assignments=rec.assignments,
        recall_at_1=recall_at_1(model, test),
        parameters=[p.detach().clone() for p in model.parameters()],
    )
