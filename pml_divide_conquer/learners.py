"""The learners: one copy of the loss (and miner) per cluster, plus the full-embedding learner.

:class:`Learners` owns the copies, how classification heads are shared (``"per_learner"`` or ``"shared"``), the
map of training labels to the 0..C-1 that heads are built for, and what happens to them as training goes on: a
learner's loss on its subspace, the split of every learner in two when K doubles, and the full-embedding heads'
start when the divide phase ends (a :class:`HeadStart`: :class:`ImprintedHeads` by default, or
:class:`AssembledHeads`; research passes its own). The parameter-level mechanics (which parameters are heads,
how they are restricted, inherited, assembled and imprinted) are :mod:`pml_divide_conquer.heads`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from . import heads
from .compat import LOGGER

FULL_KEY = "full"  # the learner of the full-embedding and all-data phases
SHARED = "shared"  # head modes: one full-size head that every learner trains its part of
PER_LEARNER = "per_learner"  # ... or one head per learner
HEAD_MODES = (SHARED, PER_LEARNER)


def learner_key(k):
    # name-like keys: record-keeper builds SQL table names from module paths, and "0" would break them
    return f"learner{k}"


class LabelMap:
    """Training labels -> 0..C-1, the range classification heads are built for; a copy of the class ids per device
    (labels on a GPU are mapped there: no host sync)."""

    def __init__(self, class_ids):
        self.class_ids = torch.as_tensor(np.asarray(class_ids))
        self._on = {}

    def __call__(self, labels, known=False):
        """The mapped labels, or None if some label is no training class (``known``: they are, unchecked)."""
        ids = self._on.get(labels.device)
        if ids is None:
            ids = self._on[labels.device] = self.class_ids.to(labels.device)
        pos = torch.searchsorted(ids, labels).clamp(max=len(ids) - 1)
        return pos if known or bool((ids[pos] == labels).all()) else None


@dataclass
class HeadStartContext:
    """What a :class:`HeadStart` may use when the divide phase ends."""

    num_active: int  # K: the learners whose heads there are
    dims: list[slice | None]  # each learner's slice of the embedding (fixed chunks), or None (learned masks)
    class_owner: np.ndarray  # for each class (0..C-1), the cluster holding most of its samples
    embed: Callable[[], Any]  # -> (the training set's L2-normalised full embeddings, its labels mapped to 0..C-1)


class HeadStart:
    """How the full-embedding learner's classification heads start when the divide phase ends, with per-learner
    heads (``DivideConquerWrapper(..., full_head=...)``). Subclasses override :meth:`start`.

    Examples:
        >>> class FreshHeads(HeadStart):  # the loss's own initialisation
        ...     def start(self, learners, context):
        ...         pass
        >>> dc = DivideConquerWrapper(arcface, embedder=embedder, sampler=sampler,
        ...                           full_head=FreshHeads())
    """

    def start(self, learners: Learners, context: HeadStartContext) -> None:
        """Start the heads of ``learners.full`` (the full-embedding learner's copy of the loss) when the divide
        phase ends, from the learners' heads and what ``context`` gives."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AssembledHeads(HeadStart):
    """The learners' heads put together (:func:`heads.assemble`): fixed chunks concatenated along the embedding
    dimension, learned masks each class from the learner whose cluster holds most of its samples."""

    def start(self, learners: Learners, context: HeadStartContext) -> None:
        parts = [learners.losses[learner_key(k)] for k in range(context.num_active)]
        heads.assemble(parts, learners.full, dims=context.dims, class_owner=context.class_owner)


class ImprintedHeads(AssembledHeads):
    """Assembled, then each class's vector imprinted: the mean full embedding of its training samples, at unit norm
    (one no-grad pass; :func:`heads.imprint`). With ArcFace on 300 Han classes the assembled head alone left D&C
    0.5 R@1 below the baseline with a pretrained trunk (docs/benchmarks.md)."""

    def start(self, learners: Learners, context: HeadStartContext) -> None:
        super().start(learners, context)
        if not learners.has_heads():
            return
        began = time.perf_counter()
        emb, labels = context.embed()
        count = heads.imprint(learners.full, torch.as_tensor(emb), labels)
        LOGGER.info(
            "D&C: %d full-embedding head(s) imprinted from the class means in %.1f s",
            count,
            time.perf_counter() - began,
        )


FULL_HEADS = {"imprint": ImprintedHeads, "assembled": AssembledHeads}


def head_start(value: str | HeadStart) -> HeadStart:
    """A :class:`HeadStart` from itself or its name (``"imprint"``, ``"assembled"``)."""
    if isinstance(value, HeadStart):
        return value
    if isinstance(value, str) and value in FULL_HEADS:
        return FULL_HEADS[value]()
    raise ValueError(f'full_head must be "imprint", "assembled" or a HeadStart, got {value!r}')


class Learners:
    """A copy of ``loss`` (and ``miner``) per learner plus the full-embedding learner, in ``ModuleDict``s keyed
    ``learner0..`` and ``"full"`` (:attr:`losses`, :attr:`miners`; the wrapper registers them as ``dc.learners``
    and ``dc.miners``).

    Args:
        loss: the user's loss; each learner gets a deep copy.
        miner: the user's miner, or None; each learner gets a deep copy.
        num_learners: K, the most learners there will be.
        mode: ``"per_learner"`` (each learner's copy of a classification loss keeps a full-size head and uses its
            first s rows for a subspace of s dims) or ``"shared"`` (the full learner owns the only head; the
            learners' copies borrow it at each call, restricted to their chunk in fixed mode).
        first_size: the dims of the first learners' subspace (their CrossBatchMemory is sized to it).
        class_ids: the training classes, sorted (labels are mapped to their position).
        full_head: a :class:`HeadStart` (per-learner heads: how the full learner's heads start).

    Examples:
        >>> learners = Learners(losses.ArcFaceLoss(10, 64), None, 4, "per_learner",
        ...                     first_size=64, class_ids=np.arange(10))
        >>> loss = learners.loss("learner0", x, labels, None, dims=slice(0, 64))
    """

    def __init__(self, loss, miner, num_learners, mode, first_size, class_ids, full_head=None):
        if mode not in HEAD_MODES:
            raise ValueError(f'heads must be "{SHARED}" or "{PER_LEARNER}", got {mode!r}')
        keys = [learner_key(k) for k in range(num_learners)] + [FULL_KEY]
        self.losses = torch.nn.ModuleDict({k: copy.deepcopy(loss) for k in keys})
        self.miners = torch.nn.ModuleDict({k: copy.deepcopy(miner) for k in keys}) if miner is not None else None
        self.mode = mode
        self.label_map = LabelMap(class_ids)
        self.full_head = head_start("imprint" if full_head is None else full_head)
        for k in keys[:-1]:
            if mode == SHARED:
                heads.drop_parameters(self.losses[k])
            heads.resize_memories(self.losses[k], first_size)

    @property
    def full(self):
        """The full-embedding learner's copy of the loss."""
        return self.losses[FULL_KEY]

    def has_heads(self):
        """Whether the loss has classification heads (ArcFace, ProxyAnchor, ...)."""
        return heads.has_heads(self.full)

    def map_labels(self, labels, known=False):
        """Training labels -> 0..C-1 (C training classes), on the labels' device; None if some label is no training
        class (``known``: they are, unchecked and without a sync)."""
        return self.label_map(labels, known)

    def loss(self, key, x, labels, indices_tuple, dims=None, ref_emb=None, ref_labels=None, known=True):
        """Learner ``key``'s loss on its view ``x`` of the batch (mined in that view when it has a miner); with
        shared heads, on the full learner's parameters, heads restricted to embedding ``dims`` (a slice; None: all);
        with per-learner heads, on the first ``x.shape[1]`` rows of its own heads. ``known``: the labels are
        training labels (checked against the sampler's); else labels of other classes pass through unmapped, which
        only a loss without heads accepts."""
        mapped = self.map_labels(labels, known)
        if mapped is None and self.has_heads():
            raise ValueError(
                "labels outside the training classes reached a classification loss (it has one weight per training "
                "class): compute it only on training classes"
            )
        labels = labels if mapped is None else mapped
        if ref_labels is not None:
            ref_mapped = self.map_labels(ref_labels, known)
            ref_labels = ref_labels if ref_mapped is None else ref_mapped
        if self.miners is not None:
            indices_tuple = self.miners[key](x, labels, ref_emb, ref_labels)
        args = (x, labels, indices_tuple)
        if ref_emb is not None or ref_labels is not None:
            args += (ref_emb, ref_labels)
        if self.mode == SHARED and key != FULL_KEY and heads.has_parameters(self.full):
            loss = torch.func.functional_call(self.losses[key], heads.borrowed_parameters(self.full, dims), args)
        elif heads.head_rows(self.losses[key]) not in (None, x.shape[1]):  # a per-learner head on a subspace
            rows = heads.borrowed_parameters(self.losses[key], slice(0, x.shape[1]))
            loss = torch.func.functional_call(self.losses[key], rows, args)
        else:
            loss = self.losses[key](*args)
        if not torch.is_tensor(loss):
            loss = x.sum() * 0.0 + loss
        return loss

    def split(self, num_active, halves=None, optimizers=(), size=None):
        """K -> 2K: learners 2c and 2c+1 start from learner c, heads holding ``halves[0]`` / ``halves[1]`` of its
        rows (None: all, as with learned masks), optimizer state following; memories get ``size`` dims."""
        halves = halves or [None, None]
        # from the last parent down, so that no parent is overwritten before its children are made
        for c in reversed(range(num_active)):
            for child, dims in ((2 * c + 1, halves[1]), (2 * c, halves[0])):
                heads.inherit(self.losses[learner_key(c)], self.losses[learner_key(child)], dims, optimizers, size)
                if self.miners is not None and child != c:
                    heads.inherit(self.miners[learner_key(c)], self.miners[learner_key(child)])

    def start_full_heads(self, context):
        """The divide phase ended: start the full learner's heads as :attr:`full_head` says (per-learner heads)."""
        if self.mode == PER_LEARNER:
            self.full_head.start(self, context)

    def class_owners(self, labels, assignment, num_active):
        """For each class (0..C-1), the cluster holding most of its samples."""
        class_ids = self.label_map.class_ids.numpy()
        mapped = np.searchsorted(class_ids, labels)
        counts = np.zeros((len(class_ids), num_active), dtype=np.int64)
        np.add.at(counts, (mapped, np.minimum(assignment, num_active - 1)), 1)
        return counts.argmax(axis=1)

    # ---------------------------------------------------------------- state beyond the modules' own

    def extra_state(self):
        """What the learners' own state_dicts leave out: their CrossBatchMemory sizes and fill state."""
        return {
            "mode": self.mode,
            "memory_sizes": {k: heads.memory_size(m) for k, m in self.losses.items()},
            "memory_fill": {k: heads.memory_fill(m) for k, m in self.losses.items()},
        }

    def check_extra_state(self, state):
        """Raise a ValueError naming what does not fit (learners this wrapper does not have)."""
        saved = set(state.get("memory_sizes", {}))
        if saved and saved != set(self.losses):
            raise ValueError(
                f"the checkpoint holds {len(saved) - 1} learners, this wrapper {len(self.losses) - 1}: it was written "
                f"with num_learners={len(saved) - 1}; build the SubspaceMaskedEmbedder (and schedule) with that K"
            )
        if state.get("mode", self.mode) != self.mode:
            raise ValueError(
                f'the checkpoint was written with heads="{state["mode"]}", this wrapper has heads="{self.mode}": '
                "build the wrapper with the heads it was trained with"
            )

    def load_extra_state(self, state):
        """Give the learners' memories their saved sizes (so that the saved tensors fit) and fill state; call it
        before the learners load their own state_dicts."""
        for k, size in state.get("memory_sizes", {}).items():
            if size is not None:
                heads.resize_memories(self.losses[k], int(size))
        for k, fill in state.get("memory_fill", {}).items():
            heads.set_memory_fill(self.losses[k], fill)
