"""A run stopped after an epoch and reloaded continues with exactly the losses of the uninterrupted run."""

import io
import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses

from helpers import build


def make(digits, losses_out, recluster_every, workers, variant="masks", device="cpu"):
    def record(trainer):
        losses_out.append((trainer.epoch, float(trainer.losses["total_loss"])))

    torch.manual_seed(0)  # the heads below are initialised from torch's RNG
    kw = dict(mode="learned", iterations_per_epoch=45)
    if variant == "arcface":  # heads resized at each split; epoch length left to PML (len of the sampler)
        kw = dict(mode="fixed", loss=losses.ArcFaceLoss(10, 16))
    elif variant == "memory":  # per-learner CrossBatchMemory, fixed K
        kw = dict(
            mode="fixed",
            grow=False,
            iterations_per_epoch=45,
            loss=losses.CrossBatchMemory(losses.ContrastiveLoss(), 16, memory_size=48),
        )
    elif variant == "features":  # reclustering from the features training computed (saved with the state)
        kw = dict(mode="learned", iterations_per_epoch=45, wrapper_kwargs=dict(recluster_from="training"))
    elif variant == "phases":  # per-learner heads, resumed before the full-embedding and all-data phases
        kw = dict(
            mode="fixed",
            heads="per_learner",
            loss=losses.ArcFaceLoss(10, 16),
            iterations_per_epoch=30,
            full_embedding_epoch=3,
            all_data_epoch=4,
        )
    elif variant == "phases_frozen":  # shared head and masks, resumed inside the full-embedding phase
        kw = dict(
            mode="learned",
            loss=losses.ArcFaceLoss(10, 16),
            iterations_per_epoch=30,
            full_embedding_epoch=3,
            all_data_epoch=5,
            freeze_trunk_epochs=1,
        )
    parts = build(
        digits,
        num_learners=4,
        recluster_every=recluster_every,
        end_of_iteration_hook=record,
        workers=workers,
        device=device,
        **kw,
    )
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


def load(parts, buf, map_location=None):
    state = torch.load(buf, weights_only=True, map_location=map_location)  # as PML's HookContainer loads it
    for k, v in state["models"].items():
        parts["trainer"].models[k].load_state_dict(v)
    for k, v in state["optimizers"].items():
        parts["optimizers"][k].load_state_dict(v)
    parts["wrapper"].load_state_dict(state["wrapper"])


@pytest.mark.parametrize(
    "stop_after, recluster_every, workers, variant",
    [
        (2, 1, 0, "masks"),
        (3, 2, 2, "masks"),
        (2, 1, 0, "arcface"),
        (2, 1, 0, "memory"),
        (2, 1, 0, "features"),
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
