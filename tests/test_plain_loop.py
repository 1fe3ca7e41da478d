"""D&C in a plain PyTorch loop (PML's README style: ``loss = dc(model(x), y)``), with no trainer anywhere."""

import io
import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners

from pml_divide_conquer import ClusterSampler, DivideConquerSchedule, DivideConquerWrapper, SubspaceMaskedEmbedder

import factory


def test_routing_is_exact_through_splits_reclusterings_and_phases_with_two_workers(digits):
    log = []
    parts = factory.plain(
        factory.make(digits, num_learners=4, recluster_every=2, full_embedding_epoch=6, all_data_epoch=8), workers=2
    )
    dc, sampler = parts["wrapper"], parts["sampler"]

    def after_step(epoch, idx, loss):
        log.append((epoch, idx, dc.current_learner, str(dc.phase), sampler.assignment.copy(), sampler.version))

    factory.train_plain(parts, 8, after_step=after_step)
    per_epoch = np.bincount([e for e, *_ in log])[1:]
    assert len(parts["loader"]) == len(digits) // 16 and (per_epoch == len(parts["loader"])).all()
    for epoch, idx, learner, phase, assignment, _ in log:
        clusters = np.unique(assignment[idx])
        assert len(clusters) == 1
        if phase == "divide":
            assert learner == clusters[0], (epoch, learner, clusters)
        else:
            assert learner == 4 and phase == ("full_embedding" if epoch < 8 else "all_data")
    assert {learner for e, _, learner, *_ in log if e in (5,)} == {0, 1, 2, 3}  # K = 1, 2 (after 2), 4 (after 4)
    assert {learner for e, _, learner, *_ in log if e in (3, 4)} == {0, 1}
    versions = {e: v for e, *_, v in log}
    assert versions[7] > versions[6] == versions[5]  # reclustering goes on in the full-embedding phase (T=2)
    assert dc.last_epoch == 8 and dc.num_active == 4


def test_an_epoch_has_len_loader_batches_whatever_K_and_an_lr_scheduler_sized_from_it_is_right(digits):
    parts = factory.plain(factory.make(digits, num_learners=4, recluster_every=1))
    steps = len(parts["loader"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(parts["optimizer"], max_lr=1e-3, total_steps=4 * steps)
    seen = []

    def after_step(epoch, idx, loss):
        seen.append(epoch)
        scheduler.step()  # would raise past total_steps if an epoch had more batches than len(loader)

    factory.train_plain(parts, 4, after_step=after_step)
    assert np.bincount(seen)[1:].tolist() == [steps] * 4 and parts["wrapper"].num_active == 4
    # the batch view: a DataLoader built with batch_sampler= has the same length and batches
    sampler = parts["sampler"]
    view = torch.utils.data.DataLoader(digits, batch_sampler=sampler.batch_sampler())
    assert len(view) == sampler.batches_per_epoch == steps
    x, y, idx = next(iter(view))
    assert len(idx) == 16 and len(np.unique(sampler.assignment[idx.numpy()])) == 1


def test_a_missed_end_of_epoch_step_is_one_clear_error(digits):
    parts = factory.plain(factory.make(digits, num_learners=2))
    model, dc, opt = parts["model"], parts["wrapper"], parts["optimizer"]
    with pytest.raises(RuntimeError, match=r"end-of-epoch step after epoch 1 was not taken.*call dc\.end_epoch\(\)"):
        for _epoch in (1, 2):
            for x, y, _ in parts["loader"]:
                opt.zero_grad()
                dc(model(x), y).backward()
                opt.step()
            # (no dc.end_epoch(): the first batch of epoch 2 says so)
    assert dc.last_epoch == 0


def test_calls_out_of_order_say_what_to_call(digits):
    parts = factory.plain(factory.make(digits, num_learners=2), setup=False)
    dc, model = parts["wrapper"], parts["model"]
    x, y, _ = next(iter(parts["loader"]))
    with pytest.raises(RuntimeError, match=r"was not set up: in your own loop call dc\.setup\(model, train_dataset"):
        dc(model(x), y)
    with pytest.raises(RuntimeError, match=r"end_epoch\(\) before set-up"):
        dc.end_epoch()
    with pytest.raises(ValueError, match="must contain the wrapper's SubspaceMaskedEmbedder"):
        dc.setup(parts["trunk"], digits, optimizers=[parts["optimizer"]])
    with pytest.raises(ValueError, match="must hold the 1797 samples"):
        dc.setup(model, torch.utils.data.Subset(digits, range(10)), optimizers=[parts["optimizer"]])
    with pytest.raises(TypeError, match=r"optimizers\[0\] is NoneType, not a torch optimizer"):
        dc.setup(model, digits, optimizers=[None])
    dc.setup(model, digits, optimizers=parts["optimizer"])
    with pytest.raises(RuntimeError, match="never taken"):
        dc.end_epoch(3)


def test_dataloader_misuse_is_refused_with_what_to_pass(digits):
    parts = factory.plain(factory.make(digits))
    dc, model = parts["wrapper"], parts["model"]
    with pytest.raises(TypeError, match=r"batch_sampler=sampler\.batch_sampler\(\)"):
        next(iter(torch.utils.data.DataLoader(digits, batch_sampler=parts["sampler"])))
    x, y, _ = next(iter(torch.utils.data.DataLoader(digits, batch_size=32, sampler=parts["sampler"])))
    with pytest.raises(RuntimeError, match="a batch of 32 samples, but ClusterSampler draws batches of 16. Give the "):
        dc(model(x), y)  # the first batch says so


def test_a_loss_parameter_no_optimizer_holds_and_a_mixed_trunk_group_are_refused(digits):
    parts = factory.plain(factory.make(digits, loss=losses.ArcFaceLoss(10, 16)), setup=False)
    dc, model = parts["wrapper"], parts["model"]
    only_model = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="trainable parameters that no optimizer holds"):
        dc.setup(model, digits, optimizers=[only_model])
    frozen = factory.plain(factory.make(digits, freeze_trunk_epochs=1, recluster_every=2), setup=False)
    everything = torch.optim.Adam(frozen["model"].parameters())
    with pytest.raises(ValueError, match="give the trunk a group of its own"):
        frozen["wrapper"].setup(frozen["model"], digits, optimizers=[everything])


def test_one_module_model_ending_with_the_embedder_clusters_the_embedder_input(digits):
    """A single model (not trunk + embedder): the features clustered with cluster_on="trunk" are what the
    SubspaceMaskedEmbedder receives; the model that is the embedder itself is refused for that space."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU())
            self.head = SubspaceMaskedEmbedder(16, 2, embedder=torch.nn.Linear(32, 16))

        def forward(self, x):
            return self.head(self.body(x) * 1.0)

    torch.manual_seed(0)
    net = Net()
    sampler = ClusterSampler(digits.labels, batch_size=16, m=4)
    schedule = DivideConquerSchedule(num_learners=2, recluster_every=1)
    dc = DivideConquerWrapper(losses.ContrastiveLoss(), embedder=net.head, sampler=sampler, schedule=schedule)
    dc.setup(net, digits, optimizers=[torch.optim.Adam(net.parameters())])
    features = dc.embed_training_set()
    with torch.no_grad():
        expected = torch.nn.functional.normalize(net.body(digits.data), dim=1).numpy()
    np.testing.assert_allclose(features, expected, atol=1e-6)
    other = DivideConquerWrapper(losses.ContrastiveLoss(), embedder=net.head, sampler=sampler)
    with pytest.raises(ValueError, match="is the embedder itself"):
        other.setup(net.head, digits)


def state_of(parts):
    buf = io.BytesIO()
    torch.save(
        {
            "model": parts["model"].state_dict(),
            "optimizer": parts["optimizer"].state_dict(),
            "dc": parts["wrapper"].state_dict(),
        },
        buf,
    )
    buf.seek(0)
    return buf


@pytest.mark.parametrize("variant", ["masks", "arcface_memory", "distance_weighted"])
def test_resume_in_a_plain_loop_is_bit_identical(digits, variant):
    """A run stopped after epoch 3 (a split and a reclustering behind it, a phase change ahead) and resumed in
    fresh objects gives exactly the losses and parameters of the uninterrupted run; also with a miner that draws
    from torch's generator (the wrapper's state carries it)."""
    kw = dict(num_learners=4, recluster_every=1, full_embedding_epoch=5)
    if variant == "masks":
        kw.update(mode="learned", recluster=dict(features_from="pass"))
    elif variant == "distance_weighted":
        kw.update(loss=losses.MarginLoss(margin=0.2, beta=1.2), miner=miners.DistanceWeightedMiner(cutoff=0.5))
    else:
        kw.update(loss=losses.ArcFaceLoss(10, 16), recluster=dict(features_from="training"))
    full = []
    a = factory.plain(factory.make(digits, **kw))
    factory.train_plain(a, 6, after_step=lambda e, i, loss: full.append(loss))

    first, resumed = [], []
    b = factory.plain(factory.make(digits, **kw))
    factory.train_plain(b, 3, after_step=lambda e, i, loss: first.append(loss))
    buf = state_of(b)
    del b
    c = factory.plain(factory.make(digits, **kw), setup=False)  # fresh objects, as in a new process
    state = torch.load(buf, weights_only=True)
    c["model"].load_state_dict(state["model"])
    c["optimizer"].load_state_dict(state["optimizer"])
    c["wrapper"].load_state_dict(state["dc"])  # load first, then set up: the steps taken are not repeated
    c["wrapper"].setup(c["model"], digits, optimizers=[c["optimizer"]])
    assert c["wrapper"].last_epoch == 3
    factory.train_plain(c, 6, start_epoch=4, after_step=lambda e, i, loss: resumed.append(loss))
    assert torch.equal(torch.stack(first + resumed), torch.stack(full))
    for (name, p), q in zip(a["model"].state_dict().items(), c["model"].state_dict().values()):
        assert torch.equal(p, q), name
    for p, q in zip(a["wrapper"].state_dict().values(), c["wrapper"].state_dict().values()):
        assert not torch.is_tensor(p) or torch.equal(p, q)


@pytest.mark.parametrize("variant", ["fixed", "learned", "arcface", "memory"])
def test_bfloat16_autocast_on_the_cpu(digits, variant):
    """Embeddings computed under torch.autocast (bfloat16 on the CPU): the loss, the subspaces, the heads and the
    feature memory work in float32, and the run learns as in float32."""
    kw = dict(num_learners=2, recluster_every=1, full_embedding_epoch=3)
    if variant == "learned":
        kw.update(mode="learned")
    elif variant == "arcface":
        kw.update(loss=losses.ArcFaceLoss(10, 16))
    elif variant == "memory":
        kw.update(recluster=dict(features_from="training"))
    parts = factory.plain(factory.make(digits, **kw))
    model, dc, opt = parts["model"], parts["wrapper"], parts["optimizer"]
    seen = []
    for _epoch in range(1, 4):
        for x, y, _ in parts["loader"]:
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                emb = model(x)
                loss = dc(emb, y)
            assert emb.dtype == torch.bfloat16 and loss.dtype == torch.float32
            loss.backward()
            opt.step()
            seen.append(float(loss))
        dc.end_epoch()
    assert np.isfinite(seen).all() and dc.num_active == 2 and str(dc.phase) == "full_embedding"
    if variant == "memory":
        assert dc.feature_memory.features.dtype == torch.float16 and dc.controller.fresh_samples < len(digits)
    if variant == "arcface":
        assert dc.learners["full"].W.dtype == torch.float32


def test_lbfgs_closure_calls_the_loss_several_times_for_one_batch(digits):
    parts = factory.plain(factory.make(digits, num_learners=2))
    model, dc = parts["model"], parts["wrapper"]
    opt = torch.optim.LBFGS(model.parameters(), max_iter=3)
    calls = []
    for x, y, _ in parts["loader"]:

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = dc(model(x), y)
            loss.backward()
            calls.append(dc.current_learner)
            return loss

        with dc.one_batch():
            opt.step(closure)
    assert len(calls) > len(parts["loader"])  # several loss calls for some batches, all routed to one learner
    dc.end_epoch()
    x, y, _ = next(iter(parts["loader"]))
    with pytest.raises(RuntimeError, match="one_batch"):  # without the block, a second call is named
        dc(model(x), y)
        dc(model(x), y)


def test_gradient_accumulation_takes_one_cluster_batch_per_micro_batch(digits):
    parts = factory.plain(factory.make(digits, num_learners=4, recluster_every=1))
    model, dc, opt = parts["model"], parts["wrapper"], parts["optimizer"]
    learners = []
    for _epoch in range(1, 4):
        for i, (x, y, _) in enumerate(parts["loader"]):
            (dc(model(x), y) / 4).backward()
            learners.append(dc.current_learner)
            if i % 4 == 3:
                opt.step()
                opt.zero_grad()
        dc.end_epoch()
    assert dc.num_active == 4 and len(learners) == 3 * len(parts["loader"])


def test_a_compiled_model_is_recognised_and_a_compiled_loss_runs_eagerly(digits):
    """torch.compile the models: a compiled model is recognised as containing the embedder. A compiled wrapper
    runs eagerly (it routes batches by the sampler's records), with the same losses."""
    eager, compiled = [], []
    parts = factory.plain(factory.make(digits, num_learners=2))
    factory.train_plain(parts, 2, after_step=lambda e, i, loss: eager.append(loss))
    parts = factory.plain(factory.make(digits, num_learners=2), setup=False)
    model = torch.compile(parts["model"], backend="eager")
    dc = parts["wrapper"]
    dc.setup(model, digits, optimizers=[parts["optimizer"]])
    parts["model"], parts["wrapper"] = model, torch.compile(dc, backend="eager")
    factory.train_plain(parts, 2, after_step=lambda e, i, loss: compiled.append(loss))
    assert dc.num_active == 2 and torch.equal(torch.stack(eager), torch.stack(compiled))


def test_a_validation_loss_in_eval_mode_during_the_divide_phase(digits):
    parts = factory.plain(factory.make(digits, num_learners=2, loss=losses.ArcFaceLoss(10, 16)))
    factory.train_plain(parts, 2)
    dc, model = parts["wrapper"], parts["model"]
    assert str(dc.phase) == "divide"
    dc.eval()
    model.eval()
    with torch.no_grad():
        x, y = digits.data[:32], torch.as_tensor(digits.labels[:32])
        val = dc(model(x), y)  # the full-embedding learner on the whole embedding: no ticket taken
        assert torch.isfinite(val)
        with pytest.raises(ValueError, match="labels outside the training classes"):
            dc(model(x), y + 10)  # unseen classes reach a classification head
    dc.train()
    factory.train_plain(parts, 3, start_epoch=3)  # training goes on where it was
    assert dc.last_epoch == 3


def test_plain_loop_without_d_and_c_needs_four_lines_more(digits):
    """The how-to's diff: the same loop with a ClusterSampler, the wrapper, setup() and end_epoch()."""
    warnings.simplefilter("ignore")
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "how-to" / "plain-loop.md").read_text()
    diff = page.split("```diff", 1)[1].split("```", 1)[0]
    added = [line for line in diff.splitlines() if line.startswith("+")]
    removed = [line for line in diff.splitlines() if line.startswith("-")]
    assert len(added) - len(removed) <= 4, diff


@pytest.mark.parametrize("variant", ["fixed", "learned", "memory", "arcface"])
def test_the_wrapper_reads_no_tensor_value_on_the_host_during_a_step(digits, monkeypatch, variant):
    """No Tensor.item / float() / bool() / int() in the wrapper's forward and backward (a GPU would sync at each):
    non-finite values and labels on a device are flagged there and raised at the epoch end."""
    from pytorch_metric_learning import reducers

    kw = dict(num_learners=2, recluster_every=1, loss=losses.TripletMarginLoss(reducer=reducers.MeanReducer()))
    if variant == "learned":
        kw.update(mode="learned")
    elif variant == "memory":
        kw.update(recluster=dict(features_from="training"))
    elif variant == "arcface":
        kw.update(loss=losses.ArcFaceLoss(10, 16))
    parts = factory.plain(factory.make(digits, **kw))
    factory.train_plain(parts, 1)  # past the split: K=2
    model, dc, opt = parts["model"], parts["wrapper"], parts["optimizer"]

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor value was read on the host during the step")

    steps = 0
    for x, y, _ in parts["loader"]:
        opt.zero_grad()
        emb = model(x)
        with monkeypatch.context() as patch:
            for name in ("item", "__float__", "__bool__", "__int__", "tolist"):
                patch.setattr(torch.Tensor, name, refuse)
            loss = dc(emb, y)
            loss.backward()
        opt.step()
        steps += 1
    assert steps == len(parts["loader"]) and dc.current_learner in (0, 1)
    dc.end_epoch()
