"""The tests' one factory of a D&C run: :func:`make` assembles a small run (trunk, SubspaceMaskedEmbedder,
ClusterSampler, DivideConquerWrapper) from a :class:`Spec`; adapters train it in each kind of loop: :func:`plain`
(your own PyTorch loop), :func:`pml` (PML's MetricLossOnly or another trainer) and :func:`lightning` (a
LightningModule and Trainer). :func:`records` runs one spec through a loop and records every step, so that tests can
hold the loops to each other. (``golden.py`` spells out its runs on purpose: they are fixtures, frozen.)

Examples:
    >>> parts = plain(make(digits, num_learners=4))   # set up, with its DataLoader and optimizer
    >>> train_plain(parts, num_epochs=3)
    >>> parts = pml(make(digits, heads="shared"), iterations_per_epoch=45)
    >>> parts["wrapper"].prepare(parts["trainer"]); parts["trainer"].train(num_epochs=2)
"""

import io
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from pytorch_metric_learning import losses, trainers

from pml_divide_conquer import (
    ClusterSampler,
    DivideConquerSchedule,
    DivideConquerWrapper,
    KMeansSettings,
    Reclusterer,
    SubspaceMaskedEmbedder,
)


@dataclass(frozen=True)
class Spec:
    """What varies between the tests' runs (a 64 -> 32 -> ``embedding_size`` model for 8x8 digits)."""

    num_learners: int = 2
    mode: str = "fixed"  # the embedder's subspaces: fixed chunks or learned masks
    schedule: Optional[DivideConquerSchedule] = None  # None: from the four fields below
    recluster_every: int = 1
    full_embedding_epoch: Optional[int] = None
    all_data_epoch: Optional[int] = None
    grow: bool = True
    freeze_trunk_epochs: int = 0
    heads: str = "per_learner"
    full_head: Any = "imprint"
    orthogonality_weight: float = 0.01
    loss: Any = None  # None: TripletMarginLoss(margin=0.1)
    miner: Any = None
    recluster: Optional[dict] = None  # fields of ReclusterSettings (cluster_on=, features_from=, dataset=, ...)
    batch_size: int = 16
    m: int = 4
    sampler_options: Optional[dict] = None  # more of ClusterSampler's arguments (num_replicas=, rank=, seed=, ...)
    seed: int = 0
    embedding_size: int = 16
    device: str = "cpu"

    def the_schedule(self):
        if self.schedule is not None:
            return self.schedule
        return DivideConquerSchedule(
            num_learners=self.num_learners,
            recluster_every=self.recluster_every,
            full_embedding_epoch=self.full_embedding_epoch,
            all_data_epoch=self.all_data_epoch,
            grow=self.grow,
            freeze_trunk_epochs=self.freeze_trunk_epochs,
        )


def make(dataset, **spec):
    """The parts of one run on ``dataset`` (items ``(x, y, ...)`` with ``.labels``): a dict of ``spec`` (a
    :class:`Spec`), ``dataset``, ``trunk``, ``embedder``, ``model`` (the two in turn), ``sampler`` and ``wrapper``,
    all on ``spec.device``. Modules are initialised from ``torch.manual_seed(spec.seed)``."""
    s = Spec(**spec)
    device = torch.device(s.device)
    torch.manual_seed(s.seed)
    trunk = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU()).to(device)
    embedder = SubspaceMaskedEmbedder(
        s.embedding_size, s.num_learners, mode=s.mode, embedder=torch.nn.Linear(32, s.embedding_size)
    ).to(device)
    options = {"batch_size": s.batch_size, "m": s.m, "seed": s.seed, **(s.sampler_options or {})}
    sampler = ClusterSampler(dataset.labels, **options)
    wrapper = DivideConquerWrapper(
        s.loss if s.loss is not None else losses.TripletMarginLoss(margin=0.1),
        s.miner,
        embedder=embedder,
        sampler=sampler,
        schedule=s.the_schedule(),
        reclusterer=Reclusterer(kmeans=KMeansSettings(seed=s.seed), **(s.recluster or {})),
        heads=s.heads,
        full_head=s.full_head,
        orthogonality_weight=s.orthogonality_weight,
    ).to(device)
    model = torch.nn.Sequential(trunk, embedder)
    return dict(spec=s, dataset=dataset, trunk=trunk, embedder=embedder, model=model, sampler=sampler, wrapper=wrapper)


# ----------------------------------------------------------------------------------------------- a plain loop


def plain(parts, *, setup=True, workers=0, **loader_kwargs):
    """``parts`` in a plain PyTorch loop: one Adam optimizer (the trunk, the embedder's parameter groups and the
    loss's parameters, each a group of its own), a DataLoader over the ClusterSampler, and ``dc.setup(...)``
    (unless ``setup=False``, for a loop that sets up itself, such as Lightning's callback)."""
    trunk, embedder, wrapper = parts["trunk"], parts["embedder"], parts["wrapper"]
    groups = [{"params": trunk.parameters()}] + embedder.parameter_groups(lr=1e-3, mask_lr_multiplier=10)
    if any(p.requires_grad for p in wrapper.parameters()):
        groups.append({"params": wrapper.parameters()})
    optimizer = torch.optim.Adam(groups, lr=1e-3)
    loader = torch.utils.data.DataLoader(
        parts["dataset"], batch_size=parts["spec"].batch_size, sampler=parts["sampler"], num_workers=workers,
        **loader_kwargs,
    )  # fmt: skip
    parts = dict(parts, optimizer=optimizer, loader=loader)
    if setup:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapper.setup(parts["model"], parts["dataset"], optimizers=[optimizer], device=parts["spec"].device)
    return parts


def train_plain(parts, num_epochs, start_epoch=1, after_step=None):
    """PML's plain-loop example with D&C: ``loss = dc(model(x), y)``, then ``dc.end_epoch()`` after each epoch.
    ``after_step(epoch, indices, loss)`` is called after each optimizer step."""
    model, dc, opt = parts["model"], parts["wrapper"], parts["optimizer"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(start_epoch, num_epochs + 1):
            model.train()
            for x, y, idx in parts["loader"]:
                opt.zero_grad()
                loss = dc(model(x), y)
                loss.backward()
                opt.step()
                if after_step is not None:
                    after_step(epoch, idx.numpy(), loss.detach())
            dc.end_epoch()


# ----------------------------------------------------------------------------------------------- PML's trainers


def drop_index(batch):
    return batch[0], batch[1]


def pml(
    parts, *, trainer_cls=trainers.MetricLossOnly, workers=0, batch_size=None, sampler=None, extra_models=None,
    extra_loss_funcs=None, extra_optimizers=None, **trainer_kwargs,
):  # fmt: skip
    """``parts`` in PML's ``trainer_cls``: the optimizers ``trunk_optimizer``, ``embedder_optimizer`` (the embedder's
    parameter groups) and ``metric_loss_optimizer`` (when the loss has parameters), the wrapper as ``metric_loss``,
    its end-of-epoch hook. Not prepared: the test calls ``dc.prepare(trainer)``."""
    trunk, embedder, wrapper, spec = parts["trunk"], parts["embedder"], parts["wrapper"], parts["spec"]
    optimizers = {
        "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-3),
        "embedder_optimizer": torch.optim.Adam(embedder.parameter_groups(lr=1e-3, mask_lr_multiplier=10)),
    }
    if any(p.requires_grad for p in wrapper.parameters()):
        optimizers["metric_loss_optimizer"] = torch.optim.Adam(wrapper.parameters(), lr=1e-3)
    optimizers.update(extra_optimizers or {})
    trainer_kwargs.setdefault("end_of_epoch_hook", wrapper.get_end_of_epoch_hook())
    trainer_kwargs.setdefault("data_and_label_getter", drop_index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trainer_cls(
            models={"trunk": trunk, "embedder": embedder, **(extra_models or {})},
            optimizers=optimizers,
            batch_size=batch_size or spec.batch_size,
            loss_funcs={"metric_loss": wrapper, **(extra_loss_funcs or {})},
            dataset=parts["dataset"],
            sampler=sampler or parts["sampler"],
            dataloader_num_workers=workers,
            data_device=torch.device(spec.device),
            **trainer_kwargs,
        )
    return dict(parts, trainer=trainer, optimizers=optimizers)


def checkpoint(parts):
    """The PML-trainer checkpoint recipe in memory: models, optimizers and the wrapper's state."""
    buf = io.BytesIO()
    torch.save(
        {
            "models": {k: v.state_dict() for k, v in parts["trainer"].models.items()},
            "optimizers": {k: v.state_dict() for k, v in parts["optimizers"].items()},
            "wrapper": parts["wrapper"].state_dict(),
        },
        buf,
    )
    buf.seek(0)
    return buf


def restore(parts, buf, map_location=None):
    """Load :func:`checkpoint`'s ``buf`` into (fresh) ``parts``, as PML's HookContainer loads a checkpoint."""
    state = torch.load(buf, weights_only=True, map_location=map_location)
    for k, v in state["models"].items():
        parts["trainer"].models[k].load_state_dict(v)
    for k, v in state["optimizers"].items():
        parts["optimizers"][k].load_state_dict(v)
    parts["wrapper"].load_state_dict(state["wrapper"])


# ----------------------------------------------------------------------------------------------- Lightning


def lightning_module(parts, record=None):
    """A LightningModule around plain-loop ``parts`` (``plain(..., setup=False)``): ``dc(self(x), y)`` each step,
    the loss appended to ``record``; its optimizer and DataLoader are the parts'."""
    from pml_divide_conquer.integrations.lightning import pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.dc = parts["model"], parts["wrapper"]
            self.parts, self.record = parts, record

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            x, y = batch[0], batch[1]
            loss = self.dc(self(x), y)
            if self.record is not None:
                self.record.append(loss.detach().clone())
            return loss

        def configure_optimizers(self):
            return self.parts["optimizer"]

        def train_dataloader(self):
            return self.parts["loader"]

    return Module()


def lightning(max_epochs, callbacks=(), **kwargs):
    """A quiet CPU Lightning Trainer for one process, with the ClusterSampler left in place."""
    from pml_divide_conquer.integrations.lightning import pl

    kw = dict(
        max_epochs=max_epochs, accelerator="cpu", devices=1, use_distributed_sampler=False, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    kw.update(kwargs)
    return pl.Trainer(callbacks=list(callbacks), **kw)


# ----------------------------------------------------------------------------------------------- one run, each loop

LOOPS = ("plain", "lightning", "pml")


def records(loop, dataset, epochs, **spec):
    """Train ``spec`` on ``dataset`` for ``epochs`` through ``loop`` ("plain", "lightning" or "pml"), all three with
    one Adam optimizer; returns, per step, the batch's indices, the learner and the loss, the clusters after each
    epoch, and the parameters at the end."""
    from pml_divide_conquer.integrations.lightning import DivideConquerCallback

    parts = plain(make(dataset, **spec), setup=False)
    dc, out = parts["wrapper"], dict(indices=[], learners=[], losses=[], assignments=[])

    def step(idx, loss):
        out["indices"].append(np.asarray(idx).copy())
        out["learners"].append(dc.current_learner)
        out["losses"].append(float(loss))

    def epoch_end():
        out["assignments"].append(parts["sampler"].assignment.copy())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if loop == "plain":
            dc.setup(parts["model"], dataset, optimizers=[parts["optimizer"]])
            for _ in range(epochs):
                for x, y, idx in parts["loader"]:
                    parts["optimizer"].zero_grad()
                    loss = dc(parts["model"](x), y)
                    loss.backward()
                    parts["optimizer"].step()
                    step(idx, loss.detach())
                dc.end_epoch()
                epoch_end()
        elif loop == "lightning":
            seen = []
            module = lightning_module(parts, seen)
            module.on_train_batch_end = lambda outputs, batch, batch_idx: step(batch[2], seen[-1])
            module.on_train_epoch_end = epoch_end  # (after the callback's step: callbacks' hooks run first)
            lightning(epochs, [DivideConquerCallback()]).fit(module)
        else:
            trainer = _pml_one_optimizer(parts, step, epoch_end)
            dc.prepare(trainer)
            trainer.train(num_epochs=epochs)
    out["parameters"] = [p.detach().clone() for p in parts["model"].parameters()]
    return out


def _pml_one_optimizer(parts, step, epoch_end):
    """MetricLossOnly with the plain loop's one optimizer (so that the three loops train the same numbers)."""
    seen = {}

    def get(batch):
        seen["idx"] = batch[2]
        return batch[0], batch[1]

    dc = parts["wrapper"]
    return trainers.MetricLossOnly(
        models={"trunk": parts["trunk"], "embedder": parts["embedder"]},
        optimizers={"trunk_optimizer": parts["optimizer"]},
        batch_size=parts["spec"].batch_size, loss_funcs={"metric_loss": dc}, dataset=parts["dataset"],
        sampler=parts["sampler"], dataloader_num_workers=0, data_device=torch.device("cpu"), data_and_label_getter=get,
        end_of_iteration_hook=lambda t: step(seen["idx"], t.losses["metric_loss"].detach()),
        end_of_epoch_hook=dc.get_end_of_epoch_hook(then=lambda t: epoch_end() or True),
    )  # fmt: skip
