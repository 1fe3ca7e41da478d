"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (the idx files), split zero-shot by class."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from .arrays import per_class_subset, zero_shot_split

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def read_idx(path):
    """Read an idx file (optionally gzipped), the format of (Fashion-)MNIST, into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path} is not an idx file of unsigned bytes")
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def _fashion_file(root, stem):
    for name in (f"{stem}.gz", stem):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install Debian's package: "
        "apt-get install -y dataset-fashion-mnist (or run bash scripts/setup.sh), or pass root=<folder with the "
        "idx files>."
    )


def load_fashion_mnist(root=None, num_train_classes=5, max_per_class=None, seed=0):
    """Fashion-MNIST (70,000 28x28 images, 10 classes), split zero-shot by class.

    Both of the original train and test files are pooled, then classes ``< num_train_classes`` train (T-shirt,
    trouser, pullover, dress, coat) and the others test (sandal, shirt, sneaker, bag, ankle boot). Images are
    float32 in [0, 1] of shape (1, 28, 28).

    Args:
        root: folder with the idx files; default ``$PML_DC_FASHION_MNIST`` or /usr/share/datasets/fashion-mnist,
            where Debian's ``dataset-fashion-mnist`` package puts them.
        max_per_class: keep at most this many images of each class (a random, seeded subset) for quick runs.

    Example:
        >>> train_set, test_set = load_fashion_mnist(max_per_class=1000)
        >>> train_set[0][0].shape
        torch.Size([1, 28, 28])
    """
    root = Path(root or os.environ.get("PML_DC_FASHION_MNIST", FASHION_MNIST_DIR))
    images, labels = [], []
    for prefix in ("train", "t10k"):
        images.append(read_idx(_fashion_file(root, f"{prefix}-images-idx3-ubyte")))
        labels.append(read_idx(_fashion_file(root, f"{prefix}-labels-idx1-ubyte")))
    x, y = np.concatenate(images), np.concatenate(labels).astype(np.int64)
    keep = per_class_subset(y, max_per_class, np.random.default_rng(seed))
    x = (x[keep].astype(np.float32) / 255.0)[:, None]
    return zero_shot_split(x, y[keep], np.arange(num_train_classes))
