"""Trunk freezing (freezing.py): the trunk's learning rate is 0 in the epochs the schedule freezes it, inside each
optimizer step only, so LR schedulers and checkpoints see the real one."""

import copy
import io
import warnings

import numpy as np
import pytest
import torch

import factory


def test_trunk_is_frozen_in_the_first_epoch_after_each_reclustering(digits):
    lrs = []
    parts = factory.pml(
        factory.make(digits, num_learners=2, recluster_every=2, freeze_trunk_epochs=1, heads="shared"),
        iterations_per_epoch=3,
        end_of_iteration_hook=lambda t: lrs.append((t.epoch, t.optimizers["trunk_optimizer"].param_groups[0]["lr"])),
    )
    trunk = parts["trunk"]
    snapshots = []
    w = parts["wrapper"]
    parts["trainer"].end_of_epoch_hook = w.get_end_of_epoch_hook(
        then=lambda t: snapshots.append([p.detach().clone() for p in trunk.parameters()]) or True
    )
    before = [p.detach().clone() for p in trunk.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w.prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=4)
    changed = [any(not torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip([before] + snapshots, snapshots)]
    assert changed == [False, True, False, True]  # Adam with lr 0 leaves the trunk where it was
    # the learning rate is 0 only inside the optimizer's steps: between them, schedulers see the real one
    assert [lr for e, lr in lrs] == [1e-3] * 12
    with pytest.raises(ValueError, match="holds the trunk's parameters"):
        p2 = factory.pml(factory.make(digits, num_learners=2, recluster_every=2, freeze_trunk_epochs=1, heads="shared"))
        del p2["trainer"].optimizers["trunk_optimizer"]
        p2["wrapper"].prepare(p2["trainer"])


def freezing_run(digits, num_epochs, stop_after=None, buf=None):
    """Trunk frozen in epochs 1, 3, 5 (T=2), StepLR(gamma=0.5) on the trunk each epoch; optionally stopped after
    epoch ``stop_after`` into a checkpoint, or resumed from ``buf`` (the epoch after is a frozen one)."""

    torch.manual_seed(0)
    parts = factory.pml(
        factory.make(digits, num_learners=2, recluster_every=2, freeze_trunk_epochs=1, heads="shared"),
        iterations_per_epoch=3,
    )
    t, w = parts["trainer"], parts["wrapper"]
    scheduler = torch.optim.lr_scheduler.StepLR(t.optimizers["trunk_optimizer"], step_size=1, gamma=0.5)
    t.lr_schedulers = {"trunk_scheduler_by_epoch": scheduler}
    lrs, trunks = [], []
    t.end_of_epoch_hook = w.get_end_of_epoch_hook(
        then=lambda t: (
            lrs.append(t.optimizers["trunk_optimizer"].param_groups[0]["lr"])
            or trunks.append([p.detach().clone() for p in parts["trunk"].parameters()])
            or True
        )
    )
    start = 1
    if buf is not None:
        state = torch.load(buf, weights_only=True)
        for k, m in t.models.items():
            m.load_state_dict(state["models"][k])
        for k, o in t.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        scheduler.load_state_dict(state["scheduler"])
        w.load_state_dict(state["wrapper"])
        start = w.last_epoch + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w.prepare(t)
        t.train(start_epoch=start, num_epochs=stop_after or num_epochs)
    if stop_after is not None:
        buf = io.BytesIO()
        torch.save(
            {
                "models": {k: m.state_dict() for k, m in t.models.items()},
                "optimizers": {k: o.state_dict() for k, o in t.optimizers.items()},
                "scheduler": scheduler.state_dict(),
                "wrapper": w.state_dict(),
            },
            buf,
        )
        buf.seek(0)
    return lrs, trunks, buf


def test_trunk_freezing_composes_with_an_lr_scheduler_and_a_checkpoint_in_a_frozen_epoch(digits):
    """StepLR halves the trunk's learning rate after every epoch, frozen or not; a run stopped after epoch 2
    (epoch 3 frozen) resumes bit for bit."""
    lrs, trunks, _ = freezing_run(digits, 4)
    assert lrs == [1e-3 * 0.5**e for e in range(1, 5)]
    changed = [not all(torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip(trunks, trunks[1:])]
    assert changed == [True, False, True]  # epochs 2 and 4 trained the trunk, epoch 3 did not
    first, _, buf = freezing_run(digits, 4, stop_after=2)
    resumed, resumed_trunks, _ = freezing_run(digits, 4, buf=buf)
    assert first + resumed == lrs
    for a, b in zip(trunks[2:], resumed_trunks):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def resumed(digits, spec, saved, load_first):
    """Epochs 3-5 of a run of ``spec`` from the ``saved`` state of epoch 2, loaded before or after set-up."""
    parts = factory.plain(factory.make(digits, **spec), setup=False)
    dc = parts["wrapper"]

    def load():
        state = copy.deepcopy(saved)  # (optimizer.load_state_dict keeps the tensors it is given: one copy a run)
        parts["model"].load_state_dict(state["model"])
        parts["optimizer"].load_state_dict(state["optimizer"])
        dc.load_state_dict(state["wrapper"])

    def set_up():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dc.setup(parts["model"], parts["dataset"], optimizers=[parts["optimizer"]])

    for step in (load, set_up) if load_first else (set_up, load):
        step()
    seen = []
    factory.train_plain(parts, 5, start_epoch=3, after_step=lambda epoch, idx, loss: seen.append(float(loss)))
    return seen, parts["sampler"].assignment.copy(), [p.detach().clone() for p in parts["model"].parameters()]


@pytest.mark.parametrize(
    "spec",
    [dict(freeze_trunk_epochs=1, recluster_every=2), dict(grow=False, full_embedding_epoch=4, all_data_epoch=5)],
    ids=["freezing", "cvpr-phases"],
)
def test_a_checkpoint_loaded_after_set_up_resumes_as_one_loaded_before(digits, spec):
    """ "Load first, then set up" is the recipe, but the other order is the same run: the freezing follows the
    optimizer's param groups by position, so optimizer.load_state_dict() after set-up (which replaces them) keeps
    the trunk frozen where it should be."""
    spec = dict(num_learners=4, mode="learned", **spec)
    first = factory.plain(factory.make(digits, **spec))
    factory.train_plain(first, 2)
    saved = copy.deepcopy(
        {
            "model": first["model"].state_dict(),
            "optimizer": first["optimizer"].state_dict(),
            "wrapper": first["wrapper"].state_dict(),
        }
    )
    (a, assignment_a, params_a), (b, assignment_b, params_b) = (resumed(digits, spec, saved, f) for f in (1, 0))
    assert a == b and np.array_equal(assignment_a, assignment_b)
    assert all(torch.equal(x, y) for x, y in zip(params_a, params_b))
