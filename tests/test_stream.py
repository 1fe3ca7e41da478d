"""TicketStream: the position in the stream of cluster batches and the tickets of the batches drawn, in order; a new
iterator drops what an abandoned one prefetched; the position saves and loads."""

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pml_divide_conquer import ClusterSampler
from pml_divide_conquer.routing import Ticket
from pml_divide_conquer.stream import TicketStream


def ticket(step, pass_index=0, position=None):
    return Ticket(1, pass_index, step if position is None else position, 0, np.arange(2), 0, step)


def test_tickets_are_taken_in_order_and_a_later_one_skips_those_before_it():
    stream = TicketStream()
    generation = stream.new_iterator()
    drawn = [ticket(s) for s in range(4)]
    for t in drawn:
        stream.drew(t)
    assert stream.next_ticket() is drawn[0] and stream.waiting_tickets() == drawn
    stream.consume(drawn[0])
    stream.consume(drawn[2])  # the loop skipped drawn[1]
    assert stream.waiting_tickets() == [drawn[3]]
    assert (stream.pass_index, stream.pos, stream.consumed, stream.batches_this_epoch) == (0, 3, 3, 3)
    assert stream.position_in_epoch(drawn[3]) == 3 and stream.generation == generation
    with pytest.raises(ValueError, match="not waiting"):
        stream.consume(drawn[1])


def test_a_new_iterator_drops_the_prefetched_tickets_and_an_epoch_counts_from_its_start():
    stream = TicketStream()
    first = stream.new_iterator()
    stream.drew(ticket(0))
    stream.consume(stream.next_ticket())
    stream.drew(ticket(1))
    assert stream.new_iterator() == first + 1 and stream.next_ticket() is None
    stream.start_epoch()
    assert stream.batches_this_epoch == 0 and stream.position_in_epoch(ticket(1)) == 0


@settings(max_examples=50, deadline=None)
@given(pass_index=st.integers(0, 5), pos=st.integers(0, 50), consumed=st.integers(0, 500), into=st.integers(0, 50))
def test_the_position_saves_and_loads_and_a_loaded_stream_has_no_live_iterator(pass_index, pos, consumed, into):
    a = TicketStream()
    a.pass_index, a.pos, a.consumed, a.epoch_start = pass_index, pos, consumed, max(consumed - into, 0)
    b = TicketStream()
    generation = b.new_iterator()
    b.drew(ticket(0))
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() and b.next_ticket() is None and b.generation > generation
    b.restart()
    assert (b.pass_index, b.pos, b.consumed) == (0, 0, consumed)


def test_a_state_without_the_later_counters_loads_with_the_epoch_starting_there():
    stream = TicketStream()
    stream.load_state_dict({"pass": 2, "pos": 3})
    assert (stream.pass_index, stream.pos, stream.consumed, stream.batches_this_epoch) == (2, 3, 0, 0)


def test_the_example_runs():
    sampler = ClusterSampler(np.repeat(np.arange(4), 8), batch_size=8, m=4)
    iter(sampler).__next__()  # (an iterator draws the first batch)
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(TicketStream, globs={"sampler": sampler}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries >= 4
