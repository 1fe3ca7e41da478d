"""Routing: which learner a training batch goes to, from the sampler's record (ticket) of that batch, checked
against what the loop hands the loss - without reading device values on the host at each step.

What can only be checked on the device (non-finite embeddings, labels on a GPU that do not match the ticket) is
noted in a device flag and raised at the next :meth:`Router.check` (the end-of-epoch step: one sync an epoch); on
the CPU, where reading costs nothing, at once.
"""

import numpy as np
import torch

from . import distributed

NONFINITE = (
    "non-finite values (NaN or inf) in the embeddings reaching DivideConquerWrapper: the model has diverged or the "
    "input contains NaN. Lower the learning rate or check the data."
)
LABELS = (
    "the labels the loss received do not match the batch ClusterSampler drew, so the batch cannot be routed to its "
    "learner. Build ClusterSampler from the labels exactly as the loop hands them to the loss, in dataset order."
)


class Router:
    """Takes the ticket of each training batch in order (inside :meth:`hold`, the first call's for every call).

    Examples:
        >>> router = Router(sampler)
        >>> ticket = router.take(labels, hints, last_epoch=0, current_epoch=None)
        >>> router.check()  # raises what the device flags hold
    """

    def __init__(self, sampler):
        self.sampler = sampler
        self.held = None  # inside one_batch(): [the batch's ticket, or None yet]
        self.flags = {}  # message -> a device bool tensor: something to raise at the next check

    def flag(self, bad, message, error=RuntimeError):
        """Raise ``error(message)`` if the boolean tensor ``bad`` is true: now on the CPU, at the next check on a
        device."""
        if bad.device.type == "cpu":  # (read through numpy: on the CPU nothing waits for a device)
            if bad.numpy().any():
                raise error(message)
            return
        key = (message, error)
        self.flags[key] = bad if key not in self.flags else self.flags[key] | bad

    def check(self):
        """Raise what was flagged on the device since the last check (one host sync per flag)."""
        flags, self.flags = self.flags, {}
        for (message, error), bad in flags.items():
            if bool(bad):
                raise error(message)

    def local_labels(self, labels):
        # Inside PML's DistributedLossWrapper (efficient=False) the loss gets the batch gathered from all ranks, this
        # rank's first
        world, _ = distributed.world_size_and_rank()
        b = self.sampler.batch_size
        return labels[:b] if world > 1 and len(labels) == world * b else labels

    def take(self, labels, hints, last_epoch, current_epoch):
        """The sampler's record of this batch, checked: epochs (the loop's count when it keeps one, else the
        sampler's), the batch size, the labels, the same batch on all ranks."""
        labels = self.local_labels(labels)
        if self.held is not None and self.held[0] is not None:
            ticket = self.held[0]
            self._check_labels(labels, ticket, "inside dc.one_batch() the loss was called on another batch")
            return ticket
        self.sampler.check_rank(RuntimeError)
        if isinstance(current_epoch, int) and current_epoch - 1 > last_epoch:
            raise RuntimeError(
                f"epoch {current_epoch} is training, but DivideConquerWrapper's end-of-epoch step was last taken after "
                f"epoch {last_epoch}: no reclustering, split or phase change would happen and the run would silently "
                f"train without D&C: {hints.end_epoch}. When resuming, load the wrapper's state_dict (saved with the "
                "model) first."
            )
        # labels on a device are checked on the device (below); the ticket's own checks then see only their length
        on_host = labels.device.type == "cpu" if torch.is_tensor(labels) else True
        ticket = self.sampler.pop_ticket(labels if on_host else None, hints.batch_size_holder, num_labels=len(labels))
        if not on_host:
            self._check_labels(labels, ticket, LABELS)
        if ticket.step - self.sampler._epoch_start >= self.sampler.batches_per_epoch:
            raise RuntimeError(
                f"a batch of epoch {last_epoch + 2} reached DivideConquerWrapper, but the end-of-epoch step after "
                f"epoch {last_epoch + 1} was not taken ({self.sampler.batches_per_epoch} batches an epoch): no "
                f"reclustering, split or phase change would happen and the run would silently train without D&C: "
                f"{hints.end_epoch}."
            )
        # all ranks must train the same learner at every step (their batches form one cluster batch), and draw
        # from the same plan (the fingerprint differs when their ClusterSamplers have different seeds)
        distributed.check_same_on_all_ranks(
            [ticket.version, ticket.pass_index, ticket.position, ticket.cluster, ticket.fingerprint],
            "the cluster batch of this step",
        )
        if self.held is not None:
            self.held[0] = ticket
        return ticket

    def _check_labels(self, labels, ticket, message):
        expected = torch.from_numpy(self.sampler.labels[ticket.indices])
        if torch.is_tensor(labels) and labels.device.type != "cpu":
            expected = expected.to(labels.device, non_blocking=True)
            self.flag(~(expected == labels.long()).all(), message)
        elif not np.array_equal(np.asarray(torch.as_tensor(labels)), expected.numpy()):
            raise RuntimeError(message)
