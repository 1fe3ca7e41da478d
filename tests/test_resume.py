"""A run stopped after an epoch and reloaded continues with exactly the losses of the uninterrupted run."""

import warnings

import numpy as np
import pytest
import torch

import factory
import resume_runs

make = resume_runs.make
save, load = factory.checkpoint, factory.restore


@pytest.mark.parametrize(
    "stop_after, recluster_every, workers, variant",
    [
        (2, 1, 0, "masks"),
        (3, 2, 2, "masks"),
        (2, 1, 0, "arcface"),
        (2, 1, 0, "memory"),
        (2, 1, 0, "features"),
        (2, 1, 0, "distance_weighted"),
        (2, 1, 0, "phases"),
        (3, 2, 0, "phases_frozen"),
    ],
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
        assert c["wrapper"].phase == a["wrapper"].schedule.phase_in_epoch(stop_after + 1)
        c["trainer"].train(start_epoch=stop_after + 1, num_epochs=total)

    assert [x for e, x in first] == [x for e, x in full if e <= stop_after]
    expected = [x for e, x in full if e > stop_after]
    assert len(resumed) == len(expected) > 0
    assert [x for e, x in resumed] == expected  # bit for bit: one torch thread on the CPU (conftest.py)
    for name in ("trunk", "embedder"):
        for (key, p), q in zip(a[name].state_dict().items(), c[name].state_dict().values()):
            assert torch.equal(p, q), (name, key)
    for (key, p), q in zip(a["wrapper"].state_dict().items(), c["wrapper"].state_dict().values()):
        assert not torch.is_tensor(p) or torch.equal(p, q), key
    assert np.array_equal(c["sampler"].assignment, a["sampler"].assignment)


class LikeCuda(torch.Tensor):
    """A tensor that, like a CUDA tensor, cannot become a numpy array before .cpu()."""

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")

    def __array__(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor).clone()


def on_fake_device(state):
    if torch.is_tensor(state):
        return state.as_subclass(LikeCuda)
    if isinstance(state, dict):
        return {k: on_fake_device(v) for k, v in state.items()}
    if isinstance(state, list):
        return [on_fake_device(v) for v in state]
    return state


@pytest.mark.parametrize("variant", ["masks", "phases", "memory", "features"])
def test_state_loads_from_tensors_on_another_device(digits, variant):
    """PML's HookContainer loads checkpoints with map_location=device: on a GPU every tensor arrives there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = make(digits, [], 1, 0, variant)
        b["trainer"].train(num_epochs=2)
        state = on_fake_device(b["wrapper"].state_dict())
        with pytest.raises(TypeError, match="cuda"):
            state["_extra_state"]["sampler"]["assignment"].numpy()  # the stand-in refuses, like CUDA
        c = make(digits, [], 1, 0, variant)
        c["wrapper"].load_state_dict(state)
    assert np.array_equal(c["sampler"].assignment, b["sampler"].assignment)
    assert c["wrapper"].last_epoch == 2 and c["wrapper"].num_active == b["wrapper"].num_active
    if variant == "features":  # the feature memory's rows and stamps came back from the "device" too
        fb, fc = b["wrapper"].feature_memory, c["wrapper"].feature_memory
        assert torch.equal(fc.features, fb.features) and torch.equal(fc.stamps, fb.stamps)
        assert (fc.step, fc.used_until) == (fb.step, fb.used_until)
