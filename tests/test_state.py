"""What a wrapper saves beyond its modules (state.py), by owner, and how a saved state is checked whole before
anything of the wrapper changes; a checkpoint of 0.3 converted on load."""

import warnings
from pathlib import Path

import pytest
import torch

from pml_divide_conquer import state

import factory
import golden

V030 = Path(__file__).resolve().parent / "fixtures" / "v0.3.0"


def trained(digits, epochs=2, **spec):
    parts = factory.plain(factory.make(digits, **spec))
    factory.train_plain(parts, epochs)
    return parts


def test_the_extra_state_is_kept_by_owner_with_the_schedule_and_without_K(digits):
    parts = trained(digits, num_learners=4, mode="learned")
    saved = parts["wrapper"].get_extra_state()
    assert saved["format"] == state.FORMAT and set(state.SECTIONS) <= set(saved)
    assert saved["controller"]["last_epoch"] == 2 and "num_active" not in saved["controller"]
    assert saved["controller"]["schedule"]["num_learners"] == 4
    assert saved["embedder"]["masks"].shape == (4, 16) and saved["sampler"]["num_clusters"] == 4


def test_a_checkpoint_of_0_3_0_is_converted_to_the_owners_sections():
    saved = torch.load(V030 / "checkpoint_fixed_margin_epoch3.pt", weights_only=True)["dc"]["_extra_state"]
    assert "num_active" in saved and "format" not in saved  # 0.3's layout
    upgraded = state.upgrade(saved)
    assert upgraded["controller"] == {"last_epoch": 3, "schedule": None, "num_active": 4}
    assert upgraded["embedder"]["mode"] == "fixed" and upgraded["sampler"] is saved["sampler"]
    parts = golden.build("fixed_margin")
    parts["wrapper"].load_state_dict(torch.load(V030 / "checkpoint_fixed_margin_epoch3.pt", weights_only=True)["dc"])
    assert (parts["wrapper"].last_epoch, parts["wrapper"].num_active) == (3, 4)


def test_a_checkpoint_that_does_not_fit_is_refused_before_anything_changes(digits):
    saved = trained(digits, num_learners=2, grow=False)["wrapper"].state_dict()  # K=2 fixed chunks, epoch 2
    other = factory.make(digits, num_learners=4, grow=False)["wrapper"]  # K=4
    before = (other.last_epoch, other.sampler.version, other.sampler.assignment.copy())
    with pytest.raises(ValueError, match="num_learners=2, this wrapper's has num_learners=4"):
        other.load_state_dict(saved)
    assert (other.last_epoch, other.sampler.version) == before[:2] and (other.sampler.assignment == before[2]).all()
    with pytest.raises(ValueError, match=r"lacks \['sampler'\]"):
        state.upgrade({"num_active": 1, "last_epoch": 0, "masks": None})
    with pytest.raises(ValueError, match="no D&C state"):
        other.load_state_dict({k: v for k, v in saved.items() if k != "_extra_state"})


def test_resuming_under_another_schedule_is_allowed_where_it_agrees_at_the_checkpoint(digits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = trained(digits, num_learners=2, recluster_every=1, full_embedding_epoch=6)["wrapper"].state_dict()
        longer = factory.make(digits, num_learners=2, recluster_every=1, full_embedding_epoch=9)["wrapper"]
        longer.load_state_dict(saved)  # the same K and phase after epoch 2: a later phase change is fine
        assert longer.last_epoch == 2
        earlier = factory.make(digits, num_learners=2, recluster_every=1, full_embedding_epoch=3)["wrapper"]
        with pytest.raises(ValueError, match="in the divide phase to come, but this wrapper's schedule has K=2 in the "
                           "full_embedding phase there"):  # fmt: skip
            earlier.load_state_dict(saved)
