"""The PML-trainer glue (integrations/pml.py): what prepare() checks and how it handles the trainer's iterator."""

import warnings

import pytest
from pytorch_metric_learning import samplers, testers, trainers

import factory


def test_prepare_names_an_optimizer_that_is_none(digits):

    parts = factory.pml(
        factory.make(digits, num_learners=2, heads="shared"), extra_optimizers={"embedder_optimizer": None}
    )
    with pytest.raises(TypeError, match=r'optimizers\["embedder_optimizer"\] is NoneType, not a torch optimizer'):
        parts["wrapper"].prepare(parts["trainer"])


def test_trainer_with_another_sampler_is_refused(digits):
    other = samplers.MPerClassSampler(digits.labels, 4, batch_size=16)
    parts = factory.pml(factory.make(digits, num_learners=4, heads="shared"), sampler=other)
    with pytest.raises(ValueError, match="not the wrapper's ClusterSampler"):
        parts["wrapper"].prepare(parts["trainer"])
    # without prepare(): the first batch says so
    with pytest.raises(RuntimeError, match="was not set up"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["trainer"].train(num_epochs=1)


def test_trainer_batch_size_differing_from_sampler_is_refused(digits):
    parts = factory.pml(factory.make(digits, num_learners=4, heads="shared"), batch_size=12)
    with pytest.raises(ValueError, match="batch_size=12 differs"):
        parts["wrapper"].prepare(parts["trainer"])


@pytest.mark.parametrize("grow", [True, False])
def test_training_without_prepare_is_refused_at_the_first_batch(digits, grow):
    parts = factory.pml(factory.make(digits, num_learners=4, grow=grow, heads="shared"))
    with (
        pytest.raises(RuntimeError, match=r"call dc.prepare\(trainer\) before trainer.train"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        parts["trainer"].train(num_epochs=1)


def test_unsupported_trainer_is_named_at_prepare(digits):
    parts = factory.pml(factory.make(digits, num_learners=2, heads="shared"))
    parts["trainer"].__class__ = trainers.TwoStreamMetricLoss  # calls the loss with its own batch layout
    with pytest.raises(TypeError, match="TwoStreamMetricLoss is not supported"):
        parts["wrapper"].prepare(parts["trainer"])


def test_missing_end_of_epoch_hook_is_refused_at_prepare(digits):
    from pytorch_metric_learning.utils import logging_presets

    parts = factory.pml(factory.make(digits, num_learners=2, heads="shared"), end_of_epoch_hook=None)
    with pytest.raises(ValueError, match="does not take the D&C step"):
        parts["wrapper"].prepare(parts["trainer"])
    hooks = logging_presets.HookContainer(None)
    parts["trainer"].end_of_epoch_hook = hooks.end_of_epoch_hook(testers.GlobalEmbeddingSpaceTester(), {}, "unused")
    with pytest.raises(ValueError, match="HookContainer.end_of_epoch_hook"):
        parts["wrapper"].prepare(parts["trainer"])


def test_a_hook_of_ones_own_that_skips_the_step_is_caught_at_the_next_epoch(digits):
    parts = factory.pml(
        factory.make(digits, num_learners=2, heads="shared"),
        end_of_epoch_hook=lambda trainer: True,
        iterations_per_epoch=2,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])  # cannot tell what a user's own hook does ...
        with pytest.raises(RuntimeError, match="end-of-epoch step was last taken after epoch 0"):
            parts["trainer"].train(num_epochs=2)  # ... but the first batch of epoch 2 can
    # a hook of one's own that does call it is fine
    parts = factory.pml(factory.make(digits, num_learners=2, heads="shared"), iterations_per_epoch=2)
    w = parts["wrapper"]
    parts["trainer"].end_of_epoch_hook = lambda trainer: w.end_of_epoch_hook(trainer) and True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w.prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=2)
    assert w.last_epoch == 2 and w.num_active == 2


def test_frozen_wrapper_is_refused(digits):
    parts = factory.pml(factory.make(digits, num_learners=4, heads="shared"), freeze_these=("metric_loss",))
    with pytest.raises(ValueError, match="freeze_these"):
        parts["wrapper"].prepare(parts["trainer"])
    with pytest.raises(RuntimeError, match="eval mode but gradients"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["trainer"].train(num_epochs=1)


def test_a_sampler_built_for_another_rank_is_refused_at_prepare(digits):
    other_rank = dict(num_replicas=2, rank=1)  # but this process is rank 0 of 1
    parts = factory.pml(factory.make(digits, batch_size=8, sampler_options=other_rank))
    with pytest.raises(ValueError, match="rank 1 of 2, but this process is rank 0 of 1"):
        parts["wrapper"].prepare(parts["trainer"])
