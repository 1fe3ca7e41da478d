"""The settings of one run (:class:`Config`), the presets, and the D&C configuration chosen on the validation
classes."""

import hashlib
from dataclasses import dataclass, replace

from pml_divide_conquer import DivideConquerSchedule

METRICS = ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "mean_average_precision_at_r")
METRIC_NAMES = ("R@1", "R@2", "R@4", "R@8", "MAP@R")
LOSSES = ("margin", "triplet", "contrastive", "arcface")


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
    learner_scale: float = 0.0  # ArcFace's scale in the learners' copies (0: the loss's own; per-learner heads only)
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

# D&C configuration chosen on the validation classes (`benchmarks.han tune`, rounds 2 and 3; docs/benchmarks.md): the
# CVPR paper's phase epochs, K grown by doubling as in the journal
# (heads: for ArcFace, where per-learner heads measured better than a shared head; the other losses have none)
CHOSEN = dict(
    method="dc", num_learners=4, recluster_every=2, schedule="cvpr", grow=True, mode="fixed", heads="per_learner"
)
HEAD_LOSSES = ("arcface",)  # the losses with a classification head: the only ones for which `heads` matters
