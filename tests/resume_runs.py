"""The runs the resume tests stop and resume (tests/test_resume.py, and on a GPU tests/test_cuda.py): PML's trainer
with four learners, in variants that put each kind of saved state to work."""

import torch
from pytorch_metric_learning import losses, miners

import factory


def make(digits, losses_out, recluster_every, workers, variant="masks", device="cpu"):
    def record(trainer):
        losses_out.append((trainer.epoch, float(trainer.losses["total_loss"])))

    torch.manual_seed(0)  # the heads below are initialised from torch's RNG
    kw = dict(mode="learned", iterations_per_epoch=45)
    if variant == "arcface":  # heads resized at each split; epoch length left to PML (len of the sampler)
        kw = dict(mode="fixed", loss=losses.ArcFaceLoss(10, 16))
    elif variant == "memory":  # per-learner CrossBatchMemory, fixed K
        kw = dict(
            mode="fixed",
            grow=False,
            iterations_per_epoch=45,
            loss=losses.CrossBatchMemory(losses.ContrastiveLoss(), 16, memory_size=48),
        )
    elif variant == "distance_weighted":  # the papers' loss and miner: the miner draws from torch's generator
        kw = dict(
            mode="fixed",
            iterations_per_epoch=45,
            loss=losses.MarginLoss(margin=0.2, beta=1.2),
            miner=miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4),
        )
    elif variant == "features":  # reclustering from the features training computed (saved with the state)
        kw = dict(mode="learned", iterations_per_epoch=45, recluster=dict(features_from="training"))
    elif variant == "phases":  # per-learner heads, resumed before the full-embedding and all-data phases
        kw = dict(
            mode="fixed",
            heads="per_learner",
            loss=losses.ArcFaceLoss(10, 16),
            iterations_per_epoch=30,
            full_embedding_epoch=3,
            all_data_epoch=4,
        )
    elif variant == "phases_frozen":  # shared head and masks, resumed inside the full-embedding phase
        kw = dict(
            mode="learned",
            loss=losses.ArcFaceLoss(10, 16),
            iterations_per_epoch=30,
            full_embedding_epoch=3,
            all_data_epoch=5,
            freeze_trunk_epochs=1,
        )
    trainer_kw = {k: kw.pop(k) for k in ("iterations_per_epoch",) if k in kw}
    run = factory.make(
        digits, num_learners=4, recluster_every=recluster_every, device=device, **{"heads": "shared", **kw}
    )
    parts = factory.pml(run, end_of_iteration_hook=record, workers=workers, **trainer_kw)
    parts["wrapper"].prepare(parts["trainer"])
    return parts
