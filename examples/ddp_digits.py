"""Divide & Conquer with DistributedDataParallel, one process per device, launched by torchrun.

CPU (gloo), 2 processes on this machine:

    torchrun --nproc_per_node=2 examples/ddp_digits.py

GPUs (nccl), one process per GPU:

    torchrun --nproc_per_node=4 examples/ddp_digits.py --backend nccl

Each rank draws its own half of every cluster batch (ClusterSampler reads the rank and world size from
torch.distributed); each learner's loss is wrapped in PML's DistributedLossWrapper, so it sees the batch gathered
from all ranks; reclustering embeds one shard per rank, gathers, clusters on rank 0 and broadcasts.
"""

import argparse
import gc
import logging
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from pytorch_metric_learning import losses, miners, trainers
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper
from torch.nn.parallel import DistributedDataParallel as DDP

from pml_divide_conquer import ClusterSampler, DivideConquerSchedule, DivideConquerWrapper, SubspaceMaskedEmbedder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's lab/: the examples' data
from lab import datasets  # noqa: E402
from lab.experiment import evaluate  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8, help="per rank (the cluster batch is this x ranks)")
    args = parser.parse_args()
    logging.getLogger("PML").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)

    dist.init_process_group(args.backend)  # torchrun provides RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    line = train_and_test(args, device)
    if rank == 0:
        print(f"{world} ranks, {args.epochs} epochs, {line}")
    # every rank's DDP modules and trainer are gone (they hold the process group) before it is torn down, and no
    # rank tears it down while another still evaluates
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def train_and_test(args, device):
    """Train D&C on digits 0-6 in this rank's process; on rank 0, the test R@1 on digits 7-9 (a line to print)."""
    rank = dist.get_rank()
    train_set, test_set = datasets.load_digits(num_train_classes=10 - 3)
    torch.manual_seed(0)  # same initial weights on every rank
    trunk = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()).to(device)
    embedder = SubspaceMaskedEmbedder(16, 2, mode="learned", embedder=torch.nn.Linear(64, 16)).to(device)
    sampler = ClusterSampler(train_set.labels, batch_size=args.batch_size, m=4, seed=0)
    dc = DivideConquerWrapper(
        DistributedLossWrapper(losses.MarginLoss(margin=0.2)),
        DistributedMinerWrapper(miners.DistanceWeightedMiner()),
        embedder=embedder,
        sampler=sampler,
        schedule=DivideConquerSchedule.journal(num_epochs=args.epochs, num_learners=2),  # the journal's phases
    )
    ddp = dict(device_ids=[device.index]) if args.backend == "nccl" else {}
    trainer = trainers.MetricLossOnly(
        models={"trunk": DDP(trunk, **ddp), "embedder": DDP(embedder, **ddp)},
        optimizers={
            "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-3),
            "embedder_optimizer": torch.optim.Adam(embedder.parameter_groups(lr=1e-3, mask_lr_multiplier=10)),
        },
        batch_size=args.batch_size,
        loss_funcs={"metric_loss": dc},
        dataset=train_set,
        sampler=sampler,
        dataloader_num_workers=0,
        data_device=device,
        end_of_epoch_hook=dc.get_end_of_epoch_hook(),
    )
    dc.prepare(trainer)
    trainer.train(num_epochs=args.epochs)
    if rank != 0:
        return None
    trunk.cpu(), embedder.cpu()
    result = evaluate(trunk, embedder, test_set)
    return f"K={dc.num_active}: test R@1 = {100 * result['precision_at_1']:.1f}"


if __name__ == "__main__":
    main()
