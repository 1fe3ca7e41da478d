"""D&C under torch.distributed: 2 CPU processes with the gloo backend, and the DDP-aware sampler alone."""

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pml_divide_conquer import ClusterSampler, KMeansSettings, clustering


def test_ranks_draw_disjoint_halves_of_one_cluster_batch():
    labels = np.repeat(np.arange(12), 10)
    samplers = [ClusterSampler(labels, batch_size=8, m=4, seed=3, num_replicas=2, rank=r) for r in range(2)]
    for s in samplers:
        s.set_assignment(labels % 3)
    assert len(samplers[0]) == len(samplers[1])
    streams = [list(iter(s)) for s in samplers]
    tickets = [s.stream.waiting_tickets() for s in samplers]
    assert len(tickets[0]) == len(tickets[1]) > 0
    for t0, t1 in zip(*tickets):
        assert t0.cluster == t1.cluster and t0.position == t1.position
        both = np.concatenate([t0.indices, t1.indices])
        assert len(set(both.tolist())) == 16  # disjoint
        assert (labels[both] % 3 == t0.cluster).all()  # one cluster
        for t in (t0, t1):  # each rank's share is m-per-class too
            _, counts = np.unique(labels[t.indices], return_counts=True)
            assert (counts % 4 == 0).all()
    assert streams[0] != streams[1]


def test_set_epoch_records_the_epoch_and_leaves_the_stream_alone():
    """Lightning calls set_epoch every epoch (on the sampler and on batch_sampler.sampler): the batches follow one
    stream whose position the sampler keeps, so runs with and without those calls draw the same batches."""
    labels = np.repeat(np.arange(12), 10)
    a = ClusterSampler(labels, batch_size=8, m=4, seed=3, num_replicas=2, rank=0)
    b = ClusterSampler(labels, batch_size=8, m=4, seed=3, num_replicas=2, rank=0)
    a.set_epoch(5)
    assert a.epoch == 5 and list(iter(a)) == list(iter(b))
    a.set_epoch(6)
    assert list(iter(a)) == list(iter(b))


def test_ddp_sampler_errors_mention_the_ranks():
    with pytest.raises(ValueError, match="x 4 ranks"):
        ClusterSampler(np.repeat(np.arange(4), 10), batch_size=8, m=2, num_replicas=4, rank=0)
    with pytest.raises(ValueError, match="out of range"):
        ClusterSampler(np.repeat(np.arange(4), 10), batch_size=8, m=2, num_replicas=2, rank=2)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    from ddp_worker import worker

    folder = str(tmp_path_factory.mktemp("ddp"))
    mp.spawn(worker, args=(2, folder), nprocs=2, join=True)
    return [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=False) for r in range(2)]


def test_every_step_trains_the_same_learner_on_disjoint_indices_of_one_cluster(ddp_run):
    r0, r1 = ddp_run[0]["full"], ddp_run[1]["full"]
    assert len(r0) == len(r1) == 6 * 15
    for a, b in zip(r0, r1):
        assert a["learner"] == b["learner"]
        assert not set(a["indices"]) & set(b["indices"])
        assert a["clusters"] == b["clusters"] and len(a["clusters"]) == 1
        assert a["learner"] == a["clusters"][0]
    assert {a["learner"] for a in r0 if a["epoch"] >= 2} == {0, 1}  # split after epoch 1


def test_ddp_training_reduces_the_loss(ddp_run):
    losses = [a["loss"] for a in ddp_run[0]["full"]]
    assert np.mean(losses[-15:]) < 0.8 * np.mean(losses[:15])


def test_checkpoint_saved_once_resumes_on_all_ranks(ddp_run):
    for r in ddp_run:
        expected = [a["loss"] for a in r["full"] if a["epoch"] >= 4]
        got = [a["loss"] for a in r["resumed"]]
        assert got == expected


def test_ddp_reclustering_equals_single_process_clustering(ddp_run):
    r0, r1 = ddp_run
    assert np.array_equal(r0["new_assignment"], r1["new_assignment"])
    np.testing.assert_allclose(r0["gathered_embeddings"], r0["single_process_embeddings"], atol=1e-6)
    emb = r0["single_process_embeddings"]
    from ddp_worker import dataset

    labels = dataset().labels
    new = clustering.kmeans_with_retries(emb, 2, labels, KMeansSettings(seed=0))  # the same seed at every reclustering
    new = clustering.match_clusters(r0["old_assignment"], new, 2)
    assert np.array_equal(new, r0["new_assignment"])


def test_wrapper_inside_distributed_loss_wrapper_also_routes_exactly(ddp_run):
    o0, o1 = ddp_run[0]["outer"], ddp_run[1]["outer"]
    assert len(o0) == len(o1) == 30
    for a, b in zip(o0, o1):
        assert a["learner"] == b["learner"] == a["clusters"][0] == b["clusters"][0]
        assert np.isfinite(a["loss"])


def test_torchrun_example_runs_on_cpu():
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        os.path.join(root, "examples", "ddp_digits.py"),
        "--epochs",
        "4",
    ]
    # (a crash says where each rank was: faulthandler dumps the Python stacks on SIGABRT)
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root, env=env)
    report = f"exit {done.returncode}\nstdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-12000:]}"
    assert done.returncode == 0, report
    line = [x for x in done.stdout.splitlines() if "test R@1" in x]
    assert line and line[0].startswith("2 ranks, 4 epochs, K=2"), report


def test_samplers_with_different_seeds_on_different_ranks_are_caught(ddp_run):
    for r in ddp_run:
        assert r["seed_mismatch"] is not None and "differs across ranks" in r["seed_mismatch"]
        assert "same ClusterSampler seed" in r["seed_mismatch"]


def test_feature_memory_rows_live_on_one_rank_each_and_resume_exactly(ddp_run):
    r0, r1 = ddp_run
    for a, b in zip(r0["fm_full"], r1["fm_full"]):  # routing stays exact with the memory on
        assert a["learner"] == b["learner"] and not set(a["indices"]) & set(b["indices"])
    n = r0["fm_bytes"][2]
    for rank, r in enumerate(ddp_run):  # sample i lives on rank i % 2, and only there
        assert r["fm_own"].tolist() == list(range(rank, n, 2)) and len(r["fm_rows"]) == len(r["fm_own"])
        rows_bytes, bookkeeping, _ = r["fm_bytes"]
        assert rows_bytes == len(r["fm_own"]) * r["fm_rows"].shape[1] * 2 and bookkeeping <= 16 * n
    # each row is the newest row computed for its sample, whichever rank computed it
    newest = {}
    for r in ddp_run:
        for i, (step, row) in r["fm_computed"].items():
            if i not in newest or step > newest[i][0]:
                newest[i] = (step, row)
    assert newest
    for i, (_step, row) in newest.items():
        owner = ddp_run[i % 2]
        np.testing.assert_array_equal(owner["fm_rows"][i // 2], row)
    for r in ddp_run:
        seen = r["fm_stamps"] > 0
        np.testing.assert_allclose(np.linalg.norm(r["fm_rows"][seen], axis=1), 1.0, atol=2e-3)
    for r in ddp_run:  # resumed from rank 0's checkpoint: exactly the losses of the uninterrupted run
        expected = [a["loss"] for a in r["fm_full"] if a["epoch"] >= 4]
        assert [a["loss"] for a in r["fm_resumed"]] == expected


def test_a_plain_ddp_loop_with_the_wrapper_inside_an_efficient_distributed_loss_wrapper(ddp_run):
    """PML's DDP example wraps the loss in DistributedLossWrapper(efficient=True): the wrapper then gets this rank's
    embeddings and the gathered ones as ref_emb. Both ranks train the same learner on their shares of one cluster
    batch, through a split, and every epoch has len(loader) steps."""
    p0, p1 = ddp_run[0]["plain"], ddp_run[1]["plain"]
    assert len(p0) == len(p1) == 3 * ddp_run[0]["plain_len"]
    for a, b in zip(p0, p1):
        assert a["learner"] == b["learner"] == a["clusters"][0] == b["clusters"][0]
        assert not set(a["indices"]) & set(b["indices"]) and np.isfinite(a["loss"])
    assert {a["learner"] for a in p0 if a["epoch"] >= 2} == {0, 1}


def test_a_fault_one_rank_finds_is_raised_on_every_rank(ddp_run):
    """A fault flagged in one rank's batches, and a clustering that fails on rank 0 (which clusters for all): every
    rank raises (the one that found it, its own error; the others, an error that says where to look), none waits
    for ever in a collective, and the refused step changes nothing."""
    zero, one = (r["faults"] for r in ddp_run)
    assert one["flagged"] == "FloatingPointError: rank 1's batches held NaN"
    assert zero["flagged"].startswith("RuntimeError: another rank found a fault in its batches")
    assert zero["last_epoch_after_flagged"] == one["last_epoch_after_flagged"] == 1
    assert zero["clustering"] == "ValueError: k-means failed on rank 0"
    assert one["clustering"].startswith("RuntimeError: the reclustering failed on rank 0")
