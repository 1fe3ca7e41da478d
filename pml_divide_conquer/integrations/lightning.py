"""PyTorch Lightning: :class:`DivideConquerCallback` sets D&C up at fit start and takes its step at each epoch end.

Needs ``pytorch-lightning`` (or the ``lightning`` package): ``pip install "pml-divide-conquer[lightning]"``.

Examples:
    >>> from pml_divide_conquer.integrations.lightning import DivideConquerCallback
    >>> trainer = pl.Trainer(max_epochs=20, callbacks=[DivideConquerCallback()], use_distributed_sampler=False)
    >>> trainer.fit(module)   # module.train_dataloader() draws from the wrapper's ClusterSampler
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from .. import notices
from ..torch_utils import unwrap
from ..training import LoopHints, TrainingParts
from ..wrapper import DivideConquerWrapper


def _lightning() -> Any:
    """The Lightning package the user trains with: ``lightning.pytorch`` or ``pytorch_lightning``."""
    if "lightning.pytorch" in sys.modules and "pytorch_lightning" not in sys.modules:
        return sys.modules["lightning.pytorch"]
    try:
        import pytorch_lightning

        return pytorch_lightning
    except ImportError:
        try:
            import lightning.pytorch

            return lightning.pytorch
        except ImportError:
            raise ImportError(
                "DivideConquerCallback needs PyTorch Lightning: pip install 'pml-divide-conquer[lightning]' "
                "(or pip install pytorch-lightning)"
            ) from None


if TYPE_CHECKING:  # (the checker reads pytorch_lightning; at run time it is the package the user trains with)
    import pytorch_lightning as pl
else:
    pl = _lightning()

HINTS = LoopHints(
    setup="add DivideConquerCallback() to pl.Trainer(callbacks=[...])",
    end_epoch="add DivideConquerCallback() to pl.Trainer(callbacks=[...]); it takes the step at each epoch end",
    batch_size_holder="the DataLoader of train_dataloader()",
)


class DivideConquerCallback(pl.Callback):
    """Runs Divide & Conquer's end-of-epoch step (recluster, split, phase change, trunk freezing) in Lightning.

    At fit start it finds the :class:`~pml_divide_conquer.DivideConquerWrapper` among the LightningModule's
    modules, checks that the training DataLoader draws from its :class:`~pml_divide_conquer.ClusterSampler`, and
    sets it up with the module, the DataLoader's dataset and the trainer's optimizers; after each training epoch it
    takes the schedule's step. The wrapper's state (clusters, K, phase, sampler position) is saved in the module's
    checkpoints, so ``trainer.fit(module, ckpt_path=...)`` resumes exactly.

    Set ``Trainer(use_distributed_sampler=False)``: a DistributedSampler in place of the ClusterSampler would mix
    clusters (the ClusterSampler gives each DDP rank its own share of one cluster batch itself). Under DDP the
    whole module is wrapped, the wrapper with it, and per-learner heads are unused at most steps: use
    ``strategy="ddp_find_unused_parameters_true"``.

    Args:
        wrapper: the DivideConquerWrapper (default: the one module of that type in the LightningModule).
        model: the module that maps inputs to embeddings, to embed samples for clustering in eval mode (default:
            the LightningModule, whose ``forward(x)`` must return the embeddings).
        data_and_label_getter: batch -> (inputs, labels) (default: the batch's first two items).
        dataset: the training set in the sampler's order (default: the training DataLoader's dataset).

    Examples:
        >>> class Module(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.trunk = trunk
        ...         self.embedder = SubspaceMaskedEmbedder(64, 4, embedder=head)
        ...         self.sampler = ClusterSampler(train_labels, batch_size=32, m=4)
        ...         self.dc = DivideConquerWrapper(losses.MarginLoss(), embedder=self.embedder,
        ...                                        sampler=self.sampler, schedule=schedule)
        ...     def forward(self, x):
        ...         return self.embedder(self.trunk(x))
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return self.dc(self(x), y)
        ...     def train_dataloader(self):
        ...         return DataLoader(train_set, batch_size=32, sampler=self.sampler)
        >>> trainer = pl.Trainer(callbacks=[DivideConquerCallback()],
        ...                      use_distributed_sampler=False)
        >>> trainer.fit(Module())
    """

    def __init__(
        self,
        wrapper: DivideConquerWrapper | None = None,
        *,
        model: torch.nn.Module | None = None,
        data_and_label_getter: Callable[[Any], tuple[Any, Any]] | None = None,
        dataset: Dataset | None = None,
    ) -> None:
        super().__init__()
        self.wrapper = wrapper
        self.model = model
        self.data_and_label_getter = data_and_label_getter
        self.dataset = dataset

    # ------------------------------------------------------------------ hooks

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Find the wrapper, check the training DataLoader and set the wrapper up (the step before epoch 1)."""
        dc = self._find_wrapper(pl_module)
        loader = self._train_loader(trainer, pl_module)
        self._check_loader(loader, dc)
        model = self.model if self.model is not None else pl_module
        own = {id(p) for p in dc.embedder.parameters()} | {id(p) for p in dc.parameters()}
        parts = TrainingParts(
            model=model,
            dataset=self.dataset if self.dataset is not None else getattr(loader, "dataset", None),
            optimizers=list(trainer.optimizers),
            trunk_params=[p for p in unwrap(model).parameters() if id(p) not in own],
            device=pl_module.device,
            collate_fn=getattr(loader, "collate_fn", None),
            num_workers=getattr(loader, "num_workers", 0),
            current_epoch=lambda: trainer.current_epoch + 1,
            hints=HINTS,
        )
        if self.data_and_label_getter is not None:
            parts.data_and_label_getter = self.data_and_label_getter
        max_epochs = getattr(trainer, "max_epochs", None)
        shortfall = dc.schedule.shortfall(max_epochs) if isinstance(max_epochs, int) and max_epochs > 0 else None
        if shortfall:
            notices.warn(f"pl.Trainer(max_epochs={max_epochs}): {shortfall}")
        dc.setup_parts(parts)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check that the DataLoader Lightning iterates still draws from the wrapper's ClusterSampler."""
        # the DataLoader Lightning actually iterates (it may have replaced the sampler)
        loaders = trainer.train_dataloader
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        if not any(self._draws_from(loader, self._wrapper) for loader in loaders):
            raise ValueError(
                "Lightning's training DataLoader no longer draws from the wrapper's ClusterSampler (Lightning "
                "replaces samplers by DistributedSampler under DDP): set pl.Trainer(use_distributed_sampler=False)"
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Take the wrapper's end-of-epoch step after Lightning's epoch (``current_epoch + 1``)."""
        self._wrapper.end_epoch(trainer.current_epoch + 1)  # current_epoch counts from 0

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Under DDP, put the wrapper's state consolidated on rank 0 into the checkpoint."""
        # Lightning builds the checkpoint on every rank (rank 0 writes it), the module's state first: gather what
        # rank 0 lacks, then put the wrapper's consolidated state in its place
        dc = getattr(self, "_wrapper", None)
        if dc is None or trainer.world_size == 1:
            return
        dc.consolidate_state_dict(to=0)
        for name, module in pl_module.named_modules():
            key = f"{name}._extra_state" if name else "_extra_state"
            if module is dc and key in checkpoint.get("state_dict", {}):
                checkpoint["state_dict"][key] = dc.get_extra_state()

    # ------------------------------------------------------------------ finding the parts

    def _find_wrapper(self, pl_module: pl.LightningModule) -> DivideConquerWrapper:
        if self.wrapper is not None:
            found = [self.wrapper]
        else:
            found = [m for m in pl_module.modules() if isinstance(m, DivideConquerWrapper)]
        if len(found) != 1 or not isinstance(found[0], DivideConquerWrapper):
            raise ValueError(
                f"DivideConquerCallback found {len(found)} DivideConquerWrapper modules in the LightningModule: make "
                "the wrapper an attribute of the module (self.dc = DivideConquerWrapper(...)), or pass it: "
                "DivideConquerCallback(wrapper=dc)"
            )
        self._wrapper = found[0]
        return found[0]

    def _train_loader(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        # not built yet at fit start (Lightning builds it after): ask the same source Lightning will ask
        source = getattr(trainer.fit_loop, "_data_source", None)
        loader = source.dataloader() if source is not None and source.is_defined() else None
        if isinstance(loader, (list, tuple)) and len(loader) == 1:
            loader = loader[0]
        if loader is None and self.dataset is None:
            raise ValueError(
                "DivideConquerCallback could not find the training DataLoader at fit start: define "
                "train_dataloader() in the LightningModule or the DataModule, or pass "
                "DivideConquerCallback(dataset=train_set)"
            )
        return loader

    @staticmethod
    def _draws_from(loader: Any, dc: DivideConquerWrapper) -> bool:
        # DataLoader(sampler=...) wraps it in a BatchSampler; batch_sampler=sampler.batch_sampler() holds it too
        batch_sampler = getattr(loader, "batch_sampler", None)
        return getattr(loader, "sampler", None) is dc.sampler or getattr(batch_sampler, "sampler", None) is dc.sampler

    def _check_loader(self, loader: Any, dc: DivideConquerWrapper) -> None:
        if loader is None:
            return
        if not self._draws_from(loader, dc):
            what = type(getattr(loader, "sampler", None)).__name__
            raise ValueError(
                f"the training DataLoader does not draw from the wrapper's ClusterSampler (its sampler is {what}): "
                f"return DataLoader(train_set, batch_size={dc.sampler.batch_size}, sampler=<the ClusterSampler>) "
                "from train_dataloader(), and set pl.Trainer(use_distributed_sampler=False)"
            )
        batch_size = getattr(loader, "batch_size", None)
        if isinstance(batch_size, int) and batch_size != dc.sampler.batch_size:
            raise ValueError(
                f"the DataLoader's batch_size={batch_size} differs from ClusterSampler's batch_size="
                f"{dc.sampler.batch_size}: give the DataLoader batch_size={dc.sampler.batch_size}, or pass "
                "batch_sampler=sampler.batch_sampler() instead of batch_size= and sampler=."
            )


__all__ = ["DivideConquerCallback"]
