"""The markdown tables the commands print: mean ± std over seeds, and the paired difference to the baseline."""

import numpy as np

from benchmarks.common import markdown_table
from benchmarks.han.config import METRIC_NAMES, METRICS
from benchmarks.han.experiments import RECLUSTER_FROM
from benchmarks.han.stats import format_difference, paired_difference


def table(records, group_keys=("loss",)):
    rows = []
    for group in dict.fromkeys(tuple(r[k] for k in group_keys) for r in records):
        runs_g = sorted(
            (r for r in records if tuple(r[k] for k in group_keys) == group), key=lambda r: r["method"] != "baseline"
        )  # the baseline first, then in the order given
        base = sorted((r for r in runs_g if r["method"] == "baseline"), key=lambda r: r["seed"])
        for name in dict.fromkeys(r["setting"] for r in runs_g):
            runs = sorted((r for r in runs_g if r["setting"] == name), key=lambda r: r["seed"])
            cells = []
            for m in METRICS:
                v = 100 * np.array([r[m] for r in runs])
                cells.append(f"{v.mean():.1f} ± {v.std():.1f}")
            delta = ""
            if base and runs[0]["method"] != "baseline" and [r["seed"] for r in runs] == [r["seed"] for r in base]:
                mean, half = paired_difference([r["recall_at_1"] for r in runs], [r["recall_at_1"] for r in base])
                delta = format_difference(mean, half)
            secs = np.mean([r["train_seconds"] for r in runs])
            shown = [("all" if k == "train_classes" and v == 0 else v) for k, v in zip(group_keys, group)]
            rows.append([*shown, name, *cells, delta, f"{secs:.0f}"])
    return markdown_table([*group_keys, "setting", *METRIC_NAMES, "ΔR@1 vs baseline (95 % CI)", "train s"], rows)


def reclustering_table(records):
    """R@1 and what a reclustering costs, per way of reclustering; the R@1 difference to the embedding pass."""
    rows = []
    base = sorted((r for r in records if r["recluster_from"] == "pass"), key=lambda r: r["seed"])
    for name, v in RECLUSTER_FROM:
        runs = sorted((r for r in records if r["recluster_from"] == v), key=lambda r: r["seed"])
        if not runs:
            continue
        r1 = 100 * np.array([r["recall_at_1"] for r in runs])
        ratio = np.array([(r["recluster_seconds"] - r["kmeans_seconds"]) / r["pass_seconds"] for r in runs])
        delta = ""
        if v != "pass" and [r["seed"] for r in runs] == [r["seed"] for r in base]:
            mean, half = paired_difference([r["recall_at_1"] for r in runs], [r["recall_at_1"] for r in base])
            delta = format_difference(mean, half, digits=2)
        rows.append(
            [
                name,
                f"{r1.mean():.1f} ± {r1.std():.1f}",
                delta,
                f"{np.mean([r['recluster_seconds'] for r in runs]):.2f}",
                f"{np.mean([r['kmeans_seconds'] for r in runs]):.2f}",
                f"{np.mean([r['pass_seconds'] for r in runs]):.2f}",
                f"{ratio.mean():.3f} ± {ratio.std():.3f}",
                f"{np.mean([r['feature_memory_bytes'] for r in runs]) / 2**20:.1f}",
            ]
        )
    header = [
        "setting",
        "R@1",
        "ΔR@1 (95 % CI)",
        "reclustering s",
        "k-means s",
        "one pass s",
        "(reclustering − k-means) / pass",
        "feature memory MiB",
    ]
    return markdown_table(header, rows)
