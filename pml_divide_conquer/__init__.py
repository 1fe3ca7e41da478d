"""Divide & Conquer the Embedding Space for Metric Learning, as a plugin for pytorch-metric-learning."""

from .embedder import SubspaceMaskedEmbedder
from .sampler import ClusterBatchSampler, ClusterSampler
from .schedule import DivideConquerSchedule, Phase
from .wrapper import DivideConquerWrapper

__version__ = "0.3.0"

__all__ = [
    "ClusterBatchSampler",
    "ClusterSampler",
    "DivideConquerSchedule",
    "DivideConquerWrapper",
    "Phase",
    "SubspaceMaskedEmbedder",
]
