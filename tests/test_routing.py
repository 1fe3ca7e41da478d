"""Every batch reaches the learner of the cluster the sampler drew it from: real trainer, 2 workers, restarts."""

import warnings

import numpy as np
import torch
from pytorch_metric_learning import testers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from conftest import Recorder, build, drop_index


def test_each_batch_goes_to_the_learner_of_its_cluster_with_two_workers(digits):
    recorder = Recorder()
    log = []

    def after_iteration(trainer):
        w = parts["wrapper"]
        # the sampler's own cluster for the indices the DataLoader workers actually loaded
        log.append((trainer.epoch, recorder.last, w.current_learner, w.phase, parts["sampler"].assignment))

    tester = testers.GlobalEmbeddingSpaceTester(
        dataloader_num_workers=2,
        data_device=torch.device("cpu"),
        data_and_label_getter=drop_index,
        accuracy_calculator=AccuracyCalculator(include=("precision_at_1",), k=1),
    )
    accuracies = []

    def test_each_epoch(trainer):  # PML's tester on the full embedding, after the D&C step
        acc = tester.test({"val": digits}, trainer.epoch, trainer.models["trunk"], trainer.models["embedder"])
        accuracies.append(acc["val"]["precision_at_1_level0"])
        return True

    epochs, iters = 8, 130
    parts = build(
        digits,
        num_learners=4,
        recluster_every=2,
        conquer_epoch=8,
        workers=2,
        data_and_label_getter=recorder,
        end_of_iteration_hook=after_iteration,
        iterations_per_epoch=iters,  # longer than a pass: PML restarts the iterator mid-epoch
    )
    parts["trainer"].end_of_epoch_hook = parts["wrapper"].get_end_of_epoch_hook(then=test_each_epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=epochs)

    assert len(log) == epochs * iters
    used = set()
    for epoch, idx, learner, phase, assignment in log:
        clusters = np.unique(assignment[idx])
        assert len(clusters) == 1, f"epoch {epoch}: batch spans clusters {clusters}"
        if phase == "conquer":
            assert epoch == 8 and learner == 4  # the conquer learner, after the 4 cluster learners
        else:
            assert learner == clusters[0], f"epoch {epoch}: batch of cluster {clusters[0]} went to learner {learner}"
            used.add((epoch, learner))
    assert {l for e, l in used if e <= 2} == {0}
    assert {l for e, l in used if 3 <= e <= 4} == {0, 1}
    assert {l for e, l in used if 5 <= e <= 7} == {0, 1, 2, 3}
    # restarts really happened: PML's on exhaustion plus ours after each reclustering (with workers prefetching)
    assert parts["sampler"]._generation >= 8
    assert len(accuracies) == epochs and accuracies[-1] > 0.8


def test_hungarian_matching_keeps_learners_on_their_data(digits, monkeypatch):
    from pml_divide_conquer import clustering

    parts = build(digits, num_learners=4, grow=False, recluster_every=1)
    w, trainer, sampler = parts["wrapper"], parts["trainer"], parts["sampler"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w.prepare(trainer)
        first = sampler.assignment.copy()
        # k-means finds the same clusters but numbers them differently (a 4-cycle, not its own inverse) ...
        cycle = np.array([1, 2, 3, 0])
        monkeypatch.setattr(clustering, "kmeans_with_retries", lambda *a, **k: cycle[first])
        # ... and reclustering gives each learner back the cluster it trained on
        w.recluster(trainer)
    assert np.array_equal(sampler.assignment, first)


def test_clustering_uses_pml_tester_embeddings(digits):
    parts = build(digits, num_learners=2)
    emb = parts["wrapper"].embed_training_set(parts["trainer"])
    tester = testers.BaseTester(data_device=torch.device("cpu"), dataloader_num_workers=0,
                                data_and_label_getter=lambda b: b[:2])
    ref, _ = tester.get_all_embeddings(digits, parts["trunk"], parts["embedder"], return_as_numpy=True)
    assert np.allclose(emb, ref, atol=1e-6)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    trunk_parts = build(digits, num_learners=2)
    trunk_parts["wrapper"].cluster_on = "trunk"
    assert trunk_parts["wrapper"].embed_training_set(trunk_parts["trainer"]).shape == (len(digits), 32)
