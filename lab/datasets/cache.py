"""Where rendered datasets are cached, and how a cache file is written (whole, or not at all)."""

import os
from pathlib import Path

import numpy as np


def cache_dir():
    """Where rendered datasets are cached: ``$PML_DC_CACHE`` or ~/.cache/pml_divide_conquer."""
    return Path(os.environ.get("PML_DC_CACHE", Path.home() / ".cache" / "pml_divide_conquer"))


def save_npz(path, **arrays):
    """``np.savez_compressed`` to a temporary file renamed into place (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
