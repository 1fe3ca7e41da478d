"""What PML's record-keeper logs of a DivideConquerWrapper (``HookContainer`` reads these attributes each
iteration): K, the phase, each learner's loss and mask usage, each cluster's size and number of classes, the time
of the last reclustering. Losses stay tensors until read: recording them costs no device sync.

The wrapper writes them on itself (record-keeper reads attributes of the loss module); K, the phase and the
timings are read-only properties of the wrapper that read its epoch controller.
"""

STATS_PER_LEARNER = (("learner", "loss"), ("cluster", "size"), ("cluster", "classes"), ("learner", "mask_usage"))
RECORDED = (
    "num_active",
    "num_clusters",
    "current_learner",
    "orthogonality",
    "phase_id",
    "full_loss",
    "recluster_seconds",
    "clustering_seconds",
)
PER_BATCH = ("orthogonality", "full_loss")  # written by the wrapper's forward


def per_learner_names(num_learners):
    return [f"{what}{k}_{stat}" for k in range(num_learners) for what, stat in STATS_PER_LEARNER]


def init(holder, num_learners):
    """Declare the recordable attributes of ``holder`` (PML's ``add_to_recordable_attributes``) and give the ones
    it writes first values."""
    for name in per_learner_names(num_learners) + list(PER_BATCH):
        setattr(holder, name, 0.0)
    holder.current_learner = -1
    holder.add_to_recordable_attributes(list_of_names=list(RECORDED) + per_learner_names(num_learners), is_stat=False)


def write_cluster_stats(holder, sampler, embedder, num_active):
    """Each cluster's size and number of classes, each learner's mask usage, on ``holder`` (after the clusters
    changed)."""
    sizes = sampler.cluster_sizes()
    classes = sampler.classes_per_cluster()
    usage = embedder.mask_usage(num_active)
    for k in range(embedder.num_learners):
        active = k < num_active and k < len(sizes)
        setattr(holder, f"cluster{k}_size", int(sizes[k]) if active else 0)
        setattr(holder, f"cluster{k}_classes", int(classes[k]) if active else 0)
        setattr(holder, f"learner{k}_mask_usage", float(usage[k]) if k < num_active else 0.0)
