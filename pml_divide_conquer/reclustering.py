"""Reclustering: features of the training set, clustered on rank 0, the result given to every rank.

:class:`Reclusterer` holds the settings (which space is clustered, the embedding pass, the k-means knobs) and
returns a numpy assignment; the end-of-epoch step (:mod:`pml_divide_conquer.controller`) decides when to call it and
what to do with the result (learners, sampler). The clustering itself is :mod:`pml_divide_conquer.clustering` (numpy
only). What it needs from the training loop comes in a :class:`~pml_divide_conquer.training.TrainingParts`.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F

from . import clustering, distributed
from .torch_utils import unwrap

CLUSTER_SPACES = ("trunk", "embedding")


class Reclusterer:
    """A new cluster assignment of the training set, as the journal's code makes one.

    k-means at the current K on the L2-normalised trunk output (or embedding) of the training set, matched to the
    current clusters by the Hungarian algorithm; for a split, every cluster then split in two by 2-means. Both are
    retried with the next seed until every cluster has 2 classes with 2 samples each.

    Args:
        cluster_on: ``"trunk"`` (the reference's penultimate features) or ``"embedding"``.
        dataset: dataset embedded for clustering, in the training dataset's order (e.g. the training images with
            test-time transforms); None: the training dataset.
        batch_size: batch size of the embedding pass.
        num_workers: DataLoader workers of the embedding pass (None: the training loop's).
        niter, max_points_per_centroid, max_retries, gpu: k-means settings (None points per centroid: all points,
            as the reference code).
        backend: ``"faiss"`` or ``"torch"`` (k-means in torch, on the GPU when there is one); None: where the data
            is (:func:`~pml_divide_conquer.clustering.choose_backend`).
        seed: k-means seed, the same at every reclustering (trial t uses seed + t).

    After each :meth:`assign`, ``seconds`` and ``clustering_seconds`` hold how long it took, all of it and the
    clustering part (k-means, matching, splits), and ``fresh_samples`` how many samples were embedded for it.

    Examples:
        >>> reclusterer = Reclusterer(cluster_on="trunk")
        >>> assignment = reclusterer.assign(parts, capture, sampler.labels, sampler.assignment, current_k=2, k=2)
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
        backend=None,
    ):
        if cluster_on not in CLUSTER_SPACES:
            raise ValueError(f'cluster_on must be "trunk" or "embedding", got {cluster_on!r}')
        self.cluster_on = cluster_on
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_workers = num_workers
        self.kmeans = dict(
            niter=int(niter),
            max_points_per_centroid=max_points_per_centroid,
            max_retries=int(max_retries),
            gpu=gpu,
            backend=None if backend is None else clustering.choose_backend(backend),
        )
        self.seed = int(seed)
        self.seconds = 0.0
        self.clustering_seconds = 0.0
        self.fresh_samples = 0

    def assign(self, parts, capture, labels, assignment, current_k, k, split=False, memory=None):
        """The new assignment (int64, one cluster id in [0, k) per sample) on every rank.

        ``parts``: the :class:`~pml_divide_conquer.training.TrainingParts` (model, dataset, ...) of an embedding
        pass; ``capture``: the :class:`~pml_divide_conquer.feature_memory.InputCapture` on the embedder (for
        ``cluster_on="trunk"``). ``assignment`` holds the current ``current_k`` clusters; with ``split``,
        ``k == 2 * current_k``. ``memory``: a :class:`~pml_divide_conquer.feature_memory.FeatureMemory` to cluster
        instead of an embedding pass (only the samples it has no fresh row for are embedded).
        """
        start = time.perf_counter()
        if memory is None:
            emb = self.embed(parts, capture, labels)
            self.fresh_samples = len(labels)
        else:
            emb = self.from_memory(parts, capture, labels, memory)
        # one rank clusters, all ranks get its result (k-means need not agree bit for bit across processes)
        clustering_start = time.perf_counter()
        if distributed.world_size_and_rank()[1] == 0:
            new = self.cluster(emb, labels, assignment, current_k, k, split)
        else:
            new = np.zeros(len(labels), dtype=np.int64)
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

    def from_memory(self, parts, capture, labels, memory):
        """The rows training last computed, with the samples that have none since the last reclustering embedded
        afresh (all of them when the memory is empty); under DDP, on rank 0 (None on the others)."""
        emb, stale = memory.features_for_clustering()  # the rows on rank 0 only
        self.fresh_samples = len(stale)
        if len(stale):
            fresh = self.embed(parts, capture, labels, indices=stale)  # (every rank embeds a shard of them)
            if distributed.world_size_and_rank()[1] == 0:
                if emb is None:
                    emb = np.zeros((len(labels), fresh.shape[1]), dtype=np.float32)
                emb[stale] = fresh
        memory.mark_used()
        return emb

    def embed(self, parts, capture, labels, indices=None, space=None):
        """L2-normalised trunk outputs (or embeddings) of the training set (or of its samples ``indices``),
        checked against ``labels``. ``space``: "trunk" or "embedding" (default: ``cluster_on``)."""
        if parts is None or parts.model is None or parts.dataset is None:
            raise RuntimeError(
                "reclustering needs to embed training samples, but no model and dataset were given at set-up: "
                + parts.hints.setup
                if parts is not None
                else "reclustering needs the model and the training set: set the wrapper up first"
            )
        dataset = parts.dataset if self.dataset is None else self.dataset
        workers = parts.num_workers if self.num_workers is None else self.num_workers
        if indices is not None:
            dataset = torch.utils.data.Subset(dataset, np.asarray(indices).tolist())
            labels = np.asarray(labels)[indices]
        use_trunk = (space or self.cluster_on) == "trunk"
        emb, embedded = embed_dataset(parts, capture, dataset, use_trunk, self.batch_size, workers)
        if len(embedded) != len(labels) or not np.array_equal(embedded, labels):
            raise ValueError(
                "the dataset embedded for clustering does not have the sampler's labels in the same order "
                f"({len(embedded)} vs {len(labels)} samples): the dataset given at set-up (and cluster_dataset) "
                "must hold the training samples in the order of the sampler's labels"
            )
        return emb


def embed_dataset(parts, capture, dataset, use_trunk_output, batch_size, num_workers):
    """Embed ``dataset`` with ``parts.model`` in eval mode, no grad. Returns (features, labels) as numpy.

    Features are L2-normalised float32: the model's output, or with ``use_trunk_output`` the embedder's input
    (collected by ``capture``), as PML's testers compute them (``BaseTester.get_all_embeddings``). Labels go through
    ``parts.label_transform`` as the loss would receive them. Under torch.distributed each rank embeds every W-th
    sample and the shards are gathered, so every rank gets all.
    """
    n = len(dataset)
    world, rank = distributed.world_size_and_rank()
    if distributed.is_distributed():
        dataset = torch.utils.data.Subset(dataset, distributed.shard_indices(n, world, rank).tolist())
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=parts.collate_fn
    )
    # the plain module, not its DDP wrapper: ranks embed shards of different lengths, and DDP's forward would start
    # collectives (buffer broadcasts) that the ranks do not all reach; nor a compiled one (eval mode recompiles)
    model = unwrap(parts.model)
    modes = [(m, m.training) for m in model.modules()]
    device = parts.input_device()
    features, all_labels = [], []
    try:
        model.eval()
        with torch.no_grad():
            for batch in loader:
                x, y = parts.data_and_label_getter(batch)
                x = x.to(device) if torch.is_tensor(x) else x
                if parts.dtype is not None and torch.is_tensor(x):
                    x = x.type(parts.dtype)
                if use_trunk_output:
                    with capture.collecting() as rows:
                        model(x)
                    if len(rows) != 1:
                        raise RuntimeError(
                            f"the model called its SubspaceMaskedEmbedder {len(rows)} times for one batch: "
                            'cluster_on="trunk" clusters the embedder\'s input, so it must be called once per batch'
                        )
                    out = rows[0]
                else:
                    out = model(x)
                features.append(F.normalize(out.flatten(1).float(), dim=1).cpu())
                all_labels.append(torch.as_tensor(y).cpu())
    finally:
        for m, training in modes:
            m.training = training
    emb = torch.cat(features).numpy() if features else np.zeros((0, 1), dtype=np.float32)
    labels = torch.cat(all_labels) if all_labels else torch.zeros(0, dtype=torch.long)
    if parts.label_transform is not None:
        labels = parts.label_transform(labels)
    labels = np.asarray(torch.as_tensor(labels).cpu())
    labels = labels.reshape(len(emb), -1)[:, 0] if labels.ndim > 1 else labels
    emb = distributed.gather_shards(emb.astype(np.float32), n)
    labels = distributed.gather_shards(labels.astype(np.int64), n)
    return emb, labels
