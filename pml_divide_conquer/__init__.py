"""Divide & Conquer the Embedding Space for Metric Learning, as a plugin for pytorch-metric-learning."""

from .clustering import KMeansSettings
from .embedder import SubspaceMaskedEmbedder
from .reclustering import Reclusterer, ReclusterSettings
from .sampler import ClusterBatchSampler, ClusterSampler
from .schedule import DivideConquerSchedule, Phase
from .wrapper import DivideConquerWrapper

__version__ = "0.4.0.dev0"

__all__ = [
    "ClusterBatchSampler",
    "ClusterSampler",
    "DivideConquerSchedule",
    "DivideConquerWrapper",
    "KMeansSettings",
    "Phase",
    "ReclusterSettings",
    "Reclusterer",
    "SubspaceMaskedEmbedder",
]
