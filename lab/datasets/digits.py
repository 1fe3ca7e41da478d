"""scikit-learn's bundled 8x8 digits, split zero-shot: the quickest check (offline, no files)."""

import numpy as np

from .arrays import zero_shot_split


def load_digits(num_train_classes=5):
    """scikit-learn's bundled 8x8 digits (1,797 images), split zero-shot: classes < num_train_classes train."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return zero_shot_split(x, d.target, np.arange(num_train_classes))
