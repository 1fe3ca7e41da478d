import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pml_divide_conquer.schedule import Action, DivideConquerSchedule, Phase

NONE, RECLUSTER, SPLIT, ALL_DATA = Action.NONE, Action.RECLUSTER, Action.SPLIT, Action.ALL_DATA


def test_journal_schedule_doubles_every_T_epochs_up_to_max():
    s = DivideConquerSchedule(num_learners=8, recluster_every=2)
    assert [s.learners_in_epoch(e) for e in range(1, 11)] == [1, 1, 2, 2, 4, 4, 8, 8, 8, 8]
    actions = [s.step_after_epoch(e).action for e in range(0, 10)]
    assert actions == [NONE, NONE, SPLIT, NONE, SPLIT, NONE, SPLIT, NONE, RECLUSTER, NONE]


def test_full_embedding_phase_keeps_cluster_batches_and_reclustering():
    s = DivideConquerSchedule(num_learners=4, recluster_every=2, full_embedding_epoch=5, all_data_epoch=9)
    assert [s.phase_in_epoch(e) for e in (4, 5, 8, 9)] == [Phase.DIVIDE, Phase.FULL_EMBEDDING] * 1 + [
        Phase.FULL_EMBEDDING,
        Phase.ALL_DATA,
    ]
    # K keeps growing and reclustering goes on in the full-embedding phase; the all-data phase has one cluster
    assert [s.num_clusters_in_epoch(e) for e in range(1, 11)] == [1, 1, 2, 2, 4, 4, 4, 4, 1, 1]
    steps = [s.step_after_epoch(e) for e in range(0, 10)]
    assert [st.action for st in steps] == [NONE, NONE, SPLIT, NONE, SPLIT, NONE, RECLUSTER, NONE, ALL_DATA, NONE]
    assert steps[4].phase == Phase.FULL_EMBEDDING and steps[8].phase == Phase.ALL_DATA
    assert s.learners_in_epoch(10) == 4  # learners (subspaces) keep the K reached


def test_cvpr_schedule_clusters_before_training_and_every_T():
    s = DivideConquerSchedule(num_learners=8, recluster_every=2, grow=False, full_embedding_epoch=4, all_data_epoch=7)
    assert s.step_after_epoch(0).action == RECLUSTER
    assert [s.step_after_epoch(e).action for e in range(1, 9)] == [
        NONE,
        RECLUSTER,
        NONE,
        RECLUSTER,
        NONE,
        ALL_DATA,
        NONE,
        NONE,
    ]
    assert [str(s.phase_in_epoch(e)) for e in (3, 4, 6, 7, 8)] == [
        "divide",
        "full_embedding",
        "full_embedding",
        "all_data",
        "all_data",
    ]


def test_the_authors_schedules_for_their_epochs_and_scaled():
    j = DivideConquerSchedule.journal(180, 32)
    assert (j.full_embedding_epoch, j.all_data_epoch, j.grow, j.recluster_every) == (81, None, True, 2)
    assert j.num_clusters_in_epoch(11) == 32  # K=32 after 5 doublings
    c = DivideConquerSchedule.cvpr(200, 8)
    assert (c.full_embedding_epoch, c.all_data_epoch, c.grow) == (81, 191, False)  # finetune_epoch * 8 / 19 = 80
    short = DivideConquerSchedule.cvpr(12, 4)
    assert short.all_data_epoch == 12 and short.full_embedding_epoch == 6
    assert DivideConquerSchedule.journal(12, 4, freeze_trunk_epochs=1).full_embedding_epoch == 6
    one = DivideConquerSchedule.journal(1, 4)
    assert one.full_embedding_epoch == 1  # a one-epoch run is all full embedding
    with pytest.raises(ValueError, match="num_epochs"):
        DivideConquerSchedule.journal(0, 4)


def test_trunk_frozen_in_the_first_epoch_of_every_cycle_like_mod_epoch_freeze():
    s = DivideConquerSchedule(num_learners=4, recluster_every=2, freeze_trunk_epochs=1, all_data_epoch=9)
    # the journal code freezes the backbone when e % mod_epoch < mod_epoch_freeze (e counted from 0)
    assert [s.trunk_frozen_in_epoch(e) for e in range(1, 11)] == [True, False] * 4 + [False, False]
    assert s.step_after_epoch(0).trunk_frozen and not s.step_after_epoch(1).trunk_frozen
    with pytest.raises(ValueError, match="freeze_trunk_epochs"):
        DivideConquerSchedule(recluster_every=2, freeze_trunk_epochs=2)


def test_all_data_from_the_start():
    s = DivideConquerSchedule(num_learners=4, all_data_epoch=1)
    assert s.step_after_epoch(0).action == ALL_DATA


def test_conquer_epoch_is_deprecated_and_means_full_embedding_on_all_data():
    with pytest.warns(FutureWarning, match="conquer_epoch is deprecated"):
        s = DivideConquerSchedule(num_learners=4, conquer_epoch=7)
    assert (s.full_embedding_epoch, s.all_data_epoch) == (7, 7)
    with pytest.raises(ValueError, match="not both"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DivideConquerSchedule(num_learners=4, conquer_epoch=7, all_data_epoch=8)


def test_bad_schedules_raise_clear_errors():
    with pytest.raises(ValueError, match="power of two"):
        DivideConquerSchedule(num_learners=6)
    DivideConquerSchedule(num_learners=6, grow=False)
    with pytest.raises(ValueError, match="recluster_every"):
        DivideConquerSchedule(recluster_every=0)
    with pytest.raises(ValueError, match="all_data_epoch"):
        DivideConquerSchedule(all_data_epoch=0)
    with pytest.raises(ValueError, match="comes after all_data_epoch"):
        DivideConquerSchedule(full_embedding_epoch=9, all_data_epoch=5)


@given(
    log_k=st.integers(0, 5),
    T=st.integers(1, 5),
    full=st.one_of(st.none(), st.integers(1, 40)),
    all_data=st.one_of(st.none(), st.integers(1, 40)),
    grow=st.booleans(),
)
def test_steps_are_consistent_with_cluster_counts(log_k, T, full, all_data, grow):
    if full is not None and all_data is not None and full > all_data:
        full, all_data = all_data, full
    s = DivideConquerSchedule(
        num_learners=2**log_k, recluster_every=T, full_embedding_epoch=full, all_data_epoch=all_data, grow=grow
    )
    for e in range(1, 40):
        step = s.step_after_epoch(e)
        k_now, k_next = s.num_clusters_in_epoch(e), s.num_clusters_in_epoch(e + 1)
        assert step.num_clusters == k_next and step.phase == s.phase_in_epoch(e + 1)
        assert 1 <= s.learners_in_epoch(e) <= s.learners_in_epoch(e + 1) <= 2**log_k
        if step.action == SPLIT:
            assert k_next == 2 * k_now and e % T == 0
        elif step.action != ALL_DATA:
            assert k_next == k_now
        if step.action == RECLUSTER:
            assert e % T == 0 and k_next > 1 and step.phase != Phase.ALL_DATA
        if step.action == ALL_DATA:
            assert all_data == e + 1
        if s.phase_in_epoch(e) == Phase.ALL_DATA:
            assert step.action == NONE


def test_the_docstring_examples_run():
    import doctest

    from pml_divide_conquer import schedule

    assert doctest.testmod(schedule, optionflags=doctest.ELLIPSIS).failed == 0


def test_a_schedule_that_cannot_reach_its_K_says_what_would():
    """journal(6, 8) ends the divide phase at K=2, journal(12, 8) at K=4 (T=2): learners that never train."""
    short = DivideConquerSchedule.journal(num_epochs=6, num_learners=8)
    assert (short.divide_epochs(), short.learners_reached()) == (3, 2)
    assert DivideConquerSchedule.journal(num_epochs=12, num_learners=8).learners_reached() == 4
    message = short.unreached_learners()
    assert "ends after epoch 3 with K=2 of its 8 learners: learners 2-7" in message
    assert "needs 7 epochs to reach K=8: e.g. DivideConquerSchedule.journal(num_epochs=15, num_learners=8)" in message
    assert DivideConquerSchedule.journal(num_epochs=15, num_learners=8).unreached_learners() is None
    assert "or recluster_every=1" in DivideConquerSchedule.journal(num_epochs=12, num_learners=8).unreached_learners()
    for fine in (DivideConquerSchedule.cvpr(10, 8), DivideConquerSchedule(num_learners=8)):  # K from the start; no end
        assert fine.unreached_learners() is None


@settings(max_examples=150, deadline=None)
@given(log_k=st.integers(1, 5), T=st.integers(1, 4), num_epochs=st.integers(1, 200), freeze=st.integers(0, 3))
def test_the_suggested_journal_run_reaches_K_and_a_silent_one_reaches_it(log_k, T, num_epochs, freeze):
    freeze = min(freeze, T - 1)
    s = DivideConquerSchedule.journal(num_epochs, 2**log_k, recluster_every=T, freeze_trunk_epochs=freeze)
    message = s.unreached_learners()
    if message is None:
        assert s.learners_reached() in (2**log_k, 0)
        return
    suggested = eval("DivideConquerSchedule." + message.split("e.g. DivideConquerSchedule.")[1].split(")")[0] + ")")
    assert suggested.learners_reached() == 2**log_k  # (built as written: its arguments are valid together)
    assert (suggested.recluster_every, suggested.freeze_trunk_epochs) == (T, freeze)  # only the run's length
    assert suggested.full_embedding_epoch > s.full_embedding_epoch
    if "or recluster_every=" in message:
        faster = int(message.split("or recluster_every=")[1].split(".")[0])
        quicker = DivideConquerSchedule(
            num_learners=2**log_k, recluster_every=faster, full_embedding_epoch=s.full_embedding_epoch,
            freeze_trunk_epochs=freeze,
        )  # fmt: skip
        assert quicker.learners_reached() == 2**log_k


def test_a_schedule_with_an_all_data_phase_is_told_its_fields_not_the_journal():
    s = DivideConquerSchedule(num_learners=8, recluster_every=2, full_embedding_epoch=4, all_data_epoch=6)
    message = s.unreached_learners()
    assert "journal(" not in message
    assert "full_embedding_epoch and all_data_epoch no earlier than 8, or grow=False" in message
    assert DivideConquerSchedule(num_learners=8, full_embedding_epoch=8, all_data_epoch=8).unreached_learners() is None
    frozen = DivideConquerSchedule(num_learners=8, recluster_every=3, full_embedding_epoch=6, freeze_trunk_epochs=2)
    assert "recluster_every=1" not in frozen.unreached_learners()  # (T=1 could not freeze 2 epochs)
    assert "freeze_trunk_epochs=2" in frozen.unreached_learners()


def test_what_a_run_shorter_than_its_schedule_leaves_out():
    s = DivideConquerSchedule.journal(num_epochs=12, num_learners=4)
    assert "the run stops after epoch 3, but the schedule's full-embedding phase starts at epoch 6" in s.shortfall(3)
    assert s.shortfall(6) is None and s.shortfall(12) is None
    said = DivideConquerSchedule(num_learners=4).shortfall(2)
    assert "with K=1 of the schedule's 4 learners: train 5 epochs or more" in said
    assert DivideConquerSchedule(num_learners=4).shortfall(5) is None
    assert "or a smaller recluster_every" in said
    one = DivideConquerSchedule(num_learners=4, recluster_every=1).shortfall(2)
    assert "fewer learners." in one and "smaller recluster_every" not in one  # (T=1: none smaller)
