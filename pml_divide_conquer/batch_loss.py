"""The loss of one batch, past the wrapper's argument checks: in training, its ticket taken and checked, its features
recorded for reclustering, then the learner of its cluster on its subspace (the full learner after the divide
phase); outside training, the full learner on the full space.

On a device nothing here reads a tensor on the host: what is wrong is flagged with the
:class:`~pml_divide_conquer.routing.Router` and raised at the next check (on the CPU at once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from . import checks, routing
from .embedder import LEARNED
from .feature_memory import record_batch
from .learners import FULL_KEY, learner_key
from .schedule import Phase

if TYPE_CHECKING:
    from .controller import EpochController
    from .embedder import SubspaceMaskedEmbedder
    from .feature_memory import FeatureMemory
    from .learners import Learners
    from .routing import Router, Ticket

OptionalTensors = tuple[torch.Tensor, ...] | None


class BatchLoss:
    """Computes a batch's loss from the parts it is handed (the wrapper builds it): the epoch controller (K, the
    phase, whether it is set up), the router (tickets and flags), the learners, the embedder (subspaces, masks) and
    the feature memory (None: reclustering embeds afresh). ``loss``: the wrapped loss, to know whether it keeps a
    CrossBatchMemory."""

    def __init__(
        self,
        controller: EpochController,
        router: Router,
        learners: Learners,
        embedder: SubspaceMaskedEmbedder,
        memory: FeatureMemory | None,
        loss: torch.nn.Module,
    ) -> None:
        self.controller, self.router, self.learners = controller, router, learners
        self.embedder, self.memory = embedder, memory
        self.loss_has_memory = checks.has_memory(loss)

    def eval_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: OptionalTensors,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        """Outside training (e.g. a validation loss): the full learner on the full space."""
        self.router.flag(~torch.isfinite(embeddings.detach()).all(), routing.NONFINITE, FloatingPointError)
        if embeddings.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(routing.EVAL_WITH_GRADIENTS)
        ref = None if ref_emb is None else F.normalize(ref_emb, dim=1)
        x = F.normalize(embeddings, dim=1)
        return self.learners.loss(FULL_KEY, x, labels, indices_tuple, None, ref, ref_labels, known=False)

    def training_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: OptionalTensors,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
        float16: bool,
        orthogonality_weight: float,
        record: Callable[[dict[str, Any]], None],
    ) -> torch.Tensor:
        """The loss of a training batch; ``record`` is given what record-keeper reads of it (``current_learner``,
        the learner's loss, the orthogonality term) as soon as it is computed."""
        controller, router = self.controller, self.router
        if not controller.is_set_up:
            raise RuntimeError(f"DivideConquerWrapper was not set up: {controller.hints.setup}")
        # the batch's ticket first: a batch that raises below (a loop may catch the error and go on) is taken
        ticket = router.take(labels, controller.hints, controller.last_epoch, controller.loop_epoch())
        finite = torch.isfinite(embeddings.detach()).all()
        if float16:  # float16 autocast: a GradScaler skips such a step; counted, said at the epoch end
            router.count_nonfinite(~finite)
            if self.loss_has_memory:  # but not when the overflow would stay in CrossBatchMemory's queue
                router.flag(~finite, routing.NONFINITE_MEMORY, FloatingPointError)
        else:
            router.flag(~finite, routing.NONFINITE, FloatingPointError)
        if self.memory is not None:  # the trunk's output (the embedder's input), or the embedding
            record_batch(self.memory, controller.batch_features(embeddings), ticket.indices)
        loss, recorded = self.learner_loss(
            ticket, embeddings, labels, indices_tuple, ref_emb, ref_labels, orthogonality_weight
        )
        record(recorded)  # before the check below, which raises at once on the CPU (a loop may catch it)
        router.flag(finite & ~torch.isfinite(loss.detach()), routing.NONFINITE_LOSS, FloatingPointError)
        return loss

    def learner_loss(
        self,
        ticket: Ticket,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: OptionalTensors,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
        orthogonality_weight: float,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss of ``ticket``'s learner (its cluster's, or the full learner after the divide phase), with the
        masks' orthogonality term in the divide phase."""
        learners, embedder = self.learners, self.embedder
        if self.controller.phase != Phase.DIVIDE:
            ref = None if ref_emb is None else F.normalize(ref_emb, dim=1)
            loss = learners.loss(FULL_KEY, F.normalize(embeddings, dim=1), labels, indices_tuple, None, ref, ref_labels)
            return loss, {"current_learner": embedder.num_learners, "full_loss": loss.detach()}
        k, num_active = ticket.cluster, self.controller.num_active
        if k >= num_active:
            raise RuntimeError(
                f"batch from cluster {k} but only {num_active} learners are active: the sampler's assignment "
                "was changed outside DivideConquerWrapper"
            )
        x = embedder.subspace(embeddings, k, num_active)
        ref = None if ref_emb is None else embedder.subspace(ref_emb, k, num_active)
        dims = embedder.subspace_dims(k, num_active)
        loss = learners.loss(learner_key(k), x, labels, indices_tuple, dims, ref, ref_labels)
        recorded: dict[str, Any] = {"current_learner": k, f"learner{k}_loss": loss.detach()}
        if embedder.mode == LEARNED and num_active > 1:
            ortho = embedder.orthogonality_loss(num_active)
            recorded["orthogonality"] = ortho.detach()
            if orthogonality_weight:
                loss = loss + orthogonality_weight * ortho.to(loss.device)
        return loss, recorded
