"""Learning actually happens: real offline data (scikit-learn digits), real PML trainer and tester."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits

from pml_divide_conquer import experiment as ex
from pml_divide_conquer.datasets import ArrayDataset


@pytest.fixture(scope="module")
def split():
    """Half of each class's images train, the other half test (retrieval among unseen images)."""
    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target
    perm = np.random.default_rng(0).permutation(len(y))
    half = len(y) // 2
    return ArrayDataset(x[perm[:half]], y[perm[:half]]), ArrayDataset(x[perm[half:]], y[perm[half:]])


CFG = ex.RunConfig(loss="triplet", epochs=6, full_embedding_epoch=5, all_data_epoch=6, num_learners=2, m=8,
                   embedding_size=16, hidden=64, lr=1e-3)


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


def test_demo_main_job_prints_a_results_table(capsys):
    from pml_divide_conquer import demo

    demo.main(["--seeds", "1", "--epochs", "4"])
    out = capsys.readouterr().out
    for row in ("untrained", "baseline (no D&C)", "D&C, fixed chunks", "D&C, learned masks"):
        assert f"| {row} |" in out
    cells = [line.split("|")[2] for line in out.splitlines() if line.startswith("| D&C")]
    assert all(0.0 < float(c.split("±")[0]) <= 100.0 for c in cells)
