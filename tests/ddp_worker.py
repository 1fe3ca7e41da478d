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

from pml_divide_conquer import DivideConquerSchedule

import factory
from helpers import IndexedDataset, Recorder

ITERS = 15


def dataset():
    d = load_digits()
    keep = np.arange(0, len(d.target), 3)
    return IndexedDataset((d.data[keep] / 16.0).astype(np.float32), d.target[keep])


def make(ds, records, outer_distributed_wrapper=False, sampler_seed=0, recluster_from="pass"):
    inner = losses.TripletMarginLoss(margin=0.1)
    # rank and world size of the sampler from torch.distributed
    parts = factory.make(
        ds, mode="learned", batch_size=8, sampler_options=dict(seed=sampler_seed),
        # the whole wrapper inside PML's DistributedLossWrapper, or (recommended) each learner's loss gathering its
        # own subspace embeddings
        loss=inner if outer_distributed_wrapper else DistributedLossWrapper(inner),
        recluster=dict(features_from="pass" if outer_distributed_wrapper else recluster_from),
    )  # fmt: skip
    trunk, embedder, sampler, wrapper = parts["trunk"], parts["embedder"], parts["sampler"], parts["wrapper"]
    metric_loss = DistributedLossWrapper(wrapper) if outer_distributed_wrapper else wrapper
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


def save_once(parts, path, rank):
    parts["wrapper"].consolidate_state_dict(to=0)  # every rank: the protocol before rank 0 saves
    if rank == 0:  # saved once, as PML's HookContainer does
        torch.save(
            {
                "trunk": parts["trunk"].state_dict(),
                "embedder": parts["embedder"].state_dict(),
                "optimizers": {k: o.state_dict() for k, o in parts["optimizers"].items()},
                "wrapper": parts["wrapper"].state_dict(),
            },
            path,
        )
    dist.barrier()


def load_all(parts, path):
    state = torch.load(path, map_location="cpu")  # loaded on all ranks
    parts["trunk"].load_state_dict(state["trunk"])
    parts["embedder"].load_state_dict(state["embedder"])
    for k, o in parts["optimizers"].items():
        o.load_state_dict(state["optimizers"][k])
    parts["wrapper"].load_state_dict(state["wrapper"])


def plain_loop_run(ds):
    """A plain DDP loop as in PML's DDP example: the model in DDP and the whole loss (the wrapper) in
    DistributedLossWrapper(efficient=True), which hands it this rank's embeddings and the gathered ones as ref_emb."""
    # the default schedule (K doubling every 2 epochs); the sampler built after init_process_group
    parts = factory.make(ds, batch_size=8, schedule=DivideConquerSchedule(num_learners=2))
    model, sampler, dc = DDP(parts["model"]), parts["sampler"], parts["wrapper"]
    loss_func = DistributedLossWrapper(dc, efficient=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=sampler)
    dc.setup(model, ds, optimizers=[optimizer])
    records = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(1, 4):
            for x, y, idx in loader:
                optimizer.zero_grad()
                loss = loss_func(model(x), y)
                loss.backward()
                optimizer.step()
                records.append(
                    dict(
                        epoch=epoch,
                        learner=dc.current_learner,
                        indices=idx.tolist(),
                        clusters=np.unique(sampler.assignment[idx.numpy()]).tolist(),
                        loss=float(loss),
                    )
                )
            dc.end_epoch()
    return records, len(loader)


def feature_memory_runs(ds, folder, rank):
    """recluster_from="training": each rank computes the rows of its own batches, and every row lives on one rank
    (sample i on rank i % 2); rank 0's checkpoint (consolidated by the end-of-epoch hook) resumes the run exactly."""
    import torch.nn.functional as F

    out = {}
    full = []
    f = make(ds, full, recluster_from="training")
    memory = f["wrapper"].feature_memory
    computed = {}  # sample -> (step, row) of the rows this rank computed in epoch 5
    update = memory.update

    def recording_update(indices, features):
        update(indices, features)
        if f["trainer"].epoch == 5:
            rows = F.normalize(features.detach().flatten(1).float(), dim=1).to(torch.float16).float().numpy()
            for i, row in zip(np.asarray(indices).tolist(), rows):
                computed[i] = (memory.step, row)

    memory.update = recording_update
    f["wrapper"].prepare(f["trainer"])
    train(f, 1, 5)
    out["fm_computed"] = computed
    out["fm_full"], out["fm_rows"], out["fm_stamps"] = full, memory.features.float().numpy(), memory.stamps.numpy()
    out["fm_own"] = memory.own
    out["fm_bytes"] = (memory.nbytes, memory.bookkeeping_nbytes, len(ds))
    first = []
    g = make(ds, first, recluster_from="training")
    g["wrapper"].prepare(g["trainer"])
    train(g, 1, 3)
    path = os.path.join(folder, "checkpoint_memory.pt")
    save_once(g, path, rank)
    resumed = []
    h = make(ds, resumed, recluster_from="training")
    load_all(h, path)
    h["wrapper"].prepare(h["trainer"])
    train(h, 4, 5)
    out["fm_resumed"] = resumed
    return out


def fault_runs(ds, rank):
    """Faults that one rank finds, raised on every rank (none is left waiting in a collective): what is raised,
    by rank."""
    said = {}
    p = make(ds, [])
    p["wrapper"].prepare(p["trainer"])
    train(p, 1, 1)
    w = p["wrapper"]
    if rank == 1:  # a fault the device flagged in rank 1's batches (flags on the CPU raise at once: set by hand)
        w._router.flags[("rank 1's batches held NaN", FloatingPointError)] = torch.tensor(True)
    try:
        w.end_epoch(2)
    except (RuntimeError, FloatingPointError) as error:
        said["flagged"] = f"{type(error).__name__}: {error}"
    said["last_epoch_after_flagged"] = w.last_epoch

    def cluster(*args, **kwargs):  # k-means that fails on rank 0, which clusters for every rank
        raise ValueError("k-means failed on rank 0")

    if rank == 0:
        w.reclusterer.cluster = cluster
    try:
        w.recluster(p["trainer"])
    except (RuntimeError, ValueError) as error:
        said["clustering"] = f"{type(error).__name__}: {error}"
    dist.barrier()  # (every rank got here)
    return said


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
        save_once(b, checkpoint, rank)
        resumed = []
        c = make(ds, resumed)
        load_all(c, checkpoint)
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
        out.update(feature_memory_runs(ds, folder, rank))
        out["plain"], out["plain_len"] = plain_loop_run(ds)
        out["faults"] = fault_runs(ds, rank)
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
