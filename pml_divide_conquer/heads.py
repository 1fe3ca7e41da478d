"""Heads of classification-style losses (ArcFace, CosFace, ProxyAnchor, SoftTriple, ...): the parameter-level
mechanics the learners (:mod:`pml_divide_conquer.learners`) use, shared or per learner.

PML's classification losses hold a parameter sized by ``embedding_size``: ``W`` (embedding_size x classes),
``fc`` (SoftTriple, same layout) or ``proxies`` (classes x embedding_size).

- Shared heads (``heads="shared"``): the full-embedding learner owns the only copy of the loss's parameters; every
  learner's copy of the loss has its parameters dropped (:func:`drop_parameters`) and borrows them at each call
  (:func:`borrowed_parameters`), a head restricted to the learner's chunk of the embedding in fixed mode.
- Per-learner heads (``heads="per_learner"``, the default): each learner's copy of the loss keeps a full-size head
  and uses its first s rows for a subspace of s dims (no parameter ever changes shape); when a cluster is split,
  its children start from the parent's rows of their own dimensions (:func:`inherit`), and the full-embedding head
  starts from the learners' heads put together (:func:`assemble`).

CrossBatchMemory's memory is always one per learner, sized to its subspace.
"""

import copy

import numpy as np
import torch
from pytorch_metric_learning.losses import CrossBatchMemory, LargeMarginSoftmaxLoss, P2SGradLoss

from .torch_utils import carry_optimizer_state

# parameter name -> which of its two dimensions is the embedding dimension
HEAD_PARAMS = {"W": 0, "fc": 0, "proxies": 1}
# "weight" is too common a name to treat as a head everywhere: only in these losses
CLASS_HEAD_PARAMS = {P2SGradLoss: {"weight": 0}}


def _head_names(module):
    names = dict(HEAD_PARAMS)
    for cls, extra in CLASS_HEAD_PARAMS.items():
        if isinstance(module, cls):
            names.update(extra)
    return names


def head_params(module):
    """(qualified name, submodule, param name, parameter, embedding dim) of every head in ``module``."""
    for sub_name, sub in module.named_modules():
        for name, dim in _head_names(sub).items():
            p = sub._parameters.get(name)
            if isinstance(p, torch.nn.Parameter) and p.dim() == 2:
                yield (f"{sub_name}.{name}" if sub_name else name), sub, name, p, dim


def memories(module):
    return [m for m in module.modules() if isinstance(m, CrossBatchMemory)]


def has_heads(module):
    return any(True for _ in head_params(module))


def check_fits(loss, embedding_size, num_train_classes):
    """Raise a clear error if ``loss`` was not built for the full embedding or has too few classes."""
    for _qual, sub, name, p, dim in head_params(loss):
        if p.shape[dim] != embedding_size:
            raise ValueError(
                f"{type(sub).__name__}.{name} has shape {tuple(p.shape)}: it was built with embedding_size="
                f"{p.shape[dim]}, but the SubspaceMaskedEmbedder gives {embedding_size} dims. Build the loss with "
                f"embedding_size={embedding_size}; DivideConquerWrapper sizes each learner's copy to its subspace."
            )
        classes = getattr(sub, "num_classes", 0)
        if not isinstance(classes, int) or classes <= 0:
            classes = p.shape[1 - dim]
        if classes < num_train_classes:
            raise ValueError(
                f"{type(sub).__name__} was built with num_classes={classes}, but the training set has "
                f"{num_train_classes} classes. Build it with num_classes={num_train_classes} (labels are mapped to "
                f"0..{num_train_classes - 1} for the learners)."
            )
    for mem in memories(loss):
        if mem.embedding_size != embedding_size:
            raise ValueError(
                f"CrossBatchMemory was built with embedding_size={mem.embedding_size}, but the "
                f"SubspaceMaskedEmbedder gives {embedding_size} dims: build it with embedding_size={embedding_size}"
            )


def resize_memories(module, size):
    """Give every CrossBatchMemory of ``module`` ``size`` embedding dims, emptied (no-op where it fits)."""
    for mem in memories(module):
        if mem.embedding_size != size:
            mem.embedding_size = size
            mem.reset_queue()


def head_rows(module):
    """How many embedding dims ``module``'s heads hold (their storage: always the full embedding), or None."""
    sizes = {p.shape[dim] for _, _, _, p, dim in head_params(module)}
    return sizes.pop() if sizes else None


def _gather_index(dims, n):
    """Rows ``dims`` first, then rows ``len(dims)..n-1`` as they were: a full-length gather."""
    dims = torch.as_tensor(np.asarray(dims), dtype=torch.long)
    return torch.cat([dims, torch.arange(len(dims), n)])


def inherit(src, dst, dims=None, optimizers=(), size=None):
    """Make module ``dst`` a copy of ``src`` whose heads hold ``src``'s embedding rows ``dims`` in their first
    ``len(dims)`` rows (None: all rows as they are); its CrossBatchMemory gets ``size`` dims, emptied.

    Heads are never resized: a learner whose subspace has s dims uses the first s rows of its head (a parameter
    that changed shape would break the optimizers, DDP, and autograd graphs the loop still holds). The optimizer
    state of each parameter follows it, gathered the same way, so Adam moments carry over. ``src`` and ``dst``
    may be the same module (a parent that becomes its own first child).
    """
    heads = {qual: (dim, p.shape[dim]) for qual, _, _, p, dim in head_params(src)}
    index = {q: None if dims is None else _gather_index(dims, n) for q, (_, n) in heads.items()}
    # the optimizer state first, from src's parameters as they are (src may be dst)
    src_params = dict(src.named_parameters())
    for name, p_dst in dst.named_parameters():
        restrict = index.get(name)
        carry_optimizer_state(optimizers, src_params[name], p_dst, restrict, heads.get(name, (0, 0))[0])
    state = copy.deepcopy(src.state_dict())
    for qual, (dim, _) in heads.items():
        if index[qual] is not None:
            state[qual] = state[qual].index_select(dim, index[qual].to(state[qual].device))
    if size is not None:
        resize_memories(dst, size)
    for mem in memories(dst):
        mem.reset_queue()  # embeddings in memory were in the parent's subspace: start empty
    fresh = dst.state_dict()
    for path, mem in dst.named_modules():
        if isinstance(mem, CrossBatchMemory):
            for key in fresh:
                if key.startswith(f"{path}.embedding_memory" if path else "embedding_memory") or key.startswith(
                    f"{path}.label_memory" if path else "label_memory"
                ):
                    state[key] = fresh[key]
    dst.load_state_dict(state)


def memory_size(module):
    """The embedding size ``module``'s CrossBatchMemory holds, or None if it has none."""
    sizes = {m.embedding_size for m in memories(module)}
    return sizes.pop() if sizes else None


def memory_fill(module):
    """(queue_idx, has_been_filled) of each CrossBatchMemory in ``module``, which its state_dict leaves out."""
    return [[int(m.queue_idx), bool(m.has_been_filled)] for m in memories(module)]


def set_memory_fill(module, fill):
    for m, (queue_idx, filled) in zip(memories(module), fill):
        m.queue_idx, m.has_been_filled = int(queue_idx), bool(filled)


def drop_parameters(module):
    """Replace every parameter of ``module`` by an empty slot, to be filled per call by ``functional_call``."""
    for sub in module.modules():
        for name in list(sub._parameters):
            if sub._parameters[name] is not None:
                sub._parameters[name] = None


def has_parameters(module):
    return any(True for _ in module.parameters())


def borrowed_parameters(owner, dims=None):
    """``owner``'s parameters by qualified name, heads restricted to embedding ``dims`` (a slice; None: all).

    The result goes to ``torch.func.functional_call`` on a learner's copy of the loss: gradients flow into the
    slice of ``owner``'s head, so all learners train one head.
    """
    params = dict(owner.named_parameters())
    if dims is not None:
        for qual, _, _, p, dim in head_params(owner):
            params[qual] = p.narrow(dim, dims.start, dims.stop - dims.start)
    return params


@torch.no_grad()
def assemble(parts, dst, dims, class_owner):
    """Start ``dst``'s (full-size) heads from the heads of ``parts`` (the learners' copies of the loss).

    ``dims[k]``: the slice of the embedding that part k's head covers (fixed chunks: concatenated along the
    embedding dimension), or None (learned masks: full-size heads; each class takes its weights from the part whose
    cluster holds most of its samples, ``class_owner[c]``, and classes beyond those take the parts' mean).
    """
    sources = [dict((q, (p, d)) for q, _, _, p, d in head_params(part)) for part in parts]
    for qual, sub, _, p, dim in head_params(dst):
        own = [src[qual] for src in sources if qual in src]
        if len(own) != len(parts):
            continue
        if dims[0] is not None:  # part k's first rows hold its chunk of the embedding
            p.copy_(torch.cat([q.narrow(dim, 0, d.stop - d.start) for (q, _), d in zip(own, dims)], dim=dim))
            continue
        stacked = torch.stack([q for q, _ in own])  # parts x shape
        out = stacked.mean(0)
        class_axis = 1 - dim
        length = p.shape[class_axis]
        classes = getattr(sub, "num_classes", None)
        per_class = length // classes if isinstance(classes, int) and classes > 0 and length % classes == 0 else None
        if per_class is not None:
            owner = torch.as_tensor(np.asarray(class_owner), dtype=torch.long)
            cols = torch.arange(min(len(owner) * per_class, length))
            parts_of_cols = owner[cols // per_class].to(p.device)
            picked = stacked.index_select(1 + class_axis, cols.to(p.device))  # parts x (cols along class axis)
            picked = picked.movedim(1 + class_axis, 1)  # parts x cols x rest
            chosen = picked[parts_of_cols, torch.arange(len(cols), device=p.device)]  # cols x rest
            out.index_copy_(class_axis, cols.to(p.device), chosen.movedim(0, class_axis))
        p.copy_(out)
        p.grad = None


def _logits_use_weight_norms(module):
    """Whether ``module``'s logits grow with its weight vectors' norms (PML's LargeMarginSoftmaxLoss itself; ArcFace,
    CosFace, SphereFace and the proxy losses use only their directions)."""
    return (
        isinstance(module, LargeMarginSoftmaxLoss) and type(module).scale_logits is LargeMarginSoftmaxLoss.scale_logits
    )


@torch.no_grad()
def imprint(dst, embeddings, labels):
    """Point each class's vector in ``dst``'s heads at the mean embedding of its samples ("weight imprinting").

    ``embeddings``: the training samples' L2-normalised embeddings (N x embedding_size); ``labels``: their classes,
    mapped to 0..C-1. Heads with one vector per class (ArcFace, CosFace, NormalizedSoftmax, ProxyAnchor, ProxyNCA,
    ...) get each class's normalised mean embedding, at unit norm (the loss uses only the direction, and Adam's
    steps turn a unit vector faster than the longer vectors of a normal initialisation) or, for a loss whose logits
    grow with the weight norms (LargeMarginSoftmaxLoss), at the norm the vector had. Classes without samples and
    heads with several vectors per class (SubCenterArcFace, SoftTriple) keep their vectors. Returns the number of
    heads imprinted.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    done = 0
    for _qual, sub, _name, p, dim in head_params(dst):
        vectors = p if dim == 1 else p.t()  # a view: classes (x per-class vectors) x embedding
        classes = getattr(sub, "num_classes", None)
        if isinstance(classes, int) and classes > 0 and len(vectors) != classes:
            continue  # several vectors per class
        emb = torch.as_tensor(embeddings).to(p.device, p.dtype)
        sums = torch.zeros(len(vectors), p.shape[dim], dtype=p.dtype, device=p.device)
        sums.index_add_(0, labels.to(p.device), emb)
        seen = torch.bincount(labels, minlength=len(vectors)).to(p.device) > 0
        new = torch.nn.functional.normalize(sums, dim=1)
        if _logits_use_weight_norms(sub):
            norms = vectors.norm(dim=1, keepdim=True)
            new = new * torch.where(norms > 0, norms, torch.ones_like(norms))
        vectors[seen] = new[seen]
        p.grad = None
        done += 1
    return done
