"""PML's own logging and checkpointing (record-keeper + HookContainer) around a D&C run."""

import glob
import logging
import os
import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners, testers
from pytorch_metric_learning.utils import logging_presets
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

import factory
from helpers import IndexedDataset


@pytest.fixture(scope="module")
def small(digits):
    keep = np.arange(0, len(digits), 3)
    return IndexedDataset(digits.data[keep].numpy(), digits.labels[keep])


def run_with_hooks(dataset, folder, epochs, start_fresh=True, losses_out=None, **spec):
    record_keeper, _, _ = logging_presets.get_record_keeper(
        os.path.join(folder, "logs"), os.path.join(folder, "tensorboard"), is_new_experiment=start_fresh
    )
    assert record_keeper is not None, "tensorboard is needed for PML's record keeper (dev extra)"
    hooks = logging_presets.get_hook_container(record_keeper, primary_metric="precision_at_1")
    tester = testers.GlobalEmbeddingSpaceTester(
        end_of_testing_hook=hooks.end_of_testing_hook,
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
        data_and_label_getter=factory.drop_index,
        accuracy_calculator=AccuracyCalculator(include=("precision_at_1",), k=1),
    )
    model_folder = os.path.join(folder, "models")

    def after_iteration(trainer):
        hooks.end_of_iteration_hook(trainer)
        if losses_out is not None:
            losses_out.append((trainer.epoch, float(trainer.losses["total_loss"])))

    parts = factory.pml(
        factory.make(
            dataset, **{"num_learners": 4, "mode": "learned", "recluster_every": 1, "heads": "shared", **spec}
        ),
        iterations_per_epoch=10,
        end_of_iteration_hook=after_iteration,
    )
    parts["trainer"].end_of_epoch_hook = parts["wrapper"].get_end_of_epoch_hook(
        then=hooks.end_of_epoch_hook(tester, {"val": dataset}, model_folder, test_interval=1, patience=None)
    )
    start_epoch = (
        1 if start_fresh else hooks.load_latest_saved_models(parts["trainer"], model_folder, torch.device("cpu"))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])  # after loading: a step already taken is not repeated
        parts["trainer"].train(start_epoch=start_epoch, num_epochs=epochs)
    return parts, hooks, record_keeper, start_epoch


def test_record_keeper_logs_learners_clusters_phase_and_masks(small, tmp_path):
    parts, hooks, record_keeper, _ = run_with_hooks(small, str(tmp_path), epochs=3)
    record_keeper.save_records()
    csvs = {os.path.basename(p): p for p in glob.glob(str(tmp_path / "logs" / "*.csv"))}
    name = "metric_loss_DivideConquerWrapper.csv"
    import csv

    with open(csvs[name]) as f:
        rows = list(csv.DictReader(f))
    assert rows, "nothing was logged for the wrapper"
    for col in (
        "num_active",
        "num_clusters",
        "phase_id",
        "full_loss",
        "learner0_loss",
        "cluster0_size",
        "cluster0_classes",
        "learner0_mask_usage",
    ):
        assert col in rows[0], col
    last = rows[-1]
    assert int(float(last["num_active"])) == 4
    sizes = [int(float(last[f"cluster{k}_size"])) for k in range(4)]
    assert sum(sizes) == len(small) and all(s > 0 for s in sizes)
    assert all(float(last[f"learner{k}_mask_usage"]) > 0 for k in range(4))
    # learners' own copies are logged under name-like keys too (no SQL table name starting with a digit)
    assert any("learner0" in n for n in csvs)
    assert glob.glob(str(tmp_path / "tensorboard" / "**" / "events.*"), recursive=True)


@pytest.mark.parametrize("miner", ["none", "distance_weighted"])
def test_hook_container_checkpoints_resume_the_run_exactly(small, tmp_path, miner):
    """Also with the papers' loss and miner: DistanceWeightedMiner draws from torch's generator, which the wrapper's
    state (saved by the HookContainer with the loss) carries."""
    spec = {}
    if miner == "distance_weighted":
        spec = dict(loss=losses.MarginLoss(margin=0.2), miner=miners.DistanceWeightedMiner(cutoff=0.5))
    full = []
    a, *_ = run_with_hooks(small, str(tmp_path / "a"), epochs=4, losses_out=full, **spec)
    first = []
    run_with_hooks(small, str(tmp_path / "b"), epochs=2, losses_out=first, **spec)  # "killed" after epoch 2
    resumed = []
    c, _, _, start_epoch = run_with_hooks(
        small, str(tmp_path / "b"), epochs=4, start_fresh=False, losses_out=resumed, **spec
    )
    assert start_epoch == 3
    assert c["wrapper"].last_epoch == 4 and c["wrapper"].num_active == 4
    assert [x for _, x in resumed] == [x for e, x in full if e > 2]  # bit for bit (one torch thread)
    assert np.array_equal(c["sampler"].assignment, a["sampler"].assignment)


def test_dc_events_go_to_the_pml_logger_at_info(small, caplog):
    parts = factory.pml(
        factory.make(
            small, num_learners=2, recluster_every=1, full_embedding_epoch=3, all_data_epoch=4, heads="shared"
        ),
        iterations_per_epoch=2,
    )
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="PML"):
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=4)
    events = [r.getMessage() for r in caplog.records if r.getMessage().startswith("D&C:")]
    assert events[0] == "D&C: divide phase from epoch 1"
    assert events[1].startswith("D&C: split every cluster in two after epoch 1 in ")
    assert "K=2, cluster sizes [" in events[1] and "(k-means " in events[1]
    assert events[2].startswith("D&C: reclustered after epoch 2 in ")
    w = parts["wrapper"]
    assert 0 < w.clustering_seconds < w.recluster_seconds
    assert events[3:] == ["D&C: full embedding phase from epoch 3", "D&C: all data phase from epoch 4"]
