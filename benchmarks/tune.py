"""Tune D&C's settings on the glyph *validation* classes (held out from the training classes; test classes unseen).

    python -m benchmarks.tune --seeds 2 --out bench-out

Each row changes one setting (triplet loss, D&C fixed unless stated) from the defaults K=4, T=2, the journal's
phases, clustering the trunk output, λ=0.01; prints the table and writes ``tune.csv`` and ``tune.png``.
"""

import argparse
import shlex
import sys

import numpy as np

from benchmarks import accuracy
from benchmarks.common import markdown_table, mean_std, pyplot, report, setup, write_csv

GRID = {  # row -> (accuracy.py arguments, methods)
    "baseline": ([], "baseline"),
    "D&C, journal phases (K=4, T=2)": ([], "D&C fixed"),
    "CVPR phases": (["--schedule", "cvpr"], "D&C fixed"),
    "divide only (no full-embedding phase)": (["--schedule", "divide-only"], "D&C fixed"),
    "K=2": (["--num-learners", "2"], "D&C fixed"),
    "K=8": (["--num-learners", "8"], "D&C fixed"),
    "T=1": (["--recluster-every", "1"], "D&C fixed"),
    "cluster on embedding": (["--cluster-on", "embedding"], "D&C fixed"),
    "learned masks, λ=0.01": ([], "D&C learned"),
    "learned masks, λ=0.1": (["--orthogonality-weight", "0.1"], "D&C learned"),
    "learned masks, mask lr ×1": (["--mask-lr-multiplier", "1"], "D&C learned"),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--rows", default=None, type=lambda s: s.split(";"), help="subset of rows, ';'-separated")
    p.add_argument("--out", default="bench-out")
    args, extra = p.parse_known_args(argv)
    out = setup(args.out)
    common = [
        "--dataset",
        "glyphs",
        "--split",
        "val",
        "--losses",
        "triplet",
        "--seeds",
        str(args.seeds),
        "--epochs",
        str(args.epochs),
        "--orthogonality-weight",
        "0.01",
    ] + extra
    train_set, val_set = accuracy.load(accuracy.parser().parse_args(common))
    records, rows = [], []
    for row, (changes, method) in GRID.items():
        if args.rows and row not in args.rows:
            continue
        a = accuracy.parser().parse_args(common + changes + ["--methods", method])
        recs = accuracy.run(a, train_set, val_set, log=lambda *x: None)
        for r in recs:
            r["setting"] = row
        records += recs
        rows.append(
            [row, *(mean_std([r[c] for r in recs]) for c in ("recall_at_1", "NMI", "mean_average_precision_at_r"))]
        )
        print(f"  {row}: R@1 {rows[-1][1]}", flush=True)
    write_csv(out / "tune.csv", records)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(dict.fromkeys(r["setting"] for r in records))
    vals = [[100 * r["recall_at_1"] for r in records if r["setting"] == n] for n in names]
    ax.barh(range(len(names)), [np.mean(v) for v in vals], xerr=[np.std(v) for v in vals], capsize=3)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    lo = min(min(v) for v in vals)
    ax.set_xlim(lo - 3, min(100, max(max(v) for v in vals) + 2))
    ax.set_xlabel("R@1 (%) on glyph validation classes")
    fig.tight_layout()
    fig.savefig(out / "tune.png", dpi=120)
    plt.close(fig)
    table = markdown_table(["setting", "R@1", "NMI", "MAP@R"], rows)
    report(
        out,
        "tune",
        f"Tuning on glyph validation classes (triplet, {args.epochs} epochs, {args.seeds} seeds)",
        table,
        "python -m benchmarks.tune " + shlex.join(sys.argv[1:] if argv is None else argv),
    )


if __name__ == "__main__":
    main()
