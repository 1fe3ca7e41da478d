"""The spellings of 0.3 keep working for one release, each with a FutureWarning that names the new one, and build
the same run as the new spelling."""

import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses

from pml_divide_conquer import (
    ClusterSampler,
    DivideConquerSchedule,
    DivideConquerWrapper,
    KMeansSettings,
    Reclusterer,
    SubspaceMaskedEmbedder,
)

LABELS = np.repeat(np.arange(8), 10)


def wrapper(**kwargs):
    embedder = SubspaceMaskedEmbedder(16, 4)
    return DivideConquerWrapper(
        losses.ContrastiveLoss(), embedder=embedder, sampler=ClusterSampler(LABELS, batch_size=8, m=4), **kwargs
    )


def test_the_schedule_keywords_warn_and_build_the_same_schedule():
    with pytest.warns(FutureWarning, match=r"pass schedule=DivideConquerSchedule\(num_learners=4, recluster_every=3"):
        old = wrapper(recluster_every=3, full_embedding_epoch=7, grow=False)
    new = wrapper(schedule=DivideConquerSchedule(num_learners=4, recluster_every=3, full_embedding_epoch=7, grow=False))
    assert old.schedule == new.schedule


def test_the_reclustering_keywords_warn_and_build_the_same_settings():
    data = torch.utils.data.TensorDataset(torch.zeros(len(LABELS), 2), torch.as_tensor(LABELS))
    with pytest.warns(FutureWarning, match=r"pass reclusterer=Reclusterer\(cluster_on='embedding', .*"
                      r"kmeans=KMeansSettings\(niter=5, seed=3, backend='torch'\)\)"):  # fmt: skip
        old = wrapper(cluster_on="embedding", cluster_dataset=data, kmeans_niter=5, seed=3, kmeans_backend="torch")
    new = wrapper(
        reclusterer=Reclusterer(
            cluster_on="embedding", dataset=data, kmeans=KMeansSettings(niter=5, seed=3, backend="torch")
        )
    )
    assert old.reclusterer.settings == new.reclusterer.settings
    assert old.recluster_from == "pass" and old.feature_memory is None
    with pytest.warns(FutureWarning, match=r"Reclusterer\(features_from='training', memory_device='cpu'\)"):
        assert wrapper(recluster_from="training", feature_memory_device="cpu").feature_memory is not None


def test_both_spellings_at_once_and_unknown_keywords_are_refused():
    with pytest.raises(ValueError, match="not both"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper(schedule=DivideConquerSchedule(num_learners=4), recluster_every=3)
    with pytest.raises(ValueError, match="not both"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper(reclusterer=Reclusterer(), seed=1)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['recluster_evry'\]"):
        wrapper(recluster_evry=3)


def test_conquer_epoch_still_means_full_embedding_on_all_data():
    with pytest.warns(FutureWarning, match="conquer_epoch is deprecated"):
        w = wrapper(conquer_epoch=5)
    assert (w.schedule.full_embedding_epoch, w.schedule.all_data_epoch) == (5, 5)


def test_the_new_spelling_warns_about_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrapper(schedule=DivideConquerSchedule.journal(12, 4), reclusterer=Reclusterer(kmeans=KMeansSettings(seed=1)))


def test_learner_dims_warns_and_gives_the_embedder_s_subspace_dims():
    w = wrapper()
    with pytest.warns(FutureWarning, match=r"call dc.embedder.subspace_dims\(learner, num_active\)"):
        dims = w.learner_dims(1, 4)
    assert dims == w.embedder.subspace_dims(1, 4) == slice(4, 8)
