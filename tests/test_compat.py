"""compat.py, the core's PML surface: the names it gives are PML 2's own, and its notes name every PML symbol a
port to PML 3 must change."""

import logging

from pytorch_metric_learning.utils import accuracy_calculator, distributed
from pytorch_metric_learning.utils import common_functions as c_f

from pml_divide_conquer import compat


def test_the_names_are_pml_2s_own():
    assert compat.AccuracyCalculator is accuracy_calculator.AccuracyCalculator
    assert compat.DistributedMinerWrapper is distributed.DistributedMinerWrapper
    assert compat.LOGGER is c_f.LOGGER is logging.getLogger("PML")


def test_the_port_notes_name_what_pml_3_changes():
    notes = compat.__doc__
    for name in ("AccuracyCalculator", "evaluation", "distributed", "utils.indexing", "add_to_recordable_attributes",
                 "named tuples", "ref_emb", "labels_not_supported", "MPerClassSampler", "trainers"):  # fmt: skip
        assert name in notes, name
