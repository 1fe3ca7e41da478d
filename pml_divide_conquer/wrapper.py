"""DivideConquerWrapper: PML's ``loss_funcs["metric_loss"]`` for Divide & Conquer training."""

import copy
import inspect

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.miners import BaseMiner, EmbeddingsAlreadyPackagedAsTriplets
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.distributed import DistributedMinerWrapper

from . import clustering, distributed, heads, hooks
from .embedder import LEARNED, SubspaceMaskedEmbedder
from .sampler import ClusterSampler
from .schedule import CONQUER, CONQUER_PHASE, DIVIDE_PHASE, RECLUSTER, SPLIT, DivideConquerSchedule

CONQUER_KEY = "conquer"


def learner_key(k):
    # name-like keys: record-keeper builds SQL table names from module paths, and "0" would break them
    return f"learner{k}"


def _declares_labels_not_supported(loss):
    # PML marks label-free losses (VICRegLoss, ManifoldLoss) by calling c_f.labels_not_supported in compute_loss;
    # look inside wrappers too (DistributedLossWrapper, MultipleLosses, ...)
    for module in loss.modules():
        method = getattr(type(module), "compute_loss", None)
        try:
            if method is not None and "labels_not_supported" in inspect.getsource(method):
                return True
        except (OSError, TypeError):
            pass
    return False


def _check_loss(loss):
    if not isinstance(loss, torch.nn.Module):
        raise TypeError(f"loss must be a PML loss (a torch.nn.Module), got {type(loss).__name__}")
    params = inspect.signature(loss.forward).parameters
    if "labels" not in params or _declares_labels_not_supported(loss):
        raise ValueError(
            f"{type(loss).__name__} does not use class labels: Divide & Conquer builds batches of m samples per "
            "class within a "
            "cluster, so it needs a loss computed from class labels. Self-supervised losses on pairs of views "
            "(SelfSupervisedLoss, VICRegLoss, ManifoldLoss) are not supported."
        )


class DivideConquerWrapper(BaseMetricLossFunction):
    """Divide & Conquer around any label-based PML loss (and miner), used as ``loss_funcs["metric_loss"]``.

    Keeps one learner (a copy of ``loss`` and ``miner``) per cluster. Every batch the trainer draws from the
    :class:`ClusterSampler` is routed to the learner of the cluster it was drawn from, which computes its loss on
    its own subspace of the embedding (given by the :class:`SubspaceMaskedEmbedder`). At the end of every
    ``recluster_every`` epochs, :meth:`end_of_epoch_hook` embeds the training set, reclusters it (and, with
    ``grow=True``, splits every cluster in two until ``num_learners`` is reached), matching new clusters to the
    learners that trained on them. From ``conquer_epoch`` on, one more learner trains on the full embedding over
    all data.

    Args:
        loss: a PML loss that takes labels (copied once per learner).
        miner: optional PML tuple miner (copied once per learner, applied in the learner's subspace).
        embedder: the :class:`SubspaceMaskedEmbedder`, also passed to the trainer as ``models["embedder"]``. Its
            ``num_learners`` is K.
        sampler: the :class:`ClusterSampler`, also passed to the trainer as ``sampler=``.
        recluster_every: T, in epochs.
        conquer_epoch: first epoch of the conquer phase, or None for none.
        grow: True: start with K=1 and split clusters in two at each reclustering (journal version); False:
            fixed K (CVPR version) - then call :meth:`prepare` before ``trainer.train()`` to cluster first.
        orthogonality_weight: lambda of the mask orthogonality term (learned masks only).
        cluster_on: ``"embedding"`` (default) or ``"trunk"``: the space that is clustered.
        cluster_dataset: dataset embedded for clustering, in the same order as the training dataset, typically
            the training images with test-time transforms. Default: the trainer's dataset.
        cluster_batch_size: batch size of that embedding pass.
        cluster_num_workers: DataLoader workers of that embedding pass (default: the trainer's
            ``dataloader_num_workers``).
        kmeans_niter: faiss k-means iterations.
        faiss_gpu: None: use a GPU if faiss-gpu sees one; False: CPU only.
        seed: seed of the clustering.

    Examples:
        >>> embedder = SubspaceMaskedEmbedder(64, num_learners=4, embedder=torch.nn.Linear(128, 64))
        >>> sampler = ClusterSampler(train_labels, batch_size=32, m=4)
        >>> dc = DivideConquerWrapper(losses.TripletMarginLoss(), miners.TripletMarginMiner(),
        ...                           embedder=embedder, sampler=sampler, recluster_every=2, conquer_epoch=9)
        >>> trainer = trainers.MetricLossOnly(
        ...     models={"trunk": trunk, "embedder": embedder}, optimizers=optimizers, batch_size=32,
        ...     loss_funcs={"metric_loss": dc}, dataset=train_set, sampler=sampler,
        ...     end_of_epoch_hook=dc.get_end_of_epoch_hook())
        >>> trainer.train(num_epochs=10)
    """

    def __init__(
        self,
        loss,
        miner=None,
        *,
        embedder,
        sampler,
        recluster_every=2,
        conquer_epoch=None,
        grow=True,
        orthogonality_weight=0.01,
        cluster_on="embedding",
        cluster_dataset=None,
        cluster_batch_size=256,
        cluster_num_workers=None,
        kmeans_niter=20,
        faiss_gpu=None,
        seed=0,
    ):
        super().__init__()
        _check_loss(loss)
        if miner is not None and not isinstance(miner, (BaseMiner, DistributedMinerWrapper)):
            raise TypeError(f"miner must be a PML miner (pytorch_metric_learning.miners), got {type(miner).__name__}")
        if isinstance(getattr(miner, "miner", miner), EmbeddingsAlreadyPackagedAsTriplets):
            raise ValueError(
                "EmbeddingsAlreadyPackagedAsTriplets needs batches laid out as (anchor, positive, negative) triplets, "
                "but ClusterSampler draws m samples per class: use another miner, e.g. TripletMarginMiner"
            )
        if not isinstance(embedder, SubspaceMaskedEmbedder):
            raise TypeError(f"embedder must be a SubspaceMaskedEmbedder, got {type(embedder).__name__}")
        if not isinstance(sampler, ClusterSampler):
            raise TypeError(
                f"sampler must be a ClusterSampler, got {type(sampler).__name__}: batches must come from one "
                "cluster each, and the wrapper must know which"
            )
        if cluster_on not in ("embedding", "trunk"):
            raise ValueError(f'cluster_on must be "embedding" or "trunk", got {cluster_on!r}')
        self.schedule = DivideConquerSchedule(
            num_learners=embedder.num_learners, recluster_every=recluster_every, conquer_epoch=conquer_epoch, grow=grow
        )
        num_classes = len(np.unique(sampler.labels))
        if embedder.num_learners > num_classes:
            raise ValueError(
                f"num_learners={embedder.num_learners} is larger than the number of training classes "
                f"({num_classes}): every cluster needs several classes. Use at most {num_classes // 2 or 1} learners."
            )
        # Held outside the module tree: the embedder is trained and saved as models["embedder"], and registering
        # it here would put its parameters in the metric loss optimizer too.
        self.__dict__["embedder"] = embedder
        self.__dict__["sampler"] = sampler
        self.orthogonality_weight = float(orthogonality_weight)
        self.cluster_on = cluster_on
        self.cluster_dataset = cluster_dataset
        self.cluster_batch_size = int(cluster_batch_size)
        self.cluster_num_workers = cluster_num_workers
        self.kmeans_niter = int(kmeans_niter)
        self.faiss_gpu = faiss_gpu
        self.seed = int(seed)

        heads.check_fits(loss, embedder.embedding_size, num_classes)
        # labels reach the learners mapped to 0..C-1, the range classification heads are built for
        # (kept on the CPU, where PML's trainers hand over labels: mapping them costs no device sync)
        self.class_ids = torch.as_tensor(np.unique(sampler.labels))

        keys = [learner_key(k) for k in range(embedder.num_learners)] + [CONQUER_KEY]
        self.learners = torch.nn.ModuleDict({k: copy.deepcopy(loss) for k in keys})
        self.miners = torch.nn.ModuleDict({k: copy.deepcopy(miner) for k in keys}) if miner is not None else None
        first_size = embedder.subspace_size(self.schedule.learners_in_epoch(1))
        for k in range(embedder.num_learners):
            heads.resize(self.learners[learner_key(k)], first_size)

        self.phase = DIVIDE_PHASE
        self.num_active = 1
        self.last_epoch = -1  # last epoch whose end-of-epoch step has been taken (0: the step before training)
        self.current_learner = -1
        self.orthogonality = 0.0
        # scalars that PML's record-keeper logs through HookContainer (one series each, per learner/cluster)
        per_learner = [
            f"{what}{k}_{stat}"
            for k in range(embedder.num_learners)
            for what, stat in (("learner", "loss"), ("cluster", "size"), ("cluster", "classes"), ("learner", "mask_usage"))
        ]
        for name in per_learner:
            setattr(self, name, 0.0)
        self.conquer_loss = 0.0
        self.add_to_recordable_attributes(
            list_of_names=["num_active", "current_learner", "orthogonality", "is_conquer", "conquer_loss"]
            + per_learner,
            is_stat=False,
        )
        self._update_cluster_stats()

    @property
    def is_conquer(self):
        return int(self.phase == CONQUER_PHASE)

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
        if not self.training:  # outside training (e.g. a validation loss): the conquer learner, full space
            if embeddings.requires_grad and torch.is_grad_enabled():
                raise RuntimeError(
                    "DivideConquerWrapper is in eval mode but gradients are being computed: is it in the trainer's "
                    "freeze_these? In eval mode it trains no learner. Keep it out of freeze_these."
                )
            return self._learner_loss(CONQUER_KEY, F.normalize(embeddings, dim=1), labels, indices_tuple)
        if self.last_epoch < 0 and self.schedule.step_after_epoch(0).action != "none":
            first = self.schedule.step_after_epoch(0)
            what = "switched to the conquer phase" if first.action == CONQUER else f"clustered into K={first.num_learners}"
            raise RuntimeError(
                f"the schedule says the data must be {what} before the first epoch: call wrapper.prepare(trainer) "
                "before trainer.train()"
            )
        self.sampler.check_rank(RuntimeError)
        ticket = self.sampler.pop_ticket(self._local_labels(labels))
        # all ranks must train the same learner at every step (their batches form one cluster batch)
        distributed.check_same_on_all_ranks(
            [ticket.version, ticket.pass_index, ticket.position, ticket.cluster], "the learner chosen for this step"
        )
        if self.phase == CONQUER_PHASE:
            key, index = CONQUER_KEY, self.num_learners
            x = F.normalize(embeddings, dim=1)
        else:
            if ticket.cluster >= self.num_active:
                raise RuntimeError(
                    f"batch from cluster {ticket.cluster} but only {self.num_active} learners are active: the "
                    "sampler's assignment was changed outside DivideConquerWrapper"
                )
            key, index = learner_key(ticket.cluster), ticket.cluster
            x = self.embedder.subspace(embeddings, ticket.cluster, self.num_active)
        self.current_learner = index
        loss = self._learner_loss(key, x, labels, indices_tuple)
        setattr(self, "conquer_loss" if key == CONQUER_KEY else f"{key}_loss", float(loss.detach()))
        if self.embedder.mode == LEARNED and self.phase == DIVIDE_PHASE and self.num_active > 1:
            ortho = self.embedder.orthogonality_loss(self.num_active)
            self.orthogonality = float(ortho.detach())
            if self.orthogonality_weight:
                loss = loss + self.orthogonality_weight * ortho.to(loss.device)
        return loss

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

    def _learner_loss(self, key, x, labels, indices_tuple):
        mapped = self.map_labels(labels)
        if mapped is None and heads.has_heads(self.learners[key]):
            raise ValueError(
                "labels outside the training classes reached a classification loss (it has one weight per training "
                "class): compute it only on training classes"
            )
        labels = labels if mapped is None else mapped
        if self.miners is not None:
            indices_tuple = self.miners[key](x, labels)
        loss = self.learners[key](x, labels, indices_tuple)
        if not torch.is_tensor(loss):
            loss = x.sum() * 0.0 + loss
        return loss

    @property
    def num_learners(self):
        return self.embedder.num_learners

    # ------------------------------------------------------------------ epochs
    def prepare(self, trainer):
        """Check that ``trainer`` can run this wrapper, and take the step before epoch 1 (clustering, if K>1)."""
        hooks.check_trainer(trainer, self)
        self.step(trainer, 0)

    def end_of_epoch_hook(self, trainer):
        """PML end-of-epoch hook: recluster/split/conquer as the schedule says. Returns True (keep training)."""
        hooks.check_trainer(trainer, self)
        self.step(trainer, trainer.epoch)
        return True

    def get_end_of_epoch_hook(self, then=None):
        """An end-of-epoch hook that takes the D&C step, then calls ``then`` (e.g. HookContainer's hook).

        Examples:
            >>> hook = dc.get_end_of_epoch_hook(then=hooks.end_of_epoch_hook(tester, dataset_dict, model_folder))
        """

        def hook(trainer):
            self.end_of_epoch_hook(trainer)
            return True if then is None else then(trainer)

        return hook

    def step(self, trainer, epoch):
        """Take the schedule's step after ``epoch`` (0: before training). A step already taken is skipped."""
        if epoch <= self.last_epoch:
            return
        missed = [e for e in range(self.last_epoch + 1, epoch) if self.schedule.step_after_epoch(e).action != "none"]
        if missed:
            raise RuntimeError(
                f"the D&C steps after epochs {missed} were never taken (this wrapper has taken steps up to epoch "
                f"{self.last_epoch}). When resuming, load the wrapper's state_dict saved with the models (PML's "
                "HookContainer does); when starting, call wrapper.prepare(trainer) and train from epoch 1."
            )
        step = self.schedule.step_after_epoch(epoch)
        if step.action == CONQUER:
            self.phase = CONQUER_PHASE
            self.sampler.set_assignment(np.zeros(len(self.sampler.labels), dtype=np.int64), 1)
            hooks.restart_iterator(trainer)
        elif step.action in (RECLUSTER, SPLIT):
            self._divide(trainer, step, epoch)
        self.last_epoch = epoch
        self._update_cluster_stats()  # (also after a conquer step; K and the clusters are logged from here)

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
        from .schedule import Step

        if num_learners is not None and num_learners != self.num_active:
            raise ValueError(
                f"recluster() keeps K={self.num_active}; K grows through the schedule (grow=True splits clusters "
                "and learners together)"
            )
        if self.phase == CONQUER_PHASE:
            raise RuntimeError("no reclustering in the conquer phase: it trains one learner on all the data")
        self._divide(trainer, Step(RECLUSTER, self.num_active), max(self.last_epoch, 0))
        self._update_cluster_stats()

    def _divide(self, trainer, step, epoch):
        if step.action == SPLIT and step.num_learners != 2 * self.num_active:
            raise RuntimeError(f"cannot split {self.num_active} clusters into {step.num_learners}")
        emb = self.embed_training_set(trainer)
        # one rank clusters, all ranks get its result (k-means need not agree bit for bit across processes)
        if distributed.world_size_and_rank()[1] == 0:
            new = self._cluster(emb, step, epoch)
        else:
            new = np.zeros(len(emb), dtype=np.int64)
        new = distributed.broadcast_array(new)
        if step.action == SPLIT:
            optimizers = list(getattr(trainer, "optimizers", {}).values())
            self._split_learners(optimizers)
            if self.embedder.masks is not None:
                rows = np.arange(2 * self.num_active) // 2
                self.embedder.split_masks(self.num_active)
                hooks.gather_optimizer_rows(self.embedder.masks, rows, optimizers)
        self.num_active = step.num_learners
        self.sampler.set_assignment(new, step.num_learners)
        hooks.restart_iterator(trainer)

    def _cluster(self, emb, step, epoch):
        """The new assignment (numpy in, numpy out): split every cluster in two, or recluster and match."""
        seed = self.seed + 1000 * epoch
        old = self.sampler.assignment
        if step.action == SPLIT:
            return clustering.split_clusters(
                emb, old, self.sampler.labels, niter=self.kmeans_niter, seed=seed, gpu=self.faiss_gpu
            )
        new = clustering.kmeans_with_retries(
            emb, step.num_learners, self.sampler.labels, niter=self.kmeans_niter, seed=seed, gpu=self.faiss_gpu
        )
        if self.sampler.num_clusters == step.num_learners and self.last_epoch >= 0:
            new = clustering.match_clusters(old, new, step.num_learners)
        return new

    def _split_learners(self, optimizers):
        """Learners 2c and 2c+1 start from learner c (its heads restricted to their own dims in fixed mode)."""
        size = self.embedder.subspace_size(self.num_active)
        halves = [None, None]
        if self.embedder.mode != LEARNED:
            halves = [torch.arange(0, size // 2), torch.arange(size // 2, size)]
        # from the last parent down, so that no parent is overwritten before its children are made
        for c in reversed(range(self.num_active)):
            for child, dims in ((2 * c + 1, halves[1]), (2 * c, halves[0])):
                heads.inherit(self.learners[learner_key(c)], self.learners[learner_key(child)], dims, optimizers)
                if self.miners is not None and child != c:
                    heads.inherit(self.miners[learner_key(c)], self.miners[learner_key(child)])

    def embed_training_set(self, trainer):
        """L2-normalised embeddings (or trunk features) of the training set, checked against the sampler's labels."""
        dataset = trainer.dataset if self.cluster_dataset is None else self.cluster_dataset
        workers = trainer.dataloader_num_workers if self.cluster_num_workers is None else self.cluster_num_workers
        emb, labels = hooks.embed_dataset(
            trainer, dataset, self.cluster_on == "trunk", self.cluster_batch_size, workers
        )
        if len(labels) != len(self.sampler.labels) or not np.array_equal(labels, self.sampler.labels):
            raise ValueError(
                "the dataset embedded for clustering does not have the sampler's labels in the same order "
                f"({len(labels)} vs {len(self.sampler.labels)} samples): cluster_dataset must hold the training "
                "samples in the training dataset's order"
            )
        return emb

    # ------------------------------------------------------------------ state
    def get_extra_state(self):
        masks = self.embedder.masks
        return {
            "phase": self.phase,
            "num_active": self.num_active,
            "last_epoch": self.last_epoch,
            "sampler": self.sampler.state_dict(),
            "masks": None if masks is None else masks.detach().cpu().clone(),
            "head_sizes": {k: heads.head_size(m) for k, m in self.learners.items()},
            # CrossBatchMemory's fill state is not in its own state_dict
            "memory_fill": {k: heads.memory_fill(m) for k, m in self.learners.items()},
        }

    def set_extra_state(self, state):
        self.phase = state["phase"]
        self.num_active = int(state["num_active"])
        self.last_epoch = int(state["last_epoch"])
        self.sampler.load_state_dict(state["sampler"])
        # runs before the learners load their own state (torch loads a parent first): give their heads the
        # saved sizes so that the saved tensors fit
        for k, size in state["head_sizes"].items():
            if size is not None:
                heads.resize(self.learners[k], size)
        for k, fill in state.get("memory_fill", {}).items():
            heads.set_memory_fill(self.learners[k], fill)
        if state["masks"] is not None:
            if self.embedder.masks is None or self.embedder.masks.shape != state["masks"].shape:
                raise ValueError("the saved state has learned masks that do not fit this SubspaceMaskedEmbedder")
            with torch.no_grad():
                self.embedder.masks.copy_(state["masks"])
        self._update_cluster_stats()
