"""A run stopped after an epoch and reloaded continues with exactly the losses of the uninterrupted run."""

import io
import warnings

import numpy as np
import pytest
import torch

from conftest import build


def make(digits, losses_out, recluster_every, workers):
    def record(trainer):
        losses_out.append((trainer.epoch, float(trainer.losses["total_loss"])))

    return build(
        digits,
        num_learners=4,
        mode="learned",
        recluster_every=recluster_every,
        iterations_per_epoch=45,
        end_of_iteration_hook=record,
        workers=workers,
    )


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
    state = torch.load(buf, weights_only=False)
    for k, v in state["models"].items():
        parts["trainer"].models[k].load_state_dict(v)
    for k, v in state["optimizers"].items():
        parts["optimizers"][k].load_state_dict(v)
    parts["wrapper"].load_state_dict(state["wrapper"])


@pytest.mark.parametrize("stop_after, recluster_every, workers", [(2, 1, 0), (3, 2, 2)])
def test_resume_gives_the_same_losses(digits, stop_after, recluster_every, workers):
    total = stop_after + 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = []
        a = make(digits, full, recluster_every, workers)
        a["trainer"].train(num_epochs=total)

        first = []
        b = make(digits, first, recluster_every, workers)
        b["trainer"].train(num_epochs=stop_after)
        buf = save(b)
        del b

        resumed = []
        c = make(digits, resumed, recluster_every, workers)  # fresh objects, as in a new process
        load(c, buf)
        assert c["wrapper"].num_active == a["wrapper"].schedule.learners_in_epoch(stop_after + 1)
        c["trainer"].train(start_epoch=stop_after + 1, num_epochs=total)

    assert [l for e, l in first] == [l for e, l in full if e <= stop_after]
    expected = [l for e, l in full if e > stop_after]
    assert len(resumed) == len(expected) > 0
    np.testing.assert_allclose([l for e, l in resumed], expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(c["embedder"].masks, a["embedder"].masks)
    assert np.array_equal(c["sampler"].assignment, a["sampler"].assignment)
