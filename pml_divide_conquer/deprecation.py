"""Deprecated spellings: what 0.3 accepted and 0.4 still does, for one release, with a FutureWarning naming the
new spelling. Each entry is listed in CHANGELOG.md."""

from . import notices

REMOVED_IN = "0.5"


def warn_deprecated(old, new):
    """Warn that ``old`` is deprecated: ``new`` is the spelling to use (a FutureWarning, shown by default)."""
    notices.warn(f"{old} is deprecated and will be removed in {REMOVED_IN}: {new}", FutureWarning)


# DivideConquerWrapper's keywords of 0.3 -> what they set now
SCHEDULE_KEYWORDS = ("recluster_every", "full_embedding_epoch", "all_data_epoch", "grow", "freeze_trunk_epochs")
RECLUSTER_KEYWORDS = {  # -> a field of ReclusterSettings
    "cluster_on": "cluster_on",
    "cluster_dataset": "dataset",
    "cluster_batch_size": "batch_size",
    "cluster_num_workers": "num_workers",
    "recluster_from": "features_from",
    "feature_memory_device": "memory_device",
}
KMEANS_KEYWORDS = {  # -> a field of KMeansSettings
    "kmeans_niter": "niter",
    "kmeans_max_points_per_centroid": "max_points_per_centroid",
    "kmeans_max_retries": "max_retries",
    "faiss_gpu": "gpu",
    "kmeans_backend": "backend",
    "seed": "seed",
}


def _spelled(values):
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def wrapper_parts(num_learners, deprecated, schedule, reclusterer):
    """The schedule and the reclusterer of a DivideConquerWrapper given the keywords of 0.3 (``deprecated``) too,
    with one FutureWarning for each group that names the new spelling. Refused: unknown keywords, and a group given
    beside its new spelling."""
    from .clustering import KMeansSettings
    from .reclustering import Reclusterer
    from .schedule import DivideConquerSchedule

    timing, settings, kmeans = _sorted(num_learners, deprecated, schedule is not None, reclusterer is not None)
    if timing:
        schedule = DivideConquerSchedule(num_learners=num_learners, **timing)
    if settings or kmeans:
        reclusterer = Reclusterer(**settings, **({"kmeans": KMeansSettings(**kmeans)} if kmeans else {}))
    return schedule, reclusterer


def _sorted(num_learners, deprecated, schedule_given, reclusterer_given):
    """``(schedule fields, ReclusterSettings fields, KMeansSettings fields)`` of the keywords of 0.3, warned of."""
    known = set(SCHEDULE_KEYWORDS) | {"conquer_epoch"} | set(RECLUSTER_KEYWORDS) | set(KMEANS_KEYWORDS)
    unknown = sorted(set(deprecated) - known)
    if unknown:
        raise TypeError(f"DivideConquerWrapper() got unexpected keyword arguments {unknown}")
    timing = {k: deprecated[k] for k in SCHEDULE_KEYWORDS if k in deprecated}
    if "conquer_epoch" in deprecated:  # (the schedule itself warns about this one, with what it means)
        timing["conquer_epoch"] = deprecated["conquer_epoch"]
    if timing and schedule_given:
        raise ValueError(f"give the schedule either as schedule= or as {sorted(timing)}, not both")
    new = {k: v for k, v in timing.items() if k != "conquer_epoch"}
    if new:
        warn_deprecated(
            f"DivideConquerWrapper({_spelled(new)})",
            f"pass schedule=DivideConquerSchedule(num_learners={num_learners}, {_spelled(new)})",
        )
    settings = {RECLUSTER_KEYWORDS[k]: v for k, v in deprecated.items() if k in RECLUSTER_KEYWORDS}
    kmeans = {KMEANS_KEYWORDS[k]: v for k, v in deprecated.items() if k in KMEANS_KEYWORDS}
    if settings or kmeans:
        old = {k: v for k, v in deprecated.items() if k in RECLUSTER_KEYWORDS or k in KMEANS_KEYWORDS}
        if reclusterer_given:
            raise ValueError(f"give the reclustering settings either in reclusterer= or as {sorted(old)}, not both")
        shown = _spelled(settings) + (", " if settings and kmeans else "")
        shown += f"kmeans=KMeansSettings({_spelled(kmeans)})" if kmeans else ""
        warn_deprecated(f"DivideConquerWrapper({_spelled(old)})", f"pass reclusterer=Reclusterer({shown})")
    return timing, settings, kmeans
