"""Warnings that point at the user's call: the line of the loop, the set-up or the constructor that caused them,
not a line inside this package (or inside torch, PML or Lightning, which call it)."""

import inspect
import sys
import warnings
from types import FrameType

# frames of these packages are skipped: this one, and the frameworks whose calls lead into it. A frame is known by
# its module's name (``__name__`` of its globals), not its file's path: a user's folder may be called "torch", and
# code that dataclasses and torch generate ("<string>") belongs to the module that made it.
_SKIPPED = frozenset(
    {"pml_divide_conquer", "torch", "pytorch_metric_learning", "pytorch_lightning", "lightning", "lightning_fabric"}
)


def _package(frame: FrameType) -> str:
    return (frame.f_globals.get("__name__") or "").partition(".")[0]


def _skipped(frame: FrameType) -> bool:
    # the frameworks', and Python's own (threading, multiprocessing: the bottom of a thread's or a child's stack)
    package = _package(frame)
    return package in _SKIPPED or package in sys.stdlib_module_names


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` (called by :func:`warn`) of the first frame that is the user's."""
    frame, level, outside = inspect.currentframe(), 0, None
    try:
        while frame is not None and (level < 2 or _skipped(frame)):
            if outside is None and level >= 2 and _package(frame) != "pml_divide_conquer":
                outside = level  # the first frame outside this package (a framework's)
            frame, level = frame.f_back, level + 1
        if frame is None and outside is not None:  # no frame of the user's (a spawned process): the framework's
            return outside - 1
        return max(level - 1, 1)
    finally:
        del frame


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the user's line."""
    warnings.warn(message, category, stacklevel=user_stacklevel() + 1)
