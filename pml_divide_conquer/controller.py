"""The end-of-epoch step of Divide & Conquer: recluster, split, change phase, freeze the trunk. No trainer inside.

:class:`EpochController` takes what it needs from the training loop explicitly (a
:class:`~pml_divide_conquer.training.TrainingParts`, given once at set-up) and changes the wrapper's learners, the
embedder's masks and the sampler's assignment as the schedule says. :class:`~pml_divide_conquer.DivideConquerWrapper`
owns one and exposes it as ``setup`` / ``end_epoch`` / ``recluster``; the framework glue (PML's trainers, Lightning)
fills the parts from its trainer.
"""

import time
import weakref

import numpy as np
import torch

from . import heads
from .compat import LOGGER
from .embedder import LEARNED
from .feature_memory import InputCapture
from .freezing import TrunkFreezer, trunk_groups
from .heads import FULL_KEY, PER_LEARNER, learner_key
from .reclustering import FeatureSource
from .schedule import Action, Phase, Step
from .torch_utils import carry_optimizer_state, contains, unwrap
from .training import NOT_SET_UP


class EpochController:
    """Takes the schedule's step after each epoch for one :class:`~pml_divide_conquer.DivideConquerWrapper`.

    Examples:
        >>> controller = EpochController(dc)       # DivideConquerWrapper does this itself
        >>> controller.setup(parts)                # a TrainingParts; takes the step before epoch 1
        >>> controller.end_epoch()                 # after each epoch
    """

    def __init__(self, wrapper):
        self._wrapper = weakref.ref(wrapper)  # the wrapper owns the controller
        self.parts = None
        self.capture = None  # the embedder's input, for cluster_on="trunk"
        self.freezer = None
        self.source = None  # where reclusterings get their features (set up)
        self.fresh_samples = 0
        self.step_seconds = 0.0

    @property
    def wrapper(self):
        return self._wrapper()

    @property
    def is_set_up(self):
        return self.parts is not None

    @property
    def hints(self):
        return self.parts.hints if self.parts is not None else NOT_SET_UP

    # ------------------------------------------------------------------ set-up

    def setup(self, parts):
        """Check ``parts`` against the wrapper, hook the embedder and the optimizers, take the step before epoch 1
        (a step already taken, e.g. when resuming from a loaded state, is not repeated)."""
        w = self.wrapper
        self._check(parts)
        self.remove_hooks()
        if w.reclusterer.settings.cluster_on == "trunk":
            self.capture = InputCapture(w.embedder)
        if w.schedule.freeze_trunk_epochs:
            groups = trunk_groups(parts.optimizers, parts.trunk_params)
            self.freezer = TrunkFreezer(groups, self._trunk_frozen_now)
        weakref.finalize(w, self.remove_hooks)  # the hooks go with the wrapper
        self.parts = parts
        self.source = FeatureSource(parts, self.capture, w.feature_memory)
        self.step(0)

    def _check(self, parts):
        w = self.wrapper
        if parts.model is None or not contains(parts.model, w.embedder):
            raise ValueError(
                "the model given at set-up must contain the wrapper's SubspaceMaskedEmbedder (its output is the "
                "embedding you pass to the wrapper). For a trunk and an embedder called one after the other, pass "
                "torch.nn.Sequential(trunk, embedder)."
            )
        if unwrap(parts.model) is w.embedder and w.reclusterer.settings.cluster_on == "trunk":
            raise ValueError(
                'cluster_on="trunk" clusters the features the SubspaceMaskedEmbedder receives, but the model given '
                "at set-up is the embedder itself, which receives the raw inputs: pass the whole model (trunk and "
                'embedder), or build the wrapper with cluster_on="embedding"'
            )
        if parts.dataset is None or len(parts.dataset) != len(w.sampler.labels):
            size = "none" if parts.dataset is None else f"{len(parts.dataset)} samples"
            raise ValueError(
                f"the training dataset given at set-up ({size}) must hold the {len(w.sampler.labels)} samples of the "
                "ClusterSampler's labels, in the same order: reclustering embeds samples by their index"
            )
        held = {id(p) for opt in parts.optimizers for group in opt.param_groups for p in group["params"]}
        missing = [name for name, p in w.named_parameters() if p.requires_grad and id(p) not in held]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise ValueError(
                f"DivideConquerWrapper has trainable parameters that no optimizer holds ({shown}): they would never "
                'train. Give them to an optimizer (PML\'s trainers: optimizers["metric_loss_optimizer"] = '
                "torch.optim.Adam(dc.parameters(), lr=...)), or set requires_grad=False on them to keep them fixed."
            )

    def _trunk_frozen_now(self):
        w = self.wrapper
        return w is not None and w.last_epoch >= 0 and w.schedule.trunk_frozen_in_epoch(w.last_epoch + 1)

    def remove_hooks(self):
        if self.capture is not None:
            self.capture.remove()
            self.capture = None
        if self.freezer is not None:
            self.freezer.remove()
            self.freezer = None

    # ------------------------------------------------------------------ steps

    def end_epoch(self, epoch=None):
        """Take the step after ``epoch`` (default: the epoch after the last step taken)."""
        w = self.wrapper
        if not self.is_set_up:
            raise RuntimeError(f"DivideConquerWrapper.end_epoch() before set-up: {self.hints.setup}")
        self.step(w.last_epoch + 1 if epoch is None else int(epoch))

    def step(self, epoch):
        """Take the schedule's step after ``epoch`` (0: before training). A step already taken is skipped."""
        w = self.wrapper
        if epoch <= w.last_epoch:
            return
        if epoch > w.last_epoch + 1:
            raise RuntimeError(
                f"the D&C steps after epochs {list(range(w.last_epoch + 1, epoch))} were never taken (this wrapper "
                f"has taken steps up to epoch {w.last_epoch}): {self.hints.end_epoch}. When resuming, load the "
                "wrapper's state_dict first; it holds the steps taken."
            )
        start = time.perf_counter()
        w.router.check()  # what was flagged on the device during the epoch
        if w.feature_memory is not None:
            w.feature_memory.synchronize()  # every rank (and so rank 0's checkpoint) holds every row
        step = w.schedule.step_after_epoch(epoch)
        new_phase = step.phase != w.phase or epoch == 0
        if step.phase != Phase.DIVIDE and w.phase == Phase.DIVIDE and w.heads == PER_LEARNER:
            heads.assemble(
                [w.learners[learner_key(k)] for k in range(w.num_active)],
                w.learners[FULL_KEY],
                dims=[w.learner_dims(k, w.num_active) for k in range(w.num_active)],
                class_owner=self._class_owners(),
            )
            if w.full_head == "imprint" and heads.has_heads(w.learners[FULL_KEY]):
                self._imprint_full_head()
        if step.action == Action.ALL_DATA:
            w.sampler.set_assignment(np.zeros(len(w.sampler.labels), dtype=np.int64), 1)
            self._clusters_changed()
        elif step.action in (Action.RECLUSTER, Action.SPLIT):
            self._divide(step)
            LOGGER.info(
                "D&C: %s after epoch %d in %.1f s (k-means %.1f s%s): K=%d, cluster sizes %s",
                "split every cluster in two" if step.action == Action.SPLIT else "reclustered",
                epoch,
                w.recluster_seconds,
                w.clustering_seconds,
                ""
                if w.feature_memory is None
                else f", from training features, {self.fresh_samples} samples embedded afresh",
                step.num_clusters,
                w.sampler.cluster_sizes().tolist(),
            )
        if new_phase:
            LOGGER.info("D&C: %s phase from epoch %d", str(step.phase).replace("_", " "), epoch + 1)
        was_frozen = epoch > 0 and w.schedule.trunk_frozen_in_epoch(epoch)
        if step.trunk_frozen != was_frozen:
            LOGGER.info("D&C: trunk %s in epoch %d", "frozen" if step.trunk_frozen else "trained", epoch + 1)
        w.last_epoch = epoch
        w.sampler.start_epoch()
        w.update_cluster_stats()
        self.step_seconds = time.perf_counter() - start

    def recluster(self):
        """Recluster now, outside the schedule, into the current K clusters matched to the learners."""
        w = self.wrapper
        if not self.is_set_up:
            raise RuntimeError(f"DivideConquerWrapper.recluster() before set-up: {self.hints.setup}")
        if w.phase == Phase.ALL_DATA:
            raise RuntimeError("no reclustering in the all-data phase: it trains on batches from all the data")
        self._divide(Step(Action.RECLUSTER, w.num_active, w.phase))
        w.update_cluster_stats()

    def _clusters_changed(self):
        if self.parts.on_clusters_changed is not None:
            self.parts.on_clusters_changed()

    def _divide(self, step):
        w = self.wrapper
        split = step.action == Action.SPLIT
        result = w.reclusterer.assign(
            self.source, w.sampler.labels, w.sampler.assignment, w.num_active, step.num_clusters, split
        )
        new = result.assignment
        w.recluster_seconds = result.seconds
        w.clustering_seconds = result.clustering_seconds
        self.fresh_samples = result.fresh_samples
        if split:
            optimizers = self.parts.optimizers
            self._split_learners(optimizers)
            if w.embedder.masks is not None:
                # learners 2c and 2c+1 start from mask c (rows beyond 2K unchanged), Adam moments too
                rows = np.concatenate([np.arange(2 * w.num_active) // 2, np.arange(2 * w.num_active, w.num_learners)])
                carry_optimizer_state(optimizers, w.embedder.masks, w.embedder.masks, rows)
                w.embedder.split_masks(w.num_active)
        w.num_active = step.num_clusters
        w.sampler.set_assignment(new, step.num_clusters)
        self._clusters_changed()

    def _split_learners(self, optimizers):
        """Learners 2c and 2c+1 start from learner c (its heads restricted to their own dims in fixed mode)."""
        w = self.wrapper
        size = w.embedder.subspace_size(w.num_active)
        halves = None if w.embedder.mode == LEARNED else [np.arange(0, size // 2), np.arange(size // 2, size)]
        child_size = w.embedder.subspace_size(2 * w.num_active)
        heads.split_learners(w.learners, w.miners, w.num_active, halves, optimizers, child_size)

    def _imprint_full_head(self):
        """Each class's vector of the full-embedding head := its samples' mean full embedding (heads.imprint)."""
        w = self.wrapper
        start = time.perf_counter()
        emb = w.reclusterer.embed(self.source, w.sampler.labels, space="embedding")
        labels = w.map_labels(torch.as_tensor(w.sampler.labels))
        count = heads.imprint(w.learners[FULL_KEY], torch.as_tensor(emb), labels)
        LOGGER.info(
            "D&C: %d full-embedding head(s) imprinted from the class means in %.1f s",
            count,
            time.perf_counter() - start,
        )

    def _class_owners(self):
        """For each class (0..C-1), the cluster holding most of its samples."""
        w = self.wrapper
        class_ids = w.label_map.class_ids.numpy()
        mapped = np.searchsorted(class_ids, w.sampler.labels)
        counts = np.zeros((len(class_ids), w.num_active), dtype=np.int64)
        np.add.at(counts, (mapped, np.minimum(w.sampler.assignment, w.num_active - 1)), 1)
        return counts.argmax(axis=1)

    def embed_training_set(self):
        """L2-normalised features of the training set (the space reclustering clusters), by an embedding pass."""
        w = self.wrapper
        if not self.is_set_up:
            raise RuntimeError(f"embedding the training set needs the set-up: {self.hints.setup}")
        return w.reclusterer.embed(self.source, w.sampler.labels)
