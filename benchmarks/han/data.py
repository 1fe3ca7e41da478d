"""The Han splits a run trains and is evaluated on, as whole-batch datasets."""

import numpy as np


def load_splits(split, npz, device, sizes=None):
    """The Han splits as whole-batch datasets on ``device``, labels of the training classes mapped to 0..C-1."""
    from lab import datasets

    han = datasets.load_han(split, npz=npz, **(sizes or {}))
    out = {}
    for name, ds in zip(("pretrain", "train", "eval"), han):
        labels = ds.labels if name == "eval" else np.unique(ds.labels, return_inverse=True)[1]
        out[name] = datasets.BatchArrayDataset(ds.data, labels, device=device)
    return out
