"""Golden runs: small D&C runs whose every number 0.3.0 wrote down (tests/fixtures/v0.3.0/), so that a change of
shape is checked to change no number: the same batches, learners, clusters, losses and parameters, bit for bit on
the CPU with one thread.

Each run is spelled out here with the public API only (scikit-learn's digits 0-4, a small MLP, one Adam optimizer)
so that it builds the same whatever the library's insides look like. ``tests/fixtures/make_v030.py`` ran them with
0.3.0 (commit 6d87440) and saved what they recorded, and two checkpoints written in the middle of a run.
"""

import warnings

import numpy as np
import torch
from pytorch_metric_learning import losses, miners

from pml_divide_conquer import (
    ClusterSampler,
    DivideConquerSchedule,
    DivideConquerWrapper,
    KMeansSettings,
    Reclusterer,
    SubspaceMaskedEmbedder,
)

EPOCHS = 8
BATCH_SIZE, M, DIM, HIDDEN = 32, 8, 16, 32


def digits_0_to_4():
    """(x, y, index) items of scikit-learn's digits 0-4 (901 images), and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < 5
    x = torch.as_tensor((d.data[keep] / 16.0).astype(np.float32))
    y = d.target[keep].astype(np.int64)
    return IndexedData(x, y), y


class IndexedData(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.labels = x, y

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i]), i


def schedule_of(name):
    if name == "cvpr_pass_freeze":  # K fixed, full embedding from 4, all data in 8, trunk frozen after each recluster
        return DivideConquerSchedule(
            num_learners=2, recluster_every=2, full_embedding_epoch=4, all_data_epoch=8, grow=False,
            freeze_trunk_epochs=1,
        )  # fmt: skip
    # K 1, 2, 4, 4, then the full embedding on cluster batches, then all data
    return DivideConquerSchedule(num_learners=4, recluster_every=1, full_embedding_epoch=5, all_data_epoch=7)


CONFIGS = ("fixed_margin", "learned_margin", "fixed_arcface", "learned_arcface_shared", "cvpr_pass_freeze", "xbm")


def build(name, seed=0):
    """The parts of golden run ``name``: dict(model, trunk, embedder, sampler, wrapper, optimizer, dataset)."""
    dataset, labels = digits_0_to_4()
    torch.manual_seed(seed)
    trunk = torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.ReLU())
    learned = name.startswith("learned")
    num_learners = 2 if name == "cvpr_pass_freeze" else 4
    embedder = SubspaceMaskedEmbedder(
        DIM, num_learners, mode="learned" if learned else "fixed", embedder=torch.nn.Linear(HIDDEN, DIM)
    )
    model = torch.nn.Sequential(trunk, embedder)
    sampler = ClusterSampler(labels, batch_size=BATCH_SIZE, m=M, seed=seed)
    kwargs = {}
    miner = None
    if name.endswith("margin"):
        loss = losses.MarginLoss(margin=0.2, beta=1.2)
        miner = miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    elif name.endswith("arcface") or name.endswith("arcface_shared"):
        loss = losses.ArcFaceLoss(5, DIM)
        kwargs["heads"] = "shared" if name.endswith("shared") else "per_learner"
    elif name == "xbm":
        loss = losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=DIM, memory_size=64)
    else:
        loss = losses.TripletMarginLoss(margin=0.1)
        kwargs["reclusterer"] = Reclusterer(dataset=dataset, cluster_on="embedding", kmeans=KMeansSettings(seed=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs.setdefault("reclusterer", Reclusterer(kmeans=KMeansSettings(seed=seed)))
        dc = DivideConquerWrapper(loss, miner, embedder=embedder, sampler=sampler, schedule=schedule_of(name), **kwargs)
    groups = [{"params": trunk.parameters()}] + embedder.parameter_groups(lr=1e-3, mask_lr_multiplier=10)
    if any(p.requires_grad for p in dc.parameters()):
        groups.append({"params": dc.parameters(), "lr": 1e-2})
    optimizer = torch.optim.Adam(groups, lr=1e-3)
    return dict(
        model=model, trunk=trunk, embedder=embedder, sampler=sampler, wrapper=dc, optimizer=optimizer, dataset=dataset
    )


class Record:
    """What a run did: per step the learner and the loss, per epoch the clusters, at the end the parameters."""

    def __init__(self, parts):
        self.parts = parts
        self.learners, self.losses, self.indices, self.assignments = [], [], [], []

    def step(self, idx, loss):
        self.indices.append(torch.as_tensor(np.asarray(idx), dtype=torch.int16))
        self.learners.append(int(self.parts["wrapper"].current_learner))
        self.losses.append(float(loss))

    def epoch(self):
        self.assignments.append(torch.from_numpy(self.parts["sampler"].assignment.astype(np.int8)))

    def result(self):
        params = [p.detach().clone() for p in self.parts["model"].parameters()]
        params += [p.detach().clone() for p in self.parts["wrapper"].parameters()]
        return dict(
            learners=self.learners,
            losses=torch.tensor(self.losses, dtype=torch.float64),
            indices=torch.stack(self.indices),
            assignments=torch.stack(self.assignments),
            parameters=params,
        )


def plain_loop(parts, record, first_epoch=1, last_epoch=EPOCHS, setup=True, after_epoch=None):
    """PML's plain loop with D&C: ``dc(model(x), y)``, ``dc.end_epoch()`` after each epoch."""
    model, dc, opt = parts["model"], parts["wrapper"], parts["optimizer"]
    loader = torch.utils.data.DataLoader(parts["dataset"], batch_size=BATCH_SIZE, sampler=parts["sampler"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if setup:
            dc.setup(model, parts["dataset"], optimizers=[opt])
        for epoch in range(first_epoch, last_epoch + 1):
            model.train()
            for x, y, idx in loader:
                opt.zero_grad()
                loss = dc(model(x), y)
                loss.backward()
                opt.step()
                record.step(idx, loss.detach())
            dc.end_epoch()
            record.epoch()
            if after_epoch is not None:
                after_epoch(epoch)
    return record


def lightning_loop(parts, record):
    from pml_divide_conquer.integrations.lightning import DivideConquerCallback, pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.dc = parts["model"], parts["wrapper"]

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            x, y, idx = batch
            loss = self.dc(self(x), y)
            record.step(idx, loss.detach())
            return loss

        def on_train_epoch_end(self):
            record.epoch()

        def configure_optimizers(self):
            return parts["optimizer"]

        def train_dataloader(self):
            return torch.utils.data.DataLoader(parts["dataset"], batch_size=BATCH_SIZE, sampler=parts["sampler"])

    trainer = pl.Trainer(
        max_epochs=EPOCHS, accelerator="cpu", devices=1, callbacks=[DivideConquerCallback()],
        use_distributed_sampler=False, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Module())
    return record


def pml_loop(parts, record):
    from pytorch_metric_learning import trainers

    dc, seen = parts["wrapper"], {}

    def getter(batch):
        seen["idx"] = batch[2]
        return batch[0], batch[1]

    trainer = trainers.MetricLossOnly(
        models={"trunk": parts["trunk"], "embedder": parts["embedder"]},
        optimizers={"trunk_optimizer": parts["optimizer"]},
        batch_size=BATCH_SIZE, loss_funcs={"metric_loss": dc}, dataset=parts["dataset"], sampler=parts["sampler"],
        dataloader_num_workers=0, data_device=torch.device("cpu"), data_and_label_getter=getter,
        end_of_iteration_hook=lambda t: record.step(seen["idx"], t.losses["metric_loss"].detach()),
        end_of_epoch_hook=dc.get_end_of_epoch_hook(then=lambda t: record.epoch() or True),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dc.prepare(trainer)
        trainer.train(num_epochs=EPOCHS)
    return record


LOOPS = {"plain": plain_loop, "lightning": lightning_loop, "pml": pml_loop}
# the golden runs: every config in a plain loop; two of them in Lightning and PML's trainers too
RUNS = [("plain", c) for c in CONFIGS] + [(loop, c) for loop in ("lightning", "pml") for c in CONFIGS[:4:2]]


def run(loop, name):
    parts = build(name)
    return LOOPS[loop](parts, Record(parts)).result()


def checkpoint(parts):
    """The plain-loop checkpoint recipe: model, optimizer, wrapper and torch's generator."""
    return dict(
        model=parts["model"].state_dict(),
        optimizer=parts["optimizer"].state_dict(),
        dc=parts["wrapper"].state_dict(),
        torch_rng=torch.get_rng_state(),
    )


# checkpoints written by 0.3.0 in the middle of a plain-loop run: (config, the epoch after which it was saved)
CHECKPOINTS = (("fixed_margin", 3), ("learned_arcface_shared", 5), ("xbm", 2))
