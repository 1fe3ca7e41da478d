"""Every batch reaches the learner of the cluster the sampler drew it from: real trainer, 2 workers, restarts."""

import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import testers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from pml_divide_conquer import ClusterSampler
from pml_divide_conquer.routing import Router
from pml_divide_conquer.training import PLAIN_LOOP

import factory
from helpers import Recorder


def test_each_batch_goes_to_the_learner_of_its_cluster_with_two_workers(digits):
    recorder = Recorder()
    log = []

    def after_iteration(trainer):
        w = parts["wrapper"]
        # the sampler's own cluster for the indices the DataLoader workers actually loaded
        s = parts["sampler"]
        log.append((trainer.epoch, recorder.last, w.current_learner, str(w.phase), s.assignment, s.version))

    tester = testers.GlobalEmbeddingSpaceTester(
        dataloader_num_workers=2,
        data_device=torch.device("cpu"),
        data_and_label_getter=factory.drop_index,
        accuracy_calculator=AccuracyCalculator(include=("precision_at_1",), k=1),
    )
    accuracies = []

    def test_each_epoch(trainer):  # PML's tester on the full embedding, after the D&C step
        acc = tester.test({"val": digits}, trainer.epoch, trainer.models["trunk"], trainer.models["embedder"])
        accuracies.append(acc["val"]["precision_at_1_level0"])
        return True

    epochs, iters = 8, 130
    parts = factory.pml(
        factory.make(
            digits, num_learners=4, recluster_every=2, full_embedding_epoch=5, all_data_epoch=8, heads="shared"
        ),
        workers=2,
        data_and_label_getter=recorder,
        end_of_iteration_hook=after_iteration,
        iterations_per_epoch=iters,
    )
    parts["trainer"].end_of_epoch_hook = parts["wrapper"].get_end_of_epoch_hook(then=test_each_epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=epochs)

    assert len(log) == epochs * iters
    used, clusters_seen, versions = set(), {}, {}
    for epoch, idx, learner, phase, assignment, version in log:
        clusters = np.unique(assignment[idx])
        assert len(clusters) == 1, f"epoch {epoch}: batch spans clusters {clusters}"
        clusters_seen.setdefault(epoch, set()).add(int(clusters[0]))
        versions[epoch] = version
        if phase == "divide":
            assert epoch <= 4
            assert learner == clusters[0], f"epoch {epoch}: batch of cluster {clusters[0]} went to learner {learner}"
            used.add((epoch, learner))
        else:  # the full-embedding learner, after the 4 cluster learners
            assert learner == 4 and phase == ("full_embedding" if 5 <= epoch <= 7 else "all_data")
    assert {x for e, x in used if e <= 2} == {0}
    assert {x for e, x in used if 3 <= e <= 4} == {0, 1}
    # full embedding: batches still come from one cluster at a time (4 clusters), and reclustering goes on
    assert all(clusters_seen[e] == {0, 1, 2, 3} for e in (5, 6, 7))
    assert versions[7] > versions[6] > versions[4]
    # all data: one cluster holding everything
    assert clusters_seen[8] == {0} and np.all(log[-1][4] == 0)
    # restarts really happened: PML's on exhaustion plus ours after each reclustering (with workers prefetching)
    assert parts["sampler"].stream.generation >= 8
    assert len(accuracies) == epochs and accuracies[-1] > 0.8


def test_reclustering_with_workers_leaves_no_tracebacks(digits, capfd):
    """The iterator abandoned at each reclustering shuts its workers down before the next one forks its own (else
    the new workers inherit it and print "can only test a child process" tracebacks when they collect it)."""
    parts = factory.pml(
        factory.make(digits, num_learners=4, recluster_every=1, heads="shared"), workers=2, iterations_per_epoch=20
    )
    w, trainer = parts["wrapper"], parts["trainer"]
    abandoned = []
    trainer.end_of_epoch_hook = w.get_end_of_epoch_hook(then=lambda t: abandoned.append(t.dataloader_iter) or True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w.prepare(trainer)
        trainer.initialize_dataloader()
        before = trainer.dataloader_iter
        w.recluster(trainer)
        assert before._shutdown and not any(p.is_alive() for p in before._workers)
        assert trainer.dataloader_iter is not before
        trainer.train(num_epochs=3)
    import gc

    gc.collect()
    err = capfd.readouterr().err
    assert w.num_active == 4 and all(getattr(it, "_shutdown", True) for it in abandoned)
    assert "can only test a child process" not in err and "Exception ignored" not in err, err[-2000:]


def test_persistent_workers_survive_splits_reclusterings_and_a_phase_change(digits):
    """A DataLoader with persistent workers is reset, not shut down, when a reclustering drops its prefetched
    batches (shutting it down closes the queues its next epoch reuses: "Queue ... is closed")."""
    from pytorch_metric_learning import trainers

    class PersistentWorkers(trainers.MetricLossOnly):
        def initialize_dataloader(self):
            self.dataloader = torch.utils.data.DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                sampler=self.sampler,
                drop_last=True,
                num_workers=2,
                persistent_workers=True,
                prefetch_factor=4,
            )
            if not self.iterations_per_epoch:
                self.iterations_per_epoch = len(self.dataloader)
            self.dataloader_iter = iter(self.dataloader)

    recorder, log = Recorder(), []
    parts = factory.pml(
        factory.make(digits, num_learners=2, recluster_every=1, full_embedding_epoch=4, heads="shared"),
        trainer_cls=PersistentWorkers,
        data_and_label_getter=recorder,
        end_of_iteration_hook=lambda t: log.append(
            (t.epoch, recorder.last, parts["wrapper"].current_learner, parts["sampler"].assignment.copy())
        ),
        iterations_per_epoch=30,
    )
    w, trainer = parts["wrapper"], parts["trainer"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w.prepare(trainer)
        trainer.train(num_epochs=5)  # split after 1, reclusterings after 2 and 3, full embedding from 4
    assert len(log) == 5 * 30
    for epoch, idx, learner, assignment in log:
        clusters = np.unique(assignment[idx])
        assert len(clusters) == 1
        assert learner == (clusters[0] if epoch < 4 else 2), (epoch, learner, clusters)
    assert {learner for e, _, learner, _ in log if e in (2, 3)} == {0, 1}
    trainer.dataloader._iterator._shutdown_workers()


class CollectingDataset(torch.utils.data.Dataset):
    """Collects garbage in the worker that loads an item, as a worker's own garbage collector would at some point."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        import gc

        gc.collect()
        return torch.zeros(2)


def test_a_second_run_in_the_process_prints_no_tracebacks(digits, capfd):
    """After train(), the trainer's last iterator has no live workers: once the trainer is garbage (here a
    reference cycle, as a hook closure holding it makes), workers forked later in the process (a second run, a
    tester) collect it without "can only test a child process" tracebacks."""
    parts = factory.pml(
        factory.make(digits, num_learners=2, recluster_every=1, grow=False, heads="shared"),
        workers=2,
        iterations_per_epoch=20,
    )
    trainer = parts["trainer"]
    trainer.cycle = trainer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(trainer)
        trainer.train(num_epochs=2)
    assert not any(w.is_alive() for w in getattr(trainer.dataloader_iter, "_workers", []))
    del parts, trainer
    for _ in torch.utils.data.DataLoader(CollectingDataset(), batch_size=4, num_workers=2):
        pass
    err = capfd.readouterr().err
    assert "can only test a child process" not in err and "Exception ignored" not in err, err[-2000:]


def test_the_router_refuses_what_the_sampler_did_not_draw():
    labels = np.repeat(np.arange(4), 10)
    s = ClusterSampler(labels, batch_size=8, m=4)
    router = Router(s)
    with pytest.raises(RuntimeError, match="did not draw"):
        router.take(torch.zeros(8, dtype=torch.long), PLAIN_LOOP, 0, None)
    it = iter(s)
    idx = [next(it) for _ in range(8)]
    with pytest.raises(RuntimeError, match="batch of 4 samples.*Give the DataLoader batch_size=8"):
        router.take(torch.as_tensor(labels[idx[:4]]), PLAIN_LOOP, 0, None)
    with pytest.raises(RuntimeError, match="do not match"):
        router.take(torch.as_tensor(labels[idx]) + 1, PLAIN_LOOP, 0, None)
    ticket = router.take(torch.as_tensor(labels[idx]), PLAIN_LOOP, 0, None)
    assert np.array_equal(ticket.indices, idx) and s.stream.next_ticket() is None


def test_a_batch_drawn_before_a_reassignment_is_refused():
    labels = np.repeat(np.arange(4), 10)
    s = ClusterSampler(labels, batch_size=8, m=4)
    it = iter(s)
    idx = [next(it) for _ in range(8)]
    s.set_assignment(labels % 2)
    with pytest.raises(RuntimeError, match="before the last reclustering"):
        Router(s).take(torch.as_tensor(labels[idx]), PLAIN_LOOP, 0, None)


def test_a_dataloader_given_the_sampler_as_batch_sampler_says_what_to_pass(digits):
    sampler = ClusterSampler(digits.labels, batch_size=16, m=4)
    with pytest.raises(TypeError, match=r"got it as batch_sampler=\. Pass .*batch_sampler=sampler\.batch_sampler\(\)"):
        next(iter(torch.utils.data.DataLoader(digits, batch_sampler=sampler)))
    # the index that says so is an ordinary int to everything else
    first = next(iter(sampler))
    assert first == int(first) and digits[first][2] == int(first)


def routed_loop(digits):
    """Two learners from the start (clusters at set-up), in a plain loop; returns (parts, a batch iterator)."""
    parts = factory.plain(factory.make(digits, num_learners=2, grow=False))
    return parts, iter(parts["loader"])


def learner_of(parts, idx):
    return int(parts["sampler"].assignment[np.asarray(idx)][0])


def test_a_batch_the_loop_skips_without_saying_so_is_named(digits):
    parts, batches = routed_loop(digits)
    dc, model = parts["wrapper"], parts["model"]
    x, y, _ = next(batches)
    dc(model(x), y)
    next(batches)  # `if bad: continue`: this batch never reaches the loss
    x, y, _ = next(batches)
    with pytest.raises(RuntimeError, match=r"drew 1 batch\(es\) after the one it expected: the loop skipped 1"):
        dc(model(x), y)


def test_a_skip_the_loop_announces_keeps_every_batch_on_its_learner(digits):
    parts, batches = routed_loop(digits)
    dc, model = parts["wrapper"], parts["model"]
    for step in range(6):
        x, y, idx = next(batches)
        if step % 2:
            dc.skip_batch()
            continue
        dc(model(x), y)
        assert dc.current_learner == learner_of(parts, idx)
    with pytest.raises(RuntimeError, match="no batch the sampler drew is waiting"):
        dc.skip_batch()  # the batch the loss received is taken already


def test_a_batch_whose_loss_raised_is_taken_so_the_loop_can_go_on(digits):
    """``except FloatingPointError: continue`` after a NaN batch: the next batch is routed as usual."""
    parts, batches = routed_loop(digits)
    dc, model = parts["wrapper"], parts["model"]
    x, y, _ = next(batches)
    with pytest.raises(FloatingPointError):
        dc(model(x) * float("nan"), y)
    x, y, idx = next(batches)
    dc(model(x), y)
    assert dc.current_learner == learner_of(parts, idx)


def test_a_second_call_for_one_batch_and_a_batch_not_drawn_say_which_it_is(digits):
    parts, batches = routed_loop(digits)
    dc, model = parts["wrapper"], parts["model"]
    with pytest.raises(RuntimeError, match="did not draw: most likely a batch of another DataLoader"):
        dc(torch.randn(16, 16), torch.as_tensor(digits.labels[:16]))
    x, y, _ = next(batches)
    dc(model(x), y)
    with pytest.raises(RuntimeError, match="called a second time for the batch it had just received.*one_batch"):
        dc(model(x), y)
    next(batches)  # a batch waits: the same batch's labels again are still a second call
    with pytest.raises(RuntimeError, match="called a second time"):
        dc(model(x), y)
