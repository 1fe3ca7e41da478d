"""Reclustering: embed the training set through PML's tester, cluster it on rank 0, give every rank the result.

:class:`Reclusterer` holds the settings (which space is clustered, the embedding pass, the k-means knobs) and
returns a numpy assignment; :class:`~pml_divide_conquer.DivideConquerWrapper` decides when to call it and what to do
with the result (learners, sampler). The clustering itself is :mod:`pml_divide_conquer.clustering` (numpy only).
"""

import time

import numpy as np
import torch
from pytorch_metric_learning import testers
from pytorch_metric_learning.utils import common_functions as c_f

from . import clustering, distributed
from .trainer_glue import unwrap

CLUSTER_SPACES = ("trunk", "embedding")


class Reclusterer:
    """A new cluster assignment of the training set, as the journal's code makes one.

    k-means at the current K on the L2-normalised trunk output (or embedding) of the training set, matched to the
    current clusters by the Hungarian algorithm; for a split, every cluster then split in two by 2-means. Both are
    retried with the next seed until every cluster has 2 classes with 2 samples each.

    Args:
        cluster_on: ``"trunk"`` (the reference's penultimate features) or ``"embedding"``.
        dataset: dataset embedded for clustering, in the training dataset's order (e.g. the training images with
            test-time transforms); None: the trainer's dataset.
        batch_size: batch size of the embedding pass.
        num_workers: DataLoader workers of the embedding pass (None: the trainer's ``dataloader_num_workers``).
        niter, max_points_per_centroid, max_retries, gpu: faiss k-means settings (None points per centroid: all
            points, as the reference code).
        seed: k-means seed, the same at every reclustering (trial t uses seed + t).

    After each :meth:`assign`, ``seconds`` and ``clustering_seconds`` hold how long it took, all of it and the
    clustering part (k-means, matching, splits), and ``fresh_samples`` how many samples were embedded for it.

    Examples:
        >>> reclusterer = Reclusterer(cluster_on="trunk")
        >>> assignment = reclusterer.assign(trainer, sampler.labels, sampler.assignment, current_k=2, k=2)
    """

    def __init__(
        self,
        cluster_on="trunk",
        dataset=None,
        batch_size=256,
        num_workers=None,
        niter=100,
        max_points_per_centroid=None,
        max_retries=30,
        gpu=None,
        seed=0,
    ):
        if cluster_on not in CLUSTER_SPACES:
            raise ValueError(f'cluster_on must be "trunk" or "embedding", got {cluster_on!r}')
        self.cluster_on = cluster_on
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_workers = num_workers
        self.kmeans = dict(
            niter=int(niter), max_points_per_centroid=max_points_per_centroid, max_retries=int(max_retries), gpu=gpu
        )
        self.seed = int(seed)
        self.seconds = 0.0
        self.clustering_seconds = 0.0
        self.fresh_samples = 0

    def assign(self, trainer, labels, assignment, current_k, k, split=False, memory=None):
        """The new assignment (int64, one cluster id in [0, k) per sample) on every rank.

        ``assignment`` holds the current ``current_k`` clusters; with ``split``, ``k == 2 * current_k``.
        ``memory``: a :class:`~pml_divide_conquer.feature_memory.FeatureMemory` to cluster instead of an
        embedding pass (only the samples it has no fresh row for are embedded).
        """
        start = time.perf_counter()
        if memory is None:
            emb = self.embed(trainer, labels)
            self.fresh_samples = len(labels)
        else:
            emb = self.from_memory(trainer, labels, memory)
        # one rank clusters, all ranks get its result (k-means need not agree bit for bit across processes)
        clustering_start = time.perf_counter()
        if distributed.world_size_and_rank()[1] == 0:
            new = self.cluster(emb, labels, assignment, current_k, k, split)
        else:
            new = np.zeros(len(emb), dtype=np.int64)
        self.clustering_seconds = time.perf_counter() - clustering_start
        new = distributed.broadcast_array(new)
        self.seconds = time.perf_counter() - start
        return new

    def cluster(self, emb, labels, assignment, current_k, k, split=False):
        """The clustering alone (numpy in, numpy out): k-means at the current K matched to ``assignment``, then,
        for a split, every cluster split in two."""
        base_k = current_k if split else k
        if split and k != 2 * current_k:
            raise ValueError(f"cannot split {current_k} clusters into {k}")
        if base_k == 1:
            new = np.zeros(len(emb), dtype=np.int64)
        else:
            new = clustering.kmeans_with_retries(emb, base_k, labels, seed=self.seed, **self.kmeans)
            if current_k == base_k:
                new = clustering.match_clusters(assignment, new, base_k)
        if split:
            new = clustering.split_clusters(emb, new, labels, seed=self.seed, **self.kmeans)
        return new

    def from_memory(self, trainer, labels, memory):
        """The rows training last computed, with the samples that have none since the last reclustering embedded
        afresh (all of them when the memory is empty)."""
        emb, stale = memory.features_for_clustering()
        self.fresh_samples = len(stale)
        if len(stale):
            fresh = self.embed(trainer, labels, indices=stale)
            if emb is None:
                emb = np.zeros((len(labels), fresh.shape[1]), dtype=np.float32)
            emb[stale] = fresh
        memory.mark_used()
        return emb

    def embed(self, trainer, labels, indices=None):
        """L2-normalised trunk outputs (or embeddings) of the training set (or of its samples ``indices``),
        checked against ``labels``."""
        dataset = trainer.dataset if self.dataset is None else self.dataset
        workers = trainer.dataloader_num_workers if self.num_workers is None else self.num_workers
        if indices is not None:
            dataset = torch.utils.data.Subset(dataset, np.asarray(indices).tolist())
            labels = np.asarray(labels)[indices]
        emb, embedded = embed_dataset(trainer, dataset, self.cluster_on == "trunk", self.batch_size, workers)
        if len(embedded) != len(labels) or not np.array_equal(embedded, labels):
            raise ValueError(
                "the dataset embedded for clustering does not have the sampler's labels in the same order "
                f"({len(embedded)} vs {len(labels)} samples): cluster_dataset must hold the training samples in the "
                "training dataset's order"
            )
        return emb


def embed_dataset(trainer, dataset, use_trunk_output, batch_size, num_workers):
    """Embed ``dataset`` in eval mode, no grad, with PML's own tester machinery. Returns (embeddings, labels).

    Embeddings are L2-normalised float32 numpy; labels are processed the way the trainer processes them. Under
    torch.distributed each rank embeds every W-th sample and the shards are gathered, so every rank gets all.
    """
    n = len(dataset)
    world, rank = distributed.world_size_and_rank()
    if distributed.is_distributed():
        dataset = torch.utils.data.Subset(dataset, distributed.shard_indices(n, world, rank).tolist())
    tester = testers.BaseTester(
        normalize_embeddings=True,
        use_trunk_output=use_trunk_output,
        batch_size=batch_size,
        dataloader_num_workers=num_workers,
        data_device=trainer.data_device,
        dtype=trainer.dtype,
        data_and_label_getter=trainer.data_and_label_getter,
    )
    was_training = {k: m.training for k, m in trainer.models.items()}
    try:
        # the plain modules, not their DDP wrappers: ranks embed shards of different lengths, and DDP's forward
        # would start collectives (buffer broadcasts) that the ranks do not all reach
        emb, labels = tester.get_all_embeddings(
            dataset,
            unwrap(trainer.models["trunk"]),
            unwrap(trainer.models["embedder"]),
            collate_fn=trainer.collate_fn,
            return_as_numpy=True,
        )
    finally:
        for k, m in trainer.models.items():
            m.train(was_training[k])
    labels = c_f.process_label(labels, trainer.label_hierarchy_level, trainer.label_mapper)
    labels = np.asarray(labels).reshape(len(emb), -1)[:, 0] if np.ndim(labels) > 1 else np.asarray(labels)
    emb = distributed.gather_shards(emb.astype(np.float32), n)
    labels = distributed.gather_shards(labels.astype(np.int64), n)
    return emb, labels
