"""Divide & Conquer in your own PyTorch loop, in the style of PML's README: scikit-learn's digits, offline, CPU.

    python examples/plain_loop.py [--epochs 10]

Train on digit classes 0-4, test retrieval on the unseen classes 5-9 (R@1 on the full embedding); the margin loss
with distance-weighted mining, as in the papers. The lines marked "D&C" are all that D&C adds to the loop: the
ClusterSampler in place of a shuffling sampler, the wrapper around the loss, one set-up call and one end-of-epoch
call (docs/how-to/plain-loop.md shows the diff).
"""

import argparse
import logging

import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.datasets import load_digits

from pml_divide_conquer import ClusterSampler, DivideConquerSchedule, DivideConquerWrapper, SubspaceMaskedEmbedder


def digits_split(train_classes=5):
    d = load_digits()
    x, y = torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)
    train, test = y < train_classes, y >= train_classes
    return torch.utils.data.TensorDataset(x[train], y[train]), torch.utils.data.TensorDataset(x[test], y[test])


def recall_at_1(model, test_set):
    """R@1 of the normalised full embedding, as PML's testers compute it (without their progress bar, and with
    AccuracyCalculator's INFO lines held back, so that D&C's steps are the log's only lines)."""
    model.eval()
    data, labels = test_set.tensors
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(data))
    logger = logging.getLogger("PML")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        return AccuracyCalculator(include=("precision_at_1",), k=1).get_accuracy(emb, labels)["precision_at_1"]
    finally:
        logger.setLevel(level)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("PML").setLevel(logging.INFO)  # D&C's steps: splits, reclusterings, phase changes
    torch.manual_seed(0)
    train_set, test_set = digits_split()
    train_labels = train_set.tensors[1].numpy()

    trunk = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU())
    embedder = SubspaceMaskedEmbedder(16, num_learners=2, embedder=torch.nn.Linear(64, 16))  # D&C
    model = torch.nn.Sequential(trunk, embedder)
    sampler = ClusterSampler(train_labels, batch_size=32, m=8)  # D&C
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=32, sampler=sampler)
    loss_func = DivideConquerWrapper(  # D&C
        losses.MarginLoss(margin=0.2, beta=1.2),
        miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4),
        embedder=embedder,
        sampler=sampler,
        schedule=DivideConquerSchedule.journal(num_epochs=args.epochs, num_learners=2),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    before = recall_at_1(model, test_set)

    loss_func.setup(model, train_set, optimizers=[optimizer])  # D&C
    for epoch in range(1, args.epochs + 1):
        model.train()
        for data, labels in train_loader:
            optimizer.zero_grad()
            loss = loss_func(model(data), labels)
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch} ({loss_func.phase}, K={loss_func.num_active}): last loss {loss.item():.4f}")
        loss_func.end_epoch()  # D&C

    after = recall_at_1(model, test_set)
    print(f"| model | R@1 on unseen digits 5-9 |\n|---|---|\n| untrained | {100 * before:.1f} |")
    print(f"| D&C, K={loss_func.num_active}, {args.epochs} epochs | {100 * after:.1f} |")


if __name__ == "__main__":
    main()
