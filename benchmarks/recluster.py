"""Reclustering cost: one D&C reclustering vs one no-grad forward pass over the training set; k-means alone at scale.

    python -m benchmarks.recluster --k 8 --sizes 10000,100000,1000000 --dim 512 --out bench-out

Part 1 (glyph training set, the accuracy benchmark's conv trunk): the time of ``wrapper.recluster(trainer)``
(an embedding pass, faiss k-means with retries, Hungarian matching) against the time of one no-grad forward pass
over the same images, median of ``--repeats``, interleaved.
Part 2: the clustering alone (k-means with retries + Hungarian matching, and the 2-means splits of the growing
schedule) on N random L2-normalised embeddings of ``--dim`` dims. Writes ``recluster.csv`` and ``recluster.png``.
"""

import argparse
import shlex
import sys

import numpy as np

from benchmarks.common import Timer, markdown_table, pyplot, report, setup, write_csv
from lab import experiment as ex
from pml_divide_conquer import KMeansSettings, clustering


def training_set_part(args):
    train_set, _ = ex.load_dataset(args.dataset, **({"progress": False} if args.dataset == "glyphs" else {}))
    cfg = ex.RunConfig(
        method="dc",
        loss="triplet",
        trunk="conv" if train_set.data.dim() == 4 else "mlp",
        conv_width=args.conv_width,
        num_learners=args.k,
        grow=False,
        recluster_every=1000,
        batch_size=args.batch_size,
        m=4,
        embedding_size=64,
        hidden=128,
        epochs=1,
    )
    trainer, wrapper = ex.build_trainer(train_set, cfg)  # prepare() has clustered once already (warm-up)
    forward, recluster = [], []
    for _ in range(args.repeats):
        with Timer() as t:
            wrapper.embed_training_set()  # the embedding pass of a reclustering, alone
        forward.append(t.seconds)
        with Timer() as t:
            wrapper.recluster()
        recluster.append(t.seconds)
    return len(train_set), np.median(forward), np.median(recluster)


def synthetic(n, dim, k, rng):
    centers = rng.standard_normal((4 * k, dim)).astype(np.float32)
    x = centers[rng.integers(0, 4 * k, n)] + rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, max(2 * k, n // 50), n)
    return x, labels


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--sizes", default="10000,100000,1000000", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dataset", default="glyphs", choices=["glyphs", "digits"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--conv-width", type=int, default=16)
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    out = setup(args.out)
    records = []
    n, fwd, rec = training_set_part(args)
    records.append(
        dict(
            part="training set", n=n, dim=64, k=args.k, forward_s=fwd, recluster_s=rec, kmeans_s=np.nan, split_s=np.nan
        )
    )
    print(f"  training set ({n} images): forward {fwd:.2f} s, recluster {rec:.2f} s, ×{rec / fwd:.2f}", flush=True)
    rng = np.random.default_rng(0)
    for size in args.sizes:
        x, labels = synthetic(size, args.dim, args.k, rng)
        old = clustering.kmeans(x, args.k, KMeansSettings(seed=1))
        with Timer() as t:
            new = clustering.kmeans_with_retries(x, args.k, labels, KMeansSettings(seed=2))
            clustering.match_clusters(old, new, args.k)
        with Timer() as s:
            clustering.split_clusters(x, np.arange(size) % max(1, args.k // 2), settings=KMeansSettings(seed=3))
        records.append(
            dict(
                part="k-means alone",
                n=size,
                dim=args.dim,
                k=args.k,
                forward_s=np.nan,
                recluster_s=np.nan,
                kmeans_s=t.seconds,
                split_s=s.seconds,
            )
        )
        print(f"  N={size}: k-means+matching {t.seconds:.2f} s, splits {s.seconds:.2f} s", flush=True)
        del x
    write_csv(out / "recluster.csv", records)
    synth = [r for r in records if r["part"] == "k-means alone"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot([r["n"] for r in synth], [r["kmeans_s"] for r in synth], "o-", label=f"k-means K={args.k} + matching")
    ax.plot(
        [r["n"] for r in synth], [r["split_s"] for r in synth], "s-", label=f"2-means splits {args.k // 2}→{args.k}"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"N embeddings (d={args.dim})")
    ax.set_ylabel("seconds (2 CPU cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "recluster.png", dpi=120)
    plt.close(fig)
    r0 = records[0]
    rows = [
        [
            f"{args.dataset} training set, {r0['n']} images, conv trunk",
            f"{r0['forward_s']:.2f}",
            f"{r0['recluster_s']:.2f}",
            f"{r0['recluster_s'] / r0['forward_s']:.2f}×",
            "",
        ]
    ]
    rows += [
        [f"N={r['n']:,} random embeddings, d={args.dim}", "", "", "", f"{r['kmeans_s']:.2f} / {r['split_s']:.2f}"]
        for r in synth
    ]
    table = markdown_table(
        ["data", "no-grad forward pass, s", "one reclustering, s", "ratio", "k-means+matching / splits alone, s"], rows
    )
    report(
        out,
        "recluster",
        f"Reclustering cost (K={args.k}, median of {args.repeats} for the training set)",
        table,
        "python -m benchmarks.recluster " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    return records


if __name__ == "__main__":
    main()
