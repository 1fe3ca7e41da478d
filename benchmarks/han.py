"""Many-class zero-shot retrieval on Han characters: D&C against its baseline where D&C is meant to win.

    python -m benchmarks.han gate --out bench-out                  # CPU gate: margin loss, baseline vs D&C, 3 seeds
    python -m benchmarks.han tune --out bench-out                  # tuning on the validation classes
    python -m benchmarks.han table --out bench-out                 # every variant, 4 losses, 3 seeds, test classes
    python -m benchmarks.han gate --preset gpu --device cuda --npz han.npz   # the GPU configuration
    python -m benchmarks.han reclustering --out bench-out          # embedding pass vs training features

The regime of the papers (Stanford Online Products: thousands of classes with few images each, a pretrained trunk),
scaled down (``benchmarks/setup_han.sh`` renders the data once):

1. **Pretraining**: the trunk learns to classify the pretraining classes (our stand-in for ImageNet pretraining),
   once per preset, cached in ``--out``.
2. **Fine-tuning** on the training classes, from that trunk with its BatchNorm frozen (as in the reference code):
   the *baseline* is PML's own recipe (``MetricLossOnly`` + ``MPerClassSampler`` + loss + miner); *D&C* wraps the
   same loss and miner (``ClusterSampler`` + ``DivideConquerWrapper``). Same trunk, loss, miner, m, batch size,
   epochs, learning rates and seeds.
3. **Evaluation** on unseen classes (validation classes to tune, test classes to report): R@1/2/4/8 and MAP@R on the
   full L2-normalised embedding, query = reference.

Each command prints a markdown table (mean ± std over seeds, and the paired difference to the baseline with a 95 %
t-interval over seeds) and writes ``han_<command>.md/.csv/.png`` into ``--out``. Runs go in parallel processes
(``--jobs``, one torch thread each) on the CPU, one after the other on a GPU.
"""

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import markdown_table, pyplot, report, setup, write_csv
from pml_divide_conquer import (
    ClusterSampler,
    DivideConquerSchedule,
    DivideConquerWrapper,
    KMeansSettings,
    Reclusterer,
    ReclusterSettings,
    SubspaceMaskedEmbedder,
    heads,
)
from pml_divide_conquer.learners import AssembledHeads

METRICS = ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "mean_average_precision_at_r")
METRIC_NAMES = ("R@1", "R@2", "R@4", "R@8", "MAP@R")
LOSSES = ("margin", "triplet", "contrastive", "arcface")


# ----------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Config:
    """One fine-tuning run (and the pretraining it starts from)."""

    method: str = "baseline"  # "baseline" or "dc"
    loss: str = "margin"
    seed: int = 0
    # model (defaults: the settings tuned on the validation classes, docs/benchmarks.md)
    trunk: str = "cnn"  # "cnn" (small, for CPUs) or "resnet" (ResNet-18-like, for GPUs)
    width: int = 16
    embedding_size: int = 128
    # fine-tuning
    epochs: int = 12
    batch_size: int = 64
    m: int = 2
    lr: float = 1e-3  # embedder (and trunk x trunk_lr_multiplier)
    trunk_lr_multiplier: float = 1.0
    weight_decay: float = 1e-4
    loss_lr: float = 1e-2  # classification heads (ArcFace)
    # pretraining
    pretrain_epochs: int = 6
    pretrain_lr: float = 1e-3
    pretrain_batch_size: int = 128
    # D&C
    num_learners: int = 8
    recluster_every: int = 2
    # phase epochs: "journal" (full embedding from 80/180), "cvpr" (full embedding from 40 %, all data for the last
    # 5 %), "old" (full embedding on all data for the last 10 %: this plugin before 0.2), "divide-only"
    schedule: str = "journal"
    grow: bool = True  # K doubles from 1 every T epochs (journal); False: K from the start (CVPR)
    mode: str = "fixed"
    heads: str = "shared"
    cluster_on: str = "trunk"
    recluster_from: str = "pass"  # "training": cluster the features training computed (no embedding pass)
    orthogonality_weight: float = 0.01
    mask_lr_multiplier: float = 100.0
    freeze_trunk_epochs: int = 0
    random_clusters: bool = False  # ablation: random clusters instead of k-means
    # regime
    train_classes: int = 0  # 0: all the training split's classes; else a fixed subset of that many
    freeze_batchnorm: bool = True  # BatchNorm of the (pretrained) trunk in eval mode, as in the reference code
    # research (issue 16): what D&C loses on a few hundred classes
    full_head: str = "imprint"  # the wrapper's full_head: "imprint" (the library's default) or "assembled"
    assemble: str = "concat"  # research: the full head restarted after the library's step (ASSEMBLIES)
    learner_scale: float = 0.0  # ArcFace's scale in the learners' copies of the loss (0: the loss's own, 64)
    full_epoch: int = 0  # if > 0: the first full-embedding epoch instead of the schedule's
    curve: int = 0  # evaluate R@1 on the eval classes after every epoch (1), or also every `curve` steps (> 1)
    scale: float = 0.0  # ArcFace's scale (every copy of the loss; 0: PML's default, 64)
    imprint_epoch: int = 0  # baseline (control): its head restarted from the class means after this epoch
    unit_head: bool = False  # baseline (control): the head's class vectors scaled to unit norm at the start

    def but(self, **changes):
        return replace(self, **changes)

    def phase_epochs(self):
        """(full_embedding_epoch, all_data_epoch) of ``schedule``."""
        full, all_data = self._phase_epochs()
        if self.full_epoch:
            full = self.full_epoch
        return full, all_data

    def _phase_epochs(self):
        if self.schedule == "journal":
            s = DivideConquerSchedule.journal(self.epochs, self.num_learners, self.recluster_every)
        elif self.schedule == "cvpr":
            s = DivideConquerSchedule.cvpr(self.epochs, self.num_learners, self.recluster_every)
        elif self.schedule == "old":  # what this plugin did before 0.2: full embedding on all data, last 10 %
            start = self.epochs - max(1, round(0.1 * self.epochs)) + 1
            return start, start
        elif self.schedule == "divide-only":
            return None, None
        elif self.schedule == "custom-full":  # ablation: the full embedding from the start (cluster batches only)
            return 1, None
        else:
            raise ValueError(f"unknown schedule {self.schedule!r}")
        return s.full_embedding_epoch, s.all_data_epoch

    def pretrain_key(self):
        fields = ("trunk", "width", "pretrain_epochs", "pretrain_lr", "pretrain_batch_size")
        return hashlib.sha1(repr([getattr(self, f) for f in fields]).encode()).hexdigest()[:10]


PRESETS = {
    # 2 CPU cores: small CNN, 12 epochs
    "cpu": Config(),
    # one H100: ResNet-18-like trunk, more epochs, data kept on the GPU
    "gpu": Config(
        trunk="resnet",
        width=32,
        embedding_size=128,
        epochs=24,
        batch_size=128,
        pretrain_epochs=12,
        pretrain_batch_size=256,
    ),
    # the test suite: a tiny CNN, 4 epochs
    "tiny": Config(
        width=4,
        embedding_size=16,
        epochs=4,
        batch_size=8,
        m=2,
        num_learners=2,
        recluster_every=1,
        pretrain_epochs=1,
        pretrain_batch_size=32,
    ),
}

# D&C configuration chosen on the validation classes (`han.py tune`, rounds 2 and 3; docs/benchmarks.md): the CVPR
# paper's phase epochs, K grown by doubling as in the journal
# (heads: for ArcFace, where per-learner heads measured better than a shared head; the other losses have none)
CHOSEN = dict(
    method="dc", num_learners=4, recluster_every=2, schedule="cvpr", grow=True, mode="fixed", heads="per_learner"
)
HEAD_LOSSES = ("arcface",)  # the losses with a classification head: the only ones for which `heads` matters


# ----------------------------------------------------------------------------------------------------- models
def cnn_trunk(width):
    """Four conv blocks on 32x32 glyphs (each conv, BN, ReLU; max-pool between), global average pool: 8*width dims."""
    nn = torch.nn
    chans = [1, width, 2 * width, 4 * width, 8 * width]
    layers = []
    for i in range(4):
        layers += [
            nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
            nn.BatchNorm2d(chans[i + 1]),
            nn.ReLU(inplace=True),
        ]
        layers += [nn.MaxPool2d(2)] if i < 3 else []
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), chans[-1]


class BasicBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


def resnet_trunk(width):
    """A ResNet-18 for 32x32 inputs (two basic blocks per stage, widths w, 2w, 4w, 8w): 8*width dims."""
    nn = torch.nn
    chans = [width, 2 * width, 4 * width, 8 * width]
    layers = [nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    cin = width
    for i, c in enumerate(chans):
        layers += [BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)]
        cin = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), chans[-1]


def make_trunk(cfg):
    return (cnn_trunk if cfg.trunk == "cnn" else resnet_trunk)(cfg.width)


def make_loss_and_miner(name, num_classes, embedding_size):
    from pytorch_metric_learning import losses, miners

    if name == "margin":  # the papers' loss: beta 1.2 fixed, margin 0.2, distance-weighted sampling
        return (
            losses.MarginLoss(margin=0.2, beta=1.2, learn_beta=False),
            miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4),
        )
    if name == "triplet":
        return losses.TripletMarginLoss(margin=0.1), miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard")
    if name == "contrastive":
        return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.5), miners.PairMarginMiner(0.0, 0.5)
    if name == "arcface":
        return losses.ArcFaceLoss(num_classes=num_classes, embedding_size=embedding_size), None
    raise ValueError(f"unknown loss {name!r}: one of {LOSSES}")


# ----------------------------------------------------------------------------------------------------- data
def load_splits(split, npz, device, sizes=None):
    """The Han splits as whole-batch datasets on ``device``, labels of the training classes mapped to 0..C-1."""
    from lab import datasets

    han = datasets.load_han(split, npz=npz, **(sizes or {}))
    out = {}
    for name, ds in zip(("pretrain", "train", "eval"), han):
        labels = ds.labels if name == "eval" else np.unique(ds.labels, return_inverse=True)[1]
        out[name] = datasets.BatchArrayDataset(ds.data, labels, device=device)
    return out


# ----------------------------------------------------------------------------------------------------- training
def pretrain(cfg, data, device, out):
    """The trunk, trained to classify the pretraining classes; cached in ``out`` per pretraining settings."""
    path = Path(out) / f"pretrained_{cfg.pretrain_key()}.pt"
    trunk, dim = make_trunk(cfg)
    if cfg.pretrain_epochs == 0:  # from scratch (same initial weights for every run)
        torch.manual_seed(1234)
        return make_trunk(cfg) + (0.0,)
    if path.exists():
        trunk.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return trunk, dim, 0.0
    start = time.perf_counter()
    torch.manual_seed(1234)
    ds = data["pretrain"]
    classes = int(ds.label_tensor.max()) + 1
    head = torch.nn.Linear(dim, classes)
    trunk.to(device), head.to(device)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(head.parameters()), lr=cfg.pretrain_lr)
    gen = torch.Generator().manual_seed(1234)
    n, b = len(ds), cfg.pretrain_batch_size
    for _ in range(cfg.pretrain_epochs):
        trunk.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - b + 1, b):
            x, y = ds.__getitems__(perm[i : i + b])
            loss = torch.nn.functional.cross_entropy(head(trunk(x)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    trunk.cpu()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(trunk.state_dict(), tmp)
    os.replace(tmp, path)
    return trunk, dim, time.perf_counter() - start


class RandomReclusterer(Reclusterer):
    """Ablation: every reclustering draws each sample's cluster at random (no k-means, no matching); learners on
    their subspaces and batches from clusters as in D&C. Passed to the wrapper as ``reclusterer=``."""

    calls = 0

    def cluster(self, emb, labels, assignment, current_k, k, split=False):
        self.calls += 1
        return np.random.default_rng([self.settings.kmeans.seed, self.calls]).integers(0, k, len(emb))


ASSEMBLIES = {
    "concat": "the library's: the learners' heads concatenated along the embedding dim",
    "concat-unit": "the learners' heads concatenated, each class's vector scaled to unit norm",
    "owner": "each class keeps only its owner's chunk (the learner whose cluster holds most of its images), others 0",
    "fresh": "the full head starts afresh (normal init, as the loss's own)",
    "imprint": "each class's weight is the normalised mean of its training images' full embeddings (one pass)",
    "imprint-kept": "as imprint, each class's vector at the norm the assembled one had (the fix's first version)",
}


class RestartedHeads(AssembledHeads):
    """Research: the full head assembled as the library does, then restarted as ``mode`` says (ASSEMBLIES); passed
    to the wrapper as ``full_head=``."""

    def __init__(self, mode):
        if mode not in ASSEMBLIES:
            raise ValueError(f"unknown assemble {mode!r}: one of {list(ASSEMBLIES)}")
        self.mode = mode

    def __repr__(self):
        return f"RestartedHeads({self.mode!r})"

    @torch.no_grad()
    def start(self, learners, context):
        super().start(learners, context)
        w, mode = learners.full.W, self.mode  # embedding_size x classes
        if mode == "concat-unit":
            w.copy_(torch.nn.functional.normalize(w, dim=0))
        elif mode == "owner":
            size = w.shape[0] // context.num_active
            keep = torch.zeros_like(w)
            for c, o in enumerate(context.class_owner):
                keep[o * size : (o + 1) * size, c] = 1
            w.mul_(keep)
        elif mode == "fresh":
            w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(4321)))
        elif mode in ("imprint", "imprint-kept"):
            norms = w.norm(dim=0, keepdim=True)
            rng = torch.get_rng_state(), np.random.get_state()
            emb, labels = context.embed()
            torch.set_rng_state(rng[0]), np.random.set_state(rng[1])
            heads.imprint(learners.full, emb, labels)
            if mode == "imprint-kept":
                w.mul_(norms)
        w.grad = None


@torch.no_grad()
def imprint(w, trainer, map_labels):
    """Each class's column of head ``w`` (embedding_size x classes) := the normalised mean of the L2-normalised
    embeddings of its training images (one no-grad pass in eval mode; RNG states kept)."""
    from pytorch_metric_learning import testers

    rng = torch.get_rng_state(), np.random.get_state()
    tester = testers.BaseTester(
        batch_size=512,
        dataloader_num_workers=0,
        data_device=trainer.data_device,
        data_and_label_getter=trainer.data_and_label_getter,
    )
    emb, labels = tester.get_all_embeddings(
        trainer.dataset, trainer.models["trunk"], trainer.models["embedder"], return_as_numpy=True
    )
    labels = labels[:, 0]
    torch.set_rng_state(rng[0]), np.random.set_state(rng[1])
    trainer.set_to_train()
    mapped = map_labels(torch.as_tensor(labels))
    emb = torch.as_tensor(emb, dtype=w.dtype)
    sums = torch.zeros(w.shape[1], w.shape[0], dtype=w.dtype).index_add_(0, mapped, emb)
    w.copy_(torch.nn.functional.normalize(sums, dim=1).t().to(w.device))
    w.grad = None


def curve_hooks(cfg, trainer, trunk, embedder, data, device, wrapper):
    """Research: R@1 and MAP@R on the eval classes after every epoch (and every ``cfg.curve`` steps when > 1), the
    RNG states kept, so a run with its curve trains exactly as one without. Returns (records, iteration hook,
    end-of-epoch hook, seconds spent)."""
    records, spent = [], [0.0]

    def record(t, end_of_epoch):
        start = time.perf_counter()
        rng = torch.get_rng_state(), np.random.get_state()
        acc = evaluate(trunk, embedder, data["eval"], device)
        torch.set_rng_state(rng[0]), np.random.set_state(rng[1])
        if not end_of_epoch:
            t.set_to_train()
        phase = "baseline" if wrapper is None else str(wrapper.schedule.phase_in_epoch(t.epoch))
        step = (t.epoch - 1) * t.iterations_per_epoch + (
            t.iteration + 1 if not end_of_epoch else t.iterations_per_epoch
        )
        records.append(
            dict(
                epoch=t.epoch,
                step=step,
                end_of_epoch=end_of_epoch,
                phase=phase,
                r1=acc["recall_at_1"],
                map_at_r=acc["mean_average_precision_at_r"],
            )
        )
        spent[0] += time.perf_counter() - start
        return True

    def on_iteration(t):
        if cfg.curve > 1 and (t.iteration + 1) % cfg.curve == 0 and t.iteration + 1 < t.iterations_per_epoch:
            record(t, False)

    return records, on_iteration, (lambda t: record(t, True)), spent


def finetune(cfg, data, trunk_state, device):
    """Fine-tune a copy of the pretrained trunk with the metric loss; returns (trunk, embedder, seconds, stats)."""
    import logging

    from pytorch_metric_learning import samplers, trainers

    logging.getLogger("PML").setLevel(logging.WARNING)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # PML's MPerClassSampler draws from numpy's global RNG
    trunk, dim = make_trunk(cfg)
    trunk.load_state_dict(trunk_state)
    ds = data["train"]
    if cfg.train_classes:  # a fixed subset of the training classes (the same for every seed and method)
        from lab.datasets import BatchArrayDataset

        classes = np.random.default_rng(0).permutation(int(ds.labels.max()) + 1)[: cfg.train_classes]
        keep = np.flatnonzero(np.isin(ds.labels, classes))
        labels = np.unique(ds.labels[keep], return_inverse=True)[1]
        ds = BatchArrayDataset(ds.data.cpu()[torch.as_tensor(keep)], labels, device=ds.device)
    labels = ds.labels
    num_learners = cfg.num_learners if cfg.method == "dc" else 1
    mode = cfg.mode if cfg.method == "dc" else "fixed"
    embedder = SubspaceMaskedEmbedder(
        cfg.embedding_size, num_learners, mode=mode, embedder=torch.nn.Linear(dim, cfg.embedding_size)
    )
    trunk.to(device), embedder.to(device)
    loss, miner = make_loss_and_miner(cfg.loss, len(np.unique(labels)), cfg.embedding_size)
    if cfg.scale:
        loss.scale = cfg.scale
    if cfg.unit_head:
        with torch.no_grad():
            loss.W.copy_(torch.nn.functional.normalize(loss.W, dim=0))
    optimizers = {
        "trunk_optimizer": torch.optim.Adam(
            trunk.parameters(), lr=cfg.lr * cfg.trunk_lr_multiplier, weight_decay=cfg.weight_decay
        ),
        "embedder_optimizer": torch.optim.Adam(
            embedder.parameter_groups(
                lr=cfg.lr, weight_decay=cfg.weight_decay, mask_lr_multiplier=cfg.mask_lr_multiplier, mask_weight_decay=0
            )
        ),
    }
    wrapper = None
    if cfg.method == "dc":
        sampler = ClusterSampler(labels, batch_size=cfg.batch_size, m=cfg.m, seed=cfg.seed)
        full, all_data = cfg.phase_epochs()
        settings = ReclusterSettings(
            cluster_on=cfg.cluster_on,
            features_from=cfg.recluster_from,
            batch_size=512,
            kmeans=KMeansSettings(gpu=False),
        )
        wrapper = DivideConquerWrapper(
            loss,
            miner,
            embedder=embedder,
            sampler=sampler,
            schedule=DivideConquerSchedule(
                num_learners=cfg.num_learners,
                recluster_every=cfg.recluster_every,
                full_embedding_epoch=full,
                all_data_epoch=all_data,
                grow=cfg.grow,
                freeze_trunk_epochs=cfg.freeze_trunk_epochs,
            ),
            reclusterer=(RandomReclusterer if cfg.random_clusters else Reclusterer)(settings),
            heads=cfg.heads,
            full_head=cfg.full_head if cfg.assemble == "concat" else RestartedHeads(cfg.assemble),
            orthogonality_weight=cfg.orthogonality_weight,
        ).to(device)
        if cfg.learner_scale:
            from pml_divide_conquer.learners import learner_key

            for k in range(wrapper.num_learners):
                wrapper.learners[learner_key(k)].scale = cfg.learner_scale
        loss_funcs, mining_funcs = {"metric_loss": wrapper}, {}
        hook = wrapper.get_end_of_epoch_hook()
    else:
        sampler = samplers.MPerClassSampler(
            labels, cfg.m, batch_size=cfg.batch_size, length_before_new_iter=len(labels)
        )
        loss_funcs, mining_funcs = {"metric_loss": loss.to(device)}, ({"tuple_miner": miner} if miner else {})
        hook = None
    params = [p for p in loss_funcs["metric_loss"].parameters() if p.requires_grad]
    if params:
        optimizers["metric_loss_optimizer"] = torch.optim.Adam(params, lr=cfg.loss_lr)
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers=optimizers,
        batch_size=cfg.batch_size,
        loss_funcs=loss_funcs,
        mining_funcs=mining_funcs,
        dataset=ds,
        sampler=sampler,
        dataloader_num_workers=0,
        data_device=device,
        collate_fn=ds.collate_fn,
        end_of_epoch_hook=hook,
        iterations_per_epoch=len(labels) // cfg.batch_size,
        freeze_trunk_batchnorm=cfg.freeze_batchnorm,
    )
    stats = {}
    curve, on_iteration, on_epoch, curve_seconds = [], None, (lambda t: True), [0.0]
    if cfg.curve:
        curve, on_iteration, on_epoch, curve_seconds = curve_hooks(cfg, trainer, trunk, embedder, data, device, wrapper)
        trainer.end_of_iteration_hook = on_iteration
        trainer.end_of_epoch_hook = on_epoch
    if cfg.imprint_epoch and wrapper is None:
        then = on_epoch

        def on_epoch(t):
            if t.epoch == cfg.imprint_epoch:
                imprint(loss.W, t, lambda y: torch.as_tensor(y))
            return then(t)

        trainer.end_of_epoch_hook = on_epoch
    start = time.perf_counter()
    if wrapper is not None:
        seconds = []
        trainer.end_of_epoch_hook = wrapper.get_end_of_epoch_hook(
            then=lambda t: seconds.append((wrapper.recluster_seconds, wrapper.clustering_seconds)) or on_epoch(t)
        )
        wrapper.prepare(trainer)
        trainer.train(num_epochs=cfg.epochs)
        stats = dict(
            reclusterings=len({s for s in seconds if s[0] > 0}),
            recluster_seconds=float(np.mean([s[0] for s in seconds if s[0] > 0] or [0])),
            kmeans_seconds=float(np.mean([s[1] for s in seconds if s[0] > 0] or [0])),
        )
    else:
        trainer.train(num_epochs=cfg.epochs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - start - curve_seconds[0]
    if cfg.curve:
        stats["curve_points"] = curve
        stats["curve_seconds"] = round(curve_seconds[0], 1)
    if wrapper is not None:
        # what a reclustering's embedding pass costs: one no-grad pass over the training set, timed once here
        pass_start = time.perf_counter()
        wrapper.embed_training_set()
        if device.type == "cuda":
            torch.cuda.synchronize()
        stats["pass_seconds"] = time.perf_counter() - pass_start
        memory = wrapper.feature_memory
        stats["feature_memory_bytes"] = 0 if memory is None else memory.nbytes
    return trunk, embedder, train_seconds, stats


@torch.no_grad()
def evaluate(trunk, embedder, ds, device, ks=(1, 2, 4, 8)):
    """R@k and MAP@R on ``ds`` (query = reference), full L2-normalised embedding, as PML's testers embed it."""
    from pytorch_metric_learning import testers
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    tester = testers.BaseTester(batch_size=512, dataloader_num_workers=0, data_device=device)
    emb, labels = tester.get_all_embeddings(ds, trunk, embedder, collate_fn=ds.collate_fn)
    labels = labels[:, 0]
    calc = AccuracyCalculator(include=("mean_average_precision_at_r",), k="max_bin_count", device=device)
    out = {"mean_average_precision_at_r": float(calc.get_accuracy(emb, labels)["mean_average_precision_at_r"])}
    x = torch.nn.functional.normalize(emb, dim=1)
    hits = {k: 0 for k in ks}
    for i in range(0, len(x), 2048):
        sim = x[i : i + 2048] @ x.t()
        rows = torch.arange(sim.shape[0], device=sim.device)
        sim[rows, rows + i] = -float("inf")
        match = labels[sim.topk(max(ks), dim=1).indices] == labels[i : i + 2048, None]
        for k in ks:
            hits[k] += int(match[:, :k].any(dim=1).sum())
    out.update({f"recall_at_{k}": hits[k] / len(x) for k in ks})
    return out


# ----------------------------------------------------------------------------------------------------- jobs
_DATA = {}


def run_job(job):
    """One fine-tuning run and its evaluation (in a worker process on CPUs)."""
    cfg, split, npz, sizes, device_name, out, threads = job
    if threads:
        torch.set_num_threads(threads)
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    device = torch.device(device_name)
    key = (split, npz, repr(sizes), device_name)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_splits(split, npz, device, sizes)
    data = _DATA[key]
    trunk, _, _ = pretrain(cfg, data, device, out)
    trunk, embedder, seconds, stats = finetune(cfg, data, trunk.state_dict(), device)
    acc = evaluate(trunk, embedder, data["eval"], device)
    return dict(**dataclasses.asdict(cfg), split=split, train_seconds=round(seconds, 1), **stats, **acc)


def run_all(configs, args, progress_desc, names=None):
    """Run every config (after the shared pretraining); returns the records in the order of ``configs``."""
    from tqdm import tqdm

    sizes = json.loads(args.sizes) if args.sizes else None
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = load_splits(args.split, args.npz, device, sizes)
    _DATA[(args.split, args.npz, repr(sizes), args.device)] = data
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # pretraining runs alone: all cores
    for key in dict.fromkeys(c.pretrain_key() for c in configs):  # pretrain once per setting, before the workers
        cfg = next(c for c in configs if c.pretrain_key() == key)
        _, _, secs = pretrain(cfg, data, device, args.out)
        if secs:
            print(
                f"pretrained the trunk on {len(np.unique(data['pretrain'].labels))} classes in {secs:.0f} s", flush=True
            )
    torch.set_num_threads(threads)
    jobs = [(c, args.split, args.npz, sizes, args.device, args.out, 1 if args.device == "cpu" else 0) for c in configs]
    records = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=progress_desc, file=sys.stdout, disable=False)  # PML's own bars stay off
    if args.device != "cpu" or args.jobs <= 1:
        for i, job in enumerate(jobs):
            records[i] = run_job(job)
            keep_partial(records[i], args, names and names[i])
            bar.update()
            bar.write(describe(records[i]))
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            futures = {pool.submit(run_job, job): i for i, job in enumerate(jobs)}
            for f in cf.as_completed(futures):
                records[futures[f]] = f.result()
                keep_partial(records[futures[f]], args, names and names[futures[f]])
                bar.update()
                bar.write(describe(records[futures[f]]))
    bar.close()
    return records


def keep_partial(record, args, name=None):
    """Append each finished run to ``han_runs.jsonl`` in --out, so that an interrupted run keeps what it did
    (``han.py report --from`` makes a table of such files)."""
    if name:
        record["setting"] = name
    with open(Path(args.out) / "han_runs.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def describe(r):
    name = variant_name(r)
    return (
        f"  {r['loss']:11s} {name:34s} seed {r['seed']}: R@1 {100 * r['recall_at_1']:.1f}  ({r['train_seconds']:.0f} s)"
    )


def variant_name(r):
    """A name for a run that carries none (as ``table_configs`` names its variants)."""
    if r["method"] == "baseline":
        return "baseline"
    from_training = ", reclustered from training features" if r.get("recluster_from") == "training" else ""
    has_head = r["loss"] in HEAD_LOSSES
    if all(r.get(k) == v for k, v in CHOSEN.items() if has_head or k != "heads") and not r.get("random_clusters"):
        return "D&C (chosen)" + from_training
    k = "" if r["num_learners"] == CHOSEN["num_learners"] else f" K={r['num_learners']}"
    schedule = {"cvpr": "CVPR", "journal": "journal"}.get(r["schedule"], r["schedule"])
    grow = "" if r["grow"] else ", K fixed from the start"
    heads = f", {r['heads'].replace('_', '-')} heads" if has_head else ""
    random = ", random clusters" if r.get("random_clusters") else ""
    return f"D&C{k} {r['mode']}, {schedule} phases{grow}{heads}{random}{from_training}"


def load_records(paths):
    """Records of ``han_runs.jsonl`` files (one per finished run), each run (its whole Config) once, the first one
    met; the runs of one setting share one name: the first name a command gave them, else ``variant_name``."""
    fields = dataclasses.fields(Config)
    runs, names = {}, {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            # the kind of heads is no setting of a loss without one (runs with either are the same run)
            key = tuple(
                None if f.name == "heads" and r["loss"] not in HEAD_LOSSES else r.get(f.name, f.default) for f in fields
            )
            setting = tuple(v for f, v in zip(fields, key) if f.name != "seed")
            if r.get("setting"):
                names.setdefault(setting, r["setting"])
            runs.setdefault(key, (setting, r))
    records = []
    for setting, r in runs.values():
        r["setting"] = names.get(setting) or variant_name(r)
        records.append(r)
    return records


# ----------------------------------------------------------------------------------------------------- tables
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired_difference(values, base):
    """Mean and 95 % t-interval half-width of the per-seed differences (runs paired by seed)."""
    d = 100 * (np.asarray(values) - np.asarray(base))
    if len(d) < 2:
        return d.mean(), float("nan")
    return d.mean(), T_975.get(len(d) - 1, 1.96) * d.std(ddof=1) / np.sqrt(len(d))


def table(records, group_keys=("loss",)):
    rows = []
    for group in dict.fromkeys(tuple(r[k] for k in group_keys) for r in records):
        runs_g = sorted(
            (r for r in records if tuple(r[k] for k in group_keys) == group), key=lambda r: r["method"] != "baseline"
        )  # the baseline first, then in the order given
        base = sorted((r for r in runs_g if r["method"] == "baseline"), key=lambda r: r["seed"])
        for name in dict.fromkeys(r["setting"] for r in runs_g):
            runs = sorted((r for r in runs_g if r["setting"] == name), key=lambda r: r["seed"])
            cells = []
            for m in METRICS:
                v = 100 * np.array([r[m] for r in runs])
                cells.append(f"{v.mean():.1f} ± {v.std():.1f}")
            delta = ""
            if base and runs[0]["method"] != "baseline" and [r["seed"] for r in runs] == [r["seed"] for r in base]:
                mean, half = paired_difference([r["recall_at_1"] for r in runs], [r["recall_at_1"] for r in base])
                delta = f"{mean:+.1f} ± {half:.1f}"
            secs = np.mean([r["train_seconds"] for r in runs])
            shown = [("all" if k == "train_classes" and v == 0 else v) for k, v in zip(group_keys, group)]
            rows.append([*shown, name, *cells, delta, f"{secs:.0f}"])
    return markdown_table([*group_keys, "setting", *METRIC_NAMES, "ΔR@1 vs baseline (95 % CI)", "train s"], rows)


def plot(records, path, title):
    plt = pyplot()
    key = "regime" if "regime" in records[0] else "loss"
    groups = list(dict.fromkeys((r[key], r["setting"]) for r in records))
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(groups) + 1.2))
    for i, (loss, name) in enumerate(groups):
        v = [100 * r["recall_at_1"] for r in records if (r[key], r["setting"]) == (loss, name)]
        ax.barh(i, np.mean(v), xerr=np.std(v), capsize=3, color="C0" if name == "baseline" else "C1")
    ax.set_yticks(range(len(groups)), [f"{g}: {n}" for g, n in groups], fontsize=7)
    ax.invert_yaxis()
    lo = min(100 * r["recall_at_1"] for r in records)
    ax.set_xlim(max(0, lo - 5), min(100, max(100 * r["recall_at_1"] for r in records) + 3))
    ax.set_xlabel("R@1 (%)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------- commands
def gate_configs(base, seeds, losses=("margin",)):
    out = []
    for loss in losses:
        for seed in range(seeds):
            out.append(("baseline", base.but(loss=loss, seed=seed, method="baseline")))
            out.append(("D&C (chosen)", base.but(loss=loss, seed=seed, **CHOSEN)))
    return out


def table_configs(base, seeds, losses=LOSSES):
    """Every variant: fixed chunks and learned masks, the authors' phases (CVPR: chosen; journal) and the old ones
    (all data for the last 10 %), and for ArcFace per-learner (chosen) and shared heads."""
    variants = [
        ("baseline", dict(method="baseline")),
        ("D&C fixed, CVPR phases (chosen)", CHOSEN),
        ("D&C learned, CVPR phases", dict(CHOSEN, mode="learned")),
        ("D&C fixed, CVPR phases, K fixed from the start", dict(CHOSEN, grow=False)),
        ("D&C fixed, journal phases", dict(CHOSEN, schedule="journal")),
        ("D&C fixed, old phases", dict(CHOSEN, schedule="old")),
    ]
    out = []
    for loss in losses:
        extra = []
        if loss == "arcface":
            extra = [
                (f"D&C {mode}, CVPR phases, shared heads", dict(CHOSEN, mode=mode, heads="shared"))
                for mode in ("fixed", "learned")
            ]
        for name, changes in variants + extra:
            out += [(name, base.but(loss=loss, seed=seed, **changes)) for seed in range(seeds)]
    return out


def ablation_configs(base, seeds, loss="margin"):
    """What each part of D&C contributes (the chosen configuration, one part changed per row)."""
    dc = base.but(loss=loss, **CHOSEN)
    rows = [
        ("baseline (PML: MPerClassSampler)", base.but(loss=loss, method="baseline")),
        ("K=1: ClusterSampler over all data, full embedding", dc.but(num_learners=1, schedule="divide-only")),
        ("cluster batches only: full embedding from epoch 1", dc.but(schedule="custom-full")),
        ("subspaces on random clusters", dc.but(random_clusters=True)),
        ("divide only (no full-embedding phase)", dc.but(schedule="divide-only")),
        ("old phases (all data for the last 10 %)", dc.but(schedule="old")),
        ("D&C (chosen)", dc),
    ]
    return [(name, cfg.but(seed=s)) for name, cfg in rows for s in range(seeds)]


RECLUSTER_FROM = (("D&C (chosen), embedding pass", "pass"), ("D&C (chosen), from training features", "training"))


def reclustering_configs(base, seeds, loss="margin"):
    """The chosen D&C reclustering after a fresh embedding pass, and from the features training computed."""
    return [
        (name, base.but(loss=loss, seed=s, recluster_from=v, **CHOSEN))
        for name, v in RECLUSTER_FROM
        for s in range(seeds)
    ]


def reclustering_table(records):
    """R@1 and what a reclustering costs, per way of reclustering; the R@1 difference to the embedding pass."""
    rows = []
    base = sorted((r for r in records if r["recluster_from"] == "pass"), key=lambda r: r["seed"])
    for name, v in RECLUSTER_FROM:
        runs = sorted((r for r in records if r["recluster_from"] == v), key=lambda r: r["seed"])
        if not runs:
            continue
        r1 = 100 * np.array([r["recall_at_1"] for r in runs])
        ratio = np.array([(r["recluster_seconds"] - r["kmeans_seconds"]) / r["pass_seconds"] for r in runs])
        delta = ""
        if v != "pass" and [r["seed"] for r in runs] == [r["seed"] for r in base]:
            mean, half = paired_difference([r["recall_at_1"] for r in runs], [r["recall_at_1"] for r in base])
            delta = f"{mean:+.2f} ± {half:.2f}"
        rows.append(
            [
                name,
                f"{r1.mean():.1f} ± {r1.std():.1f}",
                delta,
                f"{np.mean([r['recluster_seconds'] for r in runs]):.2f}",
                f"{np.mean([r['kmeans_seconds'] for r in runs]):.2f}",
                f"{np.mean([r['pass_seconds'] for r in runs]):.2f}",
                f"{ratio.mean():.3f} ± {ratio.std():.3f}",
                f"{np.mean([r['feature_memory_bytes'] for r in runs]) / 2**20:.1f}",
            ]
        )
    header = [
        "setting",
        "R@1",
        "ΔR@1 (95 % CI)",
        "reclustering s",
        "k-means s",
        "one pass s",
        "(reclustering − k-means) / pass",
        "feature memory MiB",
    ]
    return markdown_table(header, rows)


SWEEP_VALUES = {"classes": (300, 1000, 3000), "epochs": (6, 12, 24), "pretrained": ("pretrained", "scratch")}


def sweep_configs(base, seeds, axis, loss="margin", values=None):
    """Baseline and D&C (chosen) across a regime axis: training classes, epochs, or pretrained vs from scratch
    (``values``: a subset of ``SWEEP_VALUES[axis]``)."""
    regimes = {
        "classes": lambda n: (f"{n} training classes", dict(train_classes=int(n))),
        "epochs": lambda n: (f"{n} epochs", dict(epochs=int(n))),
        "pretrained": lambda v: {
            "pretrained": ("pretrained trunk", {}),
            "scratch": ("trunk from scratch", dict(pretrain_epochs=0, freeze_batchnorm=False)),
        }[v],
    }[axis]
    values = [regimes(v) for v in (values or SWEEP_VALUES[axis])]
    out = []
    for regime, changes in values:
        for name, method in (("baseline", dict(method="baseline")), ("D&C (chosen)", CHOSEN)):
            out += [(regime, name, base.but(loss=loss, seed=s, **changes, **method)) for s in range(seeds)]
    return out


# Tuning on the validation classes. Round 1: the learning rate, on the baseline (D&C uses the same). Rounds 2 and 3:
# the baseline and D&C each get the same number of settings, each around its own best of the round before.
TUNE_SHARED = {f"lr {lr:g}": dict(lr=lr) for lr in (1e-4, 3e-4, 1e-3)}
TUNE_ROUNDS = {
    2: dict(
        baseline_base={},
        dc_base=dict(CHOSEN, num_learners=8, recluster_every=2, schedule="journal", mode="fixed"),
        dc_name="D&C (K=8, T=2, journal, fixed)",
        baseline={
            "m=2": dict(m=2),
            "m=8": dict(m=8),
            "batch 128": dict(batch_size=128),
            "trunk lr x0.1": dict(trunk_lr_multiplier=0.1),
            "lr x0.5": dict(lr_factor=0.5),
            "lr x2": dict(lr_factor=2.0),
        },
        dc={
            "K=4": dict(num_learners=4),
            "K=16": dict(num_learners=16),
            "T=1": dict(recluster_every=1),
            "learned masks": dict(mode="learned"),
            "CVPR phases": dict(schedule="cvpr"),
            "trunk frozen after reclustering": dict(freeze_trunk_epochs=1),
        },
    ),
    3: dict(  # around round 2's best: the baseline with m=2, D&C with the CVPR phases (m=2 for both: shared)
        baseline_base=dict(m=2),
        dc_base=dict(CHOSEN, m=2, num_learners=8, schedule="cvpr", mode="fixed"),
        dc_name="D&C (K=8, CVPR phases, fixed, m=2)",
        baseline={
            "d=128": dict(embedding_size=128),
            "d=128, lr x0.5": dict(embedding_size=128, lr_factor=0.5),
            "batch 128": dict(batch_size=128),
            "lr x0.5": dict(lr_factor=0.5),
        },
        dc={
            "K=4": dict(num_learners=4),
            "d=128": dict(embedding_size=128),
            "K=4, d=128": dict(num_learners=4, embedding_size=128),
            "learned masks": dict(mode="learned"),
        },
    ),
}


def tune_configs(base, seeds, best_lr=None, round_=2):
    """Round 1 (no best_lr): the learning rate on the baseline. Rounds 2, 3: the grids of TUNE_ROUNDS."""
    out = []
    if best_lr is None:
        for name, ch in TUNE_SHARED.items():
            out += [(f"baseline, {name}", base.but(seed=s, method="baseline", **ch)) for s in range(seeds)]
        return out
    grid = TUNE_ROUNDS[round_]

    def settle(ch):
        ch = dict(ch)
        if "lr_factor" in ch:
            ch["lr"] = best_lr * ch.pop("lr_factor")
        return ch

    base = base.but(lr=best_lr)
    b0, d0 = base.but(method="baseline", **grid["baseline_base"]), base.but(**grid["dc_base"])
    b_name = "baseline" + "".join(f", {k}={v}" for k, v in grid["baseline_base"].items())
    out += [(b_name, b0.but(seed=s)) for s in range(seeds)]
    for name, ch in grid["baseline"].items():
        out += [(f"{b_name}, {name}", b0.but(seed=s, **settle(ch))) for s in range(seeds)]
    out += [(grid["dc_name"], d0.but(seed=s)) for s in range(seeds)]
    for name, ch in grid["dc"].items():
        out += [(f"{grid['dc_name']}, {name}", d0.but(seed=s, **settle(ch))) for s in range(seeds)]
    return out


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["gate", "tune", "table", "ablation", "sweep", "reclustering", "report"])
    p.add_argument("--from", dest="sources", nargs="+", default=[], help="report: han_runs.jsonl files to tabulate")
    p.add_argument("--axis", default="classes", choices=["classes", "epochs", "pretrained"], help="sweep: the regime")
    p.add_argument("--values", default=None, type=lambda v: v.split(","), help="sweep: these values of the axis only")
    p.add_argument("--group", default="loss", help="report: the record field that groups the rows (loss, epochs, ...)")
    p.add_argument("--preset", default="cpu", choices=list(PRESETS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--npz", default=None, help="prebuilt arrays (benchmarks/setup_han.sh); default: render/cached")
    p.add_argument("--sizes", default=None, help='JSON of load_han split sizes, e.g. {"num_train": 100}')
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--losses", default=None, type=lambda s: s.split(","), help="default: margin (gate), all (table)")
    p.add_argument("--jobs", type=int, default=2, help="parallel runs on the CPU (one torch thread each)")
    p.add_argument("--methods", default="baseline,dc", type=lambda v: v.split(","), help="run only these methods")
    p.add_argument("--only", default=None, help="run only the settings whose name matches this regular expression")
    p.add_argument("--set", default=None, help='JSON of Config changes for every run, e.g. {"epochs": 20}')
    p.add_argument("--lr", type=float, default=None, help="tune: skip round 1 and use this learning rate")
    p.add_argument("--round", type=int, default=2, choices=sorted(TUNE_ROUNDS), help="tune: the grid after round 1")
    p.add_argument("--out", default="bench-out")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    args.split = "val" if args.command == "tune" else "test"
    out = setup(args.out)
    args.out = str(out)
    base = PRESETS[args.preset]
    if args.set:
        base = base.but(**json.loads(args.set))
    start = time.perf_counter()
    regimes = None
    if args.command == "report":
        if not args.sources:
            raise SystemExit("han.py report: give the han_runs.jsonl files to tabulate with --from")
        records = load_records(args.sources)
        if args.group != "loss":  # a regime axis, in increasing order (train_classes 0, all of them, last)
            records.sort(key=lambda r: r[args.group] or float("inf"))
        seeds = len({r["seed"] for r in records})
        title = f"Han test classes, runs of {', '.join(args.sources)} ({seeds} seeds)"
        command = "python -m benchmarks.han " + shlex.join(sys.argv[1:] if argv is None else argv)
        report(out, "han_report", title, table(records, (args.group,)), command)
        return records
    if args.command == "gate":
        named = gate_configs(base, args.seeds, tuple(args.losses or ("margin",)))
    elif args.command == "ablation":
        named = ablation_configs(base, args.seeds, (args.losses or ["margin"])[0])
    elif args.command == "sweep":
        triples = sweep_configs(base, args.seeds, args.axis, (args.losses or ["margin"])[0], args.values)
        regimes = [t[0] for t in triples]
        named = [(name, cfg) for _, name, cfg in triples]
    elif args.command == "table":
        named = table_configs(base, args.seeds, tuple(args.losses or LOSSES))
    elif args.command == "reclustering":
        named = reclustering_configs(base, args.seeds, (args.losses or ["margin"])[0])
    else:
        named = []
        best = args.lr
        if best is None:
            stage1 = tune_configs(base, args.seeds)
            recs = run_all([c for _, c in stage1], args, "tuning the learning rate")
            for (name, _), r in zip(stage1, recs):
                r["setting"] = name
            named_records = recs
            means = {lr: np.mean([r["recall_at_1"] for r in recs if r["lr"] == lr]) for lr in {r["lr"] for r in recs}}
            best = max(means, key=means.get)
            print(f"best learning rate on the validation classes: {best:g}", flush=True)
        else:
            named_records = []
        named = tune_configs(base, args.seeds, best, args.round)
    keep = [
        i
        for i, (n, c) in enumerate(named)
        if c.method in args.methods and (args.only is None or re.search(args.only, n))
    ]
    named = [named[i] for i in keep]
    regimes = [regimes[i] for i in keep] if regimes else None
    records = run_all([c for _, c in named], args, f"han {args.command}", [n for n, _ in named])
    for i, ((name, _), r) in enumerate(zip(named, records)):
        r["setting"] = name
        if regimes:
            r["regime"] = regimes[i]
    if args.command == "tune":
        records = named_records + records
    elapsed = time.perf_counter() - start
    name = (
        f"han_{args.command}"
        + (f"_{args.axis}" if regimes else "")
        + (f"_round{args.round}" if args.command == "tune" and args.round != 2 else "")
        + ("" if args.preset == "cpu" else f"_{args.preset}")
    )
    write_csv(out / f"{name}.csv", records)
    title = (
        f"Han {('validation' if args.split == 'val' else 'test')} classes, {args.preset} preset "
        f"({base.trunk}, {base.epochs} epochs, batch {base.batch_size}, m={base.m}, d={base.embedding_size}), "
        f"{args.seeds} seeds, {args.device}"
    )
    plot(records, out / f"{name}.png", title)
    command = "python -m benchmarks.han " + shlex.join(sys.argv[1:] if argv is None else argv)
    groups = ("regime",) if regimes else ("loss",)
    text = reclustering_table(records) if args.command == "reclustering" else table(records, groups)
    report(out, name, f"{title} — {elapsed / 60:.1f} min", text, command)
    return records


if __name__ == "__main__":
    main()
