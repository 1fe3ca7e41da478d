"""Reclustering: features of the training set, clustered on rank 0, the result given to every rank.

:class:`Reclusterer` holds its settings (one :class:`ReclusterSettings`: which space is clustered, where the
features come from, the embedding pass, the k-means settings) and returns a :class:`Reclustering`: the new
assignment and what it cost. The end-of-epoch step (:mod:`pml_divide_conquer.controller`) decides when to call it
and what to do with the result (learners, sampler). The clustering itself is :mod:`pml_divide_conquer.clustering`
(numpy only); research varies it by overriding :meth:`Reclusterer.cluster` and passing the object to the wrapper
(``DivideConquerWrapper(..., reclusterer=MyReclusterer())``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from . import clustering, distributed
from .clustering import KMeansSettings
from .feature_memory import FeatureMemory
from .torch_utils import unwrap

if TYPE_CHECKING:
    from .feature_memory import InputCapture
    from .training import TrainingParts

CLUSTER_SPACES = ("trunk", "embedding")
FEATURE_SOURCES = ("training", "pass")


@dataclass(frozen=True)
class ReclusterSettings:
    """How the training set is clustered at each reclustering, in one object (unknown names are refused).

    Args:
        cluster_on: ``"trunk"`` (as the reference: the L2-normalised input of the SubspaceMaskedEmbedder, i.e. the
            trunk's output) or ``"embedding"``.
        features_from: ``"training"``: cluster the features training last computed for each sample (float16,
            N x dim x 2 bytes, kept in a :class:`~pml_divide_conquer.feature_memory.FeatureMemory`), embedding
            afresh only samples no batch held since the last reclustering; ``"pass"`` (as the reference): embed the
            training set each time. None (default): ``"pass"`` with a ``dataset``, else ``"training"``.
        dataset: the training samples with test-time transforms, in the same order, for ``"pass"`` (None: the
            training dataset given at set-up).
        batch_size: the batch size of the embedding pass.
        num_workers: the DataLoader workers of the embedding pass (None: the training loop's).
        memory_device: where the feature memory keeps its rows: ``"cpu"`` (default) or the training device.
        kmeans: the :class:`~pml_divide_conquer.clustering.KMeansSettings` (the reference's by default).

    Examples:
        >>> ReclusterSettings(cluster_on="embedding").features_source
        'training'
        >>> ReclusterSettings(dataset=test_time_train_set).features_source
        'pass'
    """

    cluster_on: str = "trunk"
    features_from: str | None = None
    dataset: Any = field(default=None, repr=False)
    batch_size: int = 256
    num_workers: int | None = None
    memory_device: Any = "cpu"
    kmeans: KMeansSettings = KMeansSettings()

    def __post_init__(self) -> None:
        if self.cluster_on not in CLUSTER_SPACES:
            raise ValueError(f'cluster_on must be "trunk" or "embedding", got {self.cluster_on!r}')
        if self.features_from is not None and self.features_from not in FEATURE_SOURCES:
            raise ValueError(f'features_from must be "training" or "pass", got {self.features_from!r}')
        if self.features_from == "training" and self.dataset is not None:
            raise ValueError(
                'features_from="training" clusters the features of the training batches, so dataset (the images to '
                'embed for clustering) would be ignored: use features_from="pass" with a dataset'
            )
        if (
            not isinstance(self.batch_size, (int, np.integer))
            or isinstance(self.batch_size, bool)
            or self.batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        workers = self.num_workers
        if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 0):
            raise ValueError(f"num_workers must be None or a non-negative integer, got {workers!r}")
        if not isinstance(self.kmeans, KMeansSettings):
            raise TypeError(f"kmeans must be a KMeansSettings, got {type(self.kmeans).__name__}")

    @property
    def features_source(self) -> str:
        """``"training"`` or ``"pass"``: ``features_from`` as given, or what its default means here."""
        if self.features_from is not None:
            return self.features_from
        return "pass" if self.dataset is not None else "training"


class Reclustering(NamedTuple):
    """What one reclustering gave: the new assignment and what it cost."""

    assignment: np.ndarray  # int64, one cluster id per sample
    seconds: float  # all of it: features (memory or embedding pass), clustering, broadcast
    clustering_seconds: float  # the clustering alone: k-means, matching, splits
    fresh_samples: int  # samples embedded for it (all of them with an embedding pass)


class Reclusterer:
    """A new cluster assignment of the training set, as the journal's code makes one.

    k-means at the current K on the L2-normalised trunk output (or embedding) of the training set, matched to the
    current clusters by the Hungarian algorithm; for a split, every cluster then split in two by 2-means. Both are
    retried with the next seed until every cluster has 2 classes with 2 samples each.

    Args:
        settings: a :class:`ReclusterSettings` (default: the reference's).
        **changes: fields of :class:`ReclusterSettings` to change (``Reclusterer(cluster_on="embedding")``).

    Research varies the clustering by overriding :meth:`cluster` (numpy in, numpy out) and passing the object to
    ``DivideConquerWrapper(..., reclusterer=...)``.

    Examples:
        >>> reclusterer = Reclusterer(cluster_on="embedding",
        ...                           kmeans=KMeansSettings(niter=20))
        >>> dc = DivideConquerWrapper(loss, embedder=embedder, sampler=sampler,
        ...                           reclusterer=reclusterer)
        >>> class RandomClusters(Reclusterer):
        ...     def cluster(self, features, labels, assignment, current_k, k,
        ...                 split=False):
        ...         return np.random.default_rng(0).integers(0, k, len(features))
    """

    def __init__(self, settings: ReclusterSettings | None = None, **changes: Any) -> None:
        if settings is not None and not isinstance(settings, ReclusterSettings):
            raise TypeError(f"settings must be a ReclusterSettings, got {type(settings).__name__}")
        settings = settings or ReclusterSettings()
        self.settings = dataclasses.replace(settings, **changes) if changes else settings

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings!r})"

    def feature_memory(self, num_samples: int) -> FeatureMemory | None:
        """The :class:`~pml_divide_conquer.feature_memory.FeatureMemory` that training fills for this reclusterer
        (``features_from="training"``), or None (an embedding pass each time)."""
        if self.settings.features_source == "pass":
            return None
        return FeatureMemory(num_samples, self.settings.memory_device)

    def assign(
        self,
        source: FeatureSource,
        labels: np.ndarray,
        assignment: np.ndarray,
        current_k: int,
        k: int,
        split: bool = False,
    ) -> Reclustering:
        """The new assignment (one cluster id in [0, k) per sample) on every rank, and what it cost.

        ``source``: a :class:`FeatureSource` (the loop's parts for an embedding pass, the capture of the embedder's
        input, the feature memory). ``assignment`` holds the current ``current_k`` clusters; with ``split``,
        ``k == 2 * current_k``.
        """
        start = time.perf_counter()
        emb: np.ndarray | None
        if source.memory is None:
            emb, fresh = self.embed(source, labels), len(labels)
        else:
            emb, fresh = self.from_memory(source, labels)
        # one rank clusters, all ranks get its result (k-means need not agree bit for bit across processes)
        clustering_start = time.perf_counter()
        failure: BaseException | None = None
        if distributed.world_size_and_rank()[1] == 0:
            assert emb is not None  # (rank 0 holds the features)
            try:
                check_finite(emb)
                new = self.cluster(emb, labels, assignment, current_k, k, split)
            except Exception as error:  # told to every rank (ids of -1), so that none waits for the broadcast
                if not distributed.is_distributed():
                    raise
                failure, new = error, np.full(len(labels), -1, dtype=np.int64)
        else:
            new = np.zeros(len(labels), dtype=np.int64)
        clustering_seconds = time.perf_counter() - clustering_start
        new = distributed.broadcast_array(new)
        if failure is not None:
            raise failure
        if len(new) and new[0] < 0:
            raise RuntimeError(
                "the reclustering failed on rank 0, which clusters for every rank: its error says why (non-finite "
                "features of some training samples, or k-means that could not make the clusters)"
            )
        if source.memory is not None:  # the rows were used (not before: a failed reclustering leaves them fresh)
            source.memory.mark_used()
        return Reclustering(new, time.perf_counter() - start, clustering_seconds, fresh)

    def cluster(
        self,
        emb: np.ndarray,
        labels: np.ndarray,
        assignment: np.ndarray,
        current_k: int,
        k: int,
        split: bool = False,
    ) -> np.ndarray:
        """The clustering alone (numpy in, numpy out): k-means at the current K matched to ``assignment``, then,
        for a split, every cluster split in two."""
        kmeans = self.settings.kmeans
        base_k = current_k if split else k
        if split and k != 2 * current_k:
            raise ValueError(f"cannot split {current_k} clusters into {k}")
        if base_k == 1:
            new = np.zeros(len(emb), dtype=np.int64)
        else:
            new = clustering.kmeans_with_retries(emb, base_k, labels, kmeans)
            if current_k == base_k:
                new = clustering.match_clusters(assignment, new, base_k)
        if split:
            new = clustering.split_clusters(emb, new, labels, kmeans)
        return new

    def from_memory(self, source: FeatureSource, labels: np.ndarray) -> tuple[np.ndarray | None, int]:
        """(The rows training last computed, with the samples that have none since the last reclustering embedded
        afresh - all of them when the memory is empty -, how many were embedded); under DDP the rows are on rank 0
        (None on the others)."""
        memory = source.memory
        assert memory is not None  # (assign() reads the memory only when there is one)
        emb, stale = memory.features_for_clustering()  # the rows on rank 0 only
        if len(stale):
            fresh = self.embed(source, labels, indices=stale)  # (every rank embeds a shard of them)
            if distributed.world_size_and_rank()[1] == 0:
                if emb is None:
                    emb = np.zeros((len(labels), fresh.shape[1]), dtype=np.float32)
                emb[stale] = fresh
        return emb, len(stale)

    def embed(
        self,
        source: FeatureSource,
        labels: np.ndarray,
        indices: np.ndarray | None = None,
        space: str | None = None,
    ) -> np.ndarray:
        """L2-normalised trunk outputs (or embeddings) of the training set (or of its samples ``indices``),
        checked against ``labels``. ``space``: "trunk" or "embedding" (default: ``settings.cluster_on``)."""
        parts = source.parts
        if parts is None or parts.model is None or parts.dataset is None:
            raise RuntimeError(
                "reclustering needs to embed training samples, but no model and dataset were given at set-up: "
                + parts.hints.setup
                if parts is not None
                else "reclustering needs the model and the training set: set the wrapper up first"
            )
        settings = self.settings
        dataset = parts.dataset if settings.dataset is None else settings.dataset
        workers = parts.num_workers if settings.num_workers is None else settings.num_workers
        if indices is not None:
            dataset = torch.utils.data.Subset(dataset, np.asarray(indices).tolist())
            labels = np.asarray(labels)[indices]
        use_trunk = (space or settings.cluster_on) == "trunk"
        emb, embedded = embed_dataset(parts, source.capture, dataset, use_trunk, settings.batch_size, workers)
        if len(embedded) != len(labels) or not np.array_equal(embedded, labels):
            raise ValueError(
                "the dataset embedded for clustering does not have the sampler's labels in the same order "
                f"({len(embedded)} vs {len(labels)} samples): the dataset given at set-up (and the reclusterer's "
                "dataset) must hold the training samples in the order of the sampler's labels"
            )
        return emb


def check_finite(features: np.ndarray) -> None:
    """Raise, naming them, if the features of some training samples are NaN or inf."""
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if len(bad):
        shown = ", ".join(map(str, bad[:10].tolist())) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise FloatingPointError(
            f"the features of {len(bad)} of {len(features)} training samples to cluster are NaN or inf (samples "
            f"{shown}, by their index in the training set): their inputs may hold NaN or inf (look at those "
            "samples), or the model has diverged (lower the learning rate)."
        )


@dataclass
class FeatureSource:
    """Where a reclustering gets its features: the loop's :class:`~pml_divide_conquer.training.TrainingParts` (for
    an embedding pass), the :class:`~pml_divide_conquer.feature_memory.InputCapture` on the embedder (for
    ``cluster_on="trunk"``), and the :class:`~pml_divide_conquer.feature_memory.FeatureMemory` (None: an embedding
    pass every time). The end-of-epoch step makes it at set-up."""

    parts: TrainingParts | None
    capture: InputCapture | None = None
    memory: FeatureMemory | None = None


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
