"""The PML-trainer glue (integrations/pml.py): what prepare() checks and how it handles the trainer's iterator."""

import pytest

from helpers import build


def test_prepare_names_an_optimizer_that_is_none(digits):

    parts = build(digits, num_learners=2, extra_optimizers={"embedder_optimizer": None})
    with pytest.raises(TypeError, match=r'optimizers\["embedder_optimizer"\] is NoneType, not a torch optimizer'):
        parts["wrapper"].prepare(parts["trainer"])
