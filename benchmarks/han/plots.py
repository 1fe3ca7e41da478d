"""The bar plot of R@1 per setting that every command writes."""

import numpy as np

from benchmarks.common import pyplot


def plot(records, path, title):
    plt = pyplot()
    key = "regime" if "regime" in records[0] else "loss"
    groups = list(dict.fromkeys((r[key], r["setting"]) for r in records))
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(groups) + 1.2))
    for i, (loss, name) in enumerate(groups):
        v = [100 * r["recall_at_1"] for r in records if (r[key], r["setting"]) == (loss, name)]
        ax.barh(i, np.mean(v), xerr=np.std(v), capsize=3, color="C0" if name == "baseline" else "C1")
    ax.set_yticks(range(len(groups)), [f"{g}: {n}" for g, n in groups], fontsize=7)
    ax.invert_yaxis()
    lo = min(100 * r["recall_at_1"] for r in records)
    ax.set_xlim(max(0, lo - 5), min(100, max(100 * r["recall_at_1"] for r in records) + 3))
    ax.set_xlabel("R@1 (%)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
