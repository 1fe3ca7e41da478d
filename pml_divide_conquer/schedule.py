"""Which phase and how many clusters at which epoch: pure logic, no torch.

Epochs are numbered like PML's trainers number them (1, 2, ...). The step "after epoch 0" is the one taken
before training starts.

The three phases, as the authors' code trains them:

- ``DIVIDE``: learner k computes the loss on its own subspace, on batches drawn from cluster k.
- ``FULL_EMBEDDING``: the loss is computed on the whole (L2-normalised) embedding, but batches still come from one
  cluster at a time and reclustering goes on - a form of hard-class mining for the full space. (Journal code:
  ``--force-full-embedding-epoch``; CVPR code: ``epoch >= finetune_epoch * 8 / 19`` in ``train_batch``.)
- ``ALL_DATA``: ordinary m-per-class batches over all the data, full embedding, no reclustering (CVPR code: the
  epochs from ``--finetune-epoch`` on, where it sets ``nb_clusters = 1``; the journal code has no such phase).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from . import notices


class Phase(str, enum.Enum):
    DIVIDE = "divide"
    FULL_EMBEDDING = "full_embedding"
    ALL_DATA = "all_data"

    def __str__(self) -> str:
        return self.value


class Action(str, enum.Enum):
    """What the end-of-epoch step does to the clusters."""

    NONE = "none"
    RECLUSTER = "recluster"  # k-means at the current K, matched to the previous clusters
    SPLIT = "split"  # recluster at the current K, then split every cluster in two (K doubles)
    ALL_DATA = "all_data"  # one cluster holding all the data

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Step:
    """What to do at the end of an epoch, and what is in effect during the next one."""

    action: Action
    num_clusters: int
    phase: Phase
    trunk_frozen: bool = False

    @property
    def num_learners(self) -> int:  # the name used before 0.2
        return self.num_clusters


@dataclass(frozen=True)
class DivideConquerSchedule:
    """When to recluster, split, and switch phases.

    Args:
        num_learners: K, the number of learners (clusters and subspaces). With ``grow=True`` it is the maximum,
            reached by doubling, and must be a power of two.
        recluster_every: T, recluster at the end of every T-th epoch (divide and full-embedding phases).
        full_embedding_epoch: first epoch of the full-embedding phase (loss on the whole embedding, batches still
            from clusters, reclustering goes on), or None for none.
        all_data_epoch: first epoch of the all-data phase (m-per-class batches over all the data, full embedding,
            no reclustering), or None for none.
        grow: True (journal version): start with one cluster and split every cluster in two at each reclustering
            until ``num_learners`` is reached. False (CVPR version): K is fixed from the start, so the data is
            clustered before the first epoch.
        freeze_trunk_epochs: the trunk's learning rate is 0 during the first ``freeze_trunk_epochs`` epochs of
            every T-epoch cycle, i.e. right after each reclustering (journal README run: ``--mod-epoch-freeze=1``
            with T=2, every other epoch). Must be smaller than T. Not applied in the all-data phase.
        conquer_epoch: deprecated: the first epoch trained on the full embedding over all data, i.e.
            ``full_embedding_epoch = all_data_epoch = conquer_epoch``.

    :meth:`journal` and :meth:`cvpr` give the authors' schedules for a number of epochs.

    Examples:
        >>> s = DivideConquerSchedule(num_learners=4, recluster_every=2,
        ...                           full_embedding_epoch=6, all_data_epoch=9)
        >>> [s.num_clusters_in_epoch(e) for e in range(1, 11)]
        [1, 1, 2, 2, 4, 4, 4, 4, 1, 1]
        >>> [str(s.phase_in_epoch(e)) for e in (5, 6, 9)]
        ['divide', 'full_embedding', 'all_data']
        >>> step = s.step_after_epoch(2)
        >>> str(step.action), step.num_clusters, str(step.phase), step.trunk_frozen
        ('split', 2, 'divide', False)
    """

    num_learners: int = 8
    recluster_every: int = 2
    full_embedding_epoch: int | None = None
    all_data_epoch: int | None = None
    grow: bool = True
    freeze_trunk_epochs: int = 0
    conquer_epoch: int | None = None

    def __post_init__(self) -> None:
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
        for name in ("full_embedding_epoch", "all_data_epoch", "conquer_epoch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be None or an epoch number >= 1, got {value!r}")
        if self.conquer_epoch is not None:
            if self.full_embedding_epoch is not None or self.all_data_epoch is not None:
                raise ValueError(
                    "conquer_epoch is the old name of full_embedding_epoch = all_data_epoch: give either "
                    "conquer_epoch or the new ones, not both"
                )
            _warn_conquer_epoch(self.conquer_epoch)
            object.__setattr__(self, "full_embedding_epoch", self.conquer_epoch)
            object.__setattr__(self, "all_data_epoch", self.conquer_epoch)
            object.__setattr__(self, "conquer_epoch", None)
        if (
            self.full_embedding_epoch is not None
            and self.all_data_epoch is not None
            and self.full_embedding_epoch > self.all_data_epoch
        ):
            raise ValueError(
                f"full_embedding_epoch={self.full_embedding_epoch} comes after all_data_epoch={self.all_data_epoch}: "
                "the phases run divide -> full embedding -> all data"
            )
        if not isinstance(self.freeze_trunk_epochs, int) or not 0 <= self.freeze_trunk_epochs < self.recluster_every:
            raise ValueError(
                f"freeze_trunk_epochs={self.freeze_trunk_epochs!r} must be an integer in [0, recluster_every="
                f"{self.recluster_every}): the trunk is frozen for that many epochs after each reclustering"
            )

    # ------------------------------------------------------------------ the authors' schedules

    @classmethod
    def journal(
        cls, num_epochs: int, num_learners: int, recluster_every: int = 2, freeze_trunk_epochs: int = 0
    ) -> DivideConquerSchedule:
        """The journal version (TPAMI 2021): K doubles every T epochs from 1; from 80/180 of the run on, the loss is
        on the full embedding with cluster batches (its README: ``--nb-epochs=180 --force-full-embedding-epoch=80
        --mod-epoch=2``, and ``--mod-epoch-freeze=1`` for ``freeze_trunk_epochs=1``); no all-data phase.

        Examples:
            >>> DivideConquerSchedule.journal(180, 32).full_embedding_epoch  # 80, counted from 0
            81
        """
        _check_epochs(num_epochs)
        return cls(
            num_learners=num_learners,
            recluster_every=recluster_every,
            full_embedding_epoch=round(num_epochs * 80 / 180) + 1,
            grow=True,
            freeze_trunk_epochs=freeze_trunk_epochs,
        )

    @classmethod
    def cvpr(cls, num_epochs: int, num_learners: int, recluster_every: int = 2) -> DivideConquerSchedule:
        """The CVPR 2019 version: K fixed from the start (data clustered before training); the last 10/200 of the
        run on all data (``--finetune-epoch=190`` of ``--nb-epochs=200``), and full embedding with cluster batches
        from ``finetune_epoch * 8 / 19`` (epoch 80 of 200) on.

        Examples:
            >>> s = DivideConquerSchedule.cvpr(200, 8)
            >>> s.full_embedding_epoch, s.all_data_epoch   # epochs 80 and 190 counted from 0
            (81, 191)
        """
        _check_epochs(num_epochs)
        finetune = num_epochs - max(1, round(num_epochs * 10 / 200))  # counted from 0, like the reference
        return cls(
            num_learners=num_learners,
            recluster_every=recluster_every,
            full_embedding_epoch=round(finetune * 8 / 19) + 1,
            all_data_epoch=finetune + 1,
            grow=False,
        )

    # ------------------------------------------------------------------ queries

    def phase_in_epoch(self, epoch: int) -> Phase:
        if self.all_data_epoch is not None and epoch >= self.all_data_epoch:
            return Phase.ALL_DATA
        if self.full_embedding_epoch is not None and epoch >= self.full_embedding_epoch:
            return Phase.FULL_EMBEDDING
        return Phase.DIVIDE

    def num_clusters_in_epoch(self, epoch: int) -> int:
        """K during ``epoch``: the number of clusters batches come from (1 in the all-data phase)."""
        if epoch < 1:
            raise ValueError(f"epochs are numbered from 1, got {epoch}")
        if self.phase_in_epoch(epoch) == Phase.ALL_DATA:
            return 1
        return self.learners_in_epoch(epoch)

    def learners_in_epoch(self, epoch: int) -> int:
        """The number of learners (subspaces) in effect during ``epoch``; in the all-data phase, the K reached
        before it (1 if it starts at epoch 1: no data was ever divided)."""
        if epoch < 1:
            raise ValueError(f"epochs are numbered from 1, got {epoch}")
        if self.all_data_epoch == 1:
            return 1
        if not self.grow:
            return self.num_learners
        if self.all_data_epoch is not None:
            epoch = min(epoch, max(self.all_data_epoch - 1, 1))
        num_splits = (epoch - 1) // self.recluster_every
        return min(self.num_learners, 2**num_splits)

    def divide_epochs(self) -> int | None:
        """The epochs of the divide phase (None: it never ends)."""
        ends = [e for e in (self.full_embedding_epoch, self.all_data_epoch) if e is not None]
        return min(ends) - 1 if ends else None

    def learners_reached(self) -> int:
        """The most learners that train on subspaces of their own: K in the divide phase's last epoch
        (``num_learners`` when the phase never ends, 0 when there is none)."""
        last = self.divide_epochs()
        if last is None:
            return self.num_learners
        return 0 if last < 1 else self.learners_in_epoch(last)

    def unreached_learners(self) -> str | None:
        """What to change when the divide phase ends before K reaches ``num_learners`` (None when it does)."""
        reached, k, last = self.learners_reached(), self.num_learners, self.divide_epochs()
        if last is None or not 0 < reached < k:  # (no end of the divide phase: K reaches num_learners)
            return None
        needed, every, freeze = self.epochs_to_reach_k(), self.recluster_every, self.freeze_trunk_epochs
        if self.all_data_epoch is None:  # the journal's shape: a divide phase, then the full embedding
            epochs = next(n for n in range(1, 100 * needed + 200) if round(n * 80 / 180) >= needed)
            options = f"num_epochs={epochs}, num_learners={k}" + ("" if every == 2 else f", recluster_every={every}")
            options += f", freeze_trunk_epochs={freeze}" if freeze else ""
            fix = f"DivideConquerSchedule.journal({options})"
        else:  # a schedule with an all-data phase: its phase epochs, as fields
            fix = (
                f"full_embedding_epoch and all_data_epoch no earlier than {needed + 1}, or grow=False "
                f"(DivideConquerSchedule.cvpr(num_epochs, num_learners={k}): all K clusters from the start)"
            )
        splits = k.bit_length() - 1
        faster = (last - 1) // splits  # the largest T that reaches K within the divide phase
        idle = (
            f"learner {reached} and its subspace never trains"
            if reached == k - 1
            else f"learners {reached}-{k - 1} and their subspaces never train"
        )
        return (
            f"the divide phase ends after epoch {last} with K={reached} of its {k} learners: {idle}. With "
            f"recluster_every={every} the divide phase needs {needed} epochs to reach K={k}: e.g. {fix}"
            + (f", or recluster_every={faster}" if faster > freeze else "")  # (T must exceed freeze_trunk_epochs)
            + ". (A short smoke run is fine as it is.)"
        )

    def epochs_to_reach_k(self) -> int:
        """The epochs a divide phase needs before ``num_learners`` is reached (1 without growing: K from the
        start). K doubles after every T-th epoch, so epoch ``1 + log2(K) T`` has K."""
        return 1 + (self.num_learners.bit_length() - 1) * self.recluster_every if self.grow else 1

    def shortfall(self, num_epochs: int) -> str | None:
        """What a run of ``num_epochs`` epochs leaves out of this schedule (None: nothing)."""
        for name, start in (("full-embedding", self.full_embedding_epoch), ("all-data", self.all_data_epoch)):
            if start is not None and num_epochs < start:
                phase = self.phase_in_epoch(num_epochs).value
                return (
                    f"the run stops after epoch {num_epochs}, but the schedule's {name} phase starts at epoch {start}: "
                    f"it ends in the {phase} phase. Build the schedule for the run's length "
                    f"(e.g. DivideConquerSchedule.journal(num_epochs={num_epochs}, num_learners={self.num_learners})) "
                    "or train longer."
                )
        k = self.learners_in_epoch(num_epochs)
        if self.divide_epochs() is None and k < self.num_learners:
            return (
                f"the run stops after epoch {num_epochs} with K={k} of the schedule's {self.num_learners} learners: "
                f"train {self.epochs_to_reach_k()} epochs or more (K doubles after every {self.recluster_every}-th "
                "epoch), or build the schedule with fewer learners"
                + (" or a smaller recluster_every." if self.recluster_every - 1 > self.freeze_trunk_epochs else ".")
            )
        return None

    def trunk_frozen_in_epoch(self, epoch: int) -> bool:
        if self.freeze_trunk_epochs == 0 or self.phase_in_epoch(epoch) == Phase.ALL_DATA:
            return False
        return (epoch - 1) % self.recluster_every < self.freeze_trunk_epochs

    def step_after_epoch(self, epoch: int) -> Step:
        """The step taken once ``epoch`` has finished (``epoch=0``: before training)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        nxt = epoch + 1
        phase, k_next = self.phase_in_epoch(nxt), self.num_clusters_in_epoch(nxt)
        frozen = self.trunk_frozen_in_epoch(nxt)
        if phase == Phase.ALL_DATA:
            entering = epoch == 0 or self.phase_in_epoch(epoch) != Phase.ALL_DATA
            return Step(Action.ALL_DATA if entering else Action.NONE, 1, phase, frozen)
        if epoch == 0:
            return Step(Action.RECLUSTER if k_next > 1 else Action.NONE, k_next, phase, frozen)
        k_now = self.num_clusters_in_epoch(epoch)
        if k_next > k_now:
            return Step(Action.SPLIT, k_next, phase, frozen)
        if epoch % self.recluster_every == 0 and k_next > 1:
            return Step(Action.RECLUSTER, k_next, phase, frozen)
        return Step(Action.NONE, k_next, phase, frozen)


def make_schedule(schedule: DivideConquerSchedule | None, num_learners: int) -> DivideConquerSchedule:
    """The schedule a wrapper runs: ``schedule`` checked against ``num_learners`` (None: the default schedule for
    ``num_learners`` learners)."""
    if schedule is None:
        return DivideConquerSchedule(num_learners=num_learners)
    if not isinstance(schedule, DivideConquerSchedule):
        raise TypeError(f"schedule must be a DivideConquerSchedule, got {type(schedule).__name__}")
    if schedule.num_learners != num_learners:
        raise ValueError(
            f"the schedule has num_learners={schedule.num_learners}, the SubspaceMaskedEmbedder "
            f"{num_learners}: build both with the same K"
        )
    unreached = schedule.unreached_learners()
    if unreached:
        notices.warn(unreached)
    return schedule


def _warn_conquer_epoch(epoch: int) -> None:
    notices.warn(
        f"conquer_epoch is deprecated: conquer_epoch={epoch} means full_embedding_epoch={epoch}, all_data_epoch="
        f"{epoch} (full embedding on all data from that epoch). The authors train most of the run on the full "
        "embedding with cluster batches first: see DivideConquerSchedule.journal() and .cvpr().",
        FutureWarning,
    )


def _check_epochs(num_epochs: int) -> None:
    if not isinstance(num_epochs, int) or isinstance(num_epochs, bool) or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive integer, got {num_epochs!r}")
