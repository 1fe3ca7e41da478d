"""A run stopped after an epoch and reloaded continues with exactly the losses of the uninterrupted run."""

import io
import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses

from conftest import build


def make(digits, losses_out, recluster_every, workers, variant="masks"):
    def record(trainer):
        losses_out.append((trainer.epoch, float(trainer.losses["total_loss"])))

    torch.manual_seed(0)  # the heads below are initialised from torch's RNG
    kw = dict(mode="learned", iterations_per_epoch=45)
    if variant == "arcface":  # heads resized at each split; epoch length left to PML (len of the sampler)
        kw = dict(mode="fixed", loss=losses.ArcFaceLoss(10, 16))
    elif variant == "memory":  # per-learner CrossBatchMemory, fixed K
        kw = dict(mode="fixed", grow=False, iterations_per_epoch=45,
                  loss=losses.CrossBatchMemory(losses.ContrastiveLoss(), 16, memory_size=48))
    parts = build(digits, num_learners=4, recluster_every=recluster_every, end_of_iteration_hook=record,
                  workers=workers, **kw)
    parts["wrapper"].prepare(parts["trainer"])
    return parts


def save(parts):
    buf = io.BytesIO()
    torch.save(
        {
            "models": {k: v.state_dict() for k, v in parts["trainer"].models.items()},
            "optimizers": {k: v.state_dict() for k, v in parts["optimizers"].items()},
            "wrapper": parts["wrapper"].state_dict(),
        },
        buf,
    )
    buf.seek(0)
    return buf


def load(parts, buf):
    state = torch.load(buf, weights_only=True)  # as PML's HookContainer loads it
    for k, v in state["models"].items():
        parts["trainer"].models[k].load_state_dict(v)
    for k, v in state["optimizers"].items():
        parts["optimizers"][k].load_state_dict(v)
    parts["wrapper"].load_state_dict(state["wrapper"])


@pytest.mark.parametrize(
    "stop_after, recluster_every, workers, variant",
    [(2, 1, 0, "masks"), (3, 2, 2, "masks"), (2, 1, 0, "arcface"), (2, 1, 0, "memory")],
)
def test_resume_gives_the_same_losses(digits, stop_after, recluster_every, workers, variant):
    total = stop_after + 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = []
        a = make(digits, full, recluster_every, workers, variant)
        a["trainer"].train(num_epochs=total)

        first = []
        b = make(digits, first, recluster_every, workers, variant)
        b["trainer"].train(num_epochs=stop_after)
        buf = save(b)
        del b

        resumed = []
        c = make(digits, resumed, recluster_every, workers, variant)  # fresh objects, as in a new process
        load(c, buf)
        assert c["wrapper"].num_active == a["wrapper"].schedule.learners_in_epoch(stop_after + 1)
        c["trainer"].train(start_epoch=stop_after + 1, num_epochs=total)

    assert [l for e, l in first] == [l for e, l in full if e <= stop_after]
    expected = [l for e, l in full if e > stop_after]
    assert len(resumed) == len(expected) > 0
    np.testing.assert_allclose([l for e, l in resumed], expected, rtol=1e-5, atol=1e-7)
    if variant == "masks":
        assert torch.equal(c["embedder"].masks, a["embedder"].masks)
    assert np.array_equal(c["sampler"].assignment, a["sampler"].assignment)
