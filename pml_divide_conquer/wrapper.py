"""DivideConquerWrapper: PML's ``loss_funcs["metric_loss"]`` for Divide & Conquer training."""

import weakref

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f

from . import distributed, heads, trainer_glue
from .embedder import LEARNED, SubspaceMaskedEmbedder
from .feature_memory import FeatureMemory, OutputCapture
from .heads import FULL_KEY, PER_LEARNER, learner_key
from .reclustering import Reclusterer
from .sampler import ClusterSampler
from .schedule import Action, Phase, Step, make_schedule

RECLUSTER_FROM = ("pass", "training")


class DivideConquerWrapper(BaseMetricLossFunction):
    """Divide & Conquer around any label-based PML loss (and miner), used as ``loss_funcs["metric_loss"]``.

    Training runs in up to three phases (:class:`~pml_divide_conquer.DivideConquerSchedule`):

    1. **divide**: every batch the trainer draws from the :class:`ClusterSampler` comes from one cluster and is
       routed to that cluster's learner, which computes the loss on its own subspace of the embedding (given by
       the :class:`SubspaceMaskedEmbedder`). Every ``recluster_every`` epochs the training set is embedded and
       reclustered, new clusters matched to the learners that trained on them; with ``grow=True`` every cluster
       is also split in two until ``num_learners`` is reached.
    2. **full embedding** (from ``full_embedding_epoch``): the loss is computed on the whole normalised
       embedding, but batches still come from one cluster at a time and reclustering goes on.
    3. **all data** (from ``all_data_epoch``): m-per-class batches over all the data, full embedding.

    ``DivideConquerSchedule.journal(num_epochs, K)`` and ``.cvpr(num_epochs, K)`` give the authors' schedules.

    Args:
        loss: a PML loss that takes labels.
        miner: optional PML tuple miner (one copy per learner, applied in the learner's subspace).
        embedder: the :class:`SubspaceMaskedEmbedder`, also passed to the trainer as ``models["embedder"]``. Its
            ``num_learners`` is K.
        sampler: the :class:`ClusterSampler`, also passed to the trainer as ``sampler=``.
        schedule: a :class:`DivideConquerSchedule` (e.g. ``DivideConquerSchedule.journal(180, K)``), or None to
            build one from the next five arguments.
        recluster_every: T, in epochs.
        full_embedding_epoch: first epoch of the full-embedding phase, or None.
        all_data_epoch: first epoch of the all-data phase, or None.
        grow: True: start with K=1 and split clusters in two at each reclustering (journal version); False:
            fixed K, clustered by :meth:`prepare` before the first epoch (CVPR version).
        freeze_trunk_epochs: the trunk's learning rate is 0 for this many epochs after each reclustering (the
            journal README run's ``--mod-epoch-freeze=1``); needs ``optimizers["trunk_optimizer"]``.
        heads: for classification losses (ArcFace, CosFace, ProxyAnchor, SoftTriple, ...): ``"per_learner"``
            (default) - one head per learner sized to its subspace, and the full-embedding head started from the
            learners' heads put together - or ``"shared"`` - one head for the full embedding that every learner
            trains its part of (fixed chunks: the slice of the head on its chunk; learned masks: the whole head on
            the masked embedding) and the later phases go on training. With ArcFace on the Han benchmark,
            per-learner heads were level with the baseline and a shared head 0.7 R@1 below (docs/benchmarks.md).
            Other parameters of the loss (e.g. a learned ``MarginLoss`` beta) are copied or shared the same way.
            Miners and ``CrossBatchMemory`` memories are always one per learner.
        orthogonality_weight: lambda of the mask orthogonality term (learned masks only, divide phase).
        cluster_on: ``"trunk"`` (default, as the reference code: L2-normalised trunk output) or ``"embedding"``.
        cluster_dataset: dataset embedded for clustering, in the same order as the training dataset, typically
            the training images with test-time transforms. Default: the trainer's dataset.
        recluster_from: ``"training"``: a reclustering clusters the features that training last computed for
            every sample (the space of ``cluster_on``, kept L2-normalised in float16: N x dim x 2 bytes), with no
            embedding pass; only samples no batch held since the last reclustering are embedded afresh. Those
            features come from training-mode forward passes on augmented inputs and are up to T epochs old. With
            ``cluster_on="trunk"``, :meth:`prepare` puts a forward hook on the trunk (removed with the wrapper).
            ``"pass"`` (as the reference code): every reclustering embeds the training set once more (the images
            of ``cluster_dataset`` when given). None (default): ``"training"``, or ``"pass"`` when
            ``cluster_dataset`` is given. On the Han benchmark, reclustering from training features took 4 % of
            an embedding pass (k-means aside) at the same R@1 (-0.1 ± 0.5, 3 seeds; docs/benchmarks.md).
        feature_memory_device: where ``recluster_from="training"`` keeps its rows: ``"cpu"`` (default) or the
            trainer's device.
        cluster_batch_size: batch size of that embedding pass.
        cluster_num_workers: DataLoader workers of that embedding pass (default: the trainer's
            ``dataloader_num_workers``).
        kmeans_niter: faiss k-means iterations (reference: 100).
        kmeans_max_points_per_centroid: faiss trains k-means on at most this many points per centroid; None
            (default, as the reference) uses all points.
        kmeans_max_retries: k-means (and each 2-way split) is retried with the next seed until every cluster has
            2 classes with 2 samples each, at most this many times (reference: 30).
        faiss_gpu: None: use a GPU if faiss-gpu sees one; False: CPU only.
        seed: k-means seed; the same at every reclustering, as in the reference code (trial t uses seed + t).
        conquer_epoch: deprecated; ``conquer_epoch=E`` means ``full_embedding_epoch=E, all_data_epoch=E``.

    Examples:
        >>> embedder = SubspaceMaskedEmbedder(64, num_learners=4,
        ...                                   embedder=torch.nn.Linear(128, 64))
        >>> sampler = ClusterSampler(train_labels, batch_size=32, m=4)
        >>> dc = DivideConquerWrapper(
        ...     losses.TripletMarginLoss(), miners.TripletMarginMiner(),
        ...     embedder=embedder, sampler=sampler,
        ...     schedule=DivideConquerSchedule.journal(num_epochs=20, num_learners=4))
        >>> trainer = trainers.MetricLossOnly(
        ...     models={"trunk": trunk, "embedder": embedder}, optimizers=optimizers,
        ...     batch_size=32, loss_funcs={"metric_loss": dc}, dataset=train_set,
        ...     sampler=sampler, end_of_epoch_hook=dc.get_end_of_epoch_hook())
        >>> dc.prepare(trainer)
        >>> trainer.train(num_epochs=20)
    """

    def __init__(
        self,
        loss,
        miner=None,
        *,
        embedder,
        sampler,
        schedule=None,
        recluster_every=2,
        full_embedding_epoch=None,
        all_data_epoch=None,
        grow=True,
        freeze_trunk_epochs=0,
        heads=PER_LEARNER,
        orthogonality_weight=0.01,
        cluster_on="trunk",
        cluster_dataset=None,
        cluster_batch_size=256,
        cluster_num_workers=None,
        kmeans_niter=100,
        kmeans_max_points_per_centroid=None,
        kmeans_max_retries=30,
        faiss_gpu=None,
        seed=0,
        recluster_from=None,
        feature_memory_device="cpu",
        conquer_epoch=None,
    ):
        super().__init__()
        self._check_arguments(loss, miner, embedder, sampler, heads)
        self.schedule = make_schedule(
            schedule,
            embedder.num_learners,
            recluster_every=recluster_every,
            full_embedding_epoch=full_embedding_epoch,
            all_data_epoch=all_data_epoch,
            grow=grow,
            freeze_trunk_epochs=freeze_trunk_epochs,
            conquer_epoch=conquer_epoch,
        )
        # Held outside the module tree: the embedder is trained and saved as models["embedder"], and registering
        # it here would put its parameters in the metric loss optimizer too.
        self.__dict__["embedder"] = embedder
        self.__dict__["sampler"] = sampler
        self.__dict__["_trainer_ref"] = None  # the trainer given to prepare(), as a weak reference
        self.heads = heads
        self.orthogonality_weight = float(orthogonality_weight)
        self.reclusterer = Reclusterer(
            cluster_on=cluster_on,
            dataset=cluster_dataset,
            batch_size=cluster_batch_size,
            num_workers=cluster_num_workers,
            niter=kmeans_niter,
            max_points_per_centroid=kmeans_max_points_per_centroid,
            max_retries=kmeans_max_retries,
            gpu=faiss_gpu,
            seed=seed,
        )
        if recluster_from is None:
            recluster_from = "pass" if cluster_dataset is not None else "training"
        if recluster_from not in RECLUSTER_FROM:
            raise ValueError(f'recluster_from must be "pass" or "training", got {recluster_from!r}')
        if recluster_from == "training" and cluster_dataset is not None:
            raise ValueError(
                'recluster_from="training" clusters the features of the training batches, so cluster_dataset (the '
                'images to embed for clustering) would be ignored: use recluster_from="pass" with cluster_dataset'
            )
        self.recluster_from = recluster_from
        self.__dict__["feature_memory"] = (
            FeatureMemory(len(sampler.labels), feature_memory_device) if recluster_from == "training" else None
        )
        self.__dict__["_trunk_capture"] = None  # the trunk's forward hook (recluster_from="training", trunk space)
        if trainer_glue.needs_equal_counts(loss):
            sampler.require_equal_counts()  # e.g. SmoothAPLoss: the same number of samples of every class a batch
        self._build_learners(loss, miner)
        self.num_active = 1
        self.last_epoch = -1  # last epoch whose end-of-epoch step has been taken (0: the step before training)
        self._init_recordables()

    # ------------------------------------------------------------------ construction steps
    @staticmethod
    def _check_arguments(loss, miner, embedder, sampler, heads_mode):
        trainer_glue.check_loss(loss)
        trainer_glue.check_miner(miner)
        if not isinstance(embedder, SubspaceMaskedEmbedder):
            raise TypeError(f"embedder must be a SubspaceMaskedEmbedder, got {type(embedder).__name__}")
        if not isinstance(sampler, ClusterSampler):
            raise TypeError(
                f"sampler must be a ClusterSampler, got {type(sampler).__name__}: batches must come from one "
                "cluster each, and the wrapper must know which"
            )
        if heads_mode not in (heads.SHARED, heads.PER_LEARNER):
            raise ValueError(f'heads must be "{heads.SHARED}" or "{heads.PER_LEARNER}", got {heads_mode!r}')
        num_classes = len(np.unique(sampler.labels))
        if embedder.num_learners > num_classes:
            raise ValueError(
                f"num_learners={embedder.num_learners} is larger than the number of training classes "
                f"({num_classes}): every cluster needs several classes. Use at most {num_classes // 2 or 1} learners."
            )
        heads.check_fits(loss, embedder.embedding_size, num_classes)

    def _build_learners(self, loss, miner):
        """One learner (a copy of the loss and miner) per cluster, plus the full-embedding learner."""
        # labels reach the learners mapped to 0..C-1, the range classification heads are built for
        # (kept on the CPU, where PML's trainers hand over labels: mapping them costs no device sync)
        self.class_ids = torch.as_tensor(np.unique(self.sampler.labels))
        first_size = self.embedder.subspace_size(self.schedule.learners_in_epoch(1))
        self.learners, self.miners = heads.make_learners(loss, miner, self.num_learners, self.heads, first_size)

    def _init_recordables(self):
        self.current_learner = -1
        self.orthogonality = 0.0
        # scalars that PML's record-keeper logs through HookContainer (one series each, per learner/cluster)
        per_learner = [
            f"{what}{k}_{stat}"
            for k in range(self.num_learners)
            for what, stat in (
                ("learner", "loss"),
                ("cluster", "size"),
                ("cluster", "classes"),
                ("learner", "mask_usage"),
            )
        ]
        for name in per_learner:
            setattr(self, name, 0.0)
        self.full_loss = 0.0
        self.recluster_seconds = 0.0  # the last reclustering: all of it, and the clustering (k-means, matching)
        self.clustering_seconds = 0.0
        self.add_to_recordable_attributes(
            list_of_names=[
                "num_active",
                "num_clusters",
                "current_learner",
                "orthogonality",
                "phase_id",
                "full_loss",
                "recluster_seconds",
                "clustering_seconds",
            ]
            + per_learner,
            is_stat=False,
        )
        self._update_cluster_stats()

    # ------------------------------------------------------------------ phase
    @property
    def phase(self):
        """The phase of the epoch being trained (before training: of epoch 1)."""
        return self.schedule.phase_in_epoch(max(self.last_epoch, 0) + 1)

    @property
    def phase_id(self):
        return list(Phase).index(self.phase)

    @property
    def num_clusters(self):
        return self.sampler.num_clusters

    @property
    def num_learners(self):
        return self.embedder.num_learners

    # ------------------------------------------------------------------ loss
    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        if labels is None:
            raise ValueError(
                "DivideConquerWrapper needs the batch labels: call it as loss(embeddings, labels[, indices_tuple])"
            )
        if ref_emb is not None or ref_labels is not None:
            raise ValueError("DivideConquerWrapper does not take ref_emb/ref_labels: each learner uses its own batch")
        c_f.check_shapes(embeddings, labels)
        if not torch.isfinite(embeddings).all():
            raise FloatingPointError(
                "non-finite values (NaN or inf) in the embeddings reaching DivideConquerWrapper: the model has "
                "diverged or the input contains NaN. Lower the learning rate or check the data."
            )
        if indices_tuple is not None and self.miners is not None:
            raise ValueError(
                "got an indices_tuple from the trainer's mining_funcs and a miner in DivideConquerWrapper: give the "
                "miner only to the wrapper, which mines in each learner's subspace"
            )
        if not self.training:  # outside training (e.g. a validation loss): the full learner, full space
            if embeddings.requires_grad and torch.is_grad_enabled():
                raise RuntimeError(
                    "DivideConquerWrapper is in eval mode but gradients are being computed: is it in the trainer's "
                    "freeze_these? In eval mode it trains no learner. Keep it out of freeze_these."
                )
            return self._learner_loss(FULL_KEY, F.normalize(embeddings, dim=1), labels, indices_tuple)
        self._check_prepared()
        self.sampler.check_rank(RuntimeError)
        ticket = self.sampler.pop_ticket(self._local_labels(labels))
        # all ranks must train the same learner at every step (their batches form one cluster batch), and draw
        # from the same plan (the fingerprint differs when their ClusterSamplers have different seeds)
        distributed.check_same_on_all_ranks(
            [ticket.version, ticket.pass_index, ticket.position, ticket.cluster, ticket.fingerprint],
            "the cluster batch of this step",
        )
        self._record_features(embeddings, ticket)
        if self.phase != Phase.DIVIDE:
            self.current_learner = self.num_learners
            loss = self._learner_loss(FULL_KEY, F.normalize(embeddings, dim=1), labels, indices_tuple)
            self.full_loss = float(loss.detach())
            return loss
        if ticket.cluster >= self.num_active:
            raise RuntimeError(
                f"batch from cluster {ticket.cluster} but only {self.num_active} learners are active: the "
                "sampler's assignment was changed outside DivideConquerWrapper"
            )
        k = ticket.cluster
        self.current_learner = k
        x = self.embedder.subspace(embeddings, k, self.num_active)
        loss = self._learner_loss(learner_key(k), x, labels, indices_tuple, learner=k)
        setattr(self, f"learner{k}_loss", float(loss.detach()))
        if self.embedder.mode == LEARNED and self.num_active > 1:
            ortho = self.embedder.orthogonality_loss(self.num_active)
            self.orthogonality = float(ortho.detach())
            if self.orthogonality_weight:
                loss = loss + self.orthogonality_weight * ortho.to(loss.device)
        return loss

    def _check_prepared(self):
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None:
            calling = trainer_glue.calling_trainer()
            if calling is not None:
                trainer_glue.check_trainer_type(calling)
            raise RuntimeError(
                "DivideConquerWrapper was not prepared: call wrapper.prepare(trainer) before trainer.train() (it "
                "checks the set-up and clusters the data when the schedule starts with K > 1)"
            )
        epoch = getattr(trainer, "epoch", None)
        if isinstance(epoch, int) and epoch - 1 > self.last_epoch:
            raise RuntimeError(
                f"epoch {epoch} is training, but DivideConquerWrapper's end-of-epoch step was last taken after epoch "
                f"{self.last_epoch}: the trainer's end_of_epoch_hook does not call it, so no reclustering, split or "
                "phase change happens and the run silently trains without D&C. Pass "
                "end_of_epoch_hook=wrapper.get_end_of_epoch_hook(then=<your hook>) to the trainer."
            )

    def _record_features(self, embeddings, ticket):
        """recluster_from="training": keep this batch's trunk output (or embedding) as its samples' rows."""
        if self.feature_memory is None:
            return
        n = len(ticket.indices)
        if self.reclusterer.cluster_on == "embedding":
            features = embeddings[:n]  # inside DistributedLossWrapper: this rank's rows come first
        else:
            features = self._trunk_capture.take() if self._trunk_capture is not None else None
        if features is None or len(features) != n:
            if not getattr(self, "_warned_capture", False):
                self.__dict__["_warned_capture"] = True
                c_f.LOGGER.warning(
                    "D&C: recluster_from='training' could not capture this batch's trunk output (got %s rows for %d "
                    "samples): those samples are embedded afresh at the next reclustering",
                    None if features is None else len(features),
                    n,
                )
            return
        self.feature_memory.update(ticket.indices, features)

    def _local_labels(self, labels):
        # Inside PML's DistributedLossWrapper the loss gets the batch gathered from all ranks, this rank's first
        world, _ = distributed.world_size_and_rank()
        b = self.sampler.batch_size
        if world > 1 and len(labels) == world * b:
            return labels[:b]
        return labels

    def map_labels(self, labels):
        """Training labels -> 0..C-1 (C training classes). Unknown labels (eval on other classes) stay as they are."""
        labels = labels.cpu()
        pos = torch.searchsorted(self.class_ids, labels).clamp(max=len(self.class_ids) - 1)
        return pos if bool((self.class_ids[pos] == labels).all()) else None

    def _learner_loss(self, key, x, labels, indices_tuple, learner=None):
        self.learners[key]
        mapped = self.map_labels(labels)
        if mapped is None and heads.has_heads(self.learners[FULL_KEY]):
            raise ValueError(
                "labels outside the training classes reached a classification loss (it has one weight per training "
                "class): compute it only on training classes"
            )
        labels = labels if mapped is None else mapped.to(labels.device)
        dims = None if key == FULL_KEY else self._learner_dims(learner, self.num_active)
        return heads.learner_loss(self.learners, self.miners, key, x, labels, indices_tuple, self.heads, dims)

    def _learner_dims(self, learner, num_active):
        """The embedding dims of learner ``learner``'s subspace (None: all, as with learned masks)."""
        if self.embedder.mode == LEARNED:
            return None
        size = self.embedder.subspace_size(num_active)
        return slice(learner * size, (learner + 1) * size)

    # ------------------------------------------------------------------ epochs
    def prepare(self, trainer):
        """Check that ``trainer`` runs this wrapper correctly, then take the step before epoch 1.

        Required before ``trainer.train()``. It raises a clear error when the trainer's sampler, batch size,
        embedder, optimizers or end-of-epoch hook do not fit, and clusters the data when the schedule starts with
        K > 1. When resuming, load the saved state first: a step already taken is not repeated.
        """
        trainer_glue.check_trainer(trainer, self)
        trainer_glue.check_end_of_epoch_hook(trainer, self)
        trainer_glue.check_optimizers(trainer, self)
        if self.schedule.freeze_trunk_epochs and "trunk_optimizer" not in trainer.optimizers:
            raise ValueError(
                'freeze_trunk_epochs needs the trunk\'s optimizer under optimizers["trunk_optimizer"] (its learning '
                "rate is set to 0 in the frozen epochs)"
            )
        self.__dict__["_trainer_ref"] = weakref.ref(trainer)
        self._capture_trunk(trainer)
        self.step(trainer, 0)

    def _capture_trunk(self, trainer):
        if self.feature_memory is None or self.reclusterer.cluster_on != "trunk":
            return
        if self._trunk_capture is not None:
            self._trunk_capture.remove()
        capture = OutputCapture(trainer_glue.unwrap(trainer.models["trunk"]))
        self.__dict__["_trunk_capture"] = capture
        weakref.finalize(self, capture.remove)  # the hook goes with the wrapper

    def end_of_epoch_hook(self, trainer):
        """PML end-of-epoch hook: recluster, split or change phase as the schedule says. Returns True."""
        trainer_glue.check_trainer(trainer, self)
        self.step(trainer, trainer.epoch)
        trainer_glue.release_iterator(trainer)
        return True

    def get_end_of_epoch_hook(self, then=None):
        """An end-of-epoch hook that takes the D&C step, then calls ``then`` (e.g. HookContainer's hook).

        Examples:
            >>> pml_hook = trainer_glue.end_of_epoch_hook(tester, dataset_dict, model_folder)
            >>> hook = dc.get_end_of_epoch_hook(then=pml_hook)
        """

        def hook(trainer):
            self.end_of_epoch_hook(trainer)
            return True if then is None else then(trainer)

        hook.divide_conquer_wrapper = self  # lets prepare() see that the trainer's hook takes the D&C step
        return hook

    def step(self, trainer, epoch):
        """Take the schedule's step after ``epoch`` (0: before training). A step already taken is skipped."""
        if epoch <= self.last_epoch:
            return
        if epoch > self.last_epoch + 1:
            raise RuntimeError(
                f"the D&C steps after epochs {list(range(self.last_epoch + 1, epoch))} were never taken (this "
                f"wrapper has taken steps up to epoch {self.last_epoch}). When resuming, load the wrapper's "
                "state_dict saved with the models (PML's HookContainer does); when starting, call "
                "wrapper.prepare(trainer) and train from epoch 1."
            )
        if self.feature_memory is not None:
            self.feature_memory.synchronize()  # every rank (and so rank 0's checkpoint) holds every row
        step = self.schedule.step_after_epoch(epoch)
        new_phase = step.phase != self.phase or epoch == 0
        if step.phase != Phase.DIVIDE and self.phase == Phase.DIVIDE and self.heads == PER_LEARNER:
            heads.assemble(
                [self.learners[learner_key(k)] for k in range(self.num_active)],
                self.learners[FULL_KEY],
                dims=[self._learner_dims(k, self.num_active) for k in range(self.num_active)],
                class_owner=self._class_owners(),
            )
        if step.action == Action.ALL_DATA:
            self.sampler.set_assignment(np.zeros(len(self.sampler.labels), dtype=np.int64), 1)
            trainer_glue.restart_iterator(trainer)
        elif step.action in (Action.RECLUSTER, Action.SPLIT):
            self._divide(trainer, step)
            c_f.LOGGER.info(
                "D&C: %s after epoch %d in %.1f s (k-means %.1f s%s): K=%d, cluster sizes %s",
                "split every cluster in two" if step.action == Action.SPLIT else "reclustered",
                epoch,
                self.recluster_seconds,
                self.clustering_seconds,
                ""
                if self.feature_memory is None
                else f", from training features, {self.reclusterer.fresh_samples} samples embedded afresh",
                step.num_clusters,
                self.sampler.cluster_sizes().tolist(),
            )
        if new_phase:
            c_f.LOGGER.info("D&C: %s phase from epoch %d", str(step.phase).replace("_", " "), epoch + 1)
        was_frozen = epoch > 0 and self.schedule.trunk_frozen_in_epoch(epoch)
        if step.trunk_frozen != was_frozen:
            c_f.LOGGER.info("D&C: trunk %s in epoch %d", "frozen" if step.trunk_frozen else "trained", epoch + 1)
        trainer_glue.set_trunk_frozen(trainer, step.trunk_frozen)
        self.last_epoch = epoch
        self._update_cluster_stats()

    def _class_owners(self):
        """For each class (0..C-1), the cluster holding most of its samples."""
        mapped = np.searchsorted(self.class_ids.numpy(), self.sampler.labels)
        counts = np.zeros((len(self.class_ids), self.num_active), dtype=np.int64)
        np.add.at(counts, (mapped, np.minimum(self.sampler.assignment, self.num_active - 1)), 1)
        return counts.argmax(axis=1)

    def _update_cluster_stats(self):
        sizes = self.sampler.cluster_sizes()
        classes = self.sampler.classes_per_cluster()
        usage = self.embedder.mask_usage(self.num_active)
        for k in range(self.num_learners):
            active = k < self.num_active and k < len(sizes)
            setattr(self, f"cluster{k}_size", int(sizes[k]) if active else 0)
            setattr(self, f"cluster{k}_classes", int(classes[k]) if active else 0)
            setattr(self, f"learner{k}_mask_usage", float(usage[k]) if k < self.num_active else 0.0)

    def recluster(self, trainer, num_learners=None):
        """Recluster now, outside the schedule, into the current K clusters matched to the learners.

        K changes only through the schedule (splits), which also gives the learners' heads and masks their new
        subspaces; ``num_learners``, if given, must equal the current K.
        """
        if num_learners is not None and num_learners != self.num_active:
            raise ValueError(
                f"recluster() keeps K={self.num_active}; K grows through the schedule (grow=True splits clusters "
                "and learners together)"
            )
        if self.phase == Phase.ALL_DATA:
            raise RuntimeError("no reclustering in the all-data phase: it trains on batches from all the data")
        self._divide(trainer, Step(Action.RECLUSTER, self.num_active, self.phase))
        self._update_cluster_stats()

    def _divide(self, trainer, step):
        split = step.action == Action.SPLIT
        new = self.reclusterer.assign(
            trainer,
            self.sampler.labels,
            self.sampler.assignment,
            self.num_active,
            step.num_clusters,
            split,
            memory=self.feature_memory,
        )
        self.recluster_seconds = self.reclusterer.seconds
        self.clustering_seconds = self.reclusterer.clustering_seconds
        if split:
            optimizers = list(getattr(trainer, "optimizers", {}).values())
            self._split_learners(optimizers)
            if self.embedder.masks is not None:
                # learners 2c and 2c+1 start from mask c (rows beyond 2K unchanged), Adam moments too
                rows = np.concatenate(
                    [np.arange(2 * self.num_active) // 2, np.arange(2 * self.num_active, self.num_learners)]
                )
                trainer_glue.carry_optimizer_state(optimizers, self.embedder.masks, self.embedder.masks, rows)
                self.embedder.split_masks(self.num_active)
        self.num_active = step.num_clusters
        self.sampler.set_assignment(new, step.num_clusters)
        trainer_glue.restart_iterator(trainer)

    def _split_learners(self, optimizers):
        """Learners 2c and 2c+1 start from learner c (its heads restricted to their own dims in fixed mode)."""
        size = self.embedder.subspace_size(self.num_active)
        halves = None if self.embedder.mode == LEARNED else [torch.arange(0, size // 2), torch.arange(size // 2, size)]
        heads.split_learners(self.learners, self.miners, self.num_active, halves, optimizers)

    def embed_training_set(self, trainer):
        """L2-normalised embeddings (or trunk features) of the training set, as reclustering sees them."""
        return self.reclusterer.embed(trainer, self.sampler.labels)

    # ------------------------------------------------------------------ state
    def get_extra_state(self):
        masks = self.embedder.masks
        return {
            "num_active": self.num_active,
            "last_epoch": self.last_epoch,
            "sampler": self.sampler.state_dict(),
            "masks": None if masks is None else masks.detach().cpu().clone(),
            "head_sizes": {k: heads.head_size(m) for k, m in self.learners.items()},
            # CrossBatchMemory's fill state is not in its own state_dict
            "memory_fill": {k: heads.memory_fill(m) for k, m in self.learners.items()},
            "feature_memory": None if self.feature_memory is None else self.feature_memory.state_dict(),
        }

    def set_extra_state(self, state):
        # a checkpoint loaded with map_location="cuda" (PML's HookContainer on a GPU) holds CUDA tensors
        state = trainer_glue.to_cpu(state)
        self.num_active = int(state["num_active"])
        self.last_epoch = int(state["last_epoch"])
        self.sampler.load_state_dict(state["sampler"])
        # runs before the learners load their own state (torch loads a parent first): give their heads the
        # saved sizes so that the saved tensors fit
        for k, size in state["head_sizes"].items():
            if size is not None:
                heads.resize(self.learners[k], int(size))
        for k, fill in state.get("memory_fill", {}).items():
            heads.set_memory_fill(self.learners[k], fill)
        if self.feature_memory is not None and state.get("feature_memory") is not None:
            self.feature_memory.load_state_dict(state["feature_memory"])
        if state["masks"] is not None:
            if self.embedder.masks is None or self.embedder.masks.shape != state["masks"].shape:
                raise ValueError("the saved state has learned masks that do not fit this SubspaceMaskedEmbedder")
            with torch.no_grad():
                self.embedder.masks.copy_(state["masks"])
        self._update_cluster_stats()
