"""The core's PML surface: every name of pytorch-metric-learning the core uses beyond PML's component packages
(``losses``, ``miners``, ``distances``, ``reducers``, ``regularizers``), in one place.

Outside ``integrations/`` (the glue for PML 2's trainers, which PML 3 removed) no module of the package imports
anything else from PML; ``tests/test_style.py`` checks it. A port to PML 3 starts here.

What a PML 3 port must change (from PML's 3.0 release notes and migration guide; PML 3 needs Python >= 3.12 and
torch >= 2.14 and is not served by the registries this project is tested with, so none of it is tested yet):

- ``AccuracyCalculator`` moves from ``utils.accuracy_calculator`` to ``evaluation``, whose metrics take
  ``RetrievalInputs``: :func:`~pml_divide_conquer.evaluation.evaluate_subspaces` passes embeddings and labels only.
- The distributed wrappers move from ``utils.distributed`` to ``distributed`` (``DistributedMinerWrapper`` below;
  the documented DDP recipe wraps the inner loss and miner in ``DistributedLossWrapper``).
- Every part of ``utils`` but ``utils.indexing`` becomes private: the core uses none of it (its logger is
  ``logging.getLogger("PML")``, the name PML 2 logs under; its shape checks are its own).
- "Recorded statistics" are removed: ``BaseMetricLossFunction.add_to_recordable_attributes``, which
  :mod:`pml_divide_conquer.records` calls so that record-keeper logs K, the phase and the per-learner losses, goes
  with PML 2's ``logging_presets``; the attributes themselves can stay.
- Miners return named tuples instead of plain tuples: the learners pass a miner's output on to their loss
  unchanged (``learners.Learners.loss``), which a named tuple still satisfies; anything that unpacks it by length
  must be checked.
- ``ref_emb=None`` means the query set against itself, and passing ``ref_emb`` describes a separate set: the
  wrapper passes ``ref_emb``/``ref_labels`` through to each learner in its subspace (the DDP recipe's
  ``DistributedLossWrapper(efficient=True)`` relies on it): check the semantics there.
- Label-free losses: PML 2 marks them by calling ``c_f.labels_not_supported`` in ``compute_loss``, which
  :func:`~pml_divide_conquer.checks.check_loss` looks for in the source; find PML 3's marker.
- ``MPerClassSampler`` becomes a batch sampler: irrelevant to the core (``ClusterSampler`` is its own), but the
  docs that compare the two name its arguments.
- PML 3 has no trainers, testers or logging presets: ``integrations/pml.py`` and the how-to pages for PML's
  trainers and record-keeper stay PML 2 only.
"""

import logging

from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.distributed import DistributedMinerWrapper

# PML 2 logs on the "PML" logger (``common_functions.LOGGER``); the core's log lines go there too, so that PML's
# users see them where they see PML's, and set its level in one place.
LOGGER = logging.getLogger("PML")

__all__ = ["LOGGER", "AccuracyCalculator", "DistributedMinerWrapper"]
