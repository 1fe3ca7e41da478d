"""Checks of the loss and miner a wrapper is given."""

import pytest
from pytorch_metric_learning import losses, miners

from pml_divide_conquer import checks


def test_loss_and_miner_checks():
    checks.check_loss(losses.ContrastiveLoss())
    with pytest.raises(TypeError, match="must be a PML loss"):
        checks.check_loss(lambda x, labels: x)
    with pytest.raises(ValueError, match="does not use class labels"):
        checks.check_loss(losses.VICRegLoss())
    checks.check_miner(None)
    with pytest.raises(ValueError, match="EmbeddingsAlreadyPackagedAsTriplets"):
        checks.check_miner(miners.EmbeddingsAlreadyPackagedAsTriplets())


def test_losses_that_need_equal_class_counts_are_recognised_inside_other_losses():
    assert checks.needs_equal_counts(losses.SmoothAPLoss())
    assert checks.needs_equal_counts(losses.MultipleLosses([losses.ContrastiveLoss(), losses.SmoothAPLoss()]))
    assert not checks.needs_equal_counts(losses.ContrastiveLoss())
