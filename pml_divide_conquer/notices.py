"""Warnings that point at the user's call: the line of the loop, the set-up or the constructor that caused them,
not a line inside this package (or inside torch, PML or Lightning, which call it)."""

import importlib.util
import inspect
import os
import warnings

_HERE = os.path.dirname(os.path.abspath(__file__))
_TORCH = importlib.util.find_spec("torch")
# frames of these are skipped: the package, and the frameworks whose calls lead into it
_SKIPPED = (_HERE,) + ((os.path.dirname(os.path.abspath(_TORCH.origin)),) if _TORCH and _TORCH.origin else ())
_SKIPPED_NAMES = ("pytorch_metric_learning", "pytorch_lightning", f"lightning{os.sep}pytorch")


def _skipped(filename):
    path = os.path.abspath(filename)
    return path.startswith(_SKIPPED) or any(f"{os.sep}{name}{os.sep}" in path for name in _SKIPPED_NAMES)


def user_stacklevel():
    """The ``stacklevel`` for ``warnings.warn`` (called by :func:`warn`) of the first frame that is the user's."""
    frame, level = inspect.currentframe(), 0
    try:
        while frame is not None and (level < 2 or _skipped(frame.f_code.co_filename)):
            frame, level = frame.f_back, level + 1
        return max(level - 1, 1)
    finally:
        del frame


def warn(message, category=UserWarning):
    """``warnings.warn(message, category)`` attributed to the user's line."""
    warnings.warn(message, category, stacklevel=user_stacklevel() + 1)
