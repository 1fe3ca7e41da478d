"""The package's front door (__init__.py): the public API, importable, documented."""

import inspect

import pml_divide_conquer


def test_every_public_name_is_importable_and_documented():
    for name in pml_divide_conquer.__all__:
        obj = getattr(pml_divide_conquer, name)
        assert inspect.getdoc(obj), name
    assert {"ClusterSampler", "DivideConquerWrapper", "DivideConquerSchedule", "SubspaceMaskedEmbedder"} <= set(
        pml_divide_conquer.__all__
    )
    assert {"Reclusterer", "ReclusterSettings", "KMeansSettings"} <= set(pml_divide_conquer.__all__)
