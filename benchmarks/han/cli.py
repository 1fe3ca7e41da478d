"""Many-class zero-shot retrieval on Han characters: D&C against its baseline where D&C is meant to win.

The command line (``python -m benchmarks.han COMMAND ...``; the commands: :mod:`benchmarks.han`).
"""

import argparse
import json
import re
import shlex
import sys
import time

import numpy as np

from benchmarks.common import report, setup, write_csv
from benchmarks.han.config import LOSSES, PRESETS
from benchmarks.han.experiments import (
    TUNE_ROUNDS,
    ablation_configs,
    gate_configs,
    reclustering_configs,
    sweep_configs,
    table_configs,
    tune_configs,
)
from benchmarks.han.jobs import run_all
from benchmarks.han.plots import plot
from benchmarks.han.records import load_records
from benchmarks.han.tables import reclustering_table, table


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["gate", "tune", "table", "ablation", "sweep", "reclustering", "report"])
    p.add_argument("--from", dest="sources", nargs="+", default=[], help="report: han_runs.jsonl files to tabulate")
    p.add_argument("--axis", default="classes", choices=["classes", "epochs", "pretrained"], help="sweep: the regime")
    p.add_argument("--values", default=None, type=lambda v: v.split(","), help="sweep: these values of the axis only")
    p.add_argument("--group", default="loss", help="report: the record field that groups the rows (loss, epochs, ...)")
    p.add_argument("--preset", default="cpu", choices=list(PRESETS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--npz", default=None, help="prebuilt arrays (benchmarks/setup_han.sh); default: render/cached")
    p.add_argument("--sizes", default=None, help='JSON of load_han split sizes, e.g. {"num_train": 100}')
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--losses", default=None, type=lambda s: s.split(","), help="default: margin (gate), all (table)")
    p.add_argument("--jobs", type=int, default=2, help="parallel runs on the CPU (one torch thread each)")
    p.add_argument("--methods", default="baseline,dc", type=lambda v: v.split(","), help="run only these methods")
    p.add_argument("--only", default=None, help="run only the settings whose name matches this regular expression")
    p.add_argument("--set", default=None, help='JSON of Config changes for every run, e.g. {"epochs": 20}')
    p.add_argument("--lr", type=float, default=None, help="tune: skip round 1 and use this learning rate")
    p.add_argument("--round", type=int, default=2, choices=sorted(TUNE_ROUNDS), help="tune: the grid after round 1")
    p.add_argument("--out", default="bench-out")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    args.split = "val" if args.command == "tune" else "test"
    out = setup(args.out)
    args.out = str(out)
    base = PRESETS[args.preset]
    if args.set:
        base = base.but(**json.loads(args.set))
    start = time.perf_counter()
    regimes = None
    if args.command == "report":
        if not args.sources:
            raise SystemExit("benchmarks.han report: give the han_runs.jsonl files to tabulate with --from")
        records = load_records(args.sources)
        if args.group != "loss":  # a regime axis, in increasing order (train_classes 0, all of them, last)
            records.sort(key=lambda r: r[args.group] or float("inf"))
        seeds = len({r["seed"] for r in records})
        title = f"Han test classes, runs of {', '.join(args.sources)} ({seeds} seeds)"
        command = "python -m benchmarks.han " + shlex.join(sys.argv[1:] if argv is None else argv)
        report(out, "han_report", title, table(records, (args.group,)), command)
        return records
    if args.command == "gate":
        named = gate_configs(base, args.seeds, tuple(args.losses or ("margin",)))
    elif args.command == "ablation":
        named = ablation_configs(base, args.seeds, (args.losses or ["margin"])[0])
    elif args.command == "sweep":
        triples = sweep_configs(base, args.seeds, args.axis, (args.losses or ["margin"])[0], args.values)
        regimes = [t[0] for t in triples]
        named = [(name, cfg) for _, name, cfg in triples]
    elif args.command == "table":
        named = table_configs(base, args.seeds, tuple(args.losses or LOSSES))
    elif args.command == "reclustering":
        named = reclustering_configs(base, args.seeds, (args.losses or ["margin"])[0])
    else:
        named = []
        best = args.lr
        if best is None:
            stage1 = tune_configs(base, args.seeds)
            recs = run_all([c for _, c in stage1], args, "tuning the learning rate")
            for (name, _), r in zip(stage1, recs):
                r["setting"] = name
            named_records = recs
            means = {lr: np.mean([r["recall_at_1"] for r in recs if r["lr"] == lr]) for lr in {r["lr"] for r in recs}}
            best = max(means, key=means.get)
            print(f"best learning rate on the validation classes: {best:g}", flush=True)
        else:
            named_records = []
        named = tune_configs(base, args.seeds, best, args.round)
    keep = [
        i
        for i, (n, c) in enumerate(named)
        if c.method in args.methods and (args.only is None or re.search(args.only, n))
    ]
    named = [named[i] for i in keep]
    regimes = [regimes[i] for i in keep] if regimes else None
    records = run_all([c for _, c in named], args, f"han {args.command}", [n for n, _ in named])
    for i, ((name, _), r) in enumerate(zip(named, records)):
        r["setting"] = name
        if regimes:
            r["regime"] = regimes[i]
    if args.command == "tune":
        records = named_records + records
    elapsed = time.perf_counter() - start
    name = (
        f"han_{args.command}"
        + (f"_{args.axis}" if regimes else "")
        + (f"_round{args.round}" if args.command == "tune" and args.round != 2 else "")
        + ("" if args.preset == "cpu" else f"_{args.preset}")
    )
    write_csv(out / f"{name}.csv", records)
    title = (
        f"Han {('validation' if args.split == 'val' else 'test')} classes, {args.preset} preset "
        f"({base.trunk}, {base.epochs} epochs, batch {base.batch_size}, m={base.m}, d={base.embedding_size}), "
        f"{args.seeds} seeds, {args.device}"
    )
    plot(records, out / f"{name}.png", title)
    command = "python -m benchmarks.han " + shlex.join(sys.argv[1:] if argv is None else argv)
    groups = ("regime",) if regimes else ("loss",)
    text = reclustering_table(records) if args.command == "reclustering" else table(records, groups)
    report(out, name, f"{title} — {elapsed / 60:.1f} min", text, command)
    return records
