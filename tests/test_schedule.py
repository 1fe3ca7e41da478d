import pytest
from hypothesis import given
from hypothesis import strategies as st

from pml_divide_conquer.schedule import CONQUER, NONE, RECLUSTER, SPLIT, DivideConquerSchedule


def test_journal_schedule_doubles_every_T_epochs_up_to_max():
    s = DivideConquerSchedule(num_learners=8, recluster_every=2)
    assert [s.learners_in_epoch(e) for e in range(1, 11)] == [1, 1, 2, 2, 4, 4, 8, 8, 8, 8]
    actions = [s.step_after_epoch(e).action for e in range(0, 10)]
    assert actions == [NONE, NONE, SPLIT, NONE, SPLIT, NONE, SPLIT, NONE, RECLUSTER, NONE]


def test_cvpr_schedule_clusters_before_training_and_every_T():
    s = DivideConquerSchedule(num_learners=8, recluster_every=2, grow=False, conquer_epoch=7)
    assert s.step_after_epoch(0).action == RECLUSTER
    assert [s.step_after_epoch(e).action for e in range(1, 9)] == [NONE, RECLUSTER, NONE, RECLUSTER, NONE, CONQUER, NONE, NONE]
    assert [s.phase_in_epoch(e) for e in (6, 7, 8)] == ["divide", "conquer", "conquer"]


def test_conquer_from_the_start():
    s = DivideConquerSchedule(num_learners=4, conquer_epoch=1)
    assert s.step_after_epoch(0).action == CONQUER


def test_bad_schedules_raise_clear_errors():
    with pytest.raises(ValueError, match="power of two"):
        DivideConquerSchedule(num_learners=6)
    DivideConquerSchedule(num_learners=6, grow=False)
    with pytest.raises(ValueError, match="recluster_every"):
        DivideConquerSchedule(recluster_every=0)
    with pytest.raises(ValueError, match="conquer_epoch"):
        DivideConquerSchedule(conquer_epoch=0)


@given(
    log_k=st.integers(0, 5),
    T=st.integers(1, 5),
    conquer=st.one_of(st.none(), st.integers(1, 40)),
    grow=st.booleans(),
)
def test_steps_are_consistent_with_learner_counts(log_k, T, conquer, grow):
    s = DivideConquerSchedule(num_learners=2**log_k, recluster_every=T, conquer_epoch=conquer, grow=grow)
    for e in range(1, 40):
        step = s.step_after_epoch(e)
        k_now, k_next = s.learners_in_epoch(e), s.learners_in_epoch(e + 1)
        assert step.num_learners == k_next
        assert 1 <= k_now <= k_next <= 2**log_k
        if step.action == SPLIT:
            assert k_next == 2 * k_now and e % T == 0
        else:
            assert k_next == k_now
        if step.action == RECLUSTER:
            assert e % T == 0 and k_next > 1
        if step.action == CONQUER:
            assert conquer == e + 1
        if s.phase_in_epoch(e) == "conquer":
            assert step.action == NONE
