"""The figures of docs/benchmarks.md, drawn from the tables the page and README.md print (so a figure shows exactly
the numbers beside it): D&C minus baseline per loss with its 95 % interval, the ablation, and the regime sweeps.

    python -m benchmarks.figures [--out docs/assets]

The tables themselves come from the commands the page names (``python -m benchmarks.han gate``, ``ablation``,
``sweep``); this script only reads them, in a second, without training anything.
"""

import argparse
import re
import textwrap
from pathlib import Path

from benchmarks.common import pyplot

ROOT = Path(__file__).resolve().parents[1]
DELTA = re.compile(r"([+\-−]\d+\.\d+) ± (\d+\.\d+)")
FIGURES = ("benchmarks-headline.png", "benchmarks-ablation.png", "benchmarks-regime.png")


def tables_under(markdown, heading):
    """The markdown tables between ``heading`` (a line starting with it) and the next heading of its level or
    higher: a list of tables, each a list of rows (dicts keyed by the header's cells)."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    level = len(heading) - len(heading.lstrip("#"))
    out, current = [], None
    for line in lines[start + 1 :]:
        if line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            break
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = {"header": cells, "rows": []}
            elif not set("".join(cells)) <= set("-: "):
                current["rows"].append(dict(zip(current["header"], cells)))
        elif current is not None:
            out.append(current["rows"])
            current = None
    if current is not None:
        out.append(current["rows"])
    return out


def delta(cell):
    """``"+0.2 ± 0.5"`` -> (0.2, 0.5); ``"−0.0 ± 1.2"`` (a typographic minus) too."""
    match = DELTA.search(cell)
    if match is None:
        raise ValueError(f"no 'mean ± interval' in {cell!r}")
    return float(match.group(1).replace("−", "-")), float(match.group(2))


def delta_column(row):
    return next(v for k, v in row.items() if k.startswith("ΔR@1") or k == "D&C − baseline")


def headline(readme):
    """README's results table: per loss, D&C − baseline (mean, 95 % half-width)."""
    (rows,) = tables_under(readme, "## Results")[:1]
    return [(row["loss"].split(" (")[0], *delta(delta_column(row))) for row in rows]


def ablation(page):
    rows = tables_under(page, "## Ablation")[0]
    return [(row["setting"], *delta(delta_column(row))) for row in rows if row["setting"] != "baseline"]


def regime(page):
    """{axis: [(value, mean, half)]} of the three sweeps (the D&C rows)."""
    axes = {}
    for rows in tables_under(page, "## Where D&C helps"):
        axis = next(iter(rows[0]))
        axes[axis] = [(row[axis], *delta(delta_column(row))) for row in rows if row["setting"] != "baseline"]
    return axes


def _intervals(ax, labels, means, halves, color="#3f51b5"):
    y = list(range(len(labels)))[::-1]
    ax.errorbar(means, y, xerr=halves, fmt="o", color=color, capsize=4)
    ax.axvline(0, color="#888", lw=1)
    ax.set_yticks(y, [textwrap.fill(label, 30) for label in labels], size=9)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_xlabel("D&C − baseline, R@1 in points (bars: 95 % interval)", size=9)
    for yi, m, h in zip(y, means, halves):
        ax.annotate(f"{m:+.1f} ± {h:.1f}", (m + h, yi), textcoords="offset points", xytext=(6, -3), size=8)
    lo, hi = min(m - h for m, h in zip(means, halves)), max(m + h for m, h in zip(means, halves))
    ax.set_xlim(lo - 0.2, hi + 0.6 * (hi - lo) / 2 + 0.4)


def draw(out, readme=None, page=None):
    """Write the three figures into ``out``; returns their paths."""
    readme = readme if readme is not None else (ROOT / "README.md").read_text()
    page = page if page is not None else (ROOT / "docs" / "benchmarks.md").read_text()
    plt = pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FIGURES]

    rows = headline(readme)
    fig, ax = plt.subplots(figsize=(8, 2.8))
    _intervals(ax, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    ax.set_title("Han benchmark, 1,000 unseen test classes, 3 seeds", size=10)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    rows = ablation(page)
    fig, ax = plt.subplots(figsize=(8, 4))
    _intervals(ax, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], color="#00897b")
    ax.set_title("The chosen D&C with one part changed (margin loss, 3 seeds)", size=10)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)

    axes = regime(page)
    fig, panels = plt.subplots(1, len(axes), figsize=(9, 3), sharey=True)
    names = {"train_classes": "training classes", "pretrain_epochs": "pretraining epochs", "epochs": "epochs (2 seeds)"}
    ticks = {"all": "1,000", "0": "0 (scratch)"}
    for ax, (axis, rows) in zip(panels, axes.items()):
        x = list(range(len(rows)))
        ax.errorbar(x, [r[1] for r in rows], yerr=[r[2] for r in rows], fmt="o-", color="#e65100", capsize=4)
        ax.axhline(0, color="#888", lw=1)
        ax.set_xticks(x, [ticks.get(r[0], r[0]) for r in rows])
        ax.set_xlim(-0.4, len(rows) - 0.6)
        ax.set_xlabel(names.get(axis, axis))
    panels[0].set_ylabel("D&C − baseline, R@1", size=9)
    fig.suptitle("Where D&C helps: margin loss, along three axes of the regime", size=10)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=120)
    plt.close(fig)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "assets"))
    args = parser.parse_args(argv)
    for path in draw(args.out):
        print(path)


if __name__ == "__main__":
    main()
