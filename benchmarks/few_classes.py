"""Few classes: where and why D&C loses on a few hundred classes (a set like a user's held-out glyph set; issue 16).

    python -m benchmarks.few_classes table --npz han.npz --out out/few   # baseline vs D&C, 2 losses x 2 regimes
    python -m benchmarks.few_classes heads --npz han.npz --out out/few   # ArcFace: the full head at the phase change
    python -m benchmarks.few_classes phases --npz han.npz --out out/few  # phase epochs and the ablation's parts
    python -m benchmarks.few_classes report --out out/few                # every run so far, one table + curves

The set: 300 training and 300 unseen test classes of Han characters (200 validation classes kept apart for
tuning), 15 images per class from distinct faces, 32x32 (``load_han(..., images_per_class=15)``), and 1,000 other
classes to pretrain the trunk on. Two regimes: the trunk trained from scratch (BatchNorm trained, lr 1e-3), and
pretrained on the 1,000 other classes with BatchNorm frozen, lr 3e-4. Everything else is the han benchmark's CPU
preset (four conv blocks 16-32-64-128, Linear(128, 128), batch 64, m = 2, 12 epochs, Adam, ArcFace's class weights
1e-2) and D&C is ``benchmarks.han.CHOSEN`` (K = 4, T = 2, fixed chunks, CVPR phases with K grown, per-learner heads).
Every run records R@1 on the eval classes after each epoch (``curve``; RNG states are kept, so the run trains as one
without it).
"""

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import han
from benchmarks.common import markdown_table, pyplot, report, setup

SIZES = dict(num_pretrain=1000, num_train=300, num_val=200, num_test=300, images_per_class=15)
REGIMES = {
    "scratch": dict(pretrain_epochs=0, freeze_batchnorm=False),
    "pretrained": dict(lr=3e-4),  # pretrained 6 epochs on the 1,000 other classes, BatchNorm frozen (the default)
}
LOSSES = ("margin", "arcface")


def rows(experiment, loss):
    """(setting name, Config changes) of an experiment, the baseline first."""
    dc = dict(han.CHOSEN, full_head="assembled")  # as chosen before the fix: the learners' heads put together
    base = [("baseline", dict(method="baseline")), ("D&C (chosen)", dc)]
    if experiment == "table":
        return base
    if experiment == "fixed":  # the library with the fix: the full head imprinted at the phase change (default)
        return base + [("D&C (chosen), full head imprinted (new default)", dict(han.CHOSEN))]
    if experiment == "final":  # the fix, and the baseline with an equally fast-turning head (the fair control)
        control = [("baseline, unit-norm head at the start", dict(method="baseline", unit_head=True))]
        return rows("fixed", loss) + (control if loss in han.HEAD_LOSSES else [])
    if experiment == "heads":  # ArcFace: what the full head starts from; the learners' scale
        return base + [
            ("D&C, full head: owner's chunk only", dict(dc, assemble="owner")),
            ("D&C, full head: fresh", dict(dc, assemble="fresh")),
            ("D&C, full head: imprinted (class means)", dict(dc, assemble="imprint")),
            ("D&C, shared head", dict(dc, heads="shared")),
            ("D&C, learners' ArcFace scale 16", dict(dc, learner_scale=16.0)),
        ]
    if experiment == "imprint":  # controls: is it D&C's head, or ArcFace's head and scale in 12 short epochs?
        return base + [
            ("D&C, full head: imprinted (class means)", dict(dc, assemble="imprint")),
            ("baseline, head imprinted after epoch 5", dict(method="baseline", imprint_epoch=5)),
            ("baseline, ArcFace scale 16", dict(method="baseline", scale=16.0)),
            ("D&C, learners' ArcFace scale 16", dict(dc, learner_scale=16.0)),
            ("D&C, imprinted + learners' scale 16", dict(dc, assemble="imprint", learner_scale=16.0)),
            ("D&C, ArcFace scale 16 everywhere", dict(dc, scale=16.0)),
        ]
    if experiment == "norm":  # the imprinted head's norm, i.e. how fast Adam (lr 1e-2) turns its vectors
        return base + [
            ("D&C (chosen), full head imprinted (new default)", dict(han.CHOSEN)),
            ("D&C, full head: imprinted (class means)", dict(dc, assemble="imprint")),
            ("D&C, full head: assembled, unit norm", dict(dc, assemble="concat-unit")),
            ("D&C, full head: imprinted, norm of the assembled head", dict(dc, assemble="imprint-kept")),
            ("baseline, head imprinted after epoch 5", dict(method="baseline", imprint_epoch=5)),
            ("baseline, unit-norm head at the start", dict(method="baseline", unit_head=True)),
        ]
    if experiment == "phases":
        return base + [
            ("K=1: ClusterSampler over all data", dict(dc, num_learners=1, schedule="divide-only")),
            ("cluster batches only: full embedding from epoch 1", dict(dc, schedule="custom-full")),
            ("subspaces on random clusters", dict(dc, random_clusters=True)),
            ("divide only (no full-embedding phase)", dict(dc, schedule="divide-only")),
            ("K fixed from the start (CVPR)", dict(dc, grow=False)),
            ("short divide: T=1, full embedding from epoch 4", dict(dc, recluster_every=1, full_epoch=4)),
            ("reclustered from training features (library default)", dict(dc, recluster_from="training")),
        ]
    raise ValueError(experiment)


def configs(experiment, seeds, losses, regimes, only=None, preset="cpu"):
    import re

    out = []
    for regime in regimes:
        for loss in losses:
            for name, changes in rows(experiment, loss):
                if only and not re.search(only, name):
                    continue
                for s in range(seeds):
                    cfg = han.PRESETS[preset].but(loss=loss, seed=s, curve=1, **REGIMES[regime], **changes)
                    out.append((regime, name, cfg))
    return out


def key(r):
    """A run's whole Config (fields a record lacks at their defaults) as a string."""
    fields = han.Config.__dataclass_fields__
    legacy = {"full_head": "assembled"}  # runs made before the library's full_head (and the han Config's field) existed
    cfg = {k: r.get(k, legacy.get(k, f.default)) for k, f in fields.items()}
    if cfg["method"] == "baseline" or cfg["loss"] not in han.HEAD_LOSSES:
        cfg["full_head"] = None  # no head to start: the same run either way
    return json.dumps(cfg, sort_keys=True)


def load(out):
    """Every run in ``out/han_runs.jsonl``, each Config once (the first met)."""
    runs = {}
    path = Path(out) / "han_runs.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        r = json.loads(line)
        runs.setdefault(key(r), r)
    return list(runs.values())


def regime_of(r):
    return "scratch" if r["pretrain_epochs"] == 0 else "pretrained"


EXPERIMENTS = ("table", "final", "heads", "imprint", "norm", "phases")


def tabulate(records, experiments=EXPERIMENTS):
    """R@1 and MAP@R (mean ± std over seeds), the paired difference of R@1 to the plain baseline of the same regime
    and loss (mean ± 95 % t-interval over seeds), and the mean training seconds, of the settings of
    ``experiments``."""
    names = list(dict.fromkeys(n for e in experiments for n, _ in rows(e, "arcface")))
    out = []
    for regime in REGIMES:
        for loss in LOSSES:
            mine = [r for r in records if regime_of(r) == regime and r["loss"] == loss]
            base = {r["seed"]: r for r in mine if r["setting"] == "baseline"}
            for name in names:
                runs = sorted((r for r in mine if r["setting"] == name), key=lambda r: r["seed"])
                if not runs:
                    continue
                r1 = 100 * np.array([r["recall_at_1"] for r in runs])
                mapr = 100 * np.array([r["mean_average_precision_at_r"] for r in runs])
                delta = ""
                if name != "baseline" and all(r["seed"] in base for r in runs):
                    mean, half = han.paired_difference(
                        [r["recall_at_1"] for r in runs], [base[r["seed"]]["recall_at_1"] for r in runs]
                    )
                    delta = han.format_difference(mean, half)
                seconds = np.mean([r["train_seconds"] for r in runs])
                out.append(
                    [
                        regime,
                        loss,
                        name,
                        len(runs),
                        f"{r1.mean():.1f} ± {r1.std():.1f}",
                        f"{mapr.mean():.1f}",
                        delta,
                        f"{seconds:.0f}",
                    ]
                )
    header = ["regime", "loss", "setting", "seeds", "R@1", "MAP@R", "ΔR@1 vs baseline (95 % CI)", "train s"]
    return markdown_table(header, out)


def curve_table(records):
    """Mean R@1 (over seeds) after each epoch, per regime, loss and setting."""
    header = ["regime", "loss", "setting"] + [str(e) for e in range(1, 13)]
    out = []
    groups = dict.fromkeys((r["regime"], r["loss"], r["setting"]) for r in records if r.get("curve_points"))
    for g in groups:
        runs = [r for r in records if (r["regime"], r["loss"], r["setting"]) == g]
        ends = [[c["r1"] for c in r["curve_points"] if c["end_of_epoch"]] for r in runs]
        if len({len(e) for e in ends}) != 1:
            continue
        mean = 100 * np.mean(ends, axis=0)
        out.append([*g, *(f"{v:.1f}" for v in mean)])
    return markdown_table(header, out)


KEY_SETTINGS = (
    "baseline",
    "D&C (chosen)",
    "D&C (chosen), full head imprinted (new default)",
    "baseline, head imprinted after epoch 5",
    "D&C, learners' ArcFace scale 16",
    "cluster batches only: full embedding from epoch 1",
    "subspaces on random clusters",
)


def plot_curves(records, path, settings=None):
    plt = pyplot()
    if settings:
        records = [r for r in records if r["setting"] in settings]
    panels = list(dict.fromkeys((r["regime"], r["loss"]) for r in records if r.get("curve_points")))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (regime, loss) in zip(axes[0], panels):
        runs = [r for r in records if (r["regime"], r["loss"]) == (regime, loss) and r.get("curve_points")]
        for i, name in enumerate(dict.fromkeys(r["setting"] for r in runs)):
            mine = [r for r in runs if r["setting"] == name]
            pts = [[(c["step"], c["r1"]) for c in r["curve_points"]] for r in mine]
            if len({len(p) for p in pts}) != 1:
                continue
            steps = np.array([s for s, _ in pts[0]]) / (mine[0]["curve_points"][-1]["step"] / mine[0]["epochs"])
            ax.plot(
                steps,
                100 * np.mean([[v for _, v in p] for p in pts], axis=0),
                label=name,
                lw=1.2,
                color="k" if name == "baseline" else f"C{i}",
            )
        ax.axvspan(0, 5, color="0.92", zorder=0)
        ax.set_title(f"{loss}, {regime} (grey: divide phase)", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test R@1 (%)")
        lo = min(100 * c["r1"] for r in runs for c in r["curve_points"] if c["epoch"] >= 3)
        ax.set_ylim(max(0, lo - 2), None)
        ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("experiment", choices=["table", "heads", "imprint", "norm", "phases", "fixed", "final", "report"])
    p.add_argument("--npz", default=None)
    p.add_argument("--out", default="out/few")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--losses", default=",".join(LOSSES), type=lambda v: v.split(","))
    p.add_argument("--regimes", default=",".join(REGIMES), type=lambda v: v.split(","))
    p.add_argument("--only", default=None, help="only the settings whose name matches this regular expression")
    p.add_argument("--set", default=None, help="JSON of Config changes for every run")
    p.add_argument("--split", default="test", choices=["test", "val"], help="val: the 200 validation classes")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--preset", default="cpu", choices=list(han.PRESETS), help="tiny: the test suite's smoke run")
    p.add_argument("--sizes", default=json.dumps(SIZES), help="JSON of load_han's sizes (the smoke run's are tiny)")
    args = p.parse_args(argv)
    out = setup(args.out)
    command = "python -m benchmarks.few_classes " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.experiment != "report":
        named = configs(args.experiment, args.seeds, args.losses, args.regimes, args.only, args.preset)
        if args.set:
            named = [(g, n, c.but(**json.loads(args.set))) for g, n, c in named]
        done = {key(r) for r in load(out)}
        named = [(g, n, c) for g, n, c in named if key(dataclasses.asdict(c)) not in done]  # runs made before
        run_args = argparse.Namespace(
            sizes=args.sizes, device="cpu", split=args.split, npz=args.npz, jobs=args.jobs, out=str(out)
        )
        start = time.perf_counter()
        han.run_all([c for _, _, c in named], run_args, f"few classes {args.experiment}", [n for _, n, _ in named])
        print(f"{args.experiment}: {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    records = load(out)
    for r in records:
        r["regime"] = regime_of(r)
    shown = EXPERIMENTS if args.experiment == "report" else ("table", args.experiment)
    text = tabulate(records, shown) + "\n\nR@1 (%) after each epoch, mean over seeds:\n\n" + curve_table(records)
    plot_curves(records, out / "few_classes_curves.png")
    plot_curves(records, out / "few_classes_curves_key.png", KEY_SETTINGS)
    report(out, f"few_classes_{args.experiment}", f"Han, {args.sizes}", text, command)


if __name__ == "__main__":
    main()
