"""Divide & Conquer in PyTorch Lightning: scikit-learn's digits, offline, on the CPU.

    python examples/lightning_digits.py                       # one process
    python examples/lightning_digits.py --devices 2           # Lightning's DDP, 2 processes (gloo)

Train on digit classes 0-4, test retrieval on the unseen classes 5-9 (R@1 on the full embedding); the margin loss
with distance-weighted mining, as in the papers. The
LightningModule holds the trunk, the SubspaceMaskedEmbedder, the ClusterSampler and the DivideConquerWrapper;
``DivideConquerCallback`` sets D&C up at fit start and takes its step (split, reclustering, phase change) after
every epoch. Needs ``pip install "pml-divide-conquer[lightning]"`` (pytorch-lightning).

Under DDP: ``use_distributed_sampler=False`` (the ClusterSampler gives every rank its own share of one cluster
batch), ``strategy="ddp_find_unused_parameters_true"`` (the wrapper is inside the DDP-wrapped module and most of
its learners are unused at a step), and the inner loss and miner in PML's ``DistributedLossWrapper`` and
``DistributedMinerWrapper`` (each learner sees its subspace of the batch gathered from all ranks).
"""

import argparse
import logging
import warnings

import numpy as np
import torch
from pytorch_metric_learning import losses, miners, testers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper
from sklearn.datasets import load_digits

from pml_divide_conquer import ClusterSampler, DivideConquerSchedule, DivideConquerWrapper, SubspaceMaskedEmbedder
from pml_divide_conquer.integrations.lightning import DivideConquerCallback, pl


def digits_split(train_classes=5):
    d = load_digits()
    x, y = torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)
    train, test = y < train_classes, y >= train_classes
    return torch.utils.data.TensorDataset(x[train], y[train]), torch.utils.data.TensorDataset(x[test], y[test])


class DigitsModule(pl.LightningModule):
    def __init__(self, train_set, epochs, num_learners=2, batch_size=16, m=8, distributed=False):
        super().__init__()
        self.train_set, self.batch_size = train_set, batch_size
        self.trunk = torch.nn.Sequential(
            torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU()
        )
        self.embedder = SubspaceMaskedEmbedder(16, num_learners, embedder=torch.nn.Linear(64, 16))
        labels = train_set.tensors[1].numpy()
        # the ClusterSampler reads the DDP world size when it draws: building it here, before Lightning starts the
        # processes, is fine
        self.sampler = ClusterSampler(labels, batch_size=batch_size, m=m, seed=0)
        loss = losses.MarginLoss(margin=0.2, beta=1.2)
        miner = miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
        if distributed:  # each learner sees its subspace of the batch gathered from all ranks
            loss, miner = DistributedLossWrapper(loss), DistributedMinerWrapper(miner)
        self.dc = DivideConquerWrapper(
            loss,
            miner,
            embedder=self.embedder,
            sampler=self.sampler,
            schedule=DivideConquerSchedule.journal(num_epochs=epochs, num_learners=num_learners),
        )

    def forward(self, x):  # the embeddings (the callback embeds samples with it for clustering)
        return self.embedder(self.trunk(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.dc(self(x), y)
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-4)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train_set, batch_size=self.batch_size, sampler=self.sampler)


def recall_at_1(model, test_set):
    emb, labels = testers.BaseTester(dataloader_num_workers=0).get_all_embeddings(test_set, model, torch.nn.Identity())
    return AccuracyCalculator(include=("precision_at_1",), k=1).get_accuracy(emb, labels.squeeze(1))["precision_at_1"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.basicConfig(format="%(message)s")
    logging.getLogger("PML").setLevel(logging.INFO)  # D&C's steps: splits, reclusterings, phase changes
    torch.manual_seed(0)  # the same initial weights on every rank
    train_set, test_set = digits_split()
    module = DigitsModule(train_set, args.epochs, distributed=args.devices > 1)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp_find_unused_parameters_true" if args.devices > 1 else "auto",
        use_distributed_sampler=False,
        callbacks=[DivideConquerCallback()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = recall_at_1(module, test_set)
    module.train()  # (the tester left it in eval mode, and Lightning keeps the mode it finds)
    trainer.fit(module)
    if trainer.is_global_zero:
        module.eval()
        after = recall_at_1(module, test_set)
        print(f"| model | R@1 on unseen digits 5-9 |\n|---|---|\n| untrained | {100 * before:.1f} |")
        print(
            f"| D&C, K={module.dc.num_active}, {args.epochs} epochs, {args.devices} process(es) | {100 * after:.1f} |"
        )
        assert np.isfinite(after)


if __name__ == "__main__":
    main()
