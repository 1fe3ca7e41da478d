"""What the documentation's code blocks leave to the reader, filled in for the tests (tests/test_docs_pages.py).

The docs' examples are written for the reader's own model and data: ``trunk`` (a backbone with 512 output
features), ``train_set`` / ``val_set`` / ``test_set`` (PML-style datasets of ``(input, label)`` pairs) and
``train_labels``. The tests give them small offline stand-ins: Gaussian blobs with many classes and a one-layer
trunk. Nothing else in a block is changed, except that epoch counts are shrunk (see ``SHRUNK_EPOCHS``).

Blocks that need a GPU or a download say so on their first line (``# Needs ...``); the tests run the stand-in
registered for them in ``STAND_INS`` instead, which defines the same names offline, on the CPU (or on a GPU when
the machine has one).
"""

import numpy as np
import torch

from lab.datasets import ArrayDataset

SHRUNK_EPOCHS = 6  # every "num_epochs = N" / "epochs=N" of a block becomes min(N, SHRUNK_EPOCHS)
TRUNK_FEATURES = 512
INPUT_DIM = 32


def blobs(num_classes, per_class, seed, dim=INPUT_DIM, spread=0.6):
    """Gaussian blobs, one per class: a zero-shot-like many-class dataset of feature vectors."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, dim)).astype(np.float32)
    labels = np.repeat(np.arange(num_classes), per_class)
    x = centres[labels] + spread * rng.standard_normal((len(labels), dim)).astype(np.float32)
    return ArrayDataset(x, labels)


def reader_blanks():
    """The names the docs leave to the reader, fresh for every page."""
    torch.manual_seed(0)
    train_set = blobs(64, 30, seed=0)  # enough classes for batches of 80 with m=4 (20 classes) in 8 clusters
    val_set = blobs(16, 20, seed=1)
    test_set = blobs(16, 20, seed=2)
    trunk = torch.nn.Sequential(torch.nn.Linear(INPUT_DIM, TRUNK_FEATURES), torch.nn.ReLU())
    return dict(trunk=trunk, train_set=train_set, train_labels=train_set.labels, val_set=val_set, test_set=test_set)


def faq_blanks():
    """The FAQ's snippets continue a set-up like the README's: a wrapper ``dc`` and the ``optimizers`` dict."""
    from pytorch_metric_learning import losses

    from pml_divide_conquer import ClusterSampler, DivideConquerWrapper, SubspaceMaskedEmbedder

    blanks = reader_blanks()
    embedder = SubspaceMaskedEmbedder(128, 4, embedder=torch.nn.Linear(TRUNK_FEATURES, 128))
    sampler = ClusterSampler(blanks["train_labels"], batch_size=80, m=4)
    blanks["dc"] = DivideConquerWrapper(losses.MarginLoss(), embedder=embedder, sampler=sampler)
    blanks["optimizers"] = {"trunk_optimizer": torch.optim.Adam(blanks["trunk"].parameters(), lr=1e-5)}
    return blanks


# pages whose snippets need more than the common blanks
PAGE_BLANKS = {"docs/faq.md": faq_blanks}


# ---------------------------------------------------------------------------------------------- stand-ins
PAPER_RECIPE_DATA = """
import torch
from lab.datasets import ArrayDataset

# 64 classes of random 3x32x32 "images" instead of CUB-200-2011, a small CNN with batch norm and 2048 output
# features instead of the ImageNet ResNet-50; the GPU when there is one
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
num_workers = 0
generator = torch.Generator().manual_seed(0)
prototypes = torch.rand(64, 3, 32, 32, generator=generator)
labels = torch.arange(64).repeat_interleave(10)
images = prototypes[labels] + 0.3 * torch.randn(len(labels), 3, 32, 32, generator=generator)
train_set = ArrayDataset(images.numpy(), labels.numpy())
cluster_set = train_set  # no augmentation to switch off here
test_prototypes = torch.rand(16, 3, 32, 32, generator=generator)
test_labels = torch.arange(16).repeat_interleave(10)
test_set = ArrayDataset((test_prototypes[test_labels] + 0.3 * torch.randn(len(test_labels), 3, 32, 32,
                                                                          generator=generator)).numpy(),
                        test_labels.numpy() + 64)
torch.manual_seed(0)
trunk = torch.nn.Sequential(
    torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
    torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 2048), torch.nn.ReLU(),
).to(device)
"""

# (page, index of the block among the page's python blocks) -> code run instead of it
STAND_INS = {
    ("docs/how-to/paper-recipe.md", 0): PAPER_RECIPE_DATA,
}


def ddp_environment(port):
    """What torchrun would set for one process: the DDP page's code runs as a world of one (gloo, CPU)."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
