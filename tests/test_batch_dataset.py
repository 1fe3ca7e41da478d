"""BatchArrayDataset: whole batches from ``__getitems__``, accepted by PML's trainers and testers, and giving the
same training and the same embeddings as the per-item ArrayDataset."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, samplers, testers, trainers
from sklearn.datasets import load_digits

from lab.datasets import ArrayDataset, BatchArrayDataset, pass_through_collate

import factory


class CountingBatches(BatchArrayDataset):
    """Counts the batches it served and the single items asked of it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = self.items = 0

    def __getitems__(self, indices):
        self.batches += 1
        return super().__getitems__(indices)

    def __getitem__(self, i):
        self.items += 1
        return super().__getitem__(i)


@pytest.fixture(scope="module")
def digits_arrays():
    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target


def test_getitems_returns_a_whole_batch(digits_arrays):
    x, y = digits_arrays
    ds = BatchArrayDataset(x, y)
    data, labels = ds.__getitems__([3, 0, 7])
    assert torch.equal(data, torch.as_tensor(x[[3, 0, 7]])) and labels.dtype == torch.int64
    assert labels.tolist() == y[[3, 0, 7]].tolist() and labels.device.type == "cpu"
    assert ds[3][1] == int(y[3]) and torch.equal(ds[3][0], data[0])  # per-item access still works
    assert ds.to("cpu") is ds and ds.device.type == "cpu"
    same = BatchArrayDataset.from_dataset(ArrayDataset(x, y))
    assert torch.equal(same.__getitems__([1, 2])[0], data.new_tensor(x[[1, 2]]))
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=BatchArrayDataset.collate_fn)
    batch_x, batch_y = next(iter(loader))
    assert batch_x.shape == (5, 64) and batch_y.tolist() == y[:5].tolist()


def _train_dc(dataset, **trainer_kwargs):
    run = factory.make(dataset, num_learners=2, batch_size=32, m=4, heads="shared")
    parts = factory.pml(run, data_and_label_getter=None, **trainer_kwargs)
    parts["wrapper"].prepare(parts["trainer"])
    torch.manual_seed(0)
    parts["trainer"].train(num_epochs=2)
    return parts


def test_dc_trainer_trains_on_batches_exactly_as_on_items(digits_arrays):
    x, y = digits_arrays
    batched = CountingBatches(x, y)
    a = _train_dc(batched, collate_fn=pass_through_collate)
    b = _train_dc(ArrayDataset(x, y))
    assert batched.batches > 0 and batched.items == 0  # training and reclustering (embedding) read batches only
    for (name, p), q in zip(a["trunk"].state_dict().items(), b["trunk"].state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert a["sampler"].num_clusters == 2 and np.array_equal(a["sampler"].assignment, b["sampler"].assignment)


def _train_mperclass(dataset, collate_fn):
    torch.manual_seed(0)
    np.random.seed(0)  # MPerClassSampler draws from numpy's global RNG
    trunk = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU())
    embedder = torch.nn.Linear(32, 16)
    labels = dataset.labels
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers={
            "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-3),
            "embedder_optimizer": torch.optim.Adam(embedder.parameters(), lr=1e-3),
        },
        batch_size=32,
        loss_funcs={"metric_loss": losses.TripletMarginLoss(margin=0.1)},
        dataset=dataset,
        sampler=samplers.MPerClassSampler(labels, 4, batch_size=32, length_before_new_iter=len(labels)),
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
        collate_fn=collate_fn,
    )
    trainer.train(num_epochs=1)
    return trunk, embedder


def test_mperclass_trainer_trains_on_batches_exactly_as_on_items(digits_arrays):
    x, y = digits_arrays
    batched = CountingBatches(x, y)
    a = _train_mperclass(batched, pass_through_collate)
    b = _train_mperclass(ArrayDataset(x, y), None)
    assert batched.batches == len(y) // 32
    for p, q in zip(a[0].parameters(), b[0].parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_tester_embeds_batches_exactly_as_items(digits_arrays):
    x, y = digits_arrays
    torch.manual_seed(0)
    trunk, embedder = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU()), torch.nn.Linear(32, 8)
    tester = testers.GlobalEmbeddingSpaceTester(
        batch_size=100, dataloader_num_workers=0, data_device=torch.device("cpu"), accuracy_calculator=None
    )
    batched = CountingBatches(x, y)
    emb_b, lab_b = tester.get_all_embeddings(batched, trunk, embedder, collate_fn=pass_through_collate)
    emb_i, lab_i = tester.get_all_embeddings(ArrayDataset(x, y), trunk, embedder)
    assert batched.batches == 18 and batched.items == 0
    assert torch.equal(lab_b, lab_i) and torch.allclose(emb_b, emb_i, atol=1e-6)
    acc_b = tester.test({"test": batched}, 0, trunk, embedder, collate_fn=pass_through_collate)
    acc_i = tester.test({"test": ArrayDataset(x, y)}, 0, trunk, embedder)
    assert acc_b["test"]["precision_at_1_level0"] == pytest.approx(acc_i["test"]["precision_at_1_level0"])
