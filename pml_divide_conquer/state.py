"""What a DivideConquerWrapper saves beyond its modules' parameters (torch's ``get_extra_state``): the steps
taken, the sampler (clusters, position in its stream), the learned masks, the learners' memories, the feature
memory. ``state_dict()`` never communicates; under DDP see ``DivideConquerWrapper.consolidate_state_dict``."""

import torch

from . import heads
from .torch_utils import to_cpu


def extra_state(wrapper):
    masks = wrapper.embedder.masks
    memory = wrapper.feature_memory
    return {
        "num_active": wrapper.num_active,
        "last_epoch": wrapper.last_epoch,
        "sampler": wrapper.sampler.state_dict(),
        "masks": None if masks is None else masks.detach().cpu().clone(),
        **heads.learners_extra_state(wrapper.learners),
        "feature_memory": None if memory is None else memory.state_dict(),
    }


def load_extra_state(wrapper, state):
    # a checkpoint loaded with map_location="cuda" (PML's HookContainer on a GPU) holds CUDA tensors
    state = to_cpu(state)
    wrapper.num_active = int(state["num_active"])
    wrapper.last_epoch = int(state["last_epoch"])
    wrapper.sampler.load_state_dict(state["sampler"])
    heads.load_learners_extra_state(wrapper.learners, state)  # before the learners load their own state
    if wrapper.feature_memory is not None and state.get("feature_memory") is not None:
        wrapper.feature_memory.load_state_dict(state["feature_memory"])
    masks = wrapper.embedder.masks
    if state["masks"] is not None:
        if masks is None or masks.shape != state["masks"].shape:
            raise ValueError("the saved state has learned masks that do not fit this SubspaceMaskedEmbedder")
        with torch.no_grad():
            masks.copy_(state["masks"])
    wrapper.update_cluster_stats()
