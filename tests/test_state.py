"""What a wrapper saves beyond its modules (state.py), by owner, and how a saved state is checked whole before
anything of the wrapper changes; a checkpoint of 0.3 converted on load."""

import warnings
from pathlib import Path

import pytest
import torch
from pytorch_metric_learning import losses

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


def test_a_refused_checkpoint_leaves_a_fresh_wrapper_fresh(digits):
    """After a refused load the run that follows starts as a fresh one: the step before epoch 1, epoch 1 next."""
    saved = trained(digits, num_learners=2, grow=False)["wrapper"].state_dict()
    parts = factory.plain(factory.make(digits, num_learners=4, grow=False), setup=False)
    with pytest.raises(ValueError):
        parts["wrapper"].load_state_dict(saved)
    assert parts["wrapper"].last_epoch == -1 and parts["sampler"].version == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].setup(parts["model"], digits, optimizers=[parts["optimizer"]])
    assert (parts["wrapper"].last_epoch, parts["wrapper"].num_active, parts["sampler"].num_clusters) == (0, 4, 4)


def test_a_0_3_0_checkpoint_of_another_K_or_heads_is_refused():
    """0.3.0 saved K only as ``num_active``: it is inferred, and checked like a checkpoint of this release."""
    saved = torch.load(V030 / "checkpoint_fixed_margin_epoch3.pt", weights_only=True)["dc"]  # K=4, fixed chunks
    dataset, _ = golden.digits_0_to_4()
    for change in (dict(num_learners=2), dict(mode="learned")):
        spec = dict(num_learners=4, batch_size=32, m=8, loss=losses.MarginLoss(margin=0.2, beta=1.2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other = factory.make(dataset, **{**spec, **change})["wrapper"]
        with pytest.raises(ValueError, match="num_learners" if "num_learners" in change else "mode"):
            other.load_state_dict(saved)
        assert other.last_epoch == -1


def test_corrupted_cluster_ids_and_a_missing_entry_are_named_on_load(digits):
    parts = trained(digits, num_learners=2, grow=False)
    saved = parts["wrapper"].state_dict()
    fresh = factory.make(digits, num_learners=2, grow=False)["wrapper"]
    flipped = {k: v for k, v in saved.items()}
    extra = dict(flipped["_extra_state"], sampler=dict(flipped["_extra_state"]["sampler"]))
    ids = extra["sampler"]["assignment"].clone()
    ids[5] = 64  # one bit flipped: cluster 64 of 2
    extra["sampler"]["assignment"] = ids
    flipped["_extra_state"] = extra
    with pytest.raises(ValueError, match="cluster id 64 is out of range for num_clusters=2"):
        fresh.load_state_dict(flipped)
    assert fresh.last_epoch == -1
    lacking = dict(saved, _extra_state={k: v for k, v in saved["_extra_state"].items() if k != "sampler"})
    with pytest.raises(ValueError, match=r"the checkpoint's D&C state lacks \['sampler'\]"):
        fresh.load_state_dict(lacking)


def test_the_state_carries_torch_s_random_generator_and_loading_restores_it(digits):
    """So that a random miner (DistanceWeightedMiner), dropout or augmentation draws in a resumed run what it drew
    in the uninterrupted one (tests/test_plain_loop.py and the integrations' resume tests check whole runs)."""
    saved = trained(digits, num_learners=2, grow=False)["wrapper"].state_dict()
    expected = torch.rand(3)  # what the generator gives next after the checkpoint
    torch.manual_seed(123)
    factory.make(digits, num_learners=2, grow=False)["wrapper"].load_state_dict(saved)
    assert torch.equal(torch.rand(3), expected)
