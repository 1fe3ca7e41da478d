"""Fixtures shared by the tests (helpers live in helpers.py)."""

import logging

import numpy as np
import pytest
from sklearn.datasets import load_digits

from helpers import IndexedDataset

logging.getLogger("PML").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def digits():
    d = load_digits()
    return IndexedDataset((d.data / 16.0).astype(np.float32), d.target)
