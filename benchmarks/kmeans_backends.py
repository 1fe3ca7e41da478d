"""k-means where the data is: the torch k-means (on a GPU when there is one) against faiss on the CPU.

    python -m benchmarks.kmeans_backends --n 1000000 --dim 128 --k 8 --device cuda --out bench-out

The same N x dim features (random clusters around ``--centres`` centres, default 4K, L2-normalised), 100
iterations, all points: the seconds of each, the adjusted Rand index between them against faiss's against itself
with another seed, and the ratio of their k-means objectives (the torch one over faiss's).
"""

import argparse
import shlex
import sys
import time

import numpy as np
import torch

from benchmarks.common import markdown_table, report, setup, write_csv
from pml_divide_conquer import KMeansSettings, clustering


def objective(x, ids, k):
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, ids, x)
    counts = np.bincount(ids, minlength=k)[:, None]
    centres = sums / np.maximum(counts, 1)
    return float(((x - centres[ids]) ** 2).sum())


def main(argv=None):
    from sklearn.metrics import adjusted_rand_score

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--niter", type=int, default=100)
    p.add_argument("--centres", type=int, default=0, help="default: 4 K")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    out = setup(args.out)
    rng = np.random.default_rng(0)
    c = args.centres or 4 * args.k
    centres = rng.standard_normal((c, args.dim), dtype=np.float32)
    x = centres[rng.integers(0, c, args.n)] + rng.standard_normal((args.n, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    runs = {}
    for name, kw in (
        ("faiss, CPU, seed 0", dict(backend="faiss", gpu=False, seed=0)),
        ("faiss, CPU, seed 1", dict(backend="faiss", gpu=False, seed=1)),
        (f"torch, {args.device}, seed 0", dict(backend="torch", gpu=args.device != "cpu", seed=0)),
    ):
        if kw["backend"] == "torch" and args.device != "cpu":
            clustering.kmeans(x[:10000], args.k, KMeansSettings(niter=2, **kw))  # (CUDA start-up outside the timing)
            torch.cuda.synchronize()
        start = time.perf_counter()
        ids = clustering.kmeans(x, args.k, KMeansSettings(niter=args.niter, **kw))
        runs[name] = (time.perf_counter() - start, ids)
        print(f"  {name}: {runs[name][0]:.2f} s", flush=True)
    names = list(runs)
    reference = runs[names[0]][1]
    base = objective(x, reference, args.k)
    rows, records = [], []
    for name in names:
        seconds, ids = runs[name]
        ari = adjusted_rand_score(reference, ids) if name != names[0] else 1.0
        ratio = objective(x, ids, args.k) / base
        rows.append([name, f"{seconds:.2f}", f"{ari:.3f}", f"{ratio:.4f}"])
        records.append(dict(run=name, seconds=seconds, ari_vs_faiss_seed0=ari, objective_ratio=ratio))
    write_csv(out / "kmeans_backends.csv", records)
    table = markdown_table(["k-means", "seconds", "ARI vs faiss seed 0", "objective / faiss seed 0"], rows)
    title = (
        f"k-means backends ({args.n:,} x {args.dim} around {c} centres, K={args.k}, {args.niter} iterations, all "
        "points)"
    )
    report(
        out,
        "kmeans_backends",
        title,
        table,
        "python -m benchmarks.kmeans_backends " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    return records


if __name__ == "__main__":
    main()
