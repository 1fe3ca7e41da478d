"""Costs against the size of the data, from Stanford Online Products to ten million images.

    python -m benchmarks.scale --sizes 60000,1000000,10000000 --out bench-out
    python -m benchmarks.scale --ddp 4 --out bench-out          # also the 4-process gloo run (about a minute)

Synthetic labels shaped like the retrieval sets D&C was made for (about 10 images a class, between 2 and 19;
clusters coherent by class, as k-means gives them), features random and L2-normalised. Four tables:

1. **Sampler pass**: seconds for one pass of ClusterSampler (the plan, and every index drawn as a DataLoader draws
   them), at K=1 and K=8, and the sampler's memory (bytes a sample: held after the pass, and the peak while
   planning, from tracemalloc); the 0.2 planner side by side up to 1M (``benchmarks/old_planning.py``).
2. **Reclustering** of N x dim training features (a FeatureMemory) into K clusters: k-means (faiss, 100
   iterations, all points), and the rest (rows gathered from the memory, Hungarian matching to the old clusters,
   the sampler's new plan), for a reclustering at the same K and for a split (K/2 -> K, 2-means in each cluster).
3. **Feature memory per rank** under DDP: rows (float16) and bookkeeping from the sharding, for 1, 8 and 64 ranks,
   against the target (1.1 x N / world x dim x 2 bytes of rows, 16 bytes a sample of bookkeeping); with ``--ddp``,
   measured in a real gloo run on this machine's CPU, where every rank trains the same learner at every step.
4. A log-log plot of seconds against N with the fitted slopes (``scale.png``).
"""

import argparse
import os
import shlex
import sys
import tempfile
import time
import tracemalloc
import warnings

import numpy as np
import torch

from benchmarks.common import markdown_table, pyplot, report, setup, write_csv
from pml_divide_conquer import ClusterSampler, DivideConquerSchedule, KMeansSettings, clustering
from pml_divide_conquer.feature_memory import FeatureMemory


def sop_like(n, seed=0, mean_per_class=10):
    """(labels, cluster of each class for K=8): n samples, about 10 a class (2 to 19)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 2 * mean_per_class, n // mean_per_class + 1)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    sizes[-1] -= sizes.sum() - n
    if sizes[-1] < 2:
        sizes[-2] += sizes[-1]
        sizes = sizes[:-1]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return labels, rng.integers(0, 8, len(sizes))


def sampler_pass(labels, class_cluster, k, planner="new", batch_size=128, m=2):
    """(seconds for a pass, held bytes a sample, peak bytes a sample while planning, samples drawn)."""
    assignment = class_cluster[labels] % k
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracemalloc.start()
        start = time.perf_counter()
        s = ClusterSampler(labels, batch_size=batch_size, m=m, seed=0)
        s.set_assignment(assignment, k)
        if planner == "new":
            plan = s.plan_pass(0)
        else:
            from benchmarks import old_planning

            pools = old_planning.servable_pools(labels, assignment, k, m, batch_size)
            plan = old_planning.plan_pass(pools, batch_size, m, np.random.default_rng(0))
        drawn = 0
        for _cluster, batch in plan:  # every index, as the sampler yields them to the DataLoader
            drawn += len(batch.tolist())
        seconds = time.perf_counter() - start
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    del plan
    return seconds, held / len(labels), peak / len(labels), drawn


def reclustering_parts(n, dim, k, split, seed=0):
    """Seconds of each part of a reclustering of n rows of a FeatureMemory (one process)."""
    labels, class_cluster = sop_like(n, seed)
    rng = np.random.default_rng(seed)
    memory = FeatureMemory(n)
    chunk = 1 << 16
    for start in range(0, n, chunk):  # every sample trained once since the last reclustering
        idx = np.arange(start, min(n, start + chunk))
        memory.update(idx, torch.from_numpy(rng.standard_normal((len(idx), dim), dtype=np.float32)))
    current = k // 2 if split else k
    old = (class_cluster[labels] % current).astype(np.int64)
    settings = KMeansSettings(seed=0, gpu=False, backend="faiss")
    times = {}
    t = time.perf_counter()
    emb, stale = memory.features_for_clustering()
    times["gather"] = time.perf_counter() - t
    assert len(stale) == 0
    t = time.perf_counter()
    base = clustering.kmeans_with_retries(emb, current, labels, settings)
    times["kmeans"] = time.perf_counter() - t
    t = time.perf_counter()
    matched = clustering.match_clusters(old, base, current)
    times["matching"] = time.perf_counter() - t
    new = matched
    if split:
        t = time.perf_counter()
        new = clustering.split_clusters(emb, matched, labels, settings)
        times["kmeans"] += time.perf_counter() - t  # (2-means in each cluster: k-means too)
    t = time.perf_counter()
    s = ClusterSampler(labels, batch_size=128, m=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.set_assignment(new, k)
        s.plan_pass(0)
    times["sampler"] = time.perf_counter() - t
    return times


def memory_per_rank(n, dim, world):
    """Bytes of one rank's feature memory, from the sharding: (rows incl. staging, bookkeeping)."""
    own = len(range(0, n, world))
    flush = max(128, min((64 << 20) // (2 * dim), own // 10))
    rows = own * dim * 2 + flush * dim * 2
    bookkeeping = own * 8 + flush * 16
    return rows, bookkeeping


def ddp_worker(rank, world, folder, n, dim, out):
    """A tiny model trained 2 epochs on every rank; the memory's bytes after the end-of-epoch flush."""
    import torch.distributed as dist
    from pytorch_metric_learning import losses

    from pml_divide_conquer import DivideConquerWrapper, SubspaceMaskedEmbedder

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    labels, class_cluster = sop_like(n)
    data = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
    dataset = torch.utils.data.TensorDataset(data, torch.as_tensor(labels))
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(16, dim), torch.nn.ReLU())
    embedder = SubspaceMaskedEmbedder(16, 2, embedder=torch.nn.Linear(dim, 16))
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(trunk, embedder))
    sampler = ClusterSampler(labels, batch_size=64, m=2)
    dc = DivideConquerWrapper(
        losses.ContrastiveLoss(),
        embedder=embedder,
        sampler=sampler,
        schedule=DivideConquerSchedule(num_learners=embedder.num_learners, recluster_every=1),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, sampler=sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dc.setup(model, dataset, optimizers=[opt])
        steps, start = 0, time.perf_counter()
        for _epoch in range(2):
            for x, y in loader:  # dc checks at every step that all ranks train the same learner
                opt.zero_grad()
                dc(model(x), y).backward()
                opt.step()
                steps += 1
            dc.end_epoch()
    mem = dc.feature_memory
    result = dict(rank=rank, rows=mem.nbytes, bookkeeping=mem.bookkeeping_nbytes, steps=steps, K=dc.num_active)
    result["seconds"] = time.perf_counter() - start
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def ddp_run(world, n, dim):
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as out:
        mp.spawn(ddp_worker, args=(world, folder, n, dim, out), nprocs=world, join=True)
        return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(world)]


def slope(ns, seconds):
    return float(np.polyfit(np.log(ns), np.log(seconds), 1)[0])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="60000,1000000,10000000", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--old-up-to", type=int, default=1_000_000, help="time the 0.2 planner up to this N")
    p.add_argument("--recluster-sizes", default="60000,1000000", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--ddp", type=int, default=0, help="also a gloo run with this many processes")
    p.add_argument("--ddp-size", type=int, default=200_000)
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    out = setup(args.out)
    command = "python -m benchmarks.scale " + shlex.join(sys.argv[1:] if argv is None else argv)
    records, rows = [], []
    for n in args.sizes:
        labels, class_cluster = sop_like(n)
        for k in (1, args.k):
            for planner in ("new", "old") if n <= args.old_up_to else ("new",):
                seconds, held, peak, drawn = sampler_pass(labels, class_cluster, k, planner)
                records.append(
                    dict(
                        table="sampler",
                        n=n,
                        classes=int(labels.max()) + 1,
                        K=k,
                        planner=planner,
                        seconds=seconds,
                        held_bytes_per_sample=held,
                        peak_bytes_per_sample=peak,
                        drawn=drawn,
                    )
                )
                rows.append(
                    [
                        f"{n:,}",
                        f"{labels.max() + 1:,}",
                        k,
                        "0.3" if planner == "new" else "0.2",
                        f"{seconds:.2f}",
                        f"{held:.0f}",
                        f"{peak:.0f}",
                        f"{drawn / n:.2f}",
                    ]
                )
                print(f"  sampler pass N={n:,} K={k} ({planner}): {seconds:.2f} s", flush=True)
    sampler_table = markdown_table(
        ["N", "classes", "K", "planner", "s / pass", "bytes/sample held", "bytes/sample peak", "drawn / N"], rows
    )

    rows = []
    for n in args.recluster_sizes:
        for split in (False, True):
            t = reclustering_parts(n, args.dim, args.k, split)
            rest = t["gather"] + t["matching"] + t["sampler"]
            records.append(
                dict(
                    table="recluster",
                    n=n,
                    dim=args.dim,
                    K=args.k,
                    split=split,
                    **t,
                    rest_over_kmeans=rest / t["kmeans"],
                )
            )
            rows.append(
                [
                    f"{n:,}",
                    f"{args.k // 2} -> {args.k}" if split else args.k,
                    f"{t['kmeans']:.2f}",
                    f"{t['gather']:.2f}",
                    f"{t['matching']:.3f}",
                    f"{t['sampler']:.2f}",
                    f"{rest / t['kmeans']:.1%}",
                ]
            )
            print(f"  reclustering N={n:,} split={split}: k-means {t['kmeans']:.2f} s, rest {rest:.2f} s", flush=True)
    recluster_table = markdown_table(
        ["N", "K", "k-means (s)", "rows gathered (s)", "matching (s)", "new plan (s)", "rest / k-means"], rows
    )

    rows = []
    for n in args.sizes:
        for world in (1, 8, 64):
            rows_b, book = memory_per_rank(n, args.dim, world)
            target = 1.1 * n / world * args.dim * 2
            rows.append(
                [
                    f"{n:,}",
                    world,
                    f"{rows_b / 2**20:,.1f}",
                    f"{rows_b / target:.3f}",
                    f"{book / 2**20:,.1f}",
                    f"{book / (n / world):.1f}",
                ]
            )
    if args.ddp:
        results = ddp_run(args.ddp, args.ddp_size, args.dim)
        for r in results:
            target = 1.1 * args.ddp_size / args.ddp * args.dim * 2
            rows.append(
                [
                    f"{args.ddp_size:,} (gloo, measured, rank {r['rank']})",
                    args.ddp,
                    f"{r['rows'] / 2**20:,.1f}",
                    f"{r['rows'] / target:.3f}",
                    f"{r['bookkeeping'] / 2**20:,.1f}",
                    f"{r['bookkeeping'] / (args.ddp_size / args.ddp):.1f}",
                ]
            )
        records.append(dict(table="ddp", results=str(results)))
        print(f"  gloo run, {args.ddp} processes: {results[0]['steps']} steps, K={results[0]['K']}", flush=True)
    memory_table = markdown_table(
        ["N", "ranks", "rows per rank (MiB)", "/ target", "bookkeeping per rank (MiB)", "bytes / own sample"], rows
    )

    write_csv(out / "scale.csv", records)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    notes = []
    for planner, k in (("new", 1), ("new", args.k), ("old", 1), ("old", args.k)):
        mine = [r for r in records if r["table"] == "sampler" and r["planner"] == planner and r["K"] == k]
        if len(mine) >= 2:
            ns, secs = [r["n"] for r in mine], [r["seconds"] for r in mine]
            b = slope(ns, secs)
            notes.append(f"sampler pass, {'0.3' if planner == 'new' else '0.2'} planner, K={k}: slope {b:.2f}")
            ax.plot(ns, secs, "o-" if planner == "new" else "s--", label=f"{notes[-1].split(', ', 1)[1]}")
    for split in (False, True):
        mine = [r for r in records if r["table"] == "recluster" and r["split"] == split]
        if len(mine) >= 2:
            ns, secs = [r["n"] for r in mine], [r["kmeans"] for r in mine]
            notes.append(f"k-means {'split' if split else 'recluster'} (dim {args.dim}): slope {slope(ns, secs):.2f}")
            ax.plot(ns, secs, "^:", label=notes[-1])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (samples)")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=120)
    plt.close(fig)
    text = (
        "#### Sampler pass\n\n"
        + sampler_table
        + "\n\n#### Reclustering\n\n"
        + recluster_table
        + "\n\n#### Feature memory per rank\n\n"
        + memory_table
        + "\n\nSlopes (log-log): "
        + "; ".join(notes)
    )
    report(out, "scale", "Costs against the size of the data", text, command)
    return records


if __name__ == "__main__":
    main()
