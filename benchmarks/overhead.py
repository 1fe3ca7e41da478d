"""Training overhead: time per training step with DivideConquerWrapper vs the bare loss, on the same batches.

    python benchmarks/overhead.py --ks 1,2,4,8,16,32 --steps 60 --out bench-out

For each K, the data is clustered into K clusters (fixed chunks, grow=False) and the ClusterSampler draws batches;
each batch is then trained on twice, alternating which goes first: once through the wrapper (routing, subspace,
per-learner miner and loss) and once through the bare loss and miner on the full embedding, as PML's
MetricLossOnly would. A step is the whole of it: zero_grad, trunk, embedder, miner, loss, backward, optimizer step.
Prints the median step times and their ratio; writes ``overhead.csv`` and ``overhead.png``.
"""

import argparse
import itertools
import shlex
import sys

import numpy as np
import torch
from pytorch_metric_learning import trainers

from lab import experiment as ex
from pml_divide_conquer import ClusterSampler, DivideConquerWrapper, SubspaceMaskedEmbedder

from common import Timer, markdown_table, pyplot, report, setup, write_csv


def load(args):
    if args.dataset == "glyphs":  # all 400 classes, so that K=32 clusters still hold several classes each
        train_set, test_set = ex.load_dataset("glyphs", progress=False)
        return _concat(train_set, test_set)
    return ex.load_dataset(args.dataset)[0]


def _concat(a, b):
    from lab.datasets import ArrayDataset

    return ArrayDataset(torch.cat([a.data, b.data]).numpy(), np.concatenate([a.labels, b.labels]))


def measure(dataset, k, args):
    cfg = ex.RunConfig(
        loss=args.loss,
        trunk="conv" if dataset.data.dim() == 4 else "mlp",
        conv_width=args.conv_width,
        embedding_size=args.embedding_size,
        hidden=128,
        batch_size=args.batch_size,
        m=args.m,
        seed=0,
    )
    trunk, _ = ex.build_models(tuple(dataset[0][0].shape), cfg.but(num_learners=1))
    embedder = SubspaceMaskedEmbedder(
        args.embedding_size, k, mode="fixed", embedder=torch.nn.Linear(128, args.embedding_size)
    )
    loss, miner = ex.make_loss_and_miner(args.loss, len(np.unique(dataset.labels)), args.embedding_size)
    sampler = ClusterSampler(dataset.labels, batch_size=args.batch_size, m=args.m, seed=0)
    wrapper = DivideConquerWrapper(loss, miner, embedder=embedder, sampler=sampler, grow=False, recluster_every=1000)
    params = (
        list(trunk.parameters()) + list(embedder.parameters()) + list(loss.parameters()) + list(wrapper.parameters())
    )
    opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=1e-4)
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers={"trunk_optimizer": opt},
        batch_size=args.batch_size,
        loss_funcs={"metric_loss": wrapper},
        mining_funcs={},
        dataset=dataset,
        sampler=sampler,
        data_device=torch.device("cpu"),
        end_of_epoch_hook=wrapper.get_end_of_epoch_hook(),
    )
    wrapper.prepare(trainer)  # clusters the data into K
    wrapper.train(), trunk.train(), embedder.train()
    indices = itertools.chain.from_iterable(iter(sampler) for _ in itertools.count())  # a new pass when one ends
    labels = torch.as_tensor(dataset.labels)

    def step(use_wrapper, idx):
        opt.zero_grad()
        emb = embedder(trunk(dataset.data[idx]))
        y = labels[idx]
        if use_wrapper:
            out = wrapper(emb, y)
        else:
            out = loss(emb, y, miner(emb, y) if miner is not None else None)
        out.backward()
        opt.step()

    times = {True: [], False: []}
    for s in range(args.warmup + args.steps):
        idx = list(itertools.islice(indices, args.batch_size))
        for use_wrapper in (True, False) if s % 2 else (False, True):
            with Timer() as t:
                step(use_wrapper, idx)
            if s >= args.warmup:
                times[use_wrapper].append(t.seconds)
    return np.array(times[False]), np.array(times[True])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ks", default="1,2,4,8,16,32", type=lambda s: [int(k) for k in s.split(",")])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--loss", default="triplet", choices=ex.LOSSES)
    p.add_argument("--dataset", default="glyphs", choices=["glyphs", "digits"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--m", type=int, default=4)
    p.add_argument("--embedding-size", type=int, default=128)
    p.add_argument("--conv-width", type=int, default=16)
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    out = setup(args.out)
    torch.manual_seed(0)
    dataset = load(args)
    records, rows = [], []
    for k in args.ks:
        bare, wrapped = measure(dataset, k, args)
        ratio = np.median(wrapped) / np.median(bare)
        records.append(
            dict(
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
                k,
                f"{1e3 * np.median(bare):.1f}",
                f"{1e3 * np.median(wrapped):.1f}",
                f"{ratio:.3f}",
                f"{wrapped.mean() / bare.mean():.3f}",
            ]
        )
        print(
            f"  K={k}: bare {1e3 * np.median(bare):.1f} ms, wrapper {1e3 * np.median(wrapped):.1f} ms, ×{ratio:.3f}",
            flush=True,
        )
    write_csv(out / "overhead.csv", records)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot(args.ks, [r["ratio_of_medians"] for r in records], "o-", label="wrapper / bare (median step)")
    ax.axhline(1.05, color="gray", ls="--", lw=1, label="target 1.05")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (learners)")
    ax.set_ylabel("time per step, ratio")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "overhead.png", dpi=120)
    plt.close(fig)
    table = markdown_table(
        ["K", "bare loss, ms/step", "D&C wrapper, ms/step", "ratio (medians)", "ratio (means)"], rows
    )
    title = (
        f"Training overhead ({args.loss} + its miner, {args.dataset}, batch {args.batch_size}, m={args.m}, "
        f"d={args.embedding_size}, {args.steps} steps per K, interleaved)"
    )
    report(
        out,
        "overhead",
        title,
        table,
        "python benchmarks/overhead.py " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    return records


if __name__ == "__main__":
    main()
