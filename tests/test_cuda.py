"""On a GPU (skipped without one): resuming from a checkpoint loaded onto the GPU, every PML loss on CUDA, the
whole-batch dataset on the device. CI has no GPU; run these where one is: ``pytest tests/test_cuda.py``."""

import os
import warnings

import numpy as np
import pytest
import torch

# PML_DC_TEST_DEVICE=cpu runs the same tests on the CPU (to check the tests themselves)
DEVICE = os.environ.get("PML_DC_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(
    "variant, T", [("masks", 1), ("arcface", 1), ("memory", 1), ("phases", 1), ("phases_frozen", 2)]
)
def test_resume_from_a_checkpoint_loaded_onto_the_gpu(digits, variant, T):
    """PML's HookContainer.load_latest_saved_models(trainer, folder, device) loads with map_location=device."""
    from factory import checkpoint as save
    from factory import restore as load
    from resume_runs import make

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = []
        a = make(digits, full, T, 0, variant, device=DEVICE)
        a["trainer"].train(num_epochs=4)
        b = make(digits, [], T, 0, variant, device=DEVICE)
        b["trainer"].train(num_epochs=2)
        buf = save(b)
        resumed = []
        c = make(digits, resumed, T, 0, variant, device=DEVICE)
        load(c, buf, map_location=DEVICE)
        c["wrapper"].prepare(c["trainer"])
        c["trainer"].train(start_epoch=3, num_epochs=4)
    assert np.array_equal(c["sampler"].assignment, a["sampler"].assignment)
    expected = [x for e, x in full if e > 2]
    assert len(resumed) == len(expected) > 0
    np.testing.assert_allclose([x for _, x in resumed], expected, rtol=1e-3, atol=1e-4)  # GPU kernels may differ


@pytest.mark.parametrize("mode", ["fixed"])  # learned masks: the classification losses, below
def test_every_pml_loss_trains_on_cuda(digits, mode):
    import factory
    from catalog import LOSSES, UPSTREAM_BROKEN
    from helpers import IndexedDataset

    keep = np.arange(0, len(digits), 3)
    small = IndexedDataset(digits.data[keep].numpy(), digits.labels[keep])
    for name in sorted(set(LOSSES) - UPSTREAM_BROKEN):
        seen = []
        parts = factory.pml(
            factory.make(
                small,
                num_learners=2,
                mode=mode,
                recluster_every=1,
                full_embedding_epoch=3,
                all_data_epoch=4,
                loss=LOSSES[name](),
                embedding_size=16,
                device=DEVICE,
                heads="shared",
            ),
            iterations_per_epoch=3,
            end_of_iteration_hook=lambda t, seen=seen: seen.append(float(t.losses["total_loss"])),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parts["wrapper"].prepare(parts["trainer"])
            parts["trainer"].train(num_epochs=4)
        assert len(seen) == 12 and np.isfinite(seen).all(), name


@pytest.mark.parametrize("heads", ["shared", "per_learner"])
def test_classification_heads_with_learned_masks_on_cuda(digits, heads):
    from pytorch_metric_learning import losses

    import factory

    parts = factory.pml(
        factory.make(
            digits,
            num_learners=2,
            mode="learned",
            heads=heads,
            recluster_every=1,
            full_embedding_epoch=3,
            all_data_epoch=4,
            loss=losses.ArcFaceLoss(10, 16),
            embedding_size=16,
            device=DEVICE,
        ),
        iterations_per_epoch=3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=4)
    assert parts["wrapper"].learners["full"].W.device.type == DEVICE


def test_whole_batch_dataset_on_the_gpu_trains_and_reclusters(digits):
    from lab.datasets import BatchArrayDataset

    import factory

    ds = BatchArrayDataset(digits.data.numpy(), digits.labels, device=DEVICE)
    parts = factory.pml(
        factory.make(ds, num_learners=2, recluster_every=1, device=DEVICE, heads="shared"),
        iterations_per_epoch=5,
        collate_fn=ds.collate_fn,
        data_and_label_getter=None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts["wrapper"].prepare(parts["trainer"])
        parts["trainer"].train(num_epochs=2)
    assert parts["wrapper"].num_active == 2 and parts["trunk"][0].weight.device.type == DEVICE


@pytest.mark.parametrize("variant", ["fixed", "learned", "arcface", "memory"])
def test_float16_autocast_with_a_grad_scaler_in_a_plain_loop(digits, variant):
    from pytorch_metric_learning import losses

    import factory

    kw = dict(num_learners=2, recluster_every=1, full_embedding_epoch=3, device=DEVICE)
    if variant == "learned":
        kw.update(mode="learned")
    elif variant == "arcface":
        kw.update(loss=losses.ArcFaceLoss(10, 16))
    elif variant == "memory":
        kw.update(recluster=dict(features_from="training", memory_device=DEVICE))
    parts = factory.plain(factory.make(digits, **kw))
    model, dc, opt = parts["model"], parts["wrapper"], parts["optimizer"]
    scaler = torch.amp.GradScaler(DEVICE)
    seen = []
    for _epoch in range(3):
        for x, y, _ in parts["loader"]:
            x, y = x.to(DEVICE), y.to(DEVICE)
            opt.zero_grad()
            with torch.autocast(DEVICE, dtype=torch.float16):
                emb = model(x)
                loss = dc(emb, y)
            assert emb.dtype == torch.float16 and loss.dtype == torch.float32
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            seen.append(loss.detach())
        dc.end_epoch()
    assert torch.isfinite(torch.stack(seen)).all() and dc.num_active == 2 and str(dc.phase) == "full_embedding"


def test_non_finite_embeddings_on_the_device_are_raised_at_the_epoch_end(digits):
    import factory

    parts = factory.plain(factory.make(digits, num_learners=2, device=DEVICE))
    model, dc = parts["model"], parts["wrapper"]
    x, y, _ = next(iter(parts["loader"]))
    emb = model(x.to(DEVICE))
    emb = emb + torch.tensor(float("nan"), device=DEVICE)
    if DEVICE == "cpu":  # nothing to wait for there: at once
        with pytest.raises(FloatingPointError, match="non-finite"):
            dc(emb, y.to(DEVICE))
        return
    dc(emb, y.to(DEVICE))  # no host sync in the step
    with pytest.raises(FloatingPointError, match="non-finite"):
        dc.end_epoch()


def test_the_step_reads_no_tensor_value_on_the_host_with_labels_on_the_device(digits, monkeypatch):
    from pytorch_metric_learning import losses, reducers

    import factory

    loss = losses.TripletMarginLoss(reducer=reducers.MeanReducer())
    parts = factory.plain(
        factory.make(digits, num_learners=2, device=DEVICE, loss=loss, recluster=dict(features_from="training"))
    )
    model, dc, opt = parts["model"], parts["wrapper"], parts["optimizer"]

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor value was read on the host during the step")

    for x, y, _ in parts["loader"]:
        x, y = x.to(DEVICE), y.to(DEVICE)
        opt.zero_grad()
        emb = model(x)
        with monkeypatch.context() as patch:
            for name in ("item", "__float__", "__bool__", "__int__", "tolist"):
                patch.setattr(torch.Tensor, name, refuse)
            dc(emb, y).backward()
        opt.step()
    dc.end_epoch()  # the flags are read here: nothing was wrong
    assert dc.last_epoch == 1


def test_a_skipped_batch_with_labels_on_the_gpu_is_named_at_the_epoch_end(digits):
    """On a device the labels are checked without a host sync: an unannounced skip is flagged there and raised,
    naming the skip, at the end of the epoch (on the CPU at once)."""
    import factory

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = factory.plain(factory.make(digits, num_learners=2, grow=False, device=DEVICE))
    dc, model = parts["wrapper"], parts["model"]
    batches = iter(parts["loader"])
    with pytest.raises(RuntimeError, match=r"the loop skipped 1 batch\(es\) without saying so"):
        for step, (x, y, _) in enumerate(batches):
            if step == 1:
                continue  # not passed to the loss, and not announced with dc.skip_batch()
            dc(model(x.to(DEVICE)), y.to(DEVICE))
        dc.end_epoch()


def test_a_second_call_with_labels_on_the_gpu_is_told_from_a_batch_not_drawn(digits):
    """With no batch waiting the call is refused at once; the labels are read to the host on that way to the error
    (no sync otherwise), so a second call for one batch still names dc.one_batch()."""
    import factory

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = factory.plain(factory.make(digits, num_learners=2, grow=False, device=DEVICE))
    dc, model = parts["wrapper"], parts["model"]
    x, y, _ = next(iter(parts["loader"]))
    x, y = x.to(DEVICE), y.to(DEVICE)
    dc(model(x), y)
    with pytest.raises(RuntimeError, match="called a second time for the batch it had just received.*one_batch"):
        dc(model(x), y)
    with pytest.raises(RuntimeError, match="did not draw: most likely a batch of another DataLoader"):
        dc(model(x), (y + 1) % 10)
