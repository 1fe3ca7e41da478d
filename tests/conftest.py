"""Fixtures shared by the tests (helpers live in helpers.py)."""

import gc
import logging

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from helpers import IndexedDataset

logging.getLogger("PML").setLevel(logging.WARNING)
# One torch thread for the whole suite: resumed runs are bit for bit the same, and on a loaded 2-core machine idle
# threads cost far more than they bring (a resume case took 77 s with 2 threads, 2.6 s with one).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def collect_garbage_after_each_test():
    """Abandoned DataLoader iterators shut their workers down when collected: collect at the end of the test that
    made them, so their cost does not land on whichever test collects garbage next."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def digits():
    d = load_digits()
    return IndexedDataset((d.data / 16.0).astype(np.float32), d.target)
