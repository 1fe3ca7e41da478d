"""The benchmark scripts, beside the library and not installed with it (docs/benchmarks.md has their results).

Each runs from the repository root as a module, ``python -m benchmarks.<name> ...`` (``python -m benchmarks.han
gate``, ``python -m benchmarks.accuracy --dataset glyphs``, ...), and they import each other as this package
(``from benchmarks.common import report``). ``bash benchmarks/run_all.sh`` runs the CPU set of docs/benchmarks.md,
``bash benchmarks/gpu_check.sh`` the checks that need a GPU.
"""

import os

# PML's trainers and testers draw a bar per epoch: too noisy for a benchmark log. tqdm reads this when it is first
# imported, so it is set here, before any script of the package imports PML (a bar that must show passes
# disable=False, as the han runner's does)
os.environ.setdefault("TQDM_DISABLE", "1")
