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
