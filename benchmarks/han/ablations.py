"""The research parts that replace one of D&C's (through the wrapper's public arguments) and the baseline's
controls: random clusters (``reclusterer=``), the full head restarted after the library's start and the learners'
own ArcFace scale (``full_head=``), the baseline's head imprinted from the class means."""

import numpy as np
import torch

from pml_divide_conquer import Reclusterer, heads
from pml_divide_conquer.learners import AssembledHeads, HeadStart, head_start


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


class FullLearnerScale(HeadStart):
    """Research (``Config.learner_scale``): the learners train their copies of ArcFace at a scale of their own, the
    full-embedding learner at the loss's. The wrapper copies one loss for every learner, so the loss is built at the
    learners' scale (:func:`benchmarks.han.finetuning.make_loss`); when the divide phase ends this head start does
    what ``inner`` does (a :class:`HeadStart` or its name) and gives the full learner's copy, the only one trained
    from then on, the scale ``scale``. Passed to the wrapper as ``full_head=``; the wrapper calls it with per-learner
    heads only."""

    def __init__(self, inner, scale):
        self.inner = head_start(inner)
        self.scale = scale

    def __repr__(self):
        return f"FullLearnerScale({self.inner!r}, {self.scale!r})"

    def start(self, learners, context):
        self.inner.start(learners, context)
        learners.full.scale = self.scale


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
        trainer.dataset,
        trainer.models["trunk"],
        trainer.models["embedder"],
        collate_fn=trainer.collate_fn,  # (a BatchArrayDataset's batches come whole: its pass-through collation)
        return_as_numpy=True,
    )
    labels = labels[:, 0]
    torch.set_rng_state(rng[0]), np.random.set_state(rng[1])
    trainer.set_to_train()
    mapped = map_labels(torch.as_tensor(labels))
    emb = torch.as_tensor(emb, dtype=w.dtype)
    sums = torch.zeros(w.shape[1], w.shape[0], dtype=w.dtype).index_add_(0, mapped, emb)
    w.copy_(torch.nn.functional.normalize(sums, dim=1).t().to(w.device))
    w.grad = None
