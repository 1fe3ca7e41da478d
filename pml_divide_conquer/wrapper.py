"""DivideConquerWrapper: the loss a training loop calls, routing each batch to the learner of its cluster."""

import contextlib
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import BaseMetricLossFunction

from . import checks, heads, records, routing, state
from .controller import EpochController
from .deprecation import wrapper_parts
from .embedder import LEARNED
from .feature_memory import FeatureMemory, record_batch
from .heads import FULL_KEY, PER_LEARNER, LabelMap, learner_key
from .reclustering import Reclusterer
from .routing import Router
from .schedule import Phase, make_schedule
from .training import plain_loop_parts

HALF = (torch.float16, torch.bfloat16)


class DivideConquerWrapper(BaseMetricLossFunction):
    """Divide & Conquer around any label-based PML loss (and miner): ``loss = dc(embeddings, labels)``.

    Training runs in up to three phases (:class:`~pml_divide_conquer.DivideConquerSchedule`): **divide** (each
    batch comes from one cluster of the :class:`ClusterSampler` and trains that cluster's learner on its subspace of
    the embedding, given by the :class:`SubspaceMaskedEmbedder`; every ``recluster_every`` epochs the data is
    reclustered, new clusters matched to the learners, and with ``grow=True`` split in two until ``num_learners``),
    **full embedding** (the loss on the whole embedding, batches still from clusters) and **all data**.
    ``DivideConquerSchedule.journal(num_epochs, K)`` and ``.cvpr(num_epochs, K)`` give the authors' schedules.

    The epoch step runs where the loop says an epoch ended: your own loop calls :meth:`setup` once and
    :meth:`end_epoch` after each epoch; Lightning takes ``DivideConquerCallback``
    (``pml_divide_conquer.integrations.lightning``); PML's trainers :meth:`prepare` and
    :meth:`get_end_of_epoch_hook`.

    Args:
        loss, miner: a PML loss that takes labels, and optionally a tuple miner (one copy of each per learner,
            applied in the learner's subspace).
        embedder: the :class:`SubspaceMaskedEmbedder` that produces the embeddings (K = its ``num_learners``).
        sampler: the :class:`ClusterSampler` the training DataLoader draws from.
        schedule: a :class:`DivideConquerSchedule`, or None to build one from ``recluster_every`` (T, epochs),
            ``full_embedding_epoch``, ``all_data_epoch``, ``grow`` (True: K doubles from 1, journal; False: K fixed,
            clustered at set-up, CVPR) and ``freeze_trunk_epochs`` (the trunk's learning rate is 0 for that many
            epochs after each reclustering; its parameters need a param group of their own).
        heads: classification losses (ArcFace, CosFace, ProxyAnchor, SoftTriple, ...): ``"per_learner"`` (one head
            per learner sized to its subspace; the full-embedding head starts from them put together) or
            ``"shared"`` (one full-size head each learner trains its part of). See docs/how-to/arcface.md.
        full_head: per-learner heads: how the full-embedding head starts when the divide phase ends: ``"imprint"``
            (each class's vector the mean full embedding of its training samples, unit norm; one no-grad pass;
            :func:`heads.imprint`) or ``"assembled"`` (the learners' heads put together, as before 0.3: with ArcFace
            on 300 Han classes it left D&C 0.5 R@1 below the baseline with a pretrained trunk; docs/benchmarks.md).
        orthogonality_weight: lambda of the mask orthogonality term (learned masks only, divide phase).
        cluster_on: ``"trunk"`` (as the reference: the L2-normalised input of the SubspaceMaskedEmbedder, i.e. the
            trunk's output) or ``"embedding"``.
        recluster_from: ``"training"`` (default): cluster the features training last computed for each sample
            (float16, N x dim x 2 bytes), embedding afresh only samples no batch held since the last reclustering;
            ``"pass"`` (as the reference, the default with ``cluster_dataset``): embed the training set each time.
        cluster_dataset: the training samples with test-time transforms, in the same order, for ``"pass"``.
        feature_memory_device: ``"cpu"`` (default) or the training device, for the rows of ``"training"``.
        cluster_batch_size, cluster_num_workers: of the embedding pass (workers default: the training loop's).
        kmeans_niter, kmeans_max_points_per_centroid, kmeans_max_retries, faiss_gpu, seed: k-means as the reference
            runs it (100 iterations, all points, retried with seed + t until every cluster has 2 classes of 2).
        kmeans_backend: ``"faiss"`` or ``"torch"``; None (default): faiss on a GPU when faiss-gpu sees one, k-means
            in torch on the GPU when only torch does, faiss on the CPU otherwise.
        conquer_epoch: deprecated; ``full_embedding_epoch = all_data_epoch = conquer_epoch``.

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

    def __init__(
        self,
        loss,
        miner=None,
        *,
        embedder,
        sampler,
        schedule=None,
        reclusterer=None,
        heads=PER_LEARNER,
        full_head="imprint",
        orthogonality_weight=0.01,
        **deprecated,
    ):
        super().__init__()
        checks.check_wrapper_arguments(loss, miner, embedder, sampler, heads)
        schedule, reclusterer = wrapper_parts(embedder.num_learners, schedule, reclusterer, deprecated)
        self.schedule = make_schedule(schedule, embedder.num_learners)
        if reclusterer is None:
            reclusterer = Reclusterer()
        elif not isinstance(reclusterer, Reclusterer):
            raise TypeError(f"reclusterer must be a Reclusterer, got {type(reclusterer).__name__}")
        # Held outside the module tree: the embedder is trained and saved with the model, and registering it here
        # would put its parameters in the loss's optimizer too.
        self.__dict__["embedder"] = embedder
        self.__dict__["sampler"] = sampler
        self.__dict__["controller"] = EpochController(self)
        self.heads = heads
        self.full_head = checks.full_head(full_head)
        self.orthogonality_weight = float(orthogonality_weight)
        self.reclusterer = reclusterer
        settings = reclusterer.settings
        memory = (
            FeatureMemory(len(sampler.labels), settings.memory_device)
            if settings.features_source == "training"
            else None
        )
        self.__dict__["feature_memory"] = memory
        if checks.needs_equal_counts(loss):
            sampler.require_equal_counts()  # e.g. SmoothAPLoss: the same number of samples of every class a batch
        # labels reach the learners mapped to 0..C-1, the range classification heads are built for (kept on the
        # CPU, where loaders hand labels over: mapping them costs no device sync)
        self.__dict__["label_map"] = LabelMap(np.unique(sampler.labels))
        self._build_learners(loss, miner)
        self.num_active = 1
        self.last_epoch = -1  # last epoch whose end-of-epoch step has been taken (0: the step before training)
        self.__dict__["router"] = Router(sampler)
        records.init(self)

    @property
    def recluster_from(self):
        """``"training"`` or ``"pass"``: where reclusterings get their features (``reclusterer.settings``)."""
        return self.reclusterer.settings.features_source

    def _build_learners(self, loss, miner):
        """One learner (a copy of the loss and miner) per cluster, plus the full-embedding learner."""
        first_size = self.embedder.subspace_size(self.schedule.learners_in_epoch(1))
        self.learners, self.miners = heads.make_learners(loss, miner, self.num_learners, self.heads, first_size)

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

    # ------------------------------------------------------------------ the loss

    # it routes each batch by the sampler's records (host-side state): always eager, also inside torch.compile
    @torch.compiler.disable
    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        if labels is None:
            raise ValueError("DivideConquerWrapper needs the batch labels: call it as dc(embeddings, labels)")
        checks.check_shapes(embeddings, labels)
        if indices_tuple is not None and self.miners is not None:
            raise ValueError(
                "got an indices_tuple and a miner in DivideConquerWrapper: give the miner only to the wrapper, which "
                "mines in each learner's subspace. (Under DDP, wrap the inner loss and miner in PML's "
                "DistributedLossWrapper / DistributedMinerWrapper rather than the wrapper.)"
            )
        # losses and normalisation in float32, also under autocast (the gradient flows back to the half embeddings)
        embeddings = embeddings.float() if embeddings.dtype in HALF else embeddings
        ref_emb = ref_emb.float() if ref_emb is not None and ref_emb.dtype in HALF else ref_emb
        with torch.autocast(embeddings.device.type, enabled=False):
            return self._forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def _forward(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        self.router.flag(~torch.isfinite(embeddings.detach()).all(), routing.NONFINITE, FloatingPointError)
        if not self.training:  # outside training (e.g. a validation loss): the full learner, full space
            if embeddings.requires_grad and torch.is_grad_enabled():
                raise RuntimeError(
                    "DivideConquerWrapper is in eval mode but gradients are being computed: in eval mode it trains "
                    "no learner. Call .train() on it, or on the module holding it, before training (Lightning keeps "
                    "the mode modules had when fit() started; PML: keep it out of freeze_these)."
                )
            ref = None if ref_emb is None else F.normalize(ref_emb, dim=1)
            return self._learner_loss(FULL_KEY, F.normalize(embeddings, dim=1), labels, indices_tuple, ref, ref_labels)
        if not self.controller.is_set_up:
            raise RuntimeError(f"DivideConquerWrapper was not set up: {self.controller.hints.setup}")
        parts = self.controller.parts
        epoch = parts.current_epoch() if parts.current_epoch is not None else None
        ticket = self.router.take(labels, self.controller.hints, self.last_epoch, epoch)
        if self.feature_memory is not None:  # the trunk's output (the embedder's input), or the embedding
            capture = self.controller.capture
            features = embeddings.detach() if capture is None else capture.take()
            record_batch(self.feature_memory, features, ticket.indices)
        if self.phase != Phase.DIVIDE:
            self.current_learner = self.num_learners
            ref = None if ref_emb is None else F.normalize(ref_emb, dim=1)
            loss = self._learner_loss(FULL_KEY, F.normalize(embeddings, dim=1), labels, indices_tuple, ref, ref_labels)
            self.full_loss = loss.detach()
            return loss
        k = ticket.cluster
        if k >= self.num_active:
            raise RuntimeError(
                f"batch from cluster {k} but only {self.num_active} learners are active: the sampler's assignment "
                "was changed outside DivideConquerWrapper"
            )
        self.current_learner = k
        x = self.embedder.subspace(embeddings, k, self.num_active)
        ref = None if ref_emb is None else self.embedder.subspace(ref_emb, k, self.num_active)
        loss = self._learner_loss(learner_key(k), x, labels, indices_tuple, ref, ref_labels, learner=k)
        setattr(self, f"learner{k}_loss", loss.detach())
        if self.embedder.mode == LEARNED and self.num_active > 1:
            ortho = self.embedder.orthogonality_loss(self.num_active)
            self.orthogonality = ortho.detach()
            if self.orthogonality_weight:
                loss = loss + self.orthogonality_weight * ortho.to(loss.device)
        return loss

    def map_labels(self, labels, known=False):
        """Training labels -> 0..C-1 (C training classes), on the labels' device. Labels outside the training classes
        (eval on other classes) stay as they are; ``known``: the labels are training labels (no check, no sync)."""
        return self.label_map(labels, known)

    def _learner_loss(self, key, x, labels, indices_tuple, ref_emb=None, ref_labels=None, learner=None):
        mapped = self.map_labels(labels, known=self.training)  # training labels were checked against the sampler's
        if mapped is None and heads.has_heads(self.learners[FULL_KEY]):
            raise ValueError(
                "labels outside the training classes reached a classification loss (it has one weight per training "
                "class): compute it only on training classes"
            )
        labels = labels if mapped is None else mapped
        if ref_labels is not None:
            ref_mapped = self.map_labels(ref_labels, known=self.training)
            ref_labels = ref_labels if ref_mapped is None else ref_mapped
        dims = None if key == FULL_KEY else self.learner_dims(learner, self.num_active)
        return heads.learner_loss(
            self.learners, self.miners, key, x, labels, indices_tuple, self.heads, dims, ref_emb, ref_labels
        )

    def learner_dims(self, learner, num_active):
        """The embedding dims of learner ``learner``'s subspace (None: all, as with learned masks)."""
        if self.embedder.mode == LEARNED:
            return None
        size = self.embedder.subspace_size(num_active)
        return slice(learner * size, (learner + 1) * size)

    @contextlib.contextmanager
    def one_batch(self):
        """Loss calls inside the block are all for one batch (LBFGS or SAM closures, a diagnostic after the
        training call): the first takes the batch from the sampler, the others reuse it.

        Examples:
            >>> with dc.one_batch():
            ...     optimizer.step(closure)   # closure() calls dc(model(x), y) one or more times
        """
        self.router.held = [None]
        try:
            yield self
        finally:
            self.router.held = None

    # ------------------------------------------------------------------ epochs (a plain loop; see also integrations)

    def setup(
        self,
        model,
        dataset,
        *,
        optimizers=(),
        device=None,
        dtype=None,
        data_and_label_getter=None,
        collate_fn=None,
        num_workers=0,
    ):
        """Set up D&C for your own training loop; required before training. Then call :meth:`end_epoch` after each
        epoch.

        Args:
            model: the module your loop calls to get embeddings (``dc(model(x), y)``); it contains the
                SubspaceMaskedEmbedder (a trunk and an embedder called in turn: ``torch.nn.Sequential(trunk,
                embedder)``). Embeds samples for clustering in eval mode, without gradients.
            dataset: the training set, in the order of the ClusterSampler's labels.
            optimizers: every optimizer of the loop (one, or a list): their state follows the learners' heads and
                masks when clusters split; ``freeze_trunk_epochs`` freezes the trunk's parameter groups in them.
            device, dtype: where (as what) inputs go (default: the model's device; their own dtype).
            data_and_label_getter: batch -> (inputs, labels) (default: its first two items).
            collate_fn, num_workers: of the DataLoader that embeds samples for clustering.

        It checks the set-up, hooks the embedder (its input is the trunk's output that reclustering clusters) and
        the optimizers (trunk freezing), and takes the step before epoch 1 (clustering the data when K starts above
        1). When resuming, load the wrapper's ``state_dict`` first: a step already taken is not repeated.
        """
        parts = plain_loop_parts(self, model, dataset, optimizers, device, dtype, num_workers, collate_fn)
        if data_and_label_getter is not None:
            parts.data_and_label_getter = data_and_label_getter
        self.controller.setup(parts)
        return self

    def end_epoch(self, epoch=None):
        """Take the schedule's step after an epoch: recluster, split, change phase, freeze or release the trunk.

        ``epoch``: the epoch that just ended, counted from 1 (default: the one after the last step). Call it after
        the last batch of each epoch, before the next epoch's ``iter(loader)``."""
        self.controller.end_epoch(epoch)

    def recluster(self, trainer=None, num_learners=None):
        """Recluster now, outside the schedule, into the current K clusters matched to the learners (``trainer``:
        ignored, accepted for PML code written for 0.2). Start a new iterator over the DataLoader afterwards."""
        if num_learners is not None and num_learners != self.num_active:
            raise ValueError(
                f"recluster() keeps K={self.num_active}; K grows through the schedule (grow=True splits clusters "
                "and learners together)"
            )
        self.controller.recluster()

    def embed_training_set(self, trainer=None):
        """L2-normalised features of the training set, as an embedding pass for reclustering computes them."""
        return self.controller.embed_training_set()

    def update_cluster_stats(self):
        records.update_cluster_stats(self)

    # ------------------------------------------------------------------ PML's trainers (integrations/pml.py)
    # The glue is imported here, where it is used: the core imports no trainer framework (PML 3 has none).

    def prepare(self, trainer):
        """PML's ``MetricLossOnly`` / ``TrainWithClassifier``: check the trainer and take the step before epoch 1.
        Required before ``trainer.train()``; load a saved state first when resuming."""
        from .integrations import pml

        pml.prepare(self, trainer)

    def end_of_epoch_hook(self, trainer):
        """PML end-of-epoch hook: take the D&C step after ``trainer.epoch``. Returns True."""
        from .integrations import pml

        return pml.end_of_epoch_hook(self, trainer)

    def get_end_of_epoch_hook(self, then=None):
        """A PML end-of-epoch hook that takes the D&C step, then calls ``then`` (e.g. HookContainer's hook).

        Examples:
            >>> then = hooks.end_of_epoch_hook(tester, dataset_dict, model_folder)
            >>> hook = dc.get_end_of_epoch_hook(then=then)
        """
        from .integrations import pml

        return pml.get_end_of_epoch_hook(self, then)

    def step(self, trainer, epoch):
        warnings.warn("step(trainer, epoch) is deprecated: call end_epoch(epoch)", FutureWarning, stacklevel=2)
        self.end_epoch(epoch)

    # ------------------------------------------------------------------ state

    def consolidate_state_dict(self, to=0):
        """Under DDP, gather what only other ranks hold (rows of the feature memory) to rank ``to``, so that its
        :meth:`state_dict` resumes the run exactly. A collective: call it on every rank, then save on rank ``to``
        (like torch's ``ZeroRedundancyOptimizer.consolidate_state_dict``); ``state_dict()`` itself never
        communicates. The Lightning callback and PML's end-of-epoch hook call it; without it, a resumed run
        embeds the missing rows afresh at its next reclustering. A no-op in one process."""
        if self.feature_memory is not None:
            self.feature_memory.consolidate(to)

    def get_extra_state(self):
        return state.extra_state(self)

    def set_extra_state(self, saved):
        state.load_extra_state(self, saved)
