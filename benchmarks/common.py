"""Shared helpers of the benchmark scripts: output folder, markdown tables, CSV, plots, machine description."""

import csv
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def setup(out_dir):
    """Quiet logs, fixed thread count; returns the output folder (created).

    torch runs on ``$PML_DC_BENCH_THREADS`` threads (default 1): on a small shared machine, two torch threads
    competing with other processes were up to 20x slower than one in our runs.
    """
    from lab import experiment as ex

    torch.set_num_threads(int(os.environ.get("PML_DC_BENCH_THREADS", "1")))
    ex.quiet_pml()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import logging

    logging.getLogger("faiss").setLevel(logging.ERROR)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def machine():
    """One line describing this machine (CPU model, cores, memory, torch and its threads)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average at start {os.getloadavg()[0]:.1f}"
    gpu = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}, {gpu}; Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads){load}"
    )


def mean_std(values, scale=100.0, digits=1):
    v = scale * np.asarray(values, dtype=float)
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path, records):
    """``records``: a list of dicts (keys missing from some rows are left empty there)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in records for k in r)), restval="")
        w.writeheader()
        w.writerows(records)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def report(out, name, title, table, command):
    """Print the table and save it (with the command and machine) as ``name.md`` in ``out``."""
    text = f"### {title}\n\n`{command}`\n\nMachine: {machine()}\n\n{table}\n"
    (out / f"{name}.md").write_text(text)
    print(text)
