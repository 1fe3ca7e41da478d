"""Routing: which learner a training batch goes to, from the sampler's record (ticket) of that batch, checked
against what the loop hands the loss - without reading device values on the host at each step.

Every check of a batch against what the :class:`~pml_divide_conquer.ClusterSampler` drew, and every message to
the loop about it, is here. What can only be checked on the device (non-finite embeddings, labels on a GPU that
do not match the ticket) is noted in a device flag and raised at the next :meth:`Router.check` (the end-of-epoch
step: one sync an epoch); on the CPU, where reading costs nothing, at once.
"""

import contextlib
from typing import NamedTuple

import numpy as np
import torch

from . import distributed, notices
from .planning import as_int_array

NONFINITE = (
    "non-finite values (NaN or inf) in the embeddings reaching DivideConquerWrapper: the model has diverged or the "
    "input contains NaN. Lower the learning rate or check the data."
)
LABELS = (
    "the labels the loss received do not match the batch ClusterSampler drew, so the batch cannot be routed to its "
    "learner. Build ClusterSampler from the labels exactly as the loop hands them to the loss (after PML's "
    "set_min_label_to_zero / dataset_labels / label_hierarchy_level), in dataset order. (Calling the loss twice for "
    "one batch, as LBFGS or SAM closures do: wrap the calls in `with dc.one_batch():`.)"
)
NOT_DRAWN = (
    "DivideConquerWrapper received a batch that its ClusterSampler did not draw: most likely a batch of another "
    "DataLoader (a validation loss computed in train() mode: call dc.eval() first), or a training DataLoader "
    "that does not draw from the wrapper's ClusterSampler (give it sampler=<that ClusterSampler>)."
)
SECOND_CALL = (
    "the loss was called a second time for the batch it had just received (an LBFGS or SAM closure, a diagnostic "
    "after the training call): wrap the calls of one batch in `with dc.one_batch():`, or compute a diagnostic in "
    "dc.eval() mode."
)
NONFINITE_MEMORY = (
    "a float16 batch overflowed (its embeddings are NaN or inf) and the loss keeps a CrossBatchMemory: they would "
    "enter the memory, and every later batch's loss would be NaN until they leave it (a GradScaler skipping each "
    "of those steps, the run training nothing). Train a memory loss in bfloat16 or float32 autocast, or lower the "
    "learning rate."
)
NONFINITE_LOSS = (
    "the loss DivideConquerWrapper computed is NaN or inf while its embeddings are finite: the wrapper's own "
    "parameters (the learned masks, a classification head) have diverged. Lower their learning rate (the masks' "
    "mask_lr_multiplier, the loss's optimizer), or look for a NaN in them before this step."
)
EVAL_WITH_GRADIENTS = (
    "DivideConquerWrapper is in eval mode but gradients are being computed: in eval mode it trains no learner. "
    "Call .train() on it, or on the module holding it, before training (Lightning keeps the mode modules had when "
    "fit() started; PML: keep it out of freeze_these)."
)
LOOKAHEAD_ON_DEVICE = 4  # later tickets a batch with labels on a device is compared with, to name a skip
STALE = (
    "a batch drawn before the last reclustering reached the loss. Change clusters only through the wrapper's "
    "end-of-epoch step (or recluster()), between epochs; after a reclustering inside an epoch, start a new "
    "iterator over the DataLoader, so that no stale prefetched batch is trained on."
)
AS_BATCH_SAMPLER = (
    "ClusterSampler yields sample indices, but the DataLoader got it as batch_sampler=. Pass "
    "DataLoader(dataset, batch_size=..., sampler=sampler) or "
    "DataLoader(dataset, batch_sampler=sampler.batch_sampler())."
)


class Ticket(NamedTuple):
    """The sampler's record of one batch it drew: what the loss must receive, and which learner trains on it."""

    version: int  # which cluster assignment it was drawn from
    pass_index: int
    position: int  # batch number within the pass
    cluster: int
    indices: np.ndarray  # this rank's share of the batch
    fingerprint: int  # of the whole cluster batch (all ranks): equal on all ranks when their plans agree
    step: int  # batches consumed before this one since training started (the same on all ranks)


def skipped(count, on_device=False):
    """The message for a batch the loss received ``count`` batches after the one the sampler expected."""
    where = (
        " (The labels are on a device, where they are checked without a host sync: this is raised at the epoch end, "
        "after the epoch trained with misrouted batches.)"
        if on_device
        else ""
    )
    return (
        f"the loss received the batch ClusterSampler drew {count} batch(es) after the one it expected: the loop "
        f"skipped {count} batch(es) without saying so (a caught exception and `continue`, an `if ...: continue`). "
        "Call dc.skip_batch() for each batch the loop does not pass to the loss, before moving on, so that the next "
        "batch is routed to its own learner. (A batch the loss received is taken already, even if it raised: do not "
        "skip it again.)" + where
    )


class FirstIndex(int):
    """The first sample index of each sampler iterator: an ordinary int, but one that a DataLoader given the
    ClusterSampler as ``batch_sampler=`` (which takes each index for a batch of indices and iterates it) stops at
    with what to pass instead, rather than torch's "'int' object is not iterable"."""

    def __iter__(self):
        raise TypeError(AS_BATCH_SAMPLER)


class Router:
    """Takes the ticket of each training batch in order (inside ``dc.one_batch()``, the first call's for every
    call) and checks the batch against it.

    Examples:
        >>> router = Router(sampler)
        >>> ticket = router.take(labels, hints, last_epoch=0, current_epoch=None)
        >>> router.check()  # raises what the device flags hold
    """

    def __init__(self, sampler):
        self.sampler = sampler
        self.held = None  # inside holding(): [the batch's ticket, or None yet]
        self.flags = {}  # message -> a device bool tensor: something to raise at the next check
        self.last = None  # the ticket of the last batch taken
        self.nonfinite_batches = 0  # float16 batches with non-finite embeddings this epoch (a tensor on a device)

    @contextlib.contextmanager
    def holding(self):
        """Every batch taken inside the block is the first one (``dc.one_batch()``: LBFGS or SAM closures)."""
        self.held = [None]
        try:
            yield
        finally:
            self.held = None

    def flag(self, bad, message, error=RuntimeError):
        """Raise ``error(message)`` if the boolean tensor ``bad`` is true: now on the CPU, at the next check on a
        device."""
        if bad.device.type == "cpu":  # (read through numpy: on the CPU nothing waits for a device)
            if bad.numpy().any():
                raise error(message)
            return
        key = (message, error)
        self.flags[key] = bad if key not in self.flags else self.flags[key] | bad

    def count_nonfinite(self, bad):
        """Count a batch with non-finite embeddings under float16 autocast (no host sync on a device)."""
        self.nonfinite_batches = self.nonfinite_batches + bad.to(torch.long)

    def check(self):
        """Raise what was flagged on the device since the last check (one host sync per flag); return, and reset,
        the number of float16 batches with non-finite embeddings since then."""
        flags, self.flags = self.flags, {}
        raised = next(((message, error) for (message, error), bad in flags.items() if bool(bad)), None)
        count, self.nonfinite_batches = int(self.nonfinite_batches), 0
        batches = self.sampler.stream.batches_this_epoch
        diverged = bool(count and count >= batches)
        # under DDP every rank learns what any found (one collective), so that all raise: a rank that raised alone
        # would leave the others waiting in the next collective
        anywhere_raised, anywhere_diverged = distributed.max_over_ranks([raised is not None, diverged])
        if raised is not None:
            raise raised[1](raised[0])
        if anywhere_raised:
            raise RuntimeError(
                "another rank found a fault in its batches since the last end-of-epoch step: its error says what"
            )
        if anywhere_diverged:
            raise FloatingPointError(
                f"every batch since the last end-of-epoch step ({count}) had non-finite embeddings under float16 "
                "autocast: the model has diverged, which a GradScaler cannot undo. Lower the learning rate, or train "
                "in bfloat16 or float32."
                if diverged
                else "every batch of another rank since the last end-of-epoch step had non-finite embeddings under "
                "float16 autocast: the model has diverged. Lower the learning rate, or train in bfloat16 or float32."
            )
        if count:
            notices.warn(
                f"{count} of the {batches} batches since the last end-of-epoch step had non-finite embeddings under "
                "float16 autocast: a GradScaler skips their steps, and their features were not kept for "
                "reclustering (float16 overflows; bfloat16 does not)."
            )
        return count

    def skip(self):
        """The loop will not pass the next batch the sampler drew to the loss: take its ticket (``dc.skip_batch()``)."""
        ticket = self.sampler.stream.next_ticket()
        if ticket is None:
            raise RuntimeError(
                "dc.skip_batch() was called, but no batch the sampler drew is waiting: call it for a batch the "
                "DataLoader gave that the loop does not pass to the loss (a batch the loss received is taken already)"
            )
        self.sampler.stream.consume(ticket)
        self.last = None
        return ticket

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
        sampler = self.sampler
        sampler.check_rank(RuntimeError)
        if isinstance(current_epoch, int) and current_epoch - 1 > last_epoch:
            raise RuntimeError(
                f"epoch {current_epoch} is training, but DivideConquerWrapper's end-of-epoch step was last taken after "
                f"epoch {last_epoch}: no reclustering, split or phase change would happen and the run would silently "
                f"train without D&C: {hints.end_epoch}. When resuming, load the wrapper's state_dict (saved with the "
                "model) first."
            )
        ticket = sampler.stream.next_ticket()
        if ticket is None:
            raise RuntimeError(SECOND_CALL if self._same(labels, self.last) else NOT_DRAWN)
        size = len(labels)
        if size != len(ticket.indices):
            raise RuntimeError(
                f"the loss received a batch of {size} samples, but ClusterSampler draws batches of "
                f"{sampler.batch_size}. Give {hints.batch_size_holder} batch_size={sampler.batch_size} (the "
                "sampler's), and do not drop samples from the batch (e.g. with PML's subset_batch_miner)."
            )
        self._check_batch(labels, ticket)  # on a device: flagged there, raised at the epoch end
        if ticket.version != sampler.version:
            raise RuntimeError(STALE)
        sampler.stream.consume(ticket)
        self.last = ticket
        if sampler.stream.position_in_epoch(ticket) >= sampler.batches_per_epoch:
            raise RuntimeError(
                f"a batch of epoch {last_epoch + 2} reached DivideConquerWrapper, but the end-of-epoch step after "
                f"epoch {last_epoch + 1} was not taken ({sampler.batches_per_epoch} batches an epoch): no "
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

    def _expected(self, ticket, device=None):
        expected = self.sampler.labels[ticket.indices]
        return expected if device is None else torch.from_numpy(expected).to(device, non_blocking=True)

    def _same(self, labels, ticket):
        """Whether ``labels`` are those of ``ticket``'s batch (False for no ticket). Only on the way to an error, so
        labels on a device are read to the host (the one sync is the error's)."""
        if ticket is None:
            return False
        got = labels.detach().cpu() if torch.is_tensor(labels) else torch.as_tensor(labels)
        return np.array_equal(np.asarray(got), self._expected(ticket))

    def _check_batch(self, labels, ticket):
        """``labels`` are those of ``ticket``'s batch, or an error that says what happened: a batch the loop skipped
        (the labels are a later ticket's), a second call (the last batch's), other labels."""
        later = self.sampler.stream.waiting_tickets()[1:]
        if torch.is_tensor(labels) and labels.device.type != "cpu":
            labels, device = labels.long(), labels.device
            bad = ~(self._expected(ticket, device) == labels).all()
            skips = [(self._expected(t, device) == labels).all() for t in later[:LOOKAHEAD_ON_DEVICE]]
            skips = [bad & s for s in skips]
            for count, s in enumerate(skips, 1):
                self.flag(s, skipped(count, on_device=True))
            again = bad & (self._expected(self.last, device) == labels).all() if self.last is not None else bad & False
            known = again
            for s in skips:
                known = known | s
            self.flag(again, SECOND_CALL)
            self.flag(bad & ~known, LABELS)
            return
        got = as_int_array(labels, "the batch's labels")
        if got.ndim != 1:
            raise ValueError(f"expected 1-D labels, got shape {got.shape}")
        if np.array_equal(got, self._expected(ticket)):
            return
        for count, t in enumerate(later, 1):
            if np.array_equal(got, self._expected(t)):
                raise RuntimeError(skipped(count))
        raise RuntimeError(SECOND_CALL if self._same(got, self.last) else LABELS)

    def _check_labels(self, labels, ticket, message):
        """Raise (on the host) or flag (on a device) ``message`` if ``labels`` are not those of ``ticket``'s batch."""
        if torch.is_tensor(labels) and labels.device.type != "cpu":
            self.flag(~(self._expected(ticket, labels.device) == labels.long()).all(), message)
            return
        if not np.array_equal(as_int_array(labels, "the batch's labels"), self._expected(ticket)):
            raise RuntimeError(message)
