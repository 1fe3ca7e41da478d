"""What each command runs: the named settings of the gate, the table of variants, the ablation, the reclustering
comparison, the regime sweeps and the tuning rounds."""

from benchmarks.han.config import CHOSEN, LOSSES


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
