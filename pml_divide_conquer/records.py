"""What PML's record-keeper logs of a DivideConquerWrapper (``HookContainer`` reads these attributes each
iteration): K, the phase, each learner's loss and mask usage, each cluster's size and number of classes, the time
of the last reclustering. Losses stay tensors until read: recording them costs no device sync."""

PER_LEARNER = (("learner", "loss"), ("cluster", "size"), ("cluster", "classes"), ("learner", "mask_usage"))
FIXED = (
    "num_active",
    "num_clusters",
    "current_learner",
    "orthogonality",
    "phase_id",
    "full_loss",
    "recluster_seconds",
    "clustering_seconds",
)


def init(wrapper):
    """Declare the recordable attributes (PML's ``add_to_recordable_attributes``) and give them first values."""
    per_learner = [f"{what}{k}_{stat}" for k in range(wrapper.num_learners) for what, stat in PER_LEARNER]
    for name in per_learner + ["orthogonality", "full_loss", "recluster_seconds", "clustering_seconds"]:
        setattr(wrapper, name, 0.0)
    wrapper.current_learner = -1
    wrapper.add_to_recordable_attributes(list_of_names=list(FIXED) + per_learner, is_stat=False)
    update_cluster_stats(wrapper)


def update_cluster_stats(wrapper):
    """Each cluster's size and number of classes, each learner's mask usage (after the clusters changed)."""
    sizes = wrapper.sampler.cluster_sizes()
    classes = wrapper.sampler.classes_per_cluster()
    usage = wrapper.embedder.mask_usage(wrapper.num_active)
    for k in range(wrapper.num_learners):
        active = k < wrapper.num_active and k < len(sizes)
        setattr(wrapper, f"cluster{k}_size", int(sizes[k]) if active else 0)
        setattr(wrapper, f"cluster{k}_classes", int(classes[k]) if active else 0)
        setattr(wrapper, f"learner{k}_mask_usage", float(usage[k]) if k < wrapper.num_active else 0.0)
