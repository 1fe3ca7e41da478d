"""TicketStream: where the stream of cluster batches stands, and the tickets of the batches drawn from it.

The :class:`~pml_divide_conquer.ClusterSampler` draws its batches pass after pass over the clusters; the stream it
owns keeps the position after the last batch the loss received (the pass, the batch within it, the batches consumed
since training started and the first of the current epoch), the tickets of the batches drawn and not yet received,
in order, and which iterator is live (a new one drops what an abandoned one had prefetched). The wrapper's
:class:`~pml_divide_conquer.routing.Router` takes the tickets: :meth:`TicketStream.next_ticket`, then
:meth:`TicketStream.consume`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from .routing import Ticket


class TicketStream:
    """The position in the stream of cluster batches and the tickets of the batches drawn, not yet consumed.

    Examples:
        >>> stream = sampler.stream
        >>> ticket = stream.next_ticket()  # the batch the loss should receive next (None: none drawn)
        >>> stream.consume(ticket)         # it did: the stream goes on after it
        >>> stream.batches_this_epoch
        1
    """

    def __init__(self) -> None:
        self.pass_index, self.pos = 0, 0  # the next batch to consume: (pass, position) of the current assignment
        self.consumed, self.epoch_start = 0, 0  # batches consumed since training / since the last end-of-epoch step
        self.generation = 0  # the live iterator
        self._tickets: deque[Ticket] = deque()  # tickets of batches drawn, not consumed

    def restart(self) -> None:
        """A new assignment: its batches start from its first pass."""
        self.pass_index, self.pos = 0, 0

    def new_iterator(self) -> int:
        """A new iterator is live (the generation it is to check): the tickets an abandoned one drew are dropped,
        since they will never be consumed and the new one draws them again."""
        self.generation += 1
        self._tickets.clear()
        return self.generation

    def drew(self, ticket: Ticket) -> None:
        """The live iterator drew ``ticket``'s batch."""
        self._tickets.append(ticket)

    # ---------------------------------------------------------------- epochs

    def start_epoch(self) -> None:
        """The end-of-epoch step was taken: the batches consumed from now on belong to the next epoch."""
        self.epoch_start = self.consumed

    @property
    def batches_this_epoch(self) -> int:
        """Batches consumed since the current epoch started."""
        return self.consumed - self.epoch_start

    def position_in_epoch(self, ticket: Ticket) -> int:
        """Batches of the current epoch consumed before ``ticket``'s batch."""
        return ticket.step - self.epoch_start

    # ---------------------------------------------------------------- tickets (taken by the wrapper's Router)

    def next_ticket(self) -> Ticket | None:
        """The ticket of the next batch the loss should receive, or None when no drawn batch is waiting."""
        return self._tickets[0] if self._tickets else None

    def waiting_tickets(self) -> list[Ticket]:
        """The tickets of every batch drawn and not yet received, in order."""
        return list(self._tickets)

    def consume(self, ticket: Ticket) -> None:
        """The loss received the batch of ``ticket`` (the next ticket, or a later one when the loop skipped the
        batches before it): the stream goes on after it."""
        while self._tickets and self._tickets[0] is not ticket:
            self._tickets.popleft()
        if not self._tickets:
            raise ValueError("consume() got a ticket that is not waiting")
        self._tickets.popleft()
        self.pass_index, self.pos = ticket.pass_index, ticket.position + 1
        self.consumed = ticket.step + 1

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, int]:
        return {"pass": self.pass_index, "pos": self.pos, "consumed": self.consumed, "epoch_start": self.epoch_start}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Go on from the saved position (a live iterator stops: the next one starts there)."""
        self.pass_index, self.pos = int(state["pass"]), int(state["pos"])
        self.consumed = int(state.get("consumed", 0))
        self.epoch_start = int(state.get("epoch_start", self.consumed))
        self._tickets.clear()
        self.generation += 1
