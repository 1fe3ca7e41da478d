"""The main job: a short Divide & Conquer run on scikit-learn's digits, offline, with a results table.

    python -m lab.demo [--seeds 3] [--epochs 10] [--events first|all|none]

Zero-shot protocol as in the papers: train on digit classes 0-4, test retrieval on classes 5-9 (query = reference,
full L2-normalised embedding). Rows: the untrained model, the same loss and miner without D&C (PML's
MPerClassSampler), and D&C with fixed chunks and with learned masks - same trunk, epochs and batch size; D&C
follows the journal version's schedule (DivideConquerSchedule.journal) scaled to the run.

The console shows one progress bar for the whole demo, a line per finished run, and the D&C steps (phase changes,
splits, reclusterings) that the library logs on PML's "PML" logger at INFO level, under the run they belong to.

Threads: torch runs on one thread here (the environment variable PML_DC_THREADS sets another number). The models
are tiny, and on a busy machine idle torch threads cost far more than they bring: on a loaded 2-core machine one
seed took 42 s with torch's default thread count and 5 s with one thread.
"""

import argparse
import contextlib
import functools
import logging
import os
import sys
import time
import types
import warnings

import numpy as np
import torch
import tqdm
from pytorch_metric_learning.testers import base_tester
from pytorch_metric_learning.trainers import base_trainer

from pml_divide_conquer import DivideConquerSchedule

from . import datasets
from . import experiment as ex

THREADS_VARIABLE = "PML_DC_THREADS"
SHORT_METRICS = {"precision_at_1": "R@1", "NMI": "NMI", "mean_average_precision_at_r": "MAP@R"}


def demo_schedule(epochs):
    """The journal's phases scaled to the run; a run too short to split after two epochs splits after one."""
    journal = DivideConquerSchedule.journal(epochs, num_learners=2)
    if journal.learners_reached() < 2:
        journal = DivideConquerSchedule.journal(epochs, num_learners=2, recluster_every=1)
    return journal


def demo_config(epochs):
    journal = demo_schedule(epochs)
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


def demo_rows(epochs):
    base = demo_config(epochs)
    return {
        "untrained": None,
        "baseline (no D&C)": base.but(method="baseline"),
        "D&C, fixed chunks": base.but(mode="fixed"),
        "D&C, learned masks": base.but(mode="learned"),
    }


def run(seeds=(0, 1, 2), epochs=10, num_train_classes=5, on_epoch=None, on_run=None):
    """Train every row for every seed; returns ({row: [metrics per seed]}, #train images, #test images).

    ``on_epoch(trainer)`` is called after every training epoch, ``on_run(seed, name, metrics, seconds)`` after
    every run.
    """
    train_set, test_set = datasets.load_digits(num_train_classes)
    rows = demo_rows(epochs)
    results = {name: [] for name in rows}
    for seed in seeds:
        for name, cfg in rows.items():
            start = time.time()
            if cfg is None:
                metrics = ex.untrained(train_set, test_set, demo_config(epochs).but(seed=seed))
            else:
                trunk, embedder, _, _ = ex.train(train_set, cfg.but(seed=seed), end_of_epoch_hook=on_epoch)
                metrics = ex.evaluate(trunk, embedder, test_set)
            results[name].append(metrics)
            if on_run is not None:
                on_run(seed, name, metrics, time.time() - start)
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


class _EventBuffer(logging.Handler):
    """Keeps the D&C records of PML's logger (the library's steps), dropping PML's own INFO chatter."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("D&C"):
            self.lines.append(message)


@contextlib.contextmanager
def _demo_console(threads):
    """What the demo changes while it runs, and restores afterwards (also when called in-process)."""
    quiet = types.SimpleNamespace(tqdm=functools.partial(tqdm.tqdm, disable=True))
    pml_logger = logging.getLogger("PML")
    old_level, old_threads = pml_logger.level, torch.get_num_threads()
    events = _EventBuffer()
    with contextlib.ExitStack() as stack:
        # PML's trainer draws a progress bar per epoch and its tester one per embedding pass: not in the demo
        for module in (base_trainer, base_tester):
            stack.enter_context(_patched(module, "tqdm", quiet))
        stack.enter_context(warnings.catch_warnings())
        # PML's trainer formats its loss tensor (which requires grad) with "%.5f" after every iteration; torch
        # >= 2.13 warns about that conversion. The cause is in PML's code, not the demo's: hide that one warning.
        warnings.filterwarnings(
            "ignore",
            message="Converting a tensor with requires_grad=True to a scalar",
            category=UserWarning,
            module=r"pytorch_metric_learning\.trainers\.base_trainer",
        )
        # the sampler's notes about tiny class fragments in a cluster (once per run, six runs): not news here
        # (the package's warnings point at the caller's line, lab/experiment.py: filtered by their message)
        warnings.filterwarnings(
            "ignore", message=".* samples belong to classes with fewer than m=", category=UserWarning
        )
        pml_logger.setLevel(logging.INFO)
        pml_logger.addHandler(events)
        torch.set_num_threads(threads)
        try:
            yield events
        finally:
            pml_logger.removeHandler(events)
            pml_logger.setLevel(old_level)
            torch.set_num_threads(old_threads)


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def default_threads():
    value = os.environ.get(THREADS_VARIABLE, "1")
    try:
        threads = int(value)
    except ValueError:
        raise SystemExit(f"{THREADS_VARIABLE}={value!r} is not a number of threads") from None
    return max(threads, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=f"torch threads: {THREADS_VARIABLE} (default 1; tiny models on a busy machine run faster on one)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (mean ± std over them)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--events",
        choices=("first", "all", "none"),
        default="first",
        help="show the D&C steps of the first seed's runs (default), of all runs, or none",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "bar", "lines"),
        default="auto",
        help="a progress bar (on a terminal: auto's choice) or plain lines only (a log file, a pipe)",
    )
    args = parser.parse_args(argv)
    bar_shown = args.progress == "bar" or (args.progress == "auto" and sys.stderr.isatty())
    threads = default_threads()
    journal = demo_schedule(args.epochs)
    rows = demo_rows(args.epochs)
    total = args.seeds * sum(cfg is not None for cfg in rows.values()) * args.epochs
    print(
        "Digits, zero-shot: train on classes 0-4, test retrieval on classes 5-9.\n"
        f"Margin loss + distance-weighted miner, {args.epochs} epochs, batch 32, m=8; {args.seeds} seed(s), "
        f"{threads} torch thread(s).\nD&C: K=2, journal schedule (split and recluster every "
        f"{journal.recluster_every} epochs, full embedding from epoch {journal.full_embedding_epoch}).\n",
        flush=True,
    )
    start = time.time()
    progress = tqdm.tqdm(total=total, unit="epoch", desc="training", disable=not bar_shown)
    with _demo_console(threads) as events, progress as bar:

        def on_epoch(trainer):
            bar.update(1)

        def on_run(seed, name, metrics, seconds):
            scores = "  ".join(f"{short} {100 * metrics[key]:5.1f}" for key, short in SHORT_METRICS.items())
            took = "" if name == "untrained" else f"  ({seconds:.1f} s)"
            bar.write(f"seed {seed}  {name:<19} {scores}{took}")
            show = args.events == "all" or (args.events == "first" and seed == 0)
            if show:
                for line in events.lines:
                    bar.write(f"         {line}")
            events.lines.clear()

        results, n_train, n_test = run(
            seeds=tuple(range(args.seeds)), epochs=args.epochs, on_epoch=on_epoch, on_run=on_run
        )
    print(
        f"\nTest classes 5-9 ({n_test} images; {n_train} training images), mean ± std over {args.seeds} seed(s), "
        f"%, {time.time() - start:.0f} s:\n"
    )
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
