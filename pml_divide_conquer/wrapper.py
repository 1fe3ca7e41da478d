"""DivideConquerWrapper: the loss a training loop calls, routing each batch to the learner of its cluster."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction
from torch.utils.data import Dataset

from . import checks, notices, records, state
from .batch_loss import BatchLoss
from .controller import EpochController
from .deprecation import wrapper_parts
from .learners import PER_LEARNER, Learners
from .routing import Router
from .schedule import Phase, make_schedule
from .training import plain_loop_parts

if TYPE_CHECKING:
    from pytorch_metric_learning.miners import BaseMiner

    from .compat import DistributedMinerWrapper
    from .embedder import SubspaceMaskedEmbedder
    from .feature_memory import FeatureMemory
    from .learners import HeadStart
    from .reclustering import Reclusterer
    from .sampler import ClusterSampler
    from .schedule import DivideConquerSchedule
    from .training import TrainingParts

HALF = (torch.float16, torch.bfloat16)


class DivideConquerWrapper(BaseMetricLossFunction):
    """Divide & Conquer around any label-based PML loss (and miner): ``loss = dc(embeddings, labels)``.

    Each batch (from one cluster of the :class:`ClusterSampler`) trains that cluster's learner on its subspace of
    the :class:`SubspaceMaskedEmbedder`'s embedding; the :class:`DivideConquerSchedule` says when to recluster, split
    and change phase (divide, full embedding, all data). The epoch step runs where the loop says an epoch ended:
    your own loop calls :meth:`setup` once and :meth:`end_epoch` after each epoch; Lightning takes
    ``DivideConquerCallback`` (``pml_divide_conquer.integrations.lightning``); PML's trainers :meth:`prepare` and
    :meth:`get_end_of_epoch_hook`.

    Args:
        loss: a PML loss that takes labels (one copy per learner).
        miner: optionally a PML tuple miner (one copy per learner, applied in the learner's subspace).
        embedder: the :class:`SubspaceMaskedEmbedder` that produces the embeddings (K = its ``num_learners``).
        sampler: the :class:`ClusterSampler` the training DataLoader draws from.
        schedule: a :class:`DivideConquerSchedule` (default: ``DivideConquerSchedule(num_learners=K)``).
        reclusterer: a :class:`~pml_divide_conquer.Reclusterer`: what is clustered, where its features come from,
            the k-means settings (default: the reference's, clustering the trunk features training computed).
        heads: classification losses (ArcFace, ProxyAnchor, ...): ``"per_learner"`` (one head per learner sized to
            its subspace) or ``"shared"`` (one full-size head each learner trains its part of; docs/how-to/arcface.md).
        full_head: per-learner heads: how the full-embedding head starts when the divide phase ends:
            ``"imprint"`` (:class:`~pml_divide_conquer.learners.ImprintedHeads`), ``"assembled"``
            (:class:`~pml_divide_conquer.learners.AssembledHeads`) or a :class:`~pml_divide_conquer.learners.HeadStart`.
        orthogonality_weight: lambda of the mask orthogonality term (learned masks only, divide phase).
        **deprecated: the keywords of 0.3 (``recluster_every=``, ``cluster_on=``, ``seed=``, ...), for one release,
            with a FutureWarning naming the new spelling (see CHANGELOG.md).

    Public attributes (docs/api.md): ``schedule``, ``embedder``, ``sampler``, ``reclusterer``, ``controller``,
    ``learners`` and ``miners`` (the learners' copies), ``feature_memory``; read-only: ``last_epoch``,
    ``num_active`` (K), ``phase``, ``recluster_seconds``, ...; record-keeper's: ``current_learner``, ...

    Examples:
        >>> embedder = SubspaceMaskedEmbedder(
        ...     64, num_learners=4, embedder=torch.nn.Linear(128, 64))
        >>> model = torch.nn.Sequential(trunk, embedder)
        >>> sampler = ClusterSampler(train_labels, batch_size=32, m=4)
        >>> loader = torch.utils.data.DataLoader(train_set, batch_size=32, sampler=sampler)
        >>> dc = DivideConquerWrapper(
        ...     losses.TripletMarginLoss(), embedder=embedder, sampler=sampler,
        ...     schedule=DivideConquerSchedule.journal(num_epochs=20, num_learners=4))
        >>> dc.setup(model, train_set, optimizers=[optimizer])
        >>> for epoch in range(1, 21):
        ...     for x, y in loader:
        ...         optimizer.zero_grad()
        ...         dc(model(x), y).backward()
        ...         optimizer.step()
        ...     dc.end_epoch()
    """

    # held outside the module tree (set through __dict__ in __init__)
    embedder: SubspaceMaskedEmbedder
    sampler: ClusterSampler
    feature_memory: FeatureMemory | None
    controller: EpochController
    _learners: Learners
    _router: Router
    _batch_loss: BatchLoss

    def __init__(
        self,
        loss: torch.nn.Module,
        miner: BaseMiner | DistributedMinerWrapper | None = None,
        *,
        embedder: SubspaceMaskedEmbedder,
        sampler: ClusterSampler,
        schedule: DivideConquerSchedule | None = None,
        reclusterer: Reclusterer | None = None,
        heads: str = PER_LEARNER,
        full_head: str | HeadStart = "imprint",
        orthogonality_weight: float = 0.01,
        **deprecated: Any,
    ) -> None:
        super().__init__()
        checks.check_wrapper_arguments(loss, miner, embedder, sampler, heads)
        K = embedder.num_learners
        schedule, reclusterer = wrapper_parts(K, deprecated, schedule, reclusterer)  # (the keywords of 0.3)
        self.schedule = make_schedule(schedule, K)
        self.reclusterer = reclusterer = checks.reclusterer(reclusterer)
        self.heads = heads
        self.orthogonality_weight = float(orthogonality_weight)
        if checks.needs_equal_counts(loss):
            sampler.require_equal_counts()  # e.g. SmoothAPLoss: the same number of samples of every class a batch
        first_size = embedder.subspace_size(self.schedule.learners_in_epoch(1))
        learners = Learners(loss, miner, embedder.num_learners, heads, first_size, np.unique(sampler.labels), full_head)
        self.learners, self.miners = learners.losses, learners.miners  # registered: saved and moved with the loss
        memory = reclusterer.feature_memory(len(sampler.labels))  # None: an embedding pass each time
        # Held outside the module tree: the embedder is trained and saved with the model (registering it here would
        # put its parameters in the loss's optimizer too), the sampler and the rest are no modules.
        self.__dict__.update(embedder=embedder, sampler=sampler, feature_memory=memory, _learners=learners)
        self.__dict__["controller"] = EpochController(self.schedule, sampler, embedder, learners, reclusterer, memory)
        self.__dict__["_router"] = router = Router(sampler)
        self.__dict__["_batch_loss"] = BatchLoss(self.controller, router, learners, embedder, memory, loss)
        records.init(self, embedder.num_learners)
        self.update_cluster_stats()

    # ------------------------------------------------------------------ read-only state (the controller's)

    @property
    def last_epoch(self) -> int:
        """The last epoch stepped (0: before epoch 1)."""
        return self.controller.last_epoch

    @property
    def num_active(self) -> int:
        """K: the learners training in this epoch."""
        return self.controller.num_active

    @property
    def phase(self) -> Phase:
        """The phase of the epoch being trained."""
        return self.controller.phase

    @property
    def recluster_seconds(self) -> float:
        """The last reclustering's time."""
        return self.controller.recluster_seconds

    @property
    def clustering_seconds(self) -> float:
        """Its k-means and matching."""
        return self.controller.clustering_seconds

    @property
    def full_head(self) -> HeadStart:
        """How the full-embedding heads start."""
        return self._learners.full_head

    @property
    def phase_id(self) -> int:
        """The phase's number (record-keeper's)."""
        return list(Phase).index(self.phase)

    @property
    def num_clusters(self) -> int:
        """K of the sampler's assignment."""
        return self.sampler.num_clusters

    @property
    def num_learners(self) -> int:
        """The most learners (the embedder's K)."""
        return self.embedder.num_learners

    @property
    def recluster_from(self) -> str:
        """Where reclusterings take their features: ``"training"`` or ``"pass"``."""
        return self.reclusterer.settings.features_source

    # ------------------------------------------------------------------ the loss

    # it routes each batch by the sampler's records (host-side state): always eager, also inside torch.compile
    @torch.compiler.disable
    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices_tuple: tuple[torch.Tensor, ...] | None = None,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if labels is None:
            raise ValueError("DivideConquerWrapper needs the batch labels: call it as dc(embeddings, labels)")
        checks.check_shapes(embeddings, labels)
        checks.check_not_mined_twice(indices_tuple, self.miners)
        # losses and normalisation in float32, also under autocast (the gradient flows back to the half embeddings)
        float16 = embeddings.dtype == torch.float16
        embeddings = embeddings.float() if embeddings.dtype in HALF else embeddings
        ref_emb = ref_emb.float() if ref_emb is not None and ref_emb.dtype in HALF else ref_emb
        with torch.autocast(embeddings.device.type, enabled=False):
            if not self.training:
                return self._batch_loss.eval_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
            return self._batch_loss.training_loss(
                embeddings, labels, indices_tuple, ref_emb, ref_labels, float16, self.orthogonality_weight, self._record
            )

    def _record(self, values: dict[str, Any]) -> None:
        for name, value in values.items():  # what record-keeper reads (records.py): the learner, its loss
            setattr(self, name, value)

    def map_labels(self, labels: torch.Tensor, known: bool = False) -> torch.Tensor | None:
        """Training labels -> 0..C-1 (C training classes), on the labels' device. Labels outside the training classes
        (eval on other classes) give None; ``known``: the labels are training labels (no check, no sync)."""
        return self._learners.map_labels(labels, known)

    def skip_batch(self) -> None:
        """The loop will not pass the batch the DataLoader just gave to the loss (``if bad: continue``, an exception
        caught before the loss call): say so, so that the next batch reaches its own learner. A batch the loss
        received is taken already, even when the call raised.

        Examples:
            >>> for x, y in loader:
            ...     if not torch.isfinite(x).all():
            ...         dc.skip_batch()
            ...         continue
        """
        self._router.skip()

    @contextlib.contextmanager
    def one_batch(self) -> Iterator[DivideConquerWrapper]:
        """Loss calls inside the block are all for one batch (LBFGS or SAM closures, a diagnostic after the
        training call): the first takes the batch from the sampler, the others reuse it.

        Examples:
            >>> with dc.one_batch():
            ...     optimizer.step(closure)   # closure() calls dc(model(x), y) one or more times
        """
        with self._router.holding():
            yield self

    # ------------------------------------------------------------------ epochs (a plain loop; see also integrations)

    def setup(
        self,
        model: torch.nn.Module,
        dataset: Dataset,
        *,
        optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | Mapping[str, torch.optim.Optimizer] = (),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        data_and_label_getter: Callable[[Any], tuple[Any, Any]] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
    ) -> DivideConquerWrapper:
        """Set up D&C for your own training loop; required before training. Then call :meth:`end_epoch` after each
        epoch.

        Args:
            model: the module your loop calls to get embeddings (``dc(model(x), y)``), containing the
                SubspaceMaskedEmbedder (e.g. ``torch.nn.Sequential(trunk, embedder)``); it embeds samples for
                clustering in eval mode, without gradients.
            dataset: the training set, in the order of the ClusterSampler's labels.
            optimizers: every optimizer of the loop (one, or a list): their state follows the learners' heads and
                masks when clusters split; ``freeze_trunk_epochs`` freezes the trunk's parameter groups in them.
            device: where inputs go (default: the model's device).
            dtype: as what inputs go (default: their own dtype).
            data_and_label_getter: batch -> (inputs, labels) (default: its first two items).
            collate_fn: the ``collate_fn`` of the DataLoader that embeds samples for clustering (default: torch's).
            num_workers: the workers of the DataLoader that embeds samples for clustering.

        It hooks the embedder and the optimizers and takes the step before epoch 1; when resuming, load first.
        """
        parts = plain_loop_parts(
            (self.embedder, self), model, dataset, optimizers, device, dtype, num_workers, collate_fn
        )
        if data_and_label_getter is not None:
            parts.data_and_label_getter = data_and_label_getter
        return self.setup_parts(parts)

    def setup_parts(self, parts: TrainingParts) -> DivideConquerWrapper:
        """Set D&C up from a :class:`~pml_divide_conquer.training.TrainingParts` (what :meth:`setup`, the Lightning
        callback and :meth:`prepare` do for their loops): checks them, hooks the embedder and the optimizers, takes
        the step before epoch 1."""
        checks.check_parameters_are_optimized(self, parts.optimizers)
        self.controller.check_parts(parts)  # a refused set-up changes nothing: refused before the check below
        self._router.check()  # what was flagged on the device before
        self.controller.setup(parts)
        weakref.finalize(self, self.controller.remove_hooks)  # the hooks go with the wrapper
        self.update_cluster_stats()
        return self

    def end_epoch(self, epoch: int | None = None) -> None:
        """Take the schedule's step after an epoch: recluster, split, change phase, freeze or release the trunk.

        ``epoch``: the epoch that just ended, counted from 1 (default: the one after the last step). Call it after
        the last batch of each epoch, before the next epoch's ``iter(loader)``."""
        step = self.controller.check_end_epoch(epoch)  # a refused call changes nothing: refused before the check
        self._router.check()  # what was flagged on the device during the epoch
        self.controller.step(step)
        self.update_cluster_stats()

    def recluster(self, trainer: Any = None, num_learners: int | None = None) -> None:
        """Recluster now, outside the schedule, into the current K clusters matched to the learners (``trainer``:
        ignored, accepted for PML code written for 0.2). Start a new iterator over the DataLoader afterwards."""
        if num_learners is not None and num_learners != self.num_active:
            raise ValueError(
                f"recluster() keeps K={self.num_active}; K grows through the schedule (grow=True splits clusters "
                "and learners together)"
            )
        self.controller.recluster()
        self.update_cluster_stats()

    def embed_training_set(self, trainer: Any = None) -> np.ndarray:
        """L2-normalised features of the training set, as an embedding pass for reclustering computes them."""
        return self.controller.embed_training_set()

    def update_cluster_stats(self) -> None:
        """Refresh the recorded cluster sizes, classes and mask usage (after the clusters changed)."""
        records.write_cluster_stats(self, self.sampler, self.embedder, self.num_active)

    # ------------------------------------------------------------------ PML's trainers (their glue imported where used)

    def prepare(self, trainer: Any) -> None:
        """PML's ``MetricLossOnly`` / ``TrainWithClassifier``: check the trainer and take the step before epoch 1.
        Required before ``trainer.train()``; load a saved state first when resuming."""
        from .integrations import pml

        pml.prepare(self, trainer)

    def end_of_epoch_hook(self, trainer: Any) -> bool:
        """PML's end-of-epoch hook: the D&C step after ``trainer.epoch``; True."""
        from .integrations import pml

        return pml.end_of_epoch_hook(self, trainer)

    def get_end_of_epoch_hook(self, then: Callable[[Any], bool] | None = None) -> Callable[[Any], bool]:
        """A PML end-of-epoch hook that takes the D&C step, then calls ``then`` (e.g. HookContainer's hook).

        Examples:
            >>> then = hooks.end_of_epoch_hook(tester, dataset_dict, model_folder)
            >>> hook = dc.get_end_of_epoch_hook(then=then)
        """
        from .integrations import pml

        return pml.get_end_of_epoch_hook(self, then)

    def step(self, trainer: Any, epoch: int) -> None:
        """Deprecated: :meth:`end_epoch` (``trainer``: ignored)."""
        notices.warn("step(trainer, epoch) is deprecated: call end_epoch(epoch)", FutureWarning)
        self.end_epoch(epoch)

    def learner_dims(self, learner: int, num_active: int) -> slice | None:
        """Deprecated: :meth:`SubspaceMaskedEmbedder.subspace_dims` (``dc.embedder.subspace_dims(learner,
        num_active)``)."""
        notices.warn(
            "learner_dims(learner, num_active) is deprecated: call dc.embedder.subspace_dims(learner, num_active)",
            FutureWarning,
        )
        return self.embedder.subspace_dims(learner, num_active)

    # ------------------------------------------------------------------ state

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Under DDP, gather what only other ranks hold (rows of the feature memory) to rank ``to``, so that its
        :meth:`state_dict` resumes the run exactly: a collective, called on every rank before rank ``to`` saves
        (as torch's ``ZeroRedundancyOptimizer.consolidate_state_dict``; the Lightning callback and PML's end-of-epoch
        hook call it). ``state_dict()`` itself never communicates. A no-op in one process."""
        if self.feature_memory is not None:
            self.feature_memory.consolidate(to)

    def get_extra_state(self) -> dict[str, Any]:
        """The wrapper's state beyond its modules', one section per owner (torch saves it as ``_extra_state``)."""
        return state.extra_state(self.controller)

    def set_extra_state(self, saved: Any) -> None:
        """Load what :meth:`get_extra_state` saved (a checkpoint of 0.3 converted)."""
        state.load(saved, self.controller)
        self.update_cluster_stats()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # everything is checked before anything of the wrapper changes: a refused checkpoint leaves it as it was
        state.check_keys(self, state_dict, prefix, strict)
        saved = state_dict.get(prefix + "_extra_state")
        if saved is not None:
            state.check(saved, self.controller)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
