"""The end-of-epoch step of Divide & Conquer: recluster, split, change phase, freeze the trunk. No trainer inside.

:class:`EpochController` is built from the parts it steps - the schedule, the sampler, the embedder, the learners,
the reclusterer and the feature memory - and owns the state it changes: the last epoch stepped (and from it, with
the schedule, K and the phase), the set-up (the loop's :class:`~pml_divide_conquer.training.TrainingParts`, the
hooks on the embedder and the optimizers) and the timings of the last reclustering. It holds no reference to the
wrapper that owns it. :class:`~pml_divide_conquer.DivideConquerWrapper` exposes it as ``dc.controller`` and its
state read-only (``dc.last_epoch``, ``dc.num_active``, ``dc.phase``, ...).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .compat import LOGGER
from .embedder import LEARNED
from .feature_memory import InputCapture
from .freezing import TrunkFreezer, trunk_groups
from .learners import HeadStartContext
from .reclustering import FeatureSource
from .schedule import Action, Phase, Step
from .torch_utils import carry_optimizer_state, contains, unwrap
from .training import NOT_SET_UP

if TYPE_CHECKING:
    from .embedder import SubspaceMaskedEmbedder
    from .feature_memory import FeatureMemory
    from .learners import Learners
    from .reclustering import Reclusterer
    from .sampler import ClusterSampler
    from .schedule import DivideConquerSchedule
    from .training import LoopHints, TrainingParts


class EpochController:
    """Takes the schedule's step after each epoch.

    Examples:
        >>> controller = EpochController(schedule, sampler, embedder, learners,
        ...                              reclusterer, memory)
        >>> controller.setup(parts)  # a TrainingParts; the step before epoch 1
        >>> controller.end_epoch()  # after each epoch
        >>> controller.last_epoch, controller.num_active, controller.phase
        (1, 1, <Phase.DIVIDE: 'divide'>)
    """

    def __init__(
        self,
        schedule: DivideConquerSchedule,
        sampler: ClusterSampler,
        embedder: SubspaceMaskedEmbedder,
        learners: Learners,
        reclusterer: Reclusterer,
        memory: FeatureMemory | None = None,
    ) -> None:
        self.schedule, self.sampler, self.embedder = schedule, sampler, embedder
        self.learners, self.reclusterer, self.memory = learners, reclusterer, memory
        self.last_epoch = -1  # the last epoch whose end-of-epoch step has been taken (0: the step before training)
        self.parts: TrainingParts | None = None  # the loop's parts, given at set-up
        self.source: FeatureSource | None = None  # where reclusterings get their features (set up)
        self.freezer: TrunkFreezer | None = None
        self.recluster_seconds = self.clustering_seconds = self.step_seconds = 0.0
        self.fresh_samples = 0  # samples the last reclustering embedded afresh

    # ------------------------------------------------------------------ the state it owns

    @property
    def num_active(self) -> int:
        """K: the learners (and clusters, but in the all-data phase) in effect in the epoch being trained; 1 before
        the set-up. Derived from the schedule and the last epoch stepped: kept in one place."""
        return 1 if self.last_epoch < 0 else self.schedule.learners_in_epoch(self.last_epoch + 1)

    @property
    def phase(self) -> Phase:
        """The phase of the epoch being trained (before training: of epoch 1)."""
        return self.schedule.phase_in_epoch(max(self.last_epoch, 0) + 1)

    @property
    def is_set_up(self) -> bool:
        return self.parts is not None

    @property
    def hints(self) -> LoopHints:
        """How messages name the calls of the loop in use."""
        return self.parts.hints if self.parts is not None else NOT_SET_UP

    def loop_epoch(self) -> int | None:
        """The epoch the loop says it is training (counted from 1), when it keeps count; else None."""
        return self.parts.current_epoch() if self.parts is not None and self.parts.current_epoch else None

    def batch_features(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        """What the feature memory keeps of a training batch: the trunk's output (the embedder's input, captured
        there) with ``cluster_on="trunk"``, else the embeddings; None when the capture missed the batch."""
        assert self.source is not None  # (the training step runs set up)
        capture = self.source.capture
        return embeddings.detach() if capture is None else capture.take()

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    # ------------------------------------------------------------------ set-up

    def setup(self, parts: TrainingParts) -> None:
        """Check ``parts``, hook the embedder and the optimizers, take the step before epoch 1 (a step already taken,
        e.g. when resuming from a loaded state, is not repeated)."""
        self.check_parts(parts)
        self.remove_hooks()
        capture = InputCapture(self.embedder) if self.reclusterer.settings.cluster_on == "trunk" else None
        if self.schedule.freeze_trunk_epochs:
            groups = trunk_groups(parts.optimizers, parts.trunk_params)
            self.freezer = TrunkFreezer(groups, self._trunk_frozen_now)
        self.parts = parts
        self.source = FeatureSource(parts, capture, self.memory)
        self.step(0)
        if self.sampler.version == 0:  # the first epochs draw from the single cluster: say now who sits out
            self.sampler.clusters.warn_fragments(self.sampler.m)

    def check_parts(self, parts: TrainingParts) -> None:
        """Raise, changing nothing, if ``parts`` cannot set D&C up (a model without the embedder, a dataset of
        another size than the sampler's labels, ...)."""
        if parts.model is None or not contains(parts.model, self.embedder):
            raise ValueError(
                "the model given at set-up must contain the wrapper's SubspaceMaskedEmbedder (its output is the "
                "embedding you pass to the wrapper). For a trunk and an embedder called one after the other, pass "
                "torch.nn.Sequential(trunk, embedder)."
            )
        if unwrap(parts.model) is self.embedder and self.reclusterer.settings.cluster_on == "trunk":
            raise ValueError(
                'cluster_on="trunk" clusters the features the SubspaceMaskedEmbedder receives, but the model given '
                "at set-up is the embedder itself, which receives the raw inputs: pass the whole model (trunk and "
                'embedder), or build the wrapper with reclusterer=Reclusterer(cluster_on="embedding")'
            )
        if parts.dataset is None or len(parts.dataset) != len(self.sampler.labels):
            size = "none" if parts.dataset is None else f"{len(parts.dataset)} samples"
            raise ValueError(
                f"the training dataset given at set-up ({size}) must hold the {len(self.sampler.labels)} samples of "
                "the ClusterSampler's labels, in the same order: reclustering embeds samples by their index"
            )

    def _check_dataset(self):
        """The training set still holds the samples of the sampler's labels (it may have grown or shrunk since)."""
        n, expected = len(self.parts.dataset), len(self.sampler.labels)
        if n != expected:
            change = "grew" if n > expected else "shrank"
            raise RuntimeError(
                f"the training dataset {change} from {expected} samples (the ClusterSampler's labels, at set-up) to "
                f"{n}: D&C would never draw its new samples, or draw samples that are gone. Build a ClusterSampler "
                "and a wrapper for the new dataset (resuming the model from a checkpoint), or keep the dataset as it "
                "was."
            )

    def _trunk_frozen_now(self):
        return self.last_epoch >= 0 and self.schedule.trunk_frozen_in_epoch(self.last_epoch + 1)

    def remove_hooks(self) -> None:
        """Take the hooks of the set-up off the embedder and the optimizers."""
        if self.source is not None and self.source.capture is not None:
            self.source.capture.remove()
            self.source.capture = None
        if self.freezer is not None:
            self.freezer.remove()
            self.freezer = None

    # ------------------------------------------------------------------ steps

    def end_epoch(self, epoch: int | None = None) -> None:
        """Take the step after ``epoch`` (default: the epoch after the last step taken)."""
        self.step(self.check_end_epoch(epoch))

    def check_end_epoch(self, epoch: int | None = None) -> int:
        """The epoch whose step ``end_epoch(epoch)`` takes; raises, changing nothing, if it cannot be taken now:
        before set-up, no batch since the last step (``end_epoch()`` twice for one epoch, or a loop that does not
        call the wrapper), steps before it never taken, or a training set that changed size."""
        if not self.is_set_up:
            raise RuntimeError(f"DivideConquerWrapper.end_epoch() before set-up: {self.hints.setup}")
        if epoch is None and self.last_epoch >= 0 and self.sampler.stream.batches_this_epoch == 0:
            if self.last_epoch == 0:
                raise RuntimeError(
                    "dc.end_epoch() would take the step after epoch 1, but no batch reached the loss since set-up: "
                    "is the loop calling the wrapper? Each batch's loss is loss = dc(embeddings, labels), with the "
                    "DataLoader drawing from the wrapper's ClusterSampler; then dc.end_epoch() after the epoch's "
                    "last batch."
                )
            raise RuntimeError(
                f"dc.end_epoch() would take the step after epoch {self.last_epoch + 1}, but no batch reached the "
                f"loss since the step after epoch {self.last_epoch}: end_epoch() called twice for one epoch? Call "
                "it once after each epoch's last batch (end_epoch(epoch) with the epoch's number is skipped when "
                "that step was taken already)."
            )
        epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        self._check_step(epoch)
        return epoch

    def _check_step(self, epoch):
        """Raise if the step after ``epoch`` cannot be taken: steps before it never taken, or a training set that
        changed size (nothing to check for a step taken already, which is skipped)."""
        if epoch <= self.last_epoch:
            return
        if epoch > self.last_epoch + 1:
            raise RuntimeError(
                f"the D&C steps after epochs {list(range(self.last_epoch + 1, epoch))} were never taken (this wrapper "
                f"has taken steps up to epoch {self.last_epoch}): {self.hints.end_epoch}. When resuming, load the "
                "wrapper's state_dict first; it holds the steps taken."
            )
        self._check_dataset()

    def step(self, epoch: int) -> None:
        """Take the schedule's step after ``epoch`` (0: before training). A step already taken is skipped."""
        if epoch <= self.last_epoch:
            return
        self._check_step(epoch)
        start = time.perf_counter()
        if self.memory is not None:
            self.memory.synchronize()  # every rank (and so rank 0's checkpoint) holds every row
        phase, k = self.phase, self.num_active
        step = self.schedule.step_after_epoch(epoch)
        if step.phase != Phase.DIVIDE and phase == Phase.DIVIDE:
            self.learners.start_full_heads(self._head_start_context())
        if step.action == Action.ALL_DATA:
            self.sampler.set_assignment(np.zeros(len(self.sampler.labels), dtype=np.int64), 1)
            self._clusters_changed()
        elif step.action in (Action.RECLUSTER, Action.SPLIT):
            self._divide(step, k)
            LOGGER.info(
                "D&C: %s after epoch %d in %.1f s (k-means %.1f s%s): K=%d, cluster sizes %s",
                "split every cluster in two" if step.action == Action.SPLIT else "reclustered",
                epoch,
                self.recluster_seconds,
                self.clustering_seconds,
                ""
                if self.memory is None
                else f", from training features, {self.fresh_samples} samples embedded afresh",
                step.num_clusters,
                self.sampler.cluster_sizes().tolist(),
            )
        if step.phase != phase or epoch == 0:
            LOGGER.info("D&C: %s phase from epoch %d", str(step.phase).replace("_", " "), epoch + 1)
        was_frozen = epoch > 0 and self.schedule.trunk_frozen_in_epoch(epoch)
        if step.trunk_frozen != was_frozen:
            LOGGER.info("D&C: trunk %s in epoch %d", "frozen" if step.trunk_frozen else "trained", epoch + 1)
        self.last_epoch = epoch
        self.sampler.stream.start_epoch()
        self.step_seconds = time.perf_counter() - start

    def recluster(self) -> None:
        """Recluster now, outside the schedule, into the current K clusters matched to the learners."""
        if not self.is_set_up:
            raise RuntimeError(f"DivideConquerWrapper.recluster() before set-up: {self.hints.setup}")
        if self.phase == Phase.ALL_DATA:
            raise RuntimeError("no reclustering in the all-data phase: it trains on batches from all the data")
        self._check_dataset()
        self._divide(Step(Action.RECLUSTER, self.num_active, self.phase), self.num_active)

    def _clusters_changed(self):
        if self.parts.on_clusters_changed is not None:
            self.parts.on_clusters_changed()

    def _divide(self, step, k):
        """Recluster from K=``k`` clusters into ``step.num_clusters`` (a split: twice as many)."""
        split = step.action == Action.SPLIT
        sampler = self.sampler
        result = self.reclusterer.assign(self.source, sampler.labels, sampler.assignment, k, step.num_clusters, split)
        self.recluster_seconds, self.clustering_seconds = result.seconds, result.clustering_seconds
        self.fresh_samples = result.fresh_samples
        if split:
            optimizers = self.parts.optimizers
            self._split_learners(k, optimizers)
            if self.embedder.masks is not None:
                # learners 2c and 2c+1 start from mask c (rows beyond 2K unchanged), Adam moments too
                rows = np.concatenate([np.arange(2 * k) // 2, np.arange(2 * k, self.embedder.num_learners)])
                carry_optimizer_state(optimizers, self.embedder.masks, self.embedder.masks, rows)
                self.embedder.split_masks(k)
        sampler.set_assignment(result.assignment, step.num_clusters)
        self._clusters_changed()

    def _split_learners(self, k, optimizers):
        """Learners 2c and 2c+1 start from learner c (its heads restricted to their own dims in fixed mode)."""
        size = self.embedder.subspace_size(k)
        halves = None if self.embedder.mode == LEARNED else [np.arange(0, size // 2), np.arange(size // 2, size)]
        self.learners.split(k, halves, optimizers, self.embedder.subspace_size(2 * k))

    def _head_start_context(self):
        k, sampler = self.num_active, self.sampler

        def embed():
            emb = self.reclusterer.embed(self.source, sampler.labels, space="embedding")
            return torch.as_tensor(emb), self.learners.map_labels(torch.as_tensor(sampler.labels))

        return HeadStartContext(
            num_active=k,
            dims=[self.embedder.subspace_dims(i, k) for i in range(k)],
            class_owner=self.learners.class_owners(sampler.labels, sampler.assignment, k),
            embed=embed,
        )

    def embed_training_set(self) -> np.ndarray:
        """L2-normalised features of the training set (the space reclustering clusters), by an embedding pass."""
        source = self.source  # (made at set-up)
        if not self.is_set_up or source is None:
            raise RuntimeError(f"embedding the training set needs the set-up: {self.hints.setup}")
        return self.reclusterer.embed(source, self.sampler.labels)
