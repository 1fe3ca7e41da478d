"""Looking inside a D&C model: retrieval per subspace, and how pure the clusters are."""

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning import testers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

DEFAULT_METRICS = ("precision_at_1", "NMI")


def cluster_purity(assignment, labels, num_clusters=None):
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
    trunk,
    embedder,
    dataset,
    num_active,
    accuracy_calculator=None,
    batch_size=256,
    data_device=None,
    dataloader_num_workers=0,
    data_and_label_getter=None,
):
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
    tester = testers.BaseTester(
        normalize_embeddings=False,  # keep the raw embedding: subspaces are normalised one by one below
        batch_size=batch_size,
        dataloader_num_workers=dataloader_num_workers,
        data_device=data_device or torch.device("cpu"),
        data_and_label_getter=data_and_label_getter,
    )
    emb, labels = tester.get_all_embeddings(dataset, trunk, embedder)
    labels = labels[:, 0]
    spaces = {"full": F.normalize(emb, dim=1)}
    for k in range(num_active):
        spaces[f"learner{k}"] = embedder.subspace(emb, k, num_active).detach()
    return {name: calc.get_accuracy(x, labels) for name, x in spaces.items()}
