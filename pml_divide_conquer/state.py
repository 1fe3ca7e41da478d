"""What a DivideConquerWrapper saves beyond its modules' parameters (torch's ``get_extra_state``), and how a saved
state is checked against the wrapper before anything of it is loaded.

The extra state holds, by owner: the epoch controller (the last epoch stepped, and the schedule it ran), the
embedder (K, mode, size, a copy of the learned masks), the learners (their memories' sizes and fill), the sampler
(the assignment and the position in its stream) and the feature memory; and torch's random generators as they
were when it was saved, which loading restores, so that a resumed run draws the same random numbers as the
uninterrupted one (a random miner such as DistanceWeightedMiner, dropout, augmentation) whatever the loop. K
itself is not saved: it follows from the schedule and the last epoch. A checkpoint of 0.3 (``num_active``,
``last_epoch``, ``sampler``, ``masks``, ...) is converted on load. ``state_dict()`` never communicates; under
DDP see ``DivideConquerWrapper.consolidate_state_dict``.

Resuming under another schedule is allowed where the two agree at the checkpoint's epoch (the same K and phase
in the epoch that comes next): a longer run, a later full-embedding phase. Anything else is refused, as is a
checkpoint of another embedder (K, mode, size), of other heads, or of another dataset.
"""

import dataclasses

import torch

from . import distributed
from .schedule import DivideConquerSchedule, Phase
from .torch_utils import to_cpu

FORMAT = 2
SECTIONS = ("controller", "embedder", "learners", "sampler", "feature_memory")
V03_ENTRIES = ("num_active", "last_epoch", "sampler", "masks")  # what every 0.3 checkpoint holds


def extra_state(controller):
    """The extra state of the wrapper whose epoch controller is ``controller`` (it holds every part)."""
    embedder, memory = controller.embedder, controller.memory
    return {
        "format": FORMAT,
        "controller": {**controller.state_dict(), "schedule": dataclasses.asdict(controller.schedule)},
        "embedder": {
            "num_learners": embedder.num_learners,
            "mode": embedder.mode,
            "embedding_size": embedder.embedding_size,
            "masks": None if embedder.masks is None else embedder.masks.detach().cpu().clone(),
        },
        "learners": controller.learners.extra_state(),
        "sampler": controller.sampler.state_dict(),
        "feature_memory": None if memory is None else memory.state_dict(),
        "rng": random_state(),
    }


def random_state():
    """torch's random generators now (the CPU's, and every CUDA device's when CUDA is in use): what a resumed run
    needs to draw the same random numbers as the uninterrupted one (a random miner, dropout, augmentation)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else None}


def restore_random_state(saved):
    """Give torch's generators the state ``random_state`` saved (CUDA's where this process has as many devices;
    nothing that can fail: it runs last, after the checked state is loaded). Under DDP only on rank 0, whose
    generators the checkpoint holds (rank 0 saves it): the other ranks keep their own, so that no two ranks draw
    the same numbers."""
    if distributed.world_size_and_rank()[1] != 0:
        return
    torch.set_rng_state(saved["torch"].cpu())
    cuda = saved.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if torch.is_tensor(cuda):  # one device's (0.4.0.dev checkpoints): the current device's
        torch.cuda.set_rng_state(cuda.cpu())
    elif len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in cuda])
    elif torch.cuda.current_device() < len(cuda):  # another number of devices: at least the one in use
        torch.cuda.set_rng_state(cuda[torch.cuda.current_device()].cpu())


def upgrade(saved):
    """``saved`` in the current format: as it is, or converted from 0.3's (which kept K, ``num_active``, beside
    the sampler's; kept here only to check it against this wrapper's schedule)."""
    if not isinstance(saved, dict):
        raise ValueError(f"the wrapper's saved extra state is a {type(saved).__name__}, not a dict: it was not "
                         "written by DivideConquerWrapper.state_dict()")  # fmt: skip
    if "format" in saved:
        missing = [k for k in SECTIONS if k not in saved]
        if missing:
            raise ValueError(
                f"the checkpoint's D&C state lacks {missing}: it is incomplete (written by hand, or truncated). "
                "Save dc.state_dict() (the wrapper's own, or the model's that holds it) whole."
            )
        return saved
    missing = [k for k in V03_ENTRIES if k not in saved]
    if missing:
        raise ValueError(
            f"the checkpoint's D&C state lacks {missing} (of {list(V03_ENTRIES)}, what DivideConquerWrapper 0.3 "
            "saves): it is incomplete, or not a DivideConquerWrapper's state. Save dc.state_dict() whole."
        )
    masks = saved["masks"]
    return {
        "format": FORMAT,
        "controller": {
            "last_epoch": int(saved["last_epoch"]),
            "schedule": None,
            "num_active": int(saved["num_active"]),
        },
        "embedder": {"masks": masks, "mode": "fixed" if masks is None else "learned"},
        "learners": {k: saved[k] for k in ("memory_sizes", "memory_fill") if k in saved},
        "sampler": saved["sampler"],
        "feature_memory": saved.get("feature_memory"),
    }


def _k_and_phase(schedule, last_epoch):
    """K and the phase in the epoch after ``last_epoch`` (1 and epoch 1's phase before any step)."""
    if last_epoch < 0:
        return 1, schedule.phase_in_epoch(1)
    return schedule.learners_in_epoch(last_epoch + 1), schedule.phase_in_epoch(last_epoch + 1)


def check(saved, controller):
    """``saved`` (upgraded), checked against the wrapper of ``controller``: a ValueError that names what does not
    fit, raised before anything is loaded."""
    saved = upgrade(to_cpu(saved))  # (a checkpoint loaded with map_location="cuda" holds CUDA tensors)
    embedder, schedule = controller.embedder, controller.schedule
    emb = saved["embedder"]
    for name in ("num_learners", "mode", "embedding_size"):
        if name in emb and emb[name] != getattr(embedder, name):
            raise ValueError(
                f"the checkpoint was written with a SubspaceMaskedEmbedder of {name}={emb[name]!r}, this wrapper's "
                f"has {name}={getattr(embedder, name)!r}: build the embedder as the run that wrote it"
            )
    masks = emb["masks"]
    if (masks is None) != (embedder.masks is None) or (masks is not None and masks.shape != embedder.masks.shape):
        got = "no learned masks" if masks is None else f"learned masks of shape {tuple(masks.shape)}"
        raise ValueError(
            f"the checkpoint holds {got}, which do not fit this SubspaceMaskedEmbedder (mode={embedder.mode!r}, "
            f"{embedder.num_learners} learners): build it with the mode and num_learners the run was trained with"
        )
    controller.learners.check_extra_state(saved["learners"])
    controller.sampler.check_state(saved["sampler"])
    last = int(saved["controller"]["last_epoch"])
    k_here, phase_here = _k_and_phase(schedule, last)
    written = saved["controller"].get("schedule")
    if written is not None:
        k_saved, phase_saved = _k_and_phase(DivideConquerSchedule(**written), last)
    else:  # 0.3: K as saved; its phase is not known
        k_saved, phase_saved = int(saved["controller"]["num_active"]), phase_here
    if (k_saved, phase_saved) != (k_here, phase_here):
        raise ValueError(
            f"the checkpoint was written after epoch {last} with K={k_saved} learners in the {phase_saved} phase to "
            f"come, but this wrapper's schedule has K={k_here} in the {phase_here} phase there: resume with the "
            "schedule the run was written with (another schedule is fine where it agrees at the checkpoint's epoch: "
            "a longer run, a later phase change)"
        )
    num_clusters = int(saved["sampler"]["num_clusters"])
    if last >= 0 and phase_here != Phase.ALL_DATA and num_clusters != k_here:
        raise ValueError(
            f"the checkpoint's sampler holds {num_clusters} clusters, but K={k_here} learners train after epoch "
            f"{last}: the checkpoint's parts do not belong together (a sampler state from another run?)"
        )
    memory = saved.get("feature_memory")
    if memory is not None and controller.memory is not None:
        controller.memory.check_state(memory)
    return saved


def load(saved, controller):
    """Check ``saved`` against the wrapper of ``controller``, then load it (nothing changes if it is refused)."""
    saved = check(saved, controller)
    controller.last_epoch = int(saved["controller"]["last_epoch"])
    controller.sampler.load_state_dict(saved["sampler"])
    controller.learners.load_extra_state(saved["learners"])  # before the learners load their own state
    memory = saved.get("feature_memory")
    if controller.memory is not None and memory is not None:
        controller.memory.load_state_dict(memory)
    masks = controller.embedder.masks
    if saved["embedder"]["masks"] is not None:
        with torch.no_grad():
            masks.copy_(saved["embedder"]["masks"])
    if saved.get("rng") is not None:  # (0.3 saved none: its recipes did, where they did)
        restore_random_state(saved["rng"])


def check_keys(module, state_dict, prefix, strict):
    """Under ``strict``, raise a ValueError before anything is loaded if ``state_dict`` (under ``prefix``) lacks
    tensors ``module``'s state has, holds others, or holds parameters in other shapes (another loss, K or heads).
    (Buffers are compared by name only: a CrossBatchMemory's take the size its extra state gives them.)"""
    if not strict:
        return
    shapes_of = {prefix + name: p.shape for name, p in module.named_parameters(remove_duplicate=False)}
    expected = set(shapes_of)
    for name, sub in module.named_modules(remove_duplicate=False):
        skip = getattr(sub, "_non_persistent_buffers_set", set())
        for buffer_name, b in sub.named_buffers(recurse=False):
            if b is not None and buffer_name not in skip:
                expected.add(prefix + (f"{name}." if name else "") + buffer_name)
    given = {k: v for k, v in state_dict.items() if k.startswith(prefix) and not k.endswith("_extra_state")}
    missing = sorted(expected - set(given))
    unexpected = sorted(set(given) - expected)
    shapes = sorted(k for k in shapes_of if k in given and torch.is_tensor(given[k]) and given[k].shape != shapes_of[k])
    if missing or unexpected or shapes:
        parts = [
            f"lacks {missing[:4]}" if missing else "",
            f"holds {unexpected[:4]} this wrapper has not" if unexpected else "",
        ]
        parts.append(f"holds {shapes[:4]} in other shapes" if shapes else "")
        raise ValueError(
            f"the checkpoint does not fit this DivideConquerWrapper: it {'; '.join(p for p in parts if p)}. Build the "
            "wrapper as the run that wrote it (the same loss and miner, heads=, num_learners and embedding size)."
        )
    if prefix + "_extra_state" not in state_dict:
        raise ValueError(
            f"the checkpoint has no D&C state ({prefix}_extra_state): it holds the wrapper's parameters but not its "
            "steps, clusters and sampler position. Save the whole dc.state_dict()."
        )
