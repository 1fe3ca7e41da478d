"""Accuracy: baseline vs D&C (fixed chunks, learned masks), same trunk, loss, miner, epochs and batch size.

    python -m benchmarks.accuracy --dataset glyphs --losses triplet,contrastive,arcface --seeds 3 --out bench-out
    python -m benchmarks.accuracy --dataset glyphs --split val ...   # tune on the validation classes only

Prints a markdown table (mean ± std over seeds of R@1/2/4/8, NMI and MAP@R on the test classes, in %) and writes
``accuracy_<dataset>.csv`` (one row per run) and ``accuracy_<dataset>.png`` (R@1 per loss and method) to ``--out``.
The baseline is the loss and miner alone with PML's MPerClassSampler; D&C wraps the same loss and miner.
"""

import argparse
import shlex
import sys
import textwrap
import time

import numpy as np

from benchmarks.common import Timer, markdown_table, mean_std, pyplot, report, setup, write_csv
from lab import experiment as ex
from pml_divide_conquer import DivideConquerSchedule

METHODS = {  # row name -> RunConfig changes
    "baseline": dict(method="baseline"),
    "D&C fixed": dict(method="dc", mode="fixed"),
    "D&C learned": dict(method="dc", mode="learned"),
}
COLUMNS = ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "NMI", "mean_average_precision_at_r")
COLUMN_NAMES = ("R@1", "R@2", "R@4", "R@8", "NMI", "MAP@R")


# per-dataset defaults of (batch size, m, K): Fashion-MNIST and digits have only 5 training classes
DATASET_DEFAULTS = {"glyphs": (64, 4, 4), "fashion": (32, 16, 2), "digits": (32, 8, 2)}


def resolve(args):
    """Fill in the per-dataset defaults of --batch-size, --m and --num-learners."""
    batch, m, k = DATASET_DEFAULTS[args.dataset]
    args.batch_size = args.batch_size or batch
    args.m = args.m or m
    args.num_learners = args.num_learners or k
    return args


def bench_config(args, loss):
    """The benchmark's model and D&C settings (defaults tuned on the glyph validation classes)."""
    resolve(args)
    image = args.dataset != "digits"
    full, all_data = phase_epochs(args)
    return ex.RunConfig(
        loss=loss,
        trunk="conv" if image else "mlp",
        conv_width=args.conv_width,
        epochs=args.epochs,
        batch_size=args.batch_size,
        m=args.m,
        embedding_size=args.embedding_size,
        hidden=128 if image else 64,
        lr=args.lr,
        num_learners=args.num_learners,
        recluster_every=args.recluster_every,
        full_embedding_epoch=full,
        all_data_epoch=all_data,
        heads=args.heads,
        orthogonality_weight=args.orthogonality_weight,
        mask_lr_multiplier=args.mask_lr_multiplier,
        cluster_on=args.cluster_on,
    )


def phase_epochs(args):
    """(full_embedding_epoch, all_data_epoch) of --schedule: the journal's or CVPR's phases scaled to --epochs,
    divide only, or the explicit --full-embedding-epoch / --all-data-epoch."""
    if args.schedule == "journal":
        s = DivideConquerSchedule.journal(args.epochs, args.num_learners)
    elif args.schedule == "cvpr":
        s = DivideConquerSchedule.cvpr(args.epochs, args.num_learners)
    elif args.schedule == "divide-only":
        return None, None
    else:
        return args.full_embedding_epoch, args.all_data_epoch
    return s.full_embedding_epoch, s.all_data_epoch


def load(args):
    kwargs = {}
    if args.dataset == "fashion":
        kwargs["max_per_class"] = args.max_per_class
    if args.dataset == "glyphs":
        kwargs["progress"] = False
    if args.dataset == "digits":
        return ex.load_dataset("digits")
    return ex.load_dataset(args.dataset, args.split, **kwargs)


def run(args, train_set, test_set, log=print):
    """All runs; returns a list of records (one dict per loss, method and seed)."""
    records = []
    for loss in args.losses:
        for name, changes in METHODS.items():
            if name not in args.methods:
                continue
            for seed in range(args.seeds):
                cfg = bench_config(args, loss).but(seed=seed, **changes)
                with Timer() as t:
                    trunk, embedder, _, _ = ex.train(train_set, cfg)
                acc = ex.evaluate(trunk, embedder, test_set)
                records.append(
                    dict(
                        dataset=args.dataset,
                        split=args.split,
                        loss=loss,
                        method=name,
                        seed=seed,
                        train_seconds=round(t.seconds, 2),
                        **{k: acc[k] for k in COLUMNS},
                    )
                )
                log(f"  {loss:12s} {name:12s} seed {seed}: R@1 {100 * acc['recall_at_1']:.1f}  ({t.seconds:.0f} s)")
    return records


def table(records):
    rows = []
    for loss in dict.fromkeys(r["loss"] for r in records):
        base = [r["recall_at_1"] for r in records if r["loss"] == loss and r["method"] == "baseline"]
        for method in dict.fromkeys(r["method"] for r in records if r["loss"] == loss):
            runs = [r for r in records if r["loss"] == loss and r["method"] == method]
            cells = [mean_std([r[c] for r in runs]) for c in COLUMNS]
            r1 = np.mean([r["recall_at_1"] for r in runs])
            delta = f"{100 * (r1 - np.mean(base)):+.1f}" if base and method != "baseline" else ""
            secs = np.mean([r["train_seconds"] for r in runs])
            rows.append([loss, method, *cells, delta, f"{secs:.0f}"])
    return markdown_table(["loss", "method", *COLUMN_NAMES, "ΔR@1 vs baseline", "train s"], rows)


def plot(records, path, title):
    plt = pyplot()
    loss_names = list(dict.fromkeys(r["loss"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    fig, ax = plt.subplots(figsize=(3.2 + 1.6 * len(loss_names), 3.4))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        means, stds = [], []
        for loss in loss_names:
            v = [100 * r["recall_at_1"] for r in records if r["loss"] == loss and r["method"] == method]
            means.append(np.mean(v) if v else np.nan)
            stds.append(np.std(v) if v else 0)
        ax.bar(np.arange(len(loss_names)) + j * width, means, width, yerr=stds, capsize=3, label=method)
    ax.set_xticks(np.arange(len(loss_names)) + width * (len(methods) - 1) / 2, loss_names)
    ax.set_ylabel("R@1 (%)")
    lo = min(100 * r["recall_at_1"] for r in records)
    ax.set_ylim(max(0, lo - 5), 100)
    ax.set_title(textwrap.fill(title, 60), fontsize=8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="glyphs", choices=["glyphs", "fashion", "digits"])
    p.add_argument("--split", default="test", choices=["test", "val"], help="val: tune on held-out training classes")
    p.add_argument("--losses", default="triplet,contrastive,arcface", type=lambda s: s.split(","))
    p.add_argument("--methods", default=",".join(METHODS), type=lambda s: s.split(","))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 (glyphs), 32 (fashion, digits)")
    p.add_argument(
        "--m",
        type=int,
        default=None,
        help="samples per class in a batch; default: 4 (glyphs), 16 (fashion: 5 training classes), 8 (digits)",
    )
    p.add_argument("--embedding-size", type=int, default=64)
    p.add_argument("--conv-width", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-learners", type=int, default=None, help="K; default: 4 (glyphs), 2 (fashion, digits)")
    p.add_argument("--recluster-every", type=int, default=2, help="T, in epochs")
    p.add_argument(
        "--schedule",
        default="journal",
        choices=["journal", "cvpr", "divide-only", "custom"],
        help="phases: the journal's (full embedding from 44%% of the epochs), CVPR's (also all data for "
        "the last 5%%), divide only, or custom (--full-embedding-epoch, --all-data-epoch)",
    )
    p.add_argument("--full-embedding-epoch", type=int, default=None, help="with --schedule custom")
    p.add_argument("--all-data-epoch", type=int, default=None, help="with --schedule custom")
    p.add_argument("--heads", default="shared", choices=["shared", "per_learner"], help="classification heads")
    p.add_argument("--orthogonality-weight", type=float, default=0.1, help="λ")
    p.add_argument("--mask-lr-multiplier", type=float, default=10.0)
    p.add_argument("--cluster-on", default="trunk", choices=["embedding", "trunk"])
    p.add_argument("--max-per-class", type=int, default=600, help="Fashion-MNIST images kept per class")
    p.add_argument("--out", default="bench-out")
    return p


def main(argv=None):
    args = resolve(parser().parse_args(argv))
    out = setup(args.out)
    train_set, test_set = load(args)
    n_train, n_test = len(np.unique(train_set.labels)), len(np.unique(test_set.labels))
    print(
        f"{args.dataset} ({args.split}): {len(train_set)} train images of {n_train} classes, "
        f"{len(test_set)} {args.split} images of {n_test} other classes"
    )
    start = time.time()
    records = run(args, train_set, test_set)
    name = f"accuracy_{args.dataset}" + ("_val" if args.split == "val" else "")
    write_csv(out / f"{name}.csv", records)
    cfg = bench_config(args, args.losses[0])
    title = (
        f"{args.dataset} ({args.split} classes): {args.epochs} epochs, batch {args.batch_size}, m={args.m}, "
        f"d={args.embedding_size}, K={args.num_learners}, T={args.recluster_every}, {args.schedule} phases "
        f"(full embedding from epoch {cfg.full_embedding_epoch}, all data from {cfg.all_data_epoch}), "
        f"{args.seeds} seeds"
    )
    plot(records, out / f"{name}.png", title)
    report(
        out,
        name,
        f"Accuracy, {title} ({time.time() - start:.0f} s)",
        table(records),
        "python -m benchmarks.accuracy " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    return records


if __name__ == "__main__":
    main()
