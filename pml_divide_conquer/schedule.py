"""Which phase and how many learners at which epoch: pure logic, no torch.

Epochs are numbered like PML's trainers number them (1, 2, ...). The step "after epoch 0" is the one taken
before training starts.
"""

from dataclasses import dataclass
from typing import Optional

NONE = "none"
RECLUSTER = "recluster"
SPLIT = "split"
CONQUER = "conquer"

DIVIDE_PHASE = "divide"
CONQUER_PHASE = "conquer"


@dataclass(frozen=True)
class Step:
    """What to do at the end of an epoch, and the number of learners in effect afterwards."""

    action: str
    num_learners: int


@dataclass(frozen=True)
class DivideConquerSchedule:
    """When to recluster, split and conquer.

    Args:
        num_learners: the number of learners (clusters and subspaces) K. With ``grow=True`` it is the maximum,
            reached by doubling, and must be a power of two.
        recluster_every: T, recluster at the end of every T-th epoch.
        conquer_epoch: first epoch trained in the conquer phase (full embedding, all data), or None for never.
        grow: True (journal version): start with one learner and split every cluster in two at each
            reclustering until ``num_learners`` is reached. False (CVPR version): K is fixed from the start,
            so the data must be clustered before the first epoch.

    Examples:
        >>> s = DivideConquerSchedule(num_learners=4, recluster_every=2, conquer_epoch=9)
        >>> [s.learners_in_epoch(e) for e in range(1, 9)]
        [1, 1, 2, 2, 4, 4, 4, 4]
        >>> s.step_after_epoch(2)
        Step(action='split', num_learners=2)
    """

    num_learners: int = 8
    recluster_every: int = 2
    conquer_epoch: Optional[int] = None
    grow: bool = True

    def __post_init__(self):
        if not isinstance(self.num_learners, int) or self.num_learners < 1:
            raise ValueError(f"num_learners must be a positive integer, got {self.num_learners!r}")
        if self.grow and self.num_learners & (self.num_learners - 1):
            raise ValueError(
                f"num_learners={self.num_learners} is not a power of two: with grow=True every cluster is split "
                "in two at each reclustering, so K goes 1, 2, 4, ... Use a power of two, or grow=False for a "
                "fixed K."
            )
        if not isinstance(self.recluster_every, int) or self.recluster_every < 1:
            raise ValueError(f"recluster_every must be a positive integer, got {self.recluster_every!r}")
        if self.conquer_epoch is not None and (
            not isinstance(self.conquer_epoch, int) or self.conquer_epoch < 1
        ):
            raise ValueError(f"conquer_epoch must be None or an epoch number >= 1, got {self.conquer_epoch!r}")

    def phase_in_epoch(self, epoch: int) -> str:
        if self.conquer_epoch is not None and epoch >= self.conquer_epoch:
            return CONQUER_PHASE
        return DIVIDE_PHASE

    def learners_in_epoch(self, epoch: int) -> int:
        """K during ``epoch`` (in the conquer phase: the K of the last divide epoch)."""
        if epoch < 1:
            raise ValueError(f"epochs are numbered from 1, got {epoch}")
        if not self.grow:
            return self.num_learners
        if self.conquer_epoch is not None:
            epoch = min(epoch, max(self.conquer_epoch - 1, 1))
        num_splits = (epoch - 1) // self.recluster_every
        return min(self.num_learners, 2**num_splits)

    def step_after_epoch(self, epoch: int) -> Step:
        """The step taken once ``epoch`` has finished (``epoch=0``: before training)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        nxt = epoch + 1
        if self.phase_in_epoch(nxt) == CONQUER_PHASE:
            k = self.learners_in_epoch(nxt)
            if epoch == 0 or self.phase_in_epoch(epoch) == DIVIDE_PHASE:
                return Step(CONQUER, k)
            return Step(NONE, k)
        k_next = self.learners_in_epoch(nxt)
        if epoch == 0:
            return Step(RECLUSTER if k_next > 1 else NONE, k_next)
        k_now = self.learners_in_epoch(epoch)
        if k_next > k_now:
            return Step(SPLIT, k_next)
        if epoch % self.recluster_every == 0 and k_next > 1:
            return Step(RECLUSTER, k_next)
        return Step(NONE, k_next)
