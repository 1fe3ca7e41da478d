"""Runs in each process of the 2-process gloo tests in test_distributed.py (spawned, CPU)."""

import os
import warnings

import numpy as np
import torch
import torch.distributed as dist
from pytorch_metric_learning import losses, trainers
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper
from sklearn.datasets import load_digits
from torch.nn.parallel import DistributedDataParallel as DDP

from pml_divide_conquer import ClusterSampler, DivideConquerWrapper, SubspaceMaskedEmbedder

from helpers import IndexedDataset, Recorder

ITERS = 15


def dataset():
    d = load_digits()
    keep = np.arange(0, len(d.target), 3)
    return IndexedDataset((d.data[keep] / 16.0).astype(np.float32), d.target[keep])


def make(ds, records, outer_distributed_wrapper=False, sampler_seed=0):
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU())
    embedder = SubspaceMaskedEmbedder(16, 2, mode="learned", embedder=torch.nn.Linear(32, 16))
    # rank and world size from torch.distributed
    sampler = ClusterSampler(ds.labels, batch_size=8, m=4, seed=sampler_seed)
    inner = losses.TripletMarginLoss(margin=0.1)
    if outer_distributed_wrapper:  # the whole wrapper inside PML's DistributedLossWrapper
        wrapper = DivideConquerWrapper(inner, embedder=embedder, sampler=sampler, recluster_every=1)
        metric_loss = DistributedLossWrapper(wrapper)
    else:  # each learner's loss gathers its own subspace embeddings (recommended)
        wrapper = DivideConquerWrapper(
            DistributedLossWrapper(inner), embedder=embedder, sampler=sampler, recluster_every=1
        )
        metric_loss = wrapper
    optimizers = {
        "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-3),
        "embedder_optimizer": torch.optim.Adam(embedder.parameter_groups(lr=1e-3, mask_lr_multiplier=10)),
    }
    recorder = Recorder()

    def after_iteration(t):
        idx = recorder.last
        records.append(
            dict(
                epoch=t.epoch,
                learner=wrapper.current_learner,
                indices=idx.tolist(),
                clusters=np.unique(sampler.assignment[idx]).tolist(),
                loss=float(t.losses["total_loss"]),
            )
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trainers.MetricLossOnly(
            models={"trunk": DDP(trunk), "embedder": DDP(embedder)},
            optimizers=optimizers,
            batch_size=8,
            loss_funcs={"metric_loss": metric_loss},
            dataset=ds,
            sampler=sampler,
            dataloader_num_workers=0,
            data_device=torch.device("cpu"),
            iterations_per_epoch=ITERS,
            data_and_label_getter=recorder,
            end_of_iteration_hook=after_iteration,
            end_of_epoch_hook=wrapper.get_end_of_epoch_hook(),
        )
    return dict(
        trainer=trainer, wrapper=wrapper, sampler=sampler, trunk=trunk, embedder=embedder, optimizers=optimizers
    )


def train(parts, start_epoch, num_epochs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["trainer"].train(start_epoch=start_epoch, num_epochs=num_epochs)


def worker(rank, world, folder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        out = {}
        ds = dataset()
        full = []
        a = make(ds, full)
        a["wrapper"].prepare(a["trainer"])
        train(a, 1, 6)
        out["full"] = full

        first = []
        b = make(ds, first)
        b["wrapper"].prepare(b["trainer"])
        train(b, 1, 3)
        checkpoint = os.path.join(folder, "checkpoint.pt")
        if rank == 0:  # saved once
            torch.save(
                {
                    "trunk": b["trunk"].state_dict(),
                    "embedder": b["embedder"].state_dict(),
                    "optimizers": {k: o.state_dict() for k, o in b["optimizers"].items()},
                    "wrapper": b["wrapper"].state_dict(),
                },
                checkpoint,
            )
        dist.barrier()
        resumed = []
        c = make(ds, resumed)
        state = torch.load(checkpoint, map_location="cpu")  # loaded on all ranks
        c["trunk"].load_state_dict(state["trunk"])
        c["embedder"].load_state_dict(state["embedder"])
        for k, o in c["optimizers"].items():
            o.load_state_dict(state["optimizers"][k])
        c["wrapper"].load_state_dict(state["wrapper"])
        c["wrapper"].prepare(c["trainer"])  # after loading: the step before epoch 1 is not taken again
        train(c, 4, 6)
        out["resumed"] = resumed

        # reclustering under DDP: shards embedded per rank, gathered, clustered on rank 0, broadcast
        w, t = c["wrapper"], c["trainer"]
        out["old_assignment"] = c["sampler"].assignment.copy()
        out["gathered_embeddings"] = w.embed_training_set(t)
        w.recluster(t)
        out["new_assignment"] = c["sampler"].assignment.copy()
        out["recluster_epoch"] = max(w.last_epoch, 0)
        out["single_process_embeddings"] = None
        if rank == 0:
            from pytorch_metric_learning import testers

            tester = testers.BaseTester(
                dataloader_num_workers=0,
                data_device=torch.device("cpu"),
                data_and_label_getter=lambda batch: batch[:2],
                use_trunk_output=True,
            )
            emb, _ = tester.get_all_embeddings(ds, c["trunk"], c["embedder"], return_as_numpy=True)
            out["single_process_embeddings"] = emb

        outer = []
        d = make(ds, outer, outer_distributed_wrapper=True)
        d["wrapper"].prepare(d["trainer"])
        train(d, 1, 2)
        out["outer"] = outer

        # ClusterSamplers with different seeds on different ranks: caught at the first step
        e = make(ds, [], sampler_seed=rank)
        e["wrapper"].prepare(e["trainer"])
        try:
            train(e, 1, 1)
            out["seed_mismatch"] = None
        except RuntimeError as err:
            out["seed_mismatch"] = str(err)
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
