"""Divide & Conquer the Embedding Space for Metric Learning, as a plugin for pytorch-metric-learning."""

from .embedder import SubspaceMaskedEmbedder
from .sampler import ClusterSampler
from .schedule import DivideConquerSchedule, Phase
from .wrapper import DivideConquerWrapper

__version__ = "0.2.0"

__all__ = ["ClusterSampler", "DivideConquerSchedule", "DivideConquerWrapper", "Phase", "SubspaceMaskedEmbedder"]
