"""Looking inside a D&C model: retrieval per subspace, and how pure the clusters are."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch.utils.data import Dataset

from .compat import AccuracyCalculator
from .training import default_data_and_label_getter

if TYPE_CHECKING:
    from .embedder import SubspaceMaskedEmbedder

DEFAULT_METRICS = ("precision_at_1", "NMI")


def cluster_purity(
    assignment: ArrayLike, labels: ArrayLike, num_clusters: int | None = None
) -> tuple[np.ndarray, float]:
    """Per cluster, the share of its samples that belong to its most frequent class; and the overall purity.

    Returns ``(per_cluster, overall)``: ``per_cluster[c]`` is NaN for an empty cluster; ``overall`` is the share
    of all samples that are in their cluster's majority class.

    Examples:
        >>> cluster_purity([0, 0, 1, 1], [5, 5, 5, 6])
        (array([1. , 0.5]), 0.75)
    """
    assignment = np.asarray(assignment, dtype=np.int64)
    labels = np.asarray(labels)
    k = int(assignment.max()) + 1 if num_clusters is None else int(num_clusters)
    per_cluster = np.full(k, np.nan)
    majority = 0
    for c in range(k):
        members = labels[assignment == c]
        if len(members):
            top = np.unique(members, return_counts=True)[1].max()
            per_cluster[c] = top / len(members)
            majority += top
    return per_cluster, float(majority / len(labels))


def evaluate_subspaces(
    trunk: torch.nn.Module,
    embedder: SubspaceMaskedEmbedder,
    dataset: Dataset,
    num_active: int,
    accuracy_calculator: AccuracyCalculator | None = None,
    batch_size: int = 256,
    data_device: torch.device | str | None = None,
    dataloader_num_workers: int = 0,
    data_and_label_getter: Callable[[Any], tuple[Any, Any]] | None = None,
) -> dict[str, dict[str, float]]:
    """Retrieval metrics (query = reference = ``dataset``) on the full embedding and on each learner's subspace.

    Args:
        trunk: the trained trunk.
        embedder: the trained :class:`SubspaceMaskedEmbedder`.
        dataset: the dataset to evaluate on (query = reference).
        num_active: K, the number of learners whose subspaces to evaluate (``wrapper.num_active``).
        accuracy_calculator: PML's ``AccuracyCalculator``; default R@1 (precision_at_1) and NMI.
        batch_size: batch size of the embedding pass.
        data_device: device of the embedding pass (default CPU).
        dataloader_num_workers: DataLoader workers of the embedding pass.
        data_and_label_getter: as in PML's testers, for datasets that return more than (data, label).

    Returns:
        A dict ``{"full": {...}, "learner0": {...}, ...}`` of metric dicts, like PML's testers.

    Examples:
        >>> results = evaluate_subspaces(trunk, embedder, test_set,
        ...                              num_active=wrapper.num_active)
        >>> results["learner0"]["precision_at_1"]
    """
    calc = accuracy_calculator or AccuracyCalculator(include=DEFAULT_METRICS, k="max_bin_count")
    emb, labels = embed(
        trunk, embedder, dataset, batch_size, data_device or torch.device("cpu"), dataloader_num_workers,
        data_and_label_getter or default_data_and_label_getter,
    )  # fmt: skip
    spaces = {"full": F.normalize(emb, dim=1)}
    for k in range(num_active):
        spaces[f"learner{k}"] = embedder.subspace(emb, k, num_active).detach()
    return {name: calc.get_accuracy(x, labels) for name, x in spaces.items()}


def embed(
    trunk: torch.nn.Module,
    embedder: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    data_and_label_getter: Callable[[Any], tuple[Any, Any]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw (unnormalised) embeddings ``embedder(trunk(x))`` of ``dataset`` in eval mode without gradients, and
    its labels: the embeddings PML 2's testers compute (``BaseTester.get_all_embeddings`` with
    ``normalize_embeddings=False``), one batch after another in dataset order. The modules' modes are restored.

    Examples:
        >>> emb, labels = embed(trunk, embedder, test_set)
        >>> emb.shape, labels.shape
        (torch.Size([n, 64]), torch.Size([n]))
    """
    getter = data_and_label_getter or default_data_and_label_getter
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(batch_size), shuffle=False, num_workers=num_workers)
    modes = [(m, m.training) for module in (trunk, embedder) for m in module.modules()]
    chunks, all_labels = [], []
    try:
        trunk.eval(), embedder.eval()
        with torch.no_grad():
            for batch in loader:
                x, y = getter(batch)
                x = x.to(device) if torch.is_tensor(x) else x
                chunks.append(embedder(trunk(x)))
                all_labels.append(torch.as_tensor(y).reshape(len(chunks[-1]), -1)[:, 0].to(device))
    finally:
        for m, training in modes:
            m.training = training
    return torch.cat(chunks), torch.cat(all_labels)
