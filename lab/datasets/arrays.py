"""In-memory datasets in the form PML's trainers and testers expect, and the zero-shot split by class."""

import numpy as np
import torch
from torch.utils.data import Dataset


class ArrayDataset(Dataset):
    """(features, label) pairs from in-memory arrays, the way PML's trainers and testers expect them.

    Example:
        >>> ds = ArrayDataset(np.zeros((4, 1, 16, 16)), [0, 0, 1, 1])
        >>> x, y = ds[0]  # a float32 tensor of shape (1, 16, 16) and the int 0
    """

    def __init__(self, data, labels):
        self.data = torch.as_tensor(np.asarray(data), dtype=torch.float32)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.data) != len(self.labels):
            raise ValueError(f"{len(self.data)} samples but {len(self.labels)} labels")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.data[i], int(self.labels[i])


def pass_through_collate(batch):
    """The ``collate_fn`` of :class:`BatchArrayDataset`: its batches come whole from ``__getitems__``."""
    return batch


class BatchArrayDataset(ArrayDataset):
    """An :class:`ArrayDataset` that serves whole batches: one tensor indexing per batch instead of one
    ``__getitem__`` per sample and a collation that stacks them.

    PyTorch's DataLoader calls ``dataset.__getitems__(indices)`` once per batch when the dataset has it; this one
    returns ``(data[indices], labels[indices])``, the (features, labels) pair PML expects, with labels an int64 CPU
    tensor. Pass :func:`pass_through_collate` (also ``BatchArrayDataset.collate_fn``) as ``collate_fn`` to PML's
    trainers (``trainers.MetricLossOnly(..., collate_fn=...)``) and testers (``tester.test(..., collate_fn=...)``,
    ``tester.get_all_embeddings(..., collate_fn=...)``): the default collation would take the pair apart.

    ``.to(device)`` (or ``device=``) moves the features, e.g. onto the GPU once, so that no batch is copied there
    at each step (labels stay on the CPU, where PML turns them into numpy arrays anyway). Data on a GPU needs
    ``dataloader_num_workers=0`` (worker processes cannot share CUDA tensors); a batch is a single indexing, so
    workers would only add their transfer cost.

    Example:
        >>> ds = BatchArrayDataset(np.zeros((8, 1, 16, 16)), [0, 0, 1, 1, 2, 2, 3, 3])
        >>> x, y = ds.__getitems__([0, 2, 4])  # a (3, 1, 16, 16) float32 tensor, tensor([0, 1, 2])
        >>> trainer = trainers.MetricLossOnly(..., dataset=ds.to("cuda"), dataloader_num_workers=0,
        ...                                   collate_fn=ds.collate_fn)
    """

    collate_fn = staticmethod(pass_through_collate)

    def __init__(self, data, labels, device=None):
        super().__init__(data, labels)
        self.label_tensor = torch.from_numpy(self.labels)
        if device is not None:
            self.to(device)

    @classmethod
    def from_dataset(cls, dataset, device=None):
        """The same samples as an :class:`ArrayDataset` ``dataset`` (its features tensor is shared, not copied)."""
        out = cls(dataset.data[:0], dataset.labels[:0])
        out.data, out.labels = dataset.data, np.asarray(dataset.labels, dtype=np.int64)
        out.label_tensor = torch.from_numpy(out.labels)
        if len(out.data) != len(out.labels):
            raise ValueError(f"{len(out.data)} samples but {len(out.labels)} labels")
        return out.to(device) if device is not None else out

    @property
    def device(self):
        return self.data.device

    def to(self, device):
        """Move the features to ``device`` (in place); returns the dataset."""
        self.data = self.data.to(device)
        return self

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.data[idx.to(self.data.device)], self.label_tensor[idx]


def zero_shot_split(data, labels, train_classes):
    """Split by class: the classes in ``train_classes`` train, all others test (disjoint, as in the papers)."""
    labels = np.asarray(labels)
    is_train = np.isin(labels, np.asarray(train_classes))
    return ArrayDataset(data[is_train], labels[is_train]), ArrayDataset(data[~is_train], labels[~is_train])


def per_class_subset(labels, max_per_class, rng):
    """Indices keeping at most ``max_per_class`` random samples of each class (sorted, so order is stable)."""
    if max_per_class is None:
        return np.arange(len(labels))
    keep = [rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))
