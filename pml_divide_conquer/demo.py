"""The main job: a short Divide & Conquer run on scikit-learn's digits, offline, with a results table.

    python -m pml_divide_conquer.demo [--seeds 3] [--epochs 10]

Zero-shot protocol as in the papers: train on digit classes 0-4, test retrieval on classes 5-9 (query = reference,
full L2-normalised embedding). Rows: the untrained model, the same loss and miner without D&C (PML's
MPerClassSampler), and D&C with fixed chunks and with learned masks - same trunk, epochs and batch size.
"""

import argparse
import time
import warnings

import numpy as np

from . import datasets
from . import experiment as ex
from .schedule import DivideConquerSchedule


def demo_config(epochs):
    journal = DivideConquerSchedule.journal(epochs, num_learners=2)  # the authors' phases, scaled to the run
    return ex.RunConfig(
        loss="margin",
        epochs=epochs,
        batch_size=32,
        m=8,
        embedding_size=16,
        hidden=64,
        lr=1e-4,
        num_learners=2,
        recluster_every=journal.recluster_every,
        full_embedding_epoch=journal.full_embedding_epoch,
    )


def run(seeds=(0, 1, 2), epochs=10, num_train_classes=5):
    train_set, test_set = datasets.load_digits(num_train_classes)
    base = demo_config(epochs)
    rows = {
        "untrained": None,
        "baseline (no D&C)": base.but(method="baseline"),
        "D&C, fixed chunks": base.but(mode="fixed"),
        "D&C, learned masks": base.but(mode="learned"),
    }
    results = {name: [] for name in rows}
    for seed in seeds:
        for name, cfg in rows.items():
            if cfg is None:
                results[name].append(ex.untrained(train_set, test_set, base.but(seed=seed)))
                continue
            trunk, embedder, _, _ = ex.train(train_set, cfg.but(seed=seed))
            results[name].append(ex.evaluate(trunk, embedder, test_set))
    return results, len(train_set), len(test_set)


def format_table(results):
    lines = ["| model | R@1 | NMI | MAP@R |", "|---|---|---|---|"]
    for name, runs in results.items():
        cells = []
        for metric in ex.METRICS:
            v = 100 * np.array([r[metric] for r in runs])
            cells.append(f"{v.mean():.1f} ± {v.std():.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (mean ± std over them)")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    ex.quiet_pml()
    warnings.filterwarnings("ignore", category=UserWarning, module="pml_divide_conquer")
    start = time.time()
    results, n_train, n_test = run(seeds=tuple(range(args.seeds)), epochs=args.epochs)
    print(
        f"\nDigits, zero-shot: train classes 0-4 ({n_train} images), test classes 5-9 ({n_test} images); "
        f"margin loss, {args.epochs} epochs, K=2, {args.seeds} seeds (mean ± std, %)\n"
    )
    print(format_table(results))
    print(f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
