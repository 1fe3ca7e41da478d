"""Cluster bookkeeping: faiss k-means, 2-way splits and Hungarian matching. Numpy in, numpy out.

Every k-means setting is on one :class:`KMeansSettings` (as faiss bundles its ``ClusteringParameters``). The
torch/PML side (embedding the training set, ranks) lives in :mod:`pml_divide_conquer.reclustering`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

from . import notices

if TYPE_CHECKING:
    import torch

BACKENDS = ("faiss", "torch")


@dataclass(frozen=True)
class KMeansSettings:
    """How k-means runs: the reference's settings by default (100 iterations, all points, retried with seed + t
    until every cluster has 2 classes of 2 samples, up to 30 times).

    Args:
        niter: Lloyd iterations.
        seed: the seed of the first try (try t uses ``seed + t``; the same at every reclustering).
        max_points_per_centroid: train on at most this many points per centroid (None: all points, as the
            reference; faiss's own default subsamples 256 per centroid).
        max_retries: tries of :func:`kmeans_with_retries` and of each split in :func:`split_clusters`.
        gpu: faiss on a GPU (None: when faiss-gpu sees one; False: always the CPU).
        backend: ``"faiss"`` or ``"torch"`` (the same algorithm in torch, on the GPU when there is one); None:
            where the data is (:func:`choose_backend`).

    Examples:
        >>> KMeansSettings(niter=20, seed=3).max_retries
        30
        >>> KMeansSettings(n_iter=20)
        Traceback (most recent call last):
        TypeError: KMeansSettings.__init__() got an unexpected keyword argument 'n_iter'
    """

    niter: int = 100
    seed: int = 0
    max_points_per_centroid: int | None = None
    max_retries: int = 30
    gpu: bool | None = None
    backend: str | None = None

    def __post_init__(self) -> None:
        for name in ("niter", "max_retries"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"KMeansSettings.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise ValueError(f"KMeansSettings.seed must be an integer, got {self.seed!r}")
        points = self.max_points_per_centroid
        if points is not None and (not isinstance(points, (int, np.integer)) or isinstance(points, bool) or points < 1):
            raise ValueError(
                f"KMeansSettings.max_points_per_centroid must be None or a positive integer, got {points!r}"
            )
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f'kmeans backend must be "faiss" or "torch", got {self.backend!r}')

    def with_seed(self, seed: int) -> KMeansSettings:
        """These settings with another ``seed``."""
        return dataclasses.replace(self, seed=int(seed))


def settings_of(settings: KMeansSettings | None, deprecated: Mapping[str, Any], where: str) -> KMeansSettings:
    """``settings`` (default KMeansSettings()), or one built from the keywords 0.3 took (with a FutureWarning)."""
    if deprecated:
        unknown = sorted(set(deprecated) - {f.name for f in dataclasses.fields(KMeansSettings)})
        if unknown:
            raise TypeError(f"{where}() got unexpected keyword arguments {unknown}")
        spelled = ", ".join(f"{k}={v!r}" for k, v in deprecated.items())
        notices.warn(
            f"{where}(..., {spelled}) is deprecated and will be removed in 0.5: "
            f"pass settings=KMeansSettings({spelled})",
            FutureWarning,
        )
        settings = dataclasses.replace(settings or KMeansSettings(), **deprecated)
    if settings is None:
        return KMeansSettings()
    if not isinstance(settings, KMeansSettings):
        raise TypeError(f"settings must be a KMeansSettings, got {type(settings).__name__}")
    return settings


def _faiss() -> Any:
    import faiss

    return faiss


def faiss_gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def choose_backend(backend: str | None = None, gpu: bool | None = None) -> str:
    """``backend`` as given, else where the data is: faiss on a GPU when faiss sees one, k-means in torch on the GPU
    when torch sees one but faiss does not (faiss-gpu is often not installable), faiss on the CPU otherwise
    (``gpu=False``: always faiss on the CPU)."""
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f'kmeans backend must be "faiss" or "torch", got {backend!r}')
        return backend
    if gpu is False or faiss_gpu_available():
        return "faiss"
    import torch

    return "torch" if torch.cuda.is_available() else "faiss"


def kmeans(x: ArrayLike, k: int, settings: KMeansSettings | None = None, **deprecated: Any) -> np.ndarray:
    """Assign each row of ``x`` (n x d, float) to one of ``k`` clusters with k-means, run as ``settings`` (a
    :class:`KMeansSettings`) says: faiss (``backend="faiss"``; ``gpu=None`` uses a GPU when faiss-gpu sees one, False
    forces the CPU) or the same algorithm in torch (``backend="torch"``: :func:`torch_kmeans`, on the GPU when there
    is one and ``gpu`` is not False); by default where the data is (:func:`choose_backend`). Returns int64 ids in
    [0, k). (The keywords of 0.3, ``niter=``, ``seed=``, ..., still work for one release, with a FutureWarning.)

    Examples:
        >>> ids = kmeans(x, 4, KMeansSettings(niter=20, seed=1))
    """
    s = settings_of(settings, deprecated, "kmeans")
    niter, seed, gpu, max_points_per_centroid, backend = s.niter, s.seed, s.gpu, s.max_points_per_centroid, s.backend
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings to cluster contain NaN or inf: the model has diverged; lower the learning rate")
    n = x.shape[0]
    if k < 1 or k > n:
        raise ValueError(f"cannot make {k} clusters out of {n} points")
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    if choose_backend(backend, gpu) == "torch":
        import torch

        device = "cuda" if gpu is not False and torch.cuda.is_available() else "cpu"
        return torch_kmeans(
            x, k, niter=niter, seed=seed, device=device, max_points_per_centroid=max_points_per_centroid
        )
    faiss = _faiss()
    use_gpu = faiss_gpu_available() if gpu is None else bool(gpu)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=int(seed) % (2**31), gpu=use_gpu, verbose=False)
    # faiss trains on at most max_points_per_centroid * k points; min_points_per_centroid=1 silences its
    # "please provide at least 39*k points" notice on small data
    km.cp.max_points_per_centroid = n if max_points_per_centroid is None else int(max_points_per_centroid)
    km.cp.min_points_per_centroid = 1
    km.train(x)
    _, ids = km.index.search(x, 1)
    return ids[:, 0].astype(np.int64)


def torch_kmeans(
    x: ArrayLike,
    k: int,
    *,
    niter: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_points_per_centroid: int | None = None,
    chunk: int = 1 << 18,
) -> np.ndarray:
    """k-means in torch, as faiss runs it: k distinct random points as the first centroids (seeded), ``niter``
    Lloyd iterations, an empty cluster refilled by splitting a large one (faiss's ``split_clusters``). Returns the
    int64 id of each row's nearest centroid.

    Deterministic for a seed on one device: the centroid sums are products with one-hot matrices (no atomic adds);
    GPU and CPU results may differ in the last bits. Distances are computed ``chunk`` rows at a time.
    """
    import torch

    gen = torch.Generator().manual_seed(int(seed) % (2**63))
    data = torch.as_tensor(x, dtype=torch.float32)
    n = len(data)
    train = data
    if max_points_per_centroid is not None and n > k * max_points_per_centroid:
        train = data[torch.randperm(n, generator=gen)[: k * int(max_points_per_centroid)]]
    train = train.to(device)
    centroids = train[torch.randperm(len(train), generator=gen)[:k].to(device)].clone()

    def assign(points: torch.Tensor) -> torch.Tensor:
        ids = torch.empty(len(points), dtype=torch.long, device=device)
        half_norms = (centroids * centroids).sum(1) / 2
        for start in range(0, len(points), chunk):
            part = points[start : start + chunk].to(device)
            ids[start : start + len(part)] = (part @ centroids.t() - half_norms).argmax(1)
        return ids

    for _ in range(niter):
        ids = assign(train)
        sums = torch.zeros_like(centroids)
        counts = torch.zeros(k, dtype=torch.float32, device=device)
        for start in range(0, len(train), chunk):
            one_hot = torch.nn.functional.one_hot(ids[start : start + chunk], k).to(torch.float32)
            sums += one_hot.t() @ train[start : start + chunk]
            counts += one_hot.sum(0)
        nonempty = counts > 0
        centroids = torch.where(nonempty[:, None], sums / counts.clamp(min=1)[:, None], centroids)
        if not bool(nonempty.all()):
            centroids = _split_large_clusters(centroids, counts, gen)
    return assign(data).cpu().numpy().astype(np.int64)


def _split_large_clusters(
    centroids: torch.Tensor, counts: torch.Tensor, gen: torch.Generator, eps: float = 1.0 / 1024
) -> torch.Tensor:
    """Refill each empty centroid with a copy of a large cluster's, the two nudged apart (faiss's rule: the cluster
    chosen with probability growing with its size)."""
    import torch

    counts = counts.clone().cpu()
    centroids = centroids.clone()
    for empty in torch.nonzero(counts == 0).flatten().tolist():
        weights = (counts - 1).clamp(min=0)
        j = int(torch.multinomial(weights / weights.sum(), 1, generator=gen))
        sign = torch.ones(centroids.shape[1], device=centroids.device)
        sign[1::2] = -1
        centroids[empty] = centroids[j] * (1 + eps * sign)
        centroids[j] = centroids[j] * (1 - eps * sign)
        counts[empty] = counts[j] // 2
        counts[j] -= counts[empty]
    return centroids


def cluster_is_valid(cluster_labels: ArrayLike, min_classes: int = 2, min_per_class: int = 2) -> bool:
    """True when at least ``min_classes`` classes have ``min_per_class`` or more members (reference rule)."""
    _, counts = np.unique(cluster_labels, return_counts=True)
    return int((counts >= min_per_class).sum()) >= min_classes


def invalid_clusters(
    assignment: np.ndarray, labels: np.ndarray, k: int, min_classes: int = 2, min_per_class: int = 2
) -> list[int]:
    """The clusters (of ``k``) that :func:`cluster_is_valid` refuses."""
    return [c for c in range(k) if not cluster_is_valid(labels[assignment == c], min_classes, min_per_class)]


def kmeans_with_retries(
    x: ArrayLike, k: int, labels: ArrayLike, settings: KMeansSettings | None = None, **deprecated: Any
) -> np.ndarray:
    """k-means, retried with seeds ``settings.seed + t`` until every cluster has >= 2 classes with >= 2 members
    each (at most ``settings.max_retries`` tries).

    If no seed succeeds, the last result is returned with a warning naming the degenerate clusters.
    """
    settings = settings_of(settings, deprecated, "kmeans_with_retries")
    labels = np.asarray(labels)
    bad = []
    for attempt in range(settings.max_retries):
        ids = kmeans(x, k, settings.with_seed(settings.seed + attempt))
        bad = invalid_clusters(ids, labels, k)
        if not bad:
            return ids
    notices.warn(
        f"k-means with K={k} left clusters {bad} without 2 classes of 2 samples after {settings.max_retries} tries; "
        "their learners get few useful pairs. Use fewer learners (num_learners) for this dataset.",
    )
    return ids


def split_clusters(
    x: np.ndarray,
    assignment: ArrayLike,
    labels: ArrayLike | None = None,
    settings: KMeansSettings | None = None,
    **deprecated: Any,
) -> np.ndarray:
    """Split every cluster c in two with 2-means: its members get ids 2c and 2c+1.

    With ``labels``, each split is retried with new seeds until both children have 2 classes with 2 samples each
    (the rule :func:`kmeans_with_retries` applies); splits that never get there are kept with a warning.
    """
    settings = settings_of(settings, deprecated, "split_clusters")
    assignment = np.asarray(assignment, dtype=np.int64)
    new = np.empty_like(assignment)
    degenerate = []
    for c in np.unique(assignment):
        members = np.flatnonzero(assignment == c)
        if len(members) < 2:
            new[members] = 2 * c
            degenerate.append(int(c))
            continue
        tries = settings.max_retries if labels is not None else 1
        for attempt in range(tries):
            sub = kmeans(x[members], 2, settings.with_seed(settings.seed + attempt))
            if labels is None or not invalid_clusters(sub, np.asarray(labels)[members], 2):
                break
        else:
            degenerate.append(int(c))
        new[members] = 2 * c + sub
    if degenerate and labels is not None:
        notices.warn(
            f"splitting clusters {degenerate} left a child without 2 classes of 2 samples; its learner gets few "
            "useful pairs. Use fewer learners (num_learners) for this dataset.",
        )
    return new


def overlap_matrix(old: ArrayLike, new: ArrayLike, k: int) -> np.ndarray:
    """overlap[i, j] = number of samples in old cluster i and new cluster j."""
    old = np.asarray(old, dtype=np.int64)
    new = np.asarray(new, dtype=np.int64)
    if old.shape != new.shape:
        raise ValueError(f"assignments differ in length: {old.shape} vs {new.shape}")
    return np.bincount(old * k + new, minlength=k * k).reshape(k, k)


def match_clusters(old: ArrayLike, new: ArrayLike, k: int) -> np.ndarray:
    """Relabel ``new`` so that each new cluster takes the id of the old cluster it overlaps most.

    Maximising total overlap is the same as minimising the summed symmetric differences |A_i xor B_j|,
    since |A xor B| = |A| + |B| - 2|A & B| and the sizes sum to n on both sides. Returns the relabelled
    assignment; applying it to a pure relabelling of ``old`` gives back ``old`` exactly.
    """
    overlap = overlap_matrix(old, new, k)
    old_ids, new_ids = linear_sum_assignment(overlap, maximize=True)
    # new cluster new_ids[i] is the continuation of old cluster old_ids[i]: map new -> old (not the inverse).
    relabel = np.empty(k, dtype=np.int64)
    relabel[new_ids] = old_ids
    return relabel[np.asarray(new, dtype=np.int64)]
