"""Torch glue the core needs: the module inside a wrapper (DDP, DataParallel, torch.compile), state moved to the
CPU, and optimizer state that follows a reshaped parameter."""

import copy

import torch


def unwrap(model):
    """The module inside DistributedDataParallel / DataParallel / ``torch.compile``, or the model itself."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def contains(model, module):
    """Whether ``module`` is ``model`` or one of its submodules (looking inside DDP and compiled wrappers)."""
    return any(unwrap(m) is module for m in unwrap(model).modules())


def to_cpu(state):
    """``state`` (nested dicts/lists) with every tensor moved to the CPU."""
    if torch.is_tensor(state):
        return state.cpu()
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(v) for v in state)
    return state


def carry_optimizer_state(optimizers, src, dst, index=None, dim=0):
    """Give parameter ``dst`` the optimizer state of ``src`` (e.g. Adam's moments), restricted the way ``dst`` was
    made from ``src``: ``dst = src.index_select(dim, index)`` (``index=None``: a plain copy). ``src`` may be ``dst``
    (a parameter reshaped in place, after its old state was read). A parameter without state gets none."""
    for opt in optimizers:
        state = opt.state.get(src)
        if not state:
            opt.state.pop(dst, None)
            continue
        new = {}
        for key, value in state.items():
            if torch.is_tensor(value) and index is not None and value.shape == src.shape:
                value = value.index_select(dim, torch.as_tensor(index, dtype=torch.long, device=value.device))
            new[key] = value.clone() if torch.is_tensor(value) else copy.deepcopy(value)
        opt.state[dst] = new
