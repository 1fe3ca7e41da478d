"""Memory: peak RSS of D&C training vs baseline training, each in a fresh process, side by side.

    python -m benchmarks.memory --epochs 4 --num-learners 8 --out bench-out

Every variant runs in its own Python process (so peaks do not mix; the processes run concurrently): "idle" loads
the data and builds the model without training (the floor: Python, torch, PML, data), then the baseline and D&C
train with the accuracy benchmark's settings (K grows 1, 2, 4, 8 with T=1 by default). Reports peak RSS
(``ru_maxrss``), the ratio to the baseline, and the ratio of the part above the idle floor. Writes ``memory.csv``
and ``memory.png``.
"""

import argparse
import json
import resource
import shlex
import subprocess
import sys
from pathlib import Path

from benchmarks.common import markdown_table, pyplot, report, setup, write_csv

ROOT = Path(__file__).resolve().parents[1]  # the repository root, where ``python -m benchmarks.memory`` runs
VARIANTS = {"idle": None, "baseline": "baseline", "D&C fixed": "D&C fixed", "D&C learned": "D&C learned"}


def child(args):
    from benchmarks import accuracy
    from lab import experiment as ex

    setup(args.out)
    acc_args = accuracy.parser().parse_args(
        [
            "--dataset",
            args.dataset,
            "--epochs",
            str(args.epochs),
            "--num-learners",
            str(args.num_learners),
            "--recluster-every",
            str(args.recluster_every),
            "--schedule",
            "divide-only",
            "--batch-size",
            str(args.batch_size),
            "--m",
            str(args.m),
        ]
    )
    train_set, _ = accuracy.load(acc_args)
    cfg = accuracy.bench_config(acc_args, args.loss)
    if args.child == "idle":
        ex.build_models(tuple(train_set[0][0].shape), cfg)
    else:
        ex.train(train_set, cfg.but(**accuracy.METHODS[args.child]))
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="glyphs", choices=["glyphs", "fashion", "digits"])
    p.add_argument("--loss", default="triplet")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--num-learners", type=int, default=8)
    p.add_argument("--recluster-every", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--m", type=int, default=4)
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        type=lambda v: v.split(","),
        help="processes to run; idle and baseline are needed for the ratios",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    out = setup(args.out)
    argv = sys.argv[1:] if argv is None else list(argv)
    records = []
    # one process per variant, run at the same time (each one's peak RSS is its own), from the repository root
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "benchmarks.memory", *argv, "--out", str(out.resolve()), "--child", name],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in args.variants
    }
    for name, proc in procs.items():
        stdout, stderr = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{name} failed:\n{stderr[-3000:]}")
        peak = json.loads(stdout.strip().splitlines()[-1])["peak_rss_mb"]
        records.append(dict(variant=name, peak_rss_mb=round(peak, 1)))
        print(f"  {name}: {peak:.0f} MB", flush=True)
    write_csv(out / "memory.csv", records)
    peaks = {r["variant"]: r["peak_rss_mb"] for r in records}
    idle, base = peaks["idle"], peaks["baseline"]
    rows = []
    for name, peak in peaks.items():
        ratio = f"{peak / base:.3f}" if name != "idle" else ""
        above = f"{(peak - idle) / max(base - idle, 1e-9):.2f}" if name not in ("idle",) else ""
        rows.append([name, f"{peak:.0f}", ratio, above])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.bar(list(peaks), list(peaks.values()), color=["gray", "C0", "C1", "C2"][: len(peaks)])
    ax.set_ylabel("peak RSS (MB)")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=120)
    plt.close(fig)
    table = markdown_table(["process", "peak RSS, MB", "ratio to baseline", "ratio above the idle floor"], rows)
    title = (
        f"Peak memory ({args.dataset}, {args.loss}, {args.epochs} epochs, K up to {args.num_learners}, "
        f"T={args.recluster_every}, batch {args.batch_size})"
    )
    report(out, "memory", title, table, "python -m benchmarks.memory " + shlex.join(argv))
    return records


if __name__ == "__main__":
    main()
