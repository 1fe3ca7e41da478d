"""What the end-of-epoch step needs from the training loop, given explicitly: no trainer inside.

:class:`TrainingParts` is filled by :meth:`DivideConquerWrapper.setup <pml_divide_conquer.DivideConquerWrapper.setup>`
(a plain PyTorch loop), by the Lightning callback or by the PML-trainer glue; :class:`LoopHints` says how the
messages name the calls of the loop in use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, List

import torch


@dataclass(frozen=True)
class LoopHints:
    """How error messages name the calls of one kind of training loop."""

    setup: str  # the set-up call
    end_epoch: str  # what takes the end-of-epoch step
    batch_size_holder: str  # what is given the batch size


PLAIN_LOOP = LoopHints(
    setup="call dc.setup(model, train_dataset, optimizers=[...]) before the first epoch",
    end_epoch="call dc.end_epoch() after each epoch of your loop",
    batch_size_holder="the DataLoader",
)
NOT_SET_UP = LoopHints(
    setup=(
        "in your own loop call dc.setup(model, train_dataset, optimizers=[...]) before training; with PyTorch "
        "Lightning add DivideConquerCallback() to Trainer(callbacks=[...]); with PML's trainers call "
        "dc.prepare(trainer) before trainer.train()"
    ),
    end_epoch=(
        "call dc.end_epoch() after each epoch (Lightning: DivideConquerCallback; PML's trainers: "
        "end_of_epoch_hook=dc.get_end_of_epoch_hook())"
    ),
    batch_size_holder="the DataLoader (or PML's trainer)",
)


def default_data_and_label_getter(batch: Any) -> tuple[Any, Any]:
    """``(inputs, labels)`` from a batch that is a tuple or list whose first two items are those."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"cannot read (inputs, labels) from a batch of type {type(batch).__name__}: pass "
        "data_and_label_getter=<a function batch -> (inputs, labels)> to the set-up"
    )


@dataclass
class TrainingParts:
    """Everything the end-of-epoch step reads from the training loop.

    Args:
        model: the module the loop calls to get embeddings from inputs; it contains the wrapper's
            SubspaceMaskedEmbedder. Run in eval mode without gradients to embed samples for clustering; the
            features clustered with ``cluster_on="trunk"`` are the embedder's input.
        dataset: the training set, in the order of the sampler's labels (to embed samples for clustering).
        optimizers: every optimizer of the loop (state carried when clusters split; the trunk frozen).
        trunk_params: the parameters ``freeze_trunk_epochs`` freezes (by identity).
        device: where inputs go before the model (None: the model's first parameter's device).
        dtype: as what inputs go to the model (None: the inputs' own dtype).
        data_and_label_getter: batch -> (inputs, labels).
        collate_fn: the ``collate_fn`` of the DataLoader that embeds samples for clustering (None: torch's).
        num_workers: the workers of the DataLoader that embeds samples for clustering.
        label_transform: labels as the dataset gives them -> labels as the loss receives them (None: as they are).
        on_clusters_changed: called after the clusters changed between epochs or inside one (PML's glue restarts
            the trainer's iterator), or None.
        current_epoch: returns the epoch the loop is training (counted from 1), when the loop keeps count (PML's
            and Lightning's trainers), or None: a missed end-of-epoch step is then caught at the first batch.
        hints: how messages name the loop's calls.
    """

    model: torch.nn.Module
    dataset: Any
    optimizers: List[torch.optim.Optimizer] = field(default_factory=list)
    trunk_params: List[torch.nn.Parameter] = field(default_factory=list)
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None
    data_and_label_getter: Callable = default_data_and_label_getter
    collate_fn: Callable | None = None
    num_workers: int = 0
    label_transform: Callable | None = None
    on_clusters_changed: Callable | None = None
    current_epoch: Callable | None = None
    hints: LoopHints = PLAIN_LOOP

    def input_device(self) -> torch.device:
        """Where inputs go: ``device``, else the model's first parameter's device (the CPU without parameters)."""
        if self.device is not None:
            return torch.device(self.device)
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")


def as_optimizer_list(
    optimizers: torch.optim.Optimizer
    | Iterable[torch.optim.Optimizer | None]
    | Mapping[str, torch.optim.Optimizer | None]
    | None,
    where: str = "optimizers",
) -> list[torch.optim.Optimizer]:
    """A list of torch optimizers from a list, tuple, dict (PML's) or a single optimizer; a clear error for
    anything else (e.g. a None among PML's optimizers)."""
    if optimizers is None:
        return []
    if isinstance(optimizers, torch.optim.Optimizer):
        return [optimizers]
    items = optimizers.items() if isinstance(optimizers, dict) else enumerate(optimizers)
    out = []
    for key, opt in items:
        if not isinstance(opt, torch.optim.Optimizer):
            name = f'{where}["{key}"]' if isinstance(key, str) else f"{where}[{key}]"
            raise TypeError(
                f"{name} is {type(opt).__name__}, not a torch optimizer: DivideConquerWrapper carries the state of "
                "every optimizer when clusters split (and PML's trainer steps and zeroes each entry). Give it an "
                "optimizer, or leave it out."
            )
        out.append(opt)
    return out


def plain_loop_parts(
    not_trunk: Sequence[torch.nn.Module],
    model: torch.nn.Module,
    dataset: Any,
    optimizers: Any,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> TrainingParts:
    """The parts of a plain loop: the trunk is whatever of ``model`` is none of ``not_trunk`` (the embedder and the
    wrapper)."""
    own = {id(p) for module in not_trunk for p in module.parameters()}
    return TrainingParts(
        model=model,
        dataset=dataset,
        optimizers=as_optimizer_list(optimizers),
        trunk_params=[p for p in model.parameters() if id(p) not in own],
        device=device,
        dtype=dtype,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )
