#!/usr/bin/env bash
# The lowest versions of numpy, scipy and faiss-cpu that setup.cfg accepts, checked: a fresh virtual environment
# with exactly those (and the pinned torch, PML 2.9.0), then the core's tests and the golden runs (0.3.0's numbers,
# bit for bit) against this checkout. Not part of the suite: it installs from the package index (a few minutes).
#
#   bash scripts/check_floors.sh          # PYTHON=python3.11 by default; FLOORS_VENV=/tmp/pml-dc-floors
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
VENV="${FLOORS_VENV:-/tmp/pml-dc-floors}"
FLOORS="torch==2.13.0 pytorch-metric-learning==2.9.0 numpy==1.26.4 scipy==1.11.4 faiss-cpu==1.8.0"
TOOLS="scikit-learn==1.4.2 pytest hypothesis tqdm"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet $FLOORS $TOOLS
"$VENV/bin/python" -c "import numpy, scipy, faiss, torch; print('floors:', 'numpy', numpy.__version__, \
'scipy', scipy.__version__, 'faiss', faiss.__version__, 'torch', torch.__version__)"
PYTHONPATH="$PWD" "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_sampler.py tests/test_planning.py tests/test_clustering.py tests/test_golden.py tests/test_assignment.py \
  tests/test_schedule.py tests/test_wrapper.py tests/test_plain_loop.py tests/test_resume.py tests/test_controller.py \
  tests/test_state.py tests/test_routing.py tests/test_reclustering.py tests/test_feature_memory.py \
  tests/test_learners.py tests/test_heads.py tests/test_embedder.py tests/test_checks.py tests/test_evaluation.py \
  tests/integrations/test_pml.py
