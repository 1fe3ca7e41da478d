"""The epoch step (controller.py), built from its parts without a wrapper: it owns the last epoch stepped (K and
the phase follow from it and the schedule), the set-up and the timings, and changes the parts as the schedule
says."""

import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses

from pml_divide_conquer import ClusterSampler, DivideConquerSchedule, Reclusterer, SubspaceMaskedEmbedder
from pml_divide_conquer.controller import EpochController
from pml_divide_conquer.learners import Learners
from pml_divide_conquer.training import TrainingParts

import factory
from helpers import IndexedDataset


def controller_for(dataset, schedule, mode="fixed"):
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU())
    embedder = SubspaceMaskedEmbedder(16, schedule.num_learners, mode=mode, embedder=torch.nn.Linear(32, 16))
    sampler = ClusterSampler(dataset.labels, batch_size=16, m=4)
    learners = Learners(losses.ContrastiveLoss(), None, schedule.num_learners, "per_learner", 16, np.arange(10))
    controller = EpochController(schedule, sampler, embedder, learners, Reclusterer(features_from="pass"))
    model = torch.nn.Sequential(trunk, embedder)
    opt = torch.optim.Adam(model.parameters())
    return controller, TrainingParts(model=model, dataset=dataset, optimizers=[opt])


def test_it_steps_the_parts_as_the_schedule_says_and_derives_K_and_the_phase(digits):
    schedule = DivideConquerSchedule(num_learners=4, recluster_every=1, full_embedding_epoch=4, all_data_epoch=5)
    c, parts = controller_for(digits, schedule, mode="learned")
    assert (c.last_epoch, c.num_active, c.is_set_up) == (-1, 1, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c.setup(parts)
        seen = [(c.last_epoch, c.num_active, str(c.phase), c.sampler.num_clusters)]
        for _ in range(5):
            c.end_epoch(c.last_epoch + 1)
            seen.append((c.last_epoch, c.num_active, str(c.phase), c.sampler.num_clusters))
    assert seen == [
        (0, 1, "divide", 1),
        (1, 2, "divide", 2),  # split
        (2, 4, "divide", 4),  # split
        (3, 4, "full_embedding", 4),
        (4, 4, "all_data", 1),  # one cluster of all the data; K stays what it was
        (5, 4, "all_data", 1),
    ]
    assert c.recluster_seconds > c.clustering_seconds > 0 and c.fresh_samples == len(digits)
    assert c.state_dict() == {"last_epoch": 5}


def test_steps_out_of_order_are_refused_and_a_repeated_one_skipped(digits):
    c, parts = controller_for(digits, DivideConquerSchedule(num_learners=2, recluster_every=1))
    with pytest.raises(RuntimeError, match="before set-up"):
        c.end_epoch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c.setup(parts)
        c.end_epoch(1)
        version = c.sampler.version
        c.end_epoch(1)  # already taken: skipped
        assert (c.last_epoch, c.sampler.version) == (1, version)
        with pytest.raises(RuntimeError, match=r"the D&C steps after epochs \[2\] were never taken"):
            c.end_epoch(3)
        c.recluster()  # outside the schedule: the same K
    assert c.num_active == 2 and c.sampler.version == version + 1


def test_its_hooks_come_off(digits):
    c, parts = controller_for(digits, DivideConquerSchedule(num_learners=2, recluster_every=2, freeze_trunk_epochs=1))
    parts.trunk_params = list(parts.model[0].parameters())
    parts.optimizers = [
        torch.optim.Adam([{"params": parts.model[0].parameters()}, {"params": parts.model[1].parameters()}])
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c.setup(parts)
    assert len(c.embedder._forward_pre_hooks) == 1 and c.freezer is not None
    c.remove_hooks()
    assert len(c.embedder._forward_pre_hooks) == 0 and c.freezer is None


def test_a_training_set_that_grew_or_shrank_since_set_up_is_named_at_the_next_step(digits):
    c, parts = controller_for(digits, DivideConquerSchedule(num_learners=2, recluster_every=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c.setup(parts)
    data, labels = digits.data.numpy(), digits.labels
    for n, change in ((len(labels) + 10, "grew"), (len(labels) - 10, "shrank")):
        keep = np.resize(np.arange(len(labels)), n)
        parts.dataset = IndexedDataset(data[keep], labels[keep])
        for step in (lambda: c.end_epoch(c.last_epoch + 1), c.recluster):
            with pytest.raises(RuntimeError, match=f"the training dataset {change} from {len(labels)} samples"):
                step()
    assert c.last_epoch == 0


def test_end_epoch_twice_for_one_epoch_is_refused(digits):
    """``dc.end_epoch()`` with no batch since the last step would take the next epoch's step untrained."""
    parts = factory.plain(factory.make(digits, num_learners=4, recluster_every=1))
    dc = parts["wrapper"]
    x, y, _ = next(iter(parts["loader"]))
    dc(parts["model"](x), y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dc.end_epoch()
    with pytest.raises(RuntimeError, match=r"no batch reached the loss since the step after epoch 1: end_epoch\(\) "):
        dc.end_epoch()
    assert (dc.last_epoch, dc.num_active) == (1, 2)
    dc.end_epoch(1)  # the epoch's number: skipped, as a step taken already
    assert dc.last_epoch == 1


def test_end_epoch_with_no_batch_since_set_up_asks_whether_the_loop_calls_the_wrapper(digits):
    parts = factory.plain(factory.make(digits, num_learners=4, recluster_every=1))
    dc = parts["wrapper"]
    with pytest.raises(RuntimeError, match=r"no batch reached the loss since set-up: is the loop calling the wrapper"):
        dc.end_epoch()
    assert dc.last_epoch == 0


def test_a_refused_end_epoch_leaves_what_the_device_flagged_for_the_next_check(digits):
    """The refusal comes first: the router's flags (checked, and cleared, by an end_epoch that goes ahead) are
    kept, so the real end_epoch still raises them."""
    parts = factory.plain(factory.make(digits, num_learners=4, recluster_every=1))
    dc = parts["wrapper"]
    dc._router.flags[("flagged on the device", FloatingPointError)] = torch.tensor(True)  # a device flag, by hand
    with pytest.raises(RuntimeError, match="is the loop calling the wrapper"):
        dc.end_epoch()
    assert dc._router.flags
    x, y, _ = next(iter(parts["loader"]))
    dc(parts["model"](x), y)
    with pytest.raises(FloatingPointError, match="flagged on the device"):
        dc.end_epoch()


def test_an_end_epoch_refused_for_a_step_never_taken_keeps_the_device_s_flags(digits):
    parts = factory.plain(factory.make(digits, num_learners=4, recluster_every=1))
    dc = parts["wrapper"]
    x, y, _ = next(iter(parts["loader"]))
    dc(parts["model"](x), y)
    dc._router.flags[("flagged on the device", FloatingPointError)] = torch.tensor(True)
    with pytest.raises(RuntimeError, match=r"the D&C steps after epochs \[1, 2, 3, 4\] were never taken"):
        dc.end_epoch(5)
    assert dc._router.flags and dc.last_epoch == 0
    with pytest.raises(FloatingPointError, match="flagged on the device"):
        dc.end_epoch(1)
