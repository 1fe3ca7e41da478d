"""Training overhead: time per training step with DivideConquerWrapper vs the bare loss, on the same batches, in a
plain PyTorch loop and in PML's MetricLossOnly.

    python -m benchmarks.overhead --ks 1,2,4,8,16,32 --steps 60 --loop both --out bench-out
    python -m benchmarks.overhead --device cuda --model resnet --dataset synthetic --batch-size 128 \\
        --embedding-size 512 --ks 8,32 --loss margin --loop plain --out bench-out

For each K, the data is clustered into K clusters (fixed chunks, grow=False) and the ClusterSampler draws batches;
each batch is then trained on twice, alternating which goes first: once through the wrapper (routing, subspace,
per-learner miner and loss) and once through the bare loss and miner on the full embedding. A step is the whole of
it: zero_grad, trunk, embedder, miner, loss, backward, optimizer step; in ``--loop plain`` as PML's README loop
writes it (``loss = loss_func(model(x), y)``), in ``--loop pml`` through MetricLossOnly's own step
(``forward_and_backward``) with the wrapper, or with the bare loss and miner in its ``mining_funcs``. On a GPU each
step is timed between two ``torch.cuda.synchronize()``. Prints the median step times and their ratio; writes
``overhead.csv`` and ``overhead.png``.
"""

import argparse
import itertools
import shlex
import sys

import numpy as np
import torch
from pytorch_metric_learning import trainers

from benchmarks.common import Timer, markdown_table, pyplot, report, setup, write_csv
from lab import experiment as ex
from pml_divide_conquer import (
    ClusterSampler,
    DivideConquerSchedule,
    DivideConquerWrapper,
    KMeansSettings,
    Reclusterer,
    SubspaceMaskedEmbedder,
)

LOOPS = ("plain", "pml")


class Synthetic(torch.utils.data.Dataset):
    """Random 1 x 32 x 32 images of ``classes`` classes, ``per_class`` each, kept on ``device``."""

    def __init__(self, classes, per_class, device, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.labels = np.repeat(np.arange(classes), per_class)
        self.data = torch.randn(len(self.labels), 1, 32, 32, generator=gen).to(device)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.data[i], int(self.labels[i])


def load(args, device):
    if args.dataset == "synthetic":
        return Synthetic(args.classes, args.per_class, device)
    if args.dataset == "glyphs":  # all 400 classes, so that K=32 clusters still hold several classes each
        train_set, test_set = ex.load_dataset("glyphs", progress=False)
        dataset = _concat(train_set, test_set)
    else:
        dataset = ex.load_dataset(args.dataset)[0]
    dataset.data = dataset.data.to(device)
    return dataset


def _concat(a, b):
    from lab.datasets import ArrayDataset

    return ArrayDataset(torch.cat([a.data, b.data]).numpy(), np.concatenate([a.labels, b.labels]))


def make_trunk(dataset, args):
    """(trunk, output size): the benchmark's small CNN or MLP, or a ResNet-18 for 32x32 images (``--model resnet``)."""
    if args.model == "resnet":
        from benchmarks.han import resnet_trunk

        return resnet_trunk(args.conv_width)
    cfg = ex.RunConfig(
        trunk="conv" if dataset.data.dim() == 4 else "mlp", conv_width=args.conv_width, hidden=128, seed=0
    )
    trunk, _ = ex.build_models(tuple(dataset.data.shape[1:]), cfg.but(num_learners=1))
    return trunk, 128


def measure(dataset, k, args, loop, device):
    torch.manual_seed(0)
    trunk, features = make_trunk(dataset, args)
    embedder = SubspaceMaskedEmbedder(
        args.embedding_size, k, mode="fixed", embedder=torch.nn.Linear(features, args.embedding_size)
    )
    model = torch.nn.Sequential(trunk, embedder).to(device)
    loss, miner = ex.make_loss_and_miner(args.loss, len(np.unique(dataset.labels)), args.embedding_size)
    loss = loss.to(device)
    sampler = ClusterSampler(dataset.labels, batch_size=args.batch_size, m=args.m, seed=0)
    wrapper = DivideConquerWrapper(
        loss,
        miner,
        embedder=embedder,
        sampler=sampler,
        schedule=DivideConquerSchedule(num_learners=embedder.num_learners, recluster_every=1000, grow=False),
        reclusterer=Reclusterer(kmeans=KMeansSettings(gpu=False)),
    ).to(device)
    params = list(model.parameters()) + list(loss.parameters()) + list(wrapper.parameters())
    opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=1e-4)
    labels = torch.as_tensor(dataset.labels, device=device)
    if loop == "plain":
        wrapper.setup(model, dataset, optimizers=[opt], device=device)  # clusters the data into K

        def step(use_wrapper, idx):
            opt.zero_grad()
            emb = model(dataset.data[idx])
            y = labels[idx]
            if use_wrapper:
                out = wrapper(emb, y)
            else:
                out = loss(emb, y, miner(emb, y) if miner is not None else None)
            out.backward()
            opt.step()

    else:
        common = dict(
            models={"trunk": trunk, "embedder": embedder},
            optimizers={"trunk_optimizer": opt},
            batch_size=args.batch_size,
            dataset=dataset,
            data_device=device,
        )
        d_and_c = trainers.MetricLossOnly(
            loss_funcs={"metric_loss": wrapper},
            sampler=sampler,
            end_of_epoch_hook=wrapper.get_end_of_epoch_hook(),
            **common,
        )
        bare = trainers.MetricLossOnly(
            loss_funcs={"metric_loss": loss}, mining_funcs={"tuple_miner": miner} if miner else {}, **common
        )
        wrapper.prepare(d_and_c)  # clusters the data into K
        batch = {}
        for t in (d_and_c, bare):
            t.get_batch = lambda: (dataset.data[batch["idx"]], labels[batch["idx"]].cpu())  # PML's labels: CPU

        def step(use_wrapper, idx):
            batch["idx"] = idx
            (d_and_c if use_wrapper else bare).forward_and_backward()

    wrapper.train(), model.train()
    indices = itertools.chain.from_iterable(iter(sampler) for _ in itertools.count())  # epoch after epoch

    def timed(use_wrapper, idx):
        if device.type == "cuda":
            torch.cuda.synchronize()
        with Timer() as t:
            step(use_wrapper, idx)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return t.seconds

    times = {True: [], False: []}
    for s in range(args.warmup + args.steps):
        idx = list(itertools.islice(indices, args.batch_size))
        for use_wrapper in (True, False) if s % 2 else (False, True):
            seconds = timed(use_wrapper, idx)
            if s >= args.warmup:
                times[use_wrapper].append(seconds)
        if sampler.stream.batches_this_epoch == sampler.batches_per_epoch:
            wrapper.end_epoch()
    return np.array(times[False]), np.array(times[True])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ks", default="1,2,4,8,16,32", type=lambda s: [int(k) for k in s.split(",")])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--loop", default="both", choices=LOOPS + ("both",))
    p.add_argument("--loss", default="triplet", choices=ex.LOSSES)
    p.add_argument("--dataset", default="glyphs", choices=["glyphs", "digits", "synthetic"])
    p.add_argument("--classes", type=int, default=1000, help="--dataset synthetic")
    p.add_argument("--per-class", type=int, default=20, help="--dataset synthetic")
    p.add_argument("--model", default="cnn", choices=["cnn", "resnet"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--m", type=int, default=4)
    p.add_argument("--embedding-size", type=int, default=128)
    p.add_argument("--conv-width", type=int, default=16)
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    out = setup(args.out)
    device = torch.device(args.device)
    dataset = load(args, device)
    loops = LOOPS if args.loop == "both" else (args.loop,)
    records, rows = [], []
    for loop in loops:
        for k in args.ks:
            bare, wrapped = measure(dataset, k, args, loop, device)
            ratio = np.median(wrapped) / np.median(bare)
            records.append(
                dict(
                    loop=loop,
                    K=k,
                    bare_median_ms=1e3 * np.median(bare),
                    wrapper_median_ms=1e3 * np.median(wrapped),
                    ratio_of_medians=ratio,
                    ratio_of_means=wrapped.mean() / bare.mean(),
                    steps=len(bare),
                )
            )
            rows.append(
                [
                    loop,
                    k,
                    f"{1e3 * np.median(bare):.1f}",
                    f"{1e3 * np.median(wrapped):.1f}",
                    f"{ratio:.3f}",
                    f"{wrapped.mean() / bare.mean():.3f}",
                ]
            )
            print(
                f"  {loop} K={k}: bare {1e3 * np.median(bare):.1f} ms, wrapper {1e3 * np.median(wrapped):.1f} ms, "
                f"×{ratio:.3f}",
                flush=True,
            )
    write_csv(out / "overhead.csv", records)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for loop in loops:
        mine = [r for r in records if r["loop"] == loop]
        ax.plot([r["K"] for r in mine], [r["ratio_of_medians"] for r in mine], "o-", label=f"{loop} loop")
    ax.axhline(1.0, color="gray", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (learners)")
    ax.set_ylabel("wrapper / bare loss, time per step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "overhead.png", dpi=120)
    plt.close(fig)
    table = markdown_table(
        ["loop", "K", "bare loss, ms/step", "D&C wrapper, ms/step", "ratio (medians)", "ratio (means)"], rows
    )
    model = f"ResNet-18 (width {args.conv_width})" if args.model == "resnet" else f"CNN width {args.conv_width}"
    title = (
        f"Training overhead ({args.loss}, {args.dataset}, {model}, {args.device}, batch {args.batch_size}, "
        f"m={args.m}, d={args.embedding_size}, {args.steps} steps per K, interleaved)"
    )
    report(
        out,
        "overhead",
        title,
        table,
        "python -m benchmarks.overhead " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    return records


if __name__ == "__main__":
    main()
