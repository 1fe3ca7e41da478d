"""The package's warnings point at the user's line: the call in the user's code that led to them, not a line of
the package, nor of torch, PML or Lightning between the two."""

import inspect
import warnings

import numpy as np
import torch
from pytorch_metric_learning import losses

from pml_divide_conquer import (
    ClusterSampler,
    DivideConquerSchedule,
    DivideConquerWrapper,
    SubspaceMaskedEmbedder,
    notices,
)

import factory


def recorded(call):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        call()
    return seen


def test_a_warning_of_a_constructor_points_at_the_line_that_built_it():
    seen = recorded(lambda: DivideConquerSchedule(num_learners=4, conquer_epoch=7))
    line = inspect.currentframe().f_lineno - 1
    assert [(w.filename, w.lineno) for w in seen] == [(__file__, line)], [str(w.message) for w in seen]


def test_a_warning_of_the_sampler_points_at_the_loop_that_draws_its_batches():
    sampler = ClusterSampler(np.array([0] * 8 + [1] * 2), batch_size=4, m=4)
    seen = recorded(lambda: list(sampler))
    line = inspect.currentframe().f_lineno - 1
    assert [(w.filename, w.lineno) for w in seen] == [(__file__, line)], [str(w.message) for w in seen]
    seen = recorded(lambda: DivideConquerSchedule.journal(num_epochs=4, num_learners=8).unreached_learners())
    assert not seen  # a query does not warn; building the wrapper does (tests/test_schedule.py)


def test_a_warning_raised_under_pml_s_trainer_points_at_the_train_call(digits):
    """The reclustering after epoch 1 leaves class fragments smaller than m (digits, m=4): its warning, raised
    inside PML's trainer and its end-of-epoch hook, names the line that called trainer.train()."""
    run = factory.make(digits, num_learners=2, batch_size=32, m=4, heads="shared")
    parts = factory.pml(run, iterations_per_epoch=3)
    parts["wrapper"].prepare(parts["trainer"])
    seen = recorded(lambda: parts["trainer"].train(num_epochs=2))
    line = inspect.currentframe().f_lineno - 1
    fragments = [w for w in seen if "fewer than m=4" in str(w.message)]
    assert fragments and all((w.filename, w.lineno) == (__file__, line) for w in fragments)


def test_the_stack_level_is_at_least_the_caller_s():
    def caller():
        return notices.user_stacklevel()

    assert caller() >= 1


def test_classes_left_out_of_the_single_cluster_are_named_at_set_up_of_a_journal_run(digits):
    """A journal run draws its first epochs from the one cluster of all the data: a class with fewer than m
    samples is named at dc.setup(...), the first point where the schedule is known; a CVPR run (its K clusters at
    set-up) is not told of the single cluster."""
    labels = np.array(digits.labels).copy()
    keep = np.flatnonzero(labels != 9)[:300].tolist() + np.flatnonzero(labels == 9)[:3].tolist()
    data = torch.as_tensor(np.asarray(digits.data)[keep], dtype=torch.float32)
    subset = torch.utils.data.TensorDataset(data, torch.as_tensor(labels[keep]))
    for grow, expected in ((True, 1), (False, 0)):
        model = torch.nn.Sequential(torch.nn.Linear(64, 16), SubspaceMaskedEmbedder(16, 2))
        sampler = ClusterSampler(labels[keep], batch_size=16, m=4)
        schedule = DivideConquerSchedule(num_learners=2, grow=grow)
        dc = DivideConquerWrapper(losses.ContrastiveLoss(), embedder=model[1], sampler=sampler, schedule=schedule)
        optimizer = torch.optim.Adam(model.parameters())
        seen = recorded(lambda dc=dc, model=model, opt=optimizer: dc.setup(model, subset, optimizers=[opt]))
        line = inspect.currentframe().f_lineno - 1
        single = [w for w in seen if "(in the one cluster of all the data)" in str(w.message)]
        assert len(single) == expected and all((w.filename, w.lineno) == (__file__, line) for w in single)
