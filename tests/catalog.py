"""Every loss and miner PML exports, built for the tests (16-d embeddings, 10 training classes), and what the
wrapper refuses or PML itself breaks."""

from pytorch_metric_learning import losses, miners

D = 16  # full embedding size in these tests
C = 10  # training classes (digits)

LOSSES = {
    "AngularLoss": lambda: losses.AngularLoss(),
    "ArcFaceLoss": lambda: losses.ArcFaceLoss(C, D),
    "CircleLoss": lambda: losses.CircleLoss(),
    "ContrastiveLoss": lambda: losses.ContrastiveLoss(),
    "CosFaceLoss": lambda: losses.CosFaceLoss(C, D),
    "CrossBatchMemory": lambda: losses.CrossBatchMemory(losses.ContrastiveLoss(), D, memory_size=64),
    "DynamicSoftMarginLoss": lambda: losses.DynamicSoftMarginLoss(),
    "FastAPLoss": lambda: losses.FastAPLoss(),
    "GeneralizedLiftedStructureLoss": lambda: losses.GeneralizedLiftedStructureLoss(),
    "HistogramLoss": lambda: losses.HistogramLoss(n_bins=10),
    "InstanceLoss": lambda: losses.InstanceLoss(),
    "IntraPairVarianceLoss": lambda: losses.IntraPairVarianceLoss(),
    "LargeMarginSoftmaxLoss": lambda: losses.LargeMarginSoftmaxLoss(C, D),
    "LiftedStructureLoss": lambda: losses.LiftedStructureLoss(),
    "MarginLoss": lambda: losses.MarginLoss(learn_beta=True, num_classes=C),
    "MultiSimilarityLoss": lambda: losses.MultiSimilarityLoss(),
    "MultipleLosses": lambda: losses.MultipleLosses(
        [losses.ContrastiveLoss(), losses.ArcFaceLoss(C, D)], weights=[1, 0.1]
    ),
    "NCALoss": lambda: losses.NCALoss(),
    "NPairsLoss": lambda: losses.NPairsLoss(),
    "NTXentLoss": lambda: losses.NTXentLoss(),
    "NormalizedSoftmaxLoss": lambda: losses.NormalizedSoftmaxLoss(C, D),
    "P2SGradLoss": lambda: losses.P2SGradLoss(D, C),
    "PNPLoss": lambda: losses.PNPLoss(),
    "ProxyAnchorLoss": lambda: losses.ProxyAnchorLoss(C, D),
    "ProxyNCALoss": lambda: losses.ProxyNCALoss(C, D),
    "RankedListLoss": lambda: losses.RankedListLoss(margin=0.4, Tn=10),
    "SignalToNoiseRatioContrastiveLoss": lambda: losses.SignalToNoiseRatioContrastiveLoss(),
    "SmoothAPLoss": lambda: losses.SmoothAPLoss(),
    "SoftTripleLoss": lambda: losses.SoftTripleLoss(C, D, centers_per_class=2),
    "SphereFaceLoss": lambda: losses.SphereFaceLoss(C, D),
    "SubCenterArcFaceLoss": lambda: losses.SubCenterArcFaceLoss(num_classes=C, embedding_size=D),
    "SupConLoss": lambda: losses.SupConLoss(),
    "ThresholdConsistentMarginLoss": lambda: losses.ThresholdConsistentMarginLoss(),
    "TripletMarginLoss": lambda: losses.TripletMarginLoss(),
    "TupletMarginLoss": lambda: losses.TupletMarginLoss(),
}
# losses that cannot work: they take no class labels
REFUSED = {
    "ManifoldLoss": lambda: losses.ManifoldLoss(l=D),
    "SelfSupervisedLoss": lambda: losses.SelfSupervisedLoss(losses.TripletMarginLoss()),
    "VICRegLoss": lambda: losses.VICRegLoss(),
}
ABSTRACT = {"BaseLossWrapper", "BaseMetricLossFunction", "GenericPairLoss"}

MINERS = {
    "AngularMiner": lambda: miners.AngularMiner(),
    "BatchEasyHardMiner": lambda: miners.BatchEasyHardMiner(),
    "BatchHardMiner": lambda: miners.BatchHardMiner(),
    "DistanceWeightedMiner": lambda: miners.DistanceWeightedMiner(),
    "HDCMiner": lambda: miners.HDCMiner(),
    "MultiSimilarityMiner": lambda: miners.MultiSimilarityMiner(),
    "PairMarginMiner": lambda: miners.PairMarginMiner(),
    "TripletMarginMiner": lambda: miners.TripletMarginMiner(),
    "UniformHistogramMiner": lambda: miners.UniformHistogramMiner(num_bins=10, pos_per_bin=2, neg_per_bin=2),
}
REFUSED_MINERS = {"EmbeddingsAlreadyPackagedAsTriplets": lambda: miners.EmbeddingsAlreadyPackagedAsTriplets()}
# broken in PML 2.9.0 itself: its histogram keeps autograd history, so the 2nd backward fails even without us
UPSTREAM_BROKEN = {"DynamicSoftMarginLoss"}
