"""Learning actually happens: real offline data (scikit-learn digits), real PML trainer and tester."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits

from lab import experiment as ex
from lab.datasets import ArrayDataset


@pytest.fixture(scope="module")
def split():
    """Half of each class's images train, the other half test (retrieval among unseen images)."""
    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target
    perm = np.random.default_rng(0).permutation(len(y))
    half = len(y) // 2
    return ArrayDataset(x[perm[:half]], y[perm[:half]]), ArrayDataset(x[perm[half:]], y[perm[half:]])


CFG = ex.RunConfig(
    loss="triplet",
    epochs=6,
    full_embedding_epoch=5,
    all_data_epoch=6,
    num_learners=2,
    m=8,
    embedding_size=16,
    hidden=64,
    lr=1e-3,
)


@pytest.mark.parametrize("mode", ["fixed", "learned"])
def test_dc_training_improves_recall_clearly(split, mode):
    train_set, test_set = split
    cfg = CFG.but(mode=mode)
    before = ex.untrained(train_set, test_set, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trunk, embedder, trainer, wrapper = ex.train(train_set, cfg)
    after = ex.evaluate(trunk, embedder, test_set)
    assert wrapper.num_active == 2 and wrapper.phase == "all_data"
    assert after["precision_at_1"] >= before["precision_at_1"] + 0.08, (before, after)
    assert after["mean_average_precision_at_r"] >= before["mean_average_precision_at_r"] + 0.2, (before, after)


def test_demo_console_one_bar_run_lines_events_table_and_no_warnings():
    """What a newcomer sees: one progress bar (stderr), a line per run with the D&C steps under it, the table."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}  # this checkout's package, whatever is installed
    env.pop("TQDM_DISABLE", None)
    env.pop("PML_DC_THREADS", None)
    result = subprocess.run(
        [sys.executable, "-W", "default", "-m", "lab.demo", "--seeds", "1", "--epochs", "4", "--progress", "bar"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out, err = result.stdout, result.stderr
    # stderr: one bar and nothing else: every frame is the same bar ("training", 12 epochs in all), its count
    # never goes back (tqdm redraws it after each line printed above it) and ends at 12
    import re

    frames = [f for f in re.split(r"[\r\n]", err) if f.strip()]
    counts = [re.match(r"training: +\d+%\|.*\| (\d+)/12 \[", f) for f in frames]
    assert frames and all(counts), frames
    counts = [int(c.group(1)) for c in counts]
    assert counts == sorted(counts) and counts[-1] == 12, counts  # 1 seed x 3 trained rows x 4 epochs
    assert "Warning" not in out + err and "warn" not in err.lower()
    assert "%|" not in out  # no per-epoch bars of PML's trainer or tester
    assert "1 torch thread" in out
    runs = [line for line in out.splitlines() if line.startswith("seed 0  ")]
    assert [line.split("  R@1")[0].split("  ", 1)[1].strip() for line in runs] == [
        "untrained",
        "baseline (no D&C)",
        "D&C, fixed chunks",
        "D&C, learned masks",
    ]
    # the D&C steps, from the library's INFO records on PML's logger, and none of PML's own INFO lines
    assert len(re.findall(r"D&C: split every cluster in two after epoch 1\b.*: K=2\b", out)) == 2  # (4 epochs: T=1)
    assert out.count("D&C: full embedding phase from epoch") == 2
    assert "TRAINING EPOCH" not in out and "dataloader" not in out.lower()
    for row in ("untrained", "baseline (no D&C)", "D&C, fixed chunks", "D&C, learned masks"):
        assert f"| {row} |" in out
    cells = [line.split("|")[2] for line in out.splitlines() if line.startswith("| D&C")]
    assert all(0.0 < float(c.split("±")[0]) <= 100.0 for c in cells)


def test_demo_restores_what_it_changes(monkeypatch, capsys):
    """Called in-process, the demo leaves torch's threads, PML's logger and PML's progress bars as they were."""
    import logging

    import torch
    from pytorch_metric_learning.trainers import base_trainer

    from lab import demo

    monkeypatch.setenv("PML_DC_THREADS", "1")
    threads, level, bar = torch.get_num_threads(), logging.getLogger("PML").level, base_trainer.tqdm
    handlers = list(logging.getLogger("PML").handlers)
    results = demo.main(["--seeds", "1", "--epochs", "2", "--events", "none"])
    assert set(results) == {"untrained", "baseline (no D&C)", "D&C, fixed chunks", "D&C, learned masks"}
    assert "phase from epoch" not in capsys.readouterr().out
    assert torch.get_num_threads() == threads and logging.getLogger("PML").level == level
    assert base_trainer.tqdm is bar and logging.getLogger("PML").handlers == handlers


def test_the_readme_demo_table_is_what_the_demo_prints():
    """README's table under `python -m lab.demo` is that command's output (the demo is deterministic on the CPU)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "TQDM_DISABLE": "1"}
    env.pop("PML_DC_THREADS", None)
    result = subprocess.run(
        [sys.executable, "-m", "lab.demo", "--events", "none"], cwd=root, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 6, result.stdout
    readme = (root / "README.md").read_text()
    assert "\n".join(table) in readme, "\n".join(table)


def test_the_demo_written_to_a_log_is_plain_lines():
    """Not on a terminal (a log file, a pipe): no progress bar and no carriage returns, one line per run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("TQDM_DISABLE", None)
    result = subprocess.run(
        [sys.executable, "-m", "lab.demo", "--seeds", "1", "--epochs", "2", "--events", "none"], cwd=root, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stdout + result.stderr and "%|" not in result.stderr
    assert sum(line.startswith("seed 0  ") for line in result.stdout.splitlines()) == 4


def test_the_plain_loop_example_learns_and_logs_only_its_own_lines():
    """examples/plain_loop.py: R@1 on the unseen digits rises; its log is D&C's steps and the epoch lines, without
    PML's tester bars or AccuracyCalculator's INFO lines in between."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("TQDM_DISABLE", None)
    result = subprocess.run(
        [sys.executable, str(root / "examples" / "plain_loop.py"), "--epochs", "6"], cwd=root, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "%|" not in log and "running k-nn" not in log and "embedding dimensionality" not in log
    assert "D&C: split every cluster in two after epoch 2" in log
    before, after = (float(x) for x in re.findall(r"\| ([\d.]+) \|$", result.stdout, re.M))
    assert after > before + 1.0, (before, after)
