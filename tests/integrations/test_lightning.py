"""D&C in PyTorch Lightning (DivideConquerCallback), with a real Trainer on the CPU, one process; and the same run
through a plain loop, Lightning and PML's MetricLossOnly, step for step."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")

from pytorch_metric_learning import losses, miners  # noqa: E402

from pml_divide_conquer import DivideConquerSchedule  # noqa: E402
from pml_divide_conquer.integrations.lightning import DivideConquerCallback  # noqa: E402

import factory  # noqa: E402
from helpers import IndexedDataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits_0_to_4(digits):
    keep = np.flatnonzero(digits.labels < 5)
    return IndexedDataset(digits.data[keep].numpy(), digits.labels[keep])


@pytest.mark.parametrize("loss", ["margin", "arcface"])
def test_plain_loop_lightning_and_pml_trainer_train_the_same_run_bit_for_bit(digits_0_to_4, loss):
    """Digits 0-4, one seed, a split, reclusterings and a phase change: every step goes to the same learner with the
    same batch, the clusters are the same after every epoch, and losses and parameters are equal."""
    if loss == "margin":
        spec = dict(loss=losses.MarginLoss(margin=0.2, beta=1.2), miner=miners.DistanceWeightedMiner(0.5, 1.4))
    else:
        spec = dict(loss=losses.ArcFaceLoss(5, 16))
    spec.update(schedule=DivideConquerSchedule.journal(6, 2), batch_size=32, m=8)
    runs = {loop: factory.records(loop, digits_0_to_4, 6, **spec) for loop in factory.LOOPS}
    plain = runs["plain"]
    assert set(plain["learners"]) == {0, 1, 2}  # learners 0 and 1 (K=2 after the split), then the full embedding
    for loop in ("lightning", "pml"):
        other = runs[loop]
        assert other["learners"] == plain["learners"], loop
        assert all(np.array_equal(a, b) for a, b in zip(plain["indices"], other["indices"])), loop
        assert all(np.array_equal(a, b) for a, b in zip(plain["assignments"], other["assignments"])), loop
        assert other["losses"] == plain["losses"], loop
        assert all(torch.equal(a, b) for a, b in zip(plain["parameters"], other["parameters"])), loop


Module = factory.lightning_module
trainer = factory.lightning


@pytest.mark.parametrize("miner", ["none", "distance_weighted"])
def test_resume_from_a_lightning_checkpoint_is_bit_identical(digits, tmp_path, miner):
    """Also with the papers' DistanceWeightedMiner, which draws from torch's generator: the wrapper's state, loaded
    with the module before Lightning builds the epoch's iterator, carries it."""
    kw = dict(num_learners=4, recluster_every=1, full_embedding_epoch=5)
    if miner == "distance_weighted":
        kw.update(loss=losses.MarginLoss(margin=0.2, beta=1.2), miner=miners.DistanceWeightedMiner(cutoff=0.5))
    full, first, resumed = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = Module(factory.plain(factory.make(digits, **kw), setup=False), full)
        trainer(6, [DivideConquerCallback()]).fit(a)
        b = Module(factory.plain(factory.make(digits, **kw), setup=False), first)
        saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
        trainer(3, [DivideConquerCallback(), saver], enable_checkpointing=True).fit(b)
        c = Module(
            factory.plain(factory.make(digits, **kw), setup=False), resumed
        )  # fresh objects, as in a new process
        trainer(6, [DivideConquerCallback()]).fit(c, ckpt_path=str(tmp_path / "last.ckpt"))
    assert c.dc.last_epoch == 6 and c.dc.num_active == 4
    assert torch.equal(torch.stack(first + resumed), torch.stack(full))
    for (name, p), q in zip(a.state_dict().items(), c.state_dict().values()):
        assert not torch.is_tensor(p) or torch.equal(p, q), name


def test_without_the_callback_the_first_batch_says_what_to_add(digits):
    module = Module(factory.plain(factory.make(digits), setup=False))
    with pytest.raises(RuntimeError, match=r"add DivideConquerCallback\(\) to Trainer\(callbacks"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer(1).fit(module)


def test_a_dataloader_that_does_not_draw_from_the_cluster_sampler_is_refused(digits):
    parts = factory.plain(factory.make(digits), setup=False)
    parts["loader"] = torch.utils.data.DataLoader(digits, batch_size=16, shuffle=True)
    with pytest.raises(ValueError, match=r"use_distributed_sampler=False"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer(1, [DivideConquerCallback()]).fit(Module(parts))


def test_batch_sampler_view_and_a_wrapper_given_to_the_callback(digits):
    parts = factory.plain(factory.make(digits, num_learners=2), setup=False)
    parts["loader"] = torch.utils.data.DataLoader(digits, batch_sampler=parts["sampler"].batch_sampler())
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer(3, [DivideConquerCallback(parts["wrapper"])]).fit(Module(parts, losses))
    assert parts["wrapper"].num_active == 2 and len(losses) == 3 * len(parts["loader"])


def test_trunk_freezing_under_lightning_with_one_optimizer_of_several_groups(digits):
    parts = factory.plain(factory.make(digits, num_learners=2, recluster_every=2, freeze_trunk_epochs=1), setup=False)
    snapshots = []

    class Snap(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            snapshots.append([p.detach().clone() for p in parts["trunk"].parameters()])

    before = [p.detach().clone() for p in parts["trunk"].parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer(4, [DivideConquerCallback(), Snap()]).fit(Module(parts))
    changed = [any(not torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip([before] + snapshots, snapshots)]
    assert changed == [False, True, False, True]


def test_the_lightning_example_runs_two_ddp_processes_on_the_cpu(tmp_path):
    """examples/lightning_digits.py under Lightning's DDP (2 processes, gloo): every rank trains the same learner
    at every step on its share of one cluster batch (the wrapper checks it at each step)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lightning_digits.py"), "--devices", "2", "--epochs", "4"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "R@1" in done.stdout and "K=2" in done.stdout


def test_a_trainer_that_stops_before_the_schedule_s_phases_is_warned_at_fit_start(digits):
    schedule = DivideConquerSchedule.journal(num_epochs=12, num_learners=2)  # full embedding from epoch 6
    module = Module(factory.plain(factory.make(digits, num_learners=2, schedule=schedule), setup=False))
    with pytest.warns(UserWarning, match=r"pl.Trainer\(max_epochs=1\): the run stops after epoch 1, but the sche"):
        trainer(1, [DivideConquerCallback()], limit_train_batches=2).fit(module)
    fits = Module(factory.plain(factory.make(digits, num_learners=2, schedule=schedule), setup=False))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer(12, [DivideConquerCallback()], limit_train_batches=1).fit(fits)
    assert not [w for w in seen if "the run stops after epoch" in str(w.message)]
