"""Small offline datasets for demos, tests and benchmarks (no download)."""

import numpy as np
import torch
from torch.utils.data import Dataset


class ArrayDataset(Dataset):
    """(features, label) pairs from in-memory arrays, the way PML's trainers and testers expect them."""

    def __init__(self, data, labels):
        self.data = torch.as_tensor(np.asarray(data), dtype=torch.float32)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.data) != len(self.labels):
            raise ValueError(f"{len(self.data)} samples but {len(self.labels)} labels")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.data[i], int(self.labels[i])


def zero_shot_split(data, labels, train_classes):
    """Split by class: the classes in ``train_classes`` train, all others test (disjoint, as in the papers)."""
    labels = np.asarray(labels)
    is_train = np.isin(labels, np.asarray(train_classes))
    return ArrayDataset(data[is_train], labels[is_train]), ArrayDataset(data[~is_train], labels[~is_train])


def load_digits(num_train_classes=5):
    """scikit-learn's bundled 8x8 digits (1,797 images), split zero-shot: classes < num_train_classes train."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return zero_shot_split(x, d.target, np.arange(num_train_classes))
