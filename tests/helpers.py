"""Shared test helpers: a tiny but real PML set-up around DivideConquerWrapper, and datasets that report
which samples a batch holds."""

import warnings

import torch
from pytorch_metric_learning import losses, trainers

from lab.datasets import ArrayDataset
from pml_divide_conquer import ClusterSampler, DivideConquerWrapper, SubspaceMaskedEmbedder


class IndexedDataset(ArrayDataset):
    """Digits that also return their own index, so tests can see which samples a batch holds."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x, y, i


class Recorder:
    """data_and_label_getter that remembers the indices of the last batch it handed over."""

    def __init__(self):
        self.last = None

    def __call__(self, batch):
        x, y, idx = batch
        self.last = idx.numpy().copy()
        return x, y


def drop_index(batch):
    return batch[0], batch[1]


def build(
    dataset,
    *,
    num_learners=4,
    mode="fixed",
    grow=True,
    recluster_every=1,
    full_embedding_epoch=None,
    all_data_epoch=None,
    heads="shared",
    freeze_trunk_epochs=0,
    batch_size=16,
    m=4,
    workers=0,
    loss=None,
    miner=None,
    seed=0,
    embedding_size=16,
    trainer_cls=trainers.MetricLossOnly,
    trainer_batch_size=None,
    trainer_sampler=None,
    extra_models=None,
    extra_loss_funcs=None,
    extra_optimizers=None,
    device="cpu",
    wrapper_kwargs=None,
    **trainer_kwargs,
):
    """A tiny but real PML set-up around DivideConquerWrapper. Returns a dict of its parts."""
    device = torch.device(device)
    torch.manual_seed(seed)
    trunk = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU()).to(device)
    embedder = SubspaceMaskedEmbedder(
        embedding_size, num_learners, mode=mode, embedder=torch.nn.Linear(32, embedding_size)
    ).to(device)
    sampler = ClusterSampler(dataset.labels, batch_size=batch_size, m=m, seed=seed)
    wrapper = DivideConquerWrapper(
        loss if loss is not None else losses.TripletMarginLoss(margin=0.1),
        miner,
        embedder=embedder,
        sampler=sampler,
        recluster_every=recluster_every,
        full_embedding_epoch=full_embedding_epoch,
        all_data_epoch=all_data_epoch,
        heads=heads,
        freeze_trunk_epochs=freeze_trunk_epochs,
        grow=grow,
        seed=seed,
        **(wrapper_kwargs or {}),
    ).to(device)
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
            batch_size=trainer_batch_size or batch_size,
            loss_funcs={"metric_loss": wrapper, **(extra_loss_funcs or {})},
            dataset=dataset,
            sampler=trainer_sampler or sampler,
            dataloader_num_workers=workers,
            data_device=device,
            **trainer_kwargs,
        )
    return dict(
        trainer=trainer, wrapper=wrapper, sampler=sampler, embedder=embedder, trunk=trunk, optimizers=optimizers
    )


def build_plain(
    dataset,
    *,
    num_learners=2,
    mode="fixed",
    grow=True,
    recluster_every=1,
    full_embedding_epoch=None,
    all_data_epoch=None,
    heads="per_learner",
    freeze_trunk_epochs=0,
    batch_size=16,
    m=4,
    workers=0,
    loss=None,
    miner=None,
    seed=0,
    embedding_size=16,
    wrapper_kwargs=None,
    setup=True,
    device="cpu",
    **loader_kwargs,
):
    """The same tiny set-up as build(), in a plain PyTorch loop: one model, one optimizer (trunk, embedder and
    loss parameters in groups of their own), a DataLoader over the ClusterSampler. Returns a dict of its parts."""
    torch.manual_seed(seed)
    trunk = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU())
    embedder = SubspaceMaskedEmbedder(
        embedding_size, num_learners, mode=mode, embedder=torch.nn.Linear(32, embedding_size)
    )
    model = torch.nn.Sequential(trunk, embedder)
    sampler = ClusterSampler(dataset.labels, batch_size=batch_size, m=m, seed=seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, **loader_kwargs
    )
    wrapper = DivideConquerWrapper(
        loss if loss is not None else losses.TripletMarginLoss(margin=0.1),
        miner,
        embedder=embedder,
        sampler=sampler,
        recluster_every=recluster_every,
        full_embedding_epoch=full_embedding_epoch,
        all_data_epoch=all_data_epoch,
        heads=heads,
        freeze_trunk_epochs=freeze_trunk_epochs,
        grow=grow,
        seed=seed,
        **(wrapper_kwargs or {}),
    )
    model.to(device), wrapper.to(device)
    groups = [{"params": trunk.parameters()}] + embedder.parameter_groups(lr=1e-3, mask_lr_multiplier=10)
    if any(p.requires_grad for p in wrapper.parameters()):
        groups.append({"params": wrapper.parameters()})
    optimizer = torch.optim.Adam(groups, lr=1e-3)
    if setup:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapper.setup(model, dataset, optimizers=[optimizer], device=device)
    return dict(
        model=model,
        trunk=trunk,
        embedder=embedder,
        sampler=sampler,
        loader=loader,
        wrapper=wrapper,
        optimizer=optimizer,
    )


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
