"""SubspaceMaskedEmbedder: PML's ``models["embedder"]``, which also knows each learner's subspace."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

FIXED = "fixed"
LEARNED = "learned"


class SubspaceMaskedEmbedder(torch.nn.Module):
    """Wraps the user's embedder; returns the full embedding, and gives each learner its subspace.

    PML's trainers and testers call it like any embedder and get the full ``embedding_size``-dim embedding, so
    testing always uses the whole space. :class:`~pml_divide_conquer.DivideConquerWrapper` asks it for the
    subspace of learner ``k`` out of ``K`` active learners:

    - ``mode="fixed"``: the k-th of K contiguous chunks of ``embedding_size / K`` dims, L2-normalised. When K
      doubles, the children 2c and 2c+1 own the two halves of their parent's chunk.
    - ``mode="learned"``: ``normalize(e * relu(m_k))`` with one learnable mask ``m_k`` per learner, initialised to
      1. Masks get their own learning rate through :meth:`parameter_groups`, and an orthogonality term
      (:meth:`orthogonality_loss`) pushes them apart.

    Args:
        embedding_size: size d of the full embedding (the output of ``embedder``).
        num_learners: the (maximum) number of learners K. Fixed mode needs d divisible by K.
        mode: ``"fixed"`` or ``"learned"``.
        embedder: the user's embedder module (e.g. a Linear layer on the trunk output); None for identity.

    Examples:
        >>> embedder = SubspaceMaskedEmbedder(128, num_learners=8, mode="learned",
        ...                                   embedder=torch.nn.Linear(2048, 128))
        >>> optimizer = torch.optim.Adam(
        ...     embedder.parameter_groups(lr=1e-5, mask_lr_multiplier=100))
    """

    masks: torch.nn.Parameter | None  # learned mode: one mask per learner (num_learners x embedding_size)

    def __init__(
        self, embedding_size: int, num_learners: int, mode: str = FIXED, embedder: torch.nn.Module | None = None
    ) -> None:
        super().__init__()
        if mode not in (FIXED, LEARNED):
            raise ValueError(f'mode must be "{FIXED}" or "{LEARNED}", got {mode!r}')
        if not isinstance(embedding_size, int) or embedding_size < 1:
            raise ValueError(f"embedding_size must be a positive integer, got {embedding_size!r}")
        if not isinstance(num_learners, int) or num_learners < 1:
            raise ValueError(f"num_learners must be a positive integer, got {num_learners!r}")
        if mode == FIXED and embedding_size % num_learners:
            raise ValueError(
                f"embedding_size={embedding_size} is not divisible by num_learners={num_learners}: fixed "
                "subspaces are equal contiguous chunks. Choose an embedding size that is a multiple of "
                f'num_learners, or use mode="{LEARNED}".'
            )
        self.embedding_size = embedding_size
        self.num_learners = num_learners
        self.mode = mode
        self.embedder: torch.nn.Module = torch.nn.Identity() if embedder is None else embedder
        if mode == LEARNED:
            self.masks = torch.nn.Parameter(torch.ones(num_learners, embedding_size))
        else:
            self.register_parameter("masks", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The full embedding ``embedder(x)`` (batch x ``embedding_size``)."""
        e = self.embedder(x)
        if e.dim() != 2 or e.shape[1] != self.embedding_size:
            raise ValueError(
                f"the embedder produced shape {tuple(e.shape)}, but SubspaceMaskedEmbedder was built with "
                f"embedding_size={self.embedding_size}"
            )
        if self.masks is not None and self.training and dist.is_available() and dist.is_initialized():
            # The masks are used by the loss, outside this forward. Under DistributedDataParallel, touch them
            # here (adding exactly zero) so DDP sees them in the graph and averages their gradient across ranks.
            # (Any world size: DDP checks for unused parameters in a world of one process too.)
            # (Also in the full-embedding phases, where DDP would otherwise find them unused and fail; there they
            # get zero gradients, and no longer matter: testing uses the full embedding.)
            e = e + 0.0 * self.masks.sum()
        return e

    def subspace_size(self, num_active: int) -> int:
        """The dims of each learner's subspace when ``num_active`` learners are active: ``embedding_size / K``
        (fixed chunks), or ``embedding_size`` (learned masks weight all of them)."""
        return self.embedding_size // num_active if self.mode == FIXED else self.embedding_size

    def subspace_dims(self, learner: int, num_active: int) -> slice | None:
        """The embedding dims of learner ``learner``'s subspace: a slice (fixed chunks), or None (learned masks: all
        of them, weighted by the mask)."""
        if self.mode == LEARNED:
            return None
        size = self.subspace_size(num_active)
        return slice(learner * size, (learner + 1) * size)

    def subspace(self, embeddings: torch.Tensor, learner: int, num_active: int) -> torch.Tensor:
        """Learner ``learner``'s view of the (full) ``embeddings`` when ``num_active`` learners are active."""
        if not 0 <= learner < num_active <= self.num_learners:
            raise ValueError(f"learner {learner} out of range for {num_active} active of {self.num_learners}")
        if self.mode == FIXED:
            size = self.subspace_size(num_active)
            return F.normalize(embeddings[:, learner * size : (learner + 1) * size], dim=1)
        assert self.masks is not None  # (learned mode)
        return F.normalize(embeddings * F.relu(self.masks[learner]), dim=1)

    def orthogonality_loss(self, num_active: int) -> torch.Tensor:
        """Mean cosine similarity of relu(masks) over ordered pairs i != j of active learners (0 if fixed)."""
        if self.mode == FIXED or num_active < 2:
            return torch.zeros(()) if self.masks is None else self.masks.sum() * 0.0
        assert self.masks is not None  # (learned mode)
        m = F.normalize(F.relu(self.masks[:num_active]), dim=1)
        gram = m @ m.t()
        return (gram.sum() - gram.diagonal().sum()) / (num_active * (num_active - 1))

    def mask_usage(self, num_active: int, threshold: float = 0.0) -> torch.Tensor:
        """Fraction of dimensions each active learner uses (relu(mask) > threshold); 1/K per chunk if fixed."""
        if self.mode == FIXED:
            return torch.full((num_active,), 1.0 / num_active)
        assert self.masks is not None  # (learned mode)
        with torch.no_grad():
            return (F.relu(self.masks[:num_active]) > threshold).float().mean(dim=1).cpu()

    @torch.no_grad()
    def split_masks(self, num_active: int) -> None:
        """K -> 2K: learners 2c and 2c+1 start from learner c's mask."""
        if self.mode == LEARNED and self.masks is not None:
            parents = torch.arange(2 * num_active, device=self.masks.device) // 2
            self.masks[: 2 * num_active] = self.masks[parents].clone()

    def parameter_groups(
        self,
        lr: float,
        weight_decay: float = 0.0,
        mask_lr_multiplier: float = 100.0,
        mask_weight_decay: float | None = None,
    ) -> list[dict[str, Any]]:
        """Param groups for a torch optimizer: the wrapped embedder at ``lr``, masks at ``lr * multiplier``."""
        groups: list[dict[str, Any]] = []
        params = [p for p in self.embedder.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lr, "weight_decay": weight_decay})
        if self.masks is not None:
            groups.append(
                {
                    "params": [self.masks],
                    "lr": lr * mask_lr_multiplier,
                    "weight_decay": weight_decay if mask_weight_decay is None else mask_weight_decay,
                }
            )
        return groups
