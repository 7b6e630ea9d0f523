"""Discernible neurons on EfficientNet-Lite0 (a 50-conv network with explicit Pad nodes and depthwise convs)."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data as sd

import onnxfix

pytestmark = pytest.mark.integration

CAT_FACE = (60, 20, 390, 290)  # as in test_real_models.py


def _explainer(entry: dict) -> onnxfix.Explainer:
    pre = {k: entry[k] for k in ("mean", "std", "scale", "channels", "layout") if entry.get(k) is not None}
    return onnxfix.Explainer(entry["path"], labels=entry.get("labels"), preprocess=pre)


def test_discernible_k1_points_at_the_cat_and_survives_the_pads(real_model):
    ex = _explainer(real_model("efficientnet_lite0"))
    img = sd.chelsea()
    e = ex.explain(img, method="discernible", k=1)
    assert "cat" in e.label
    # k = 1 follows one neuron per layer: one input pixel, reached through 16 explicit Pad nodes (a dead field
    # keeps its centre tap instead of a padded corner)
    assert e.points is not None and len(e.points) == 1
    y, x = np.unravel_index(int(np.argmax(e.heatmap)), e.heatmap.shape)
    assert CAT_FACE[0] <= x <= CAT_FACE[2] and CAT_FACE[1] <= y <= CAT_FACE[3]
    for name in ("coffee", "rocket"):  # the single path never dies at a Pad border
        assert len(ex.explain(getattr(sd, name)(), method="discernible", k=1).points) == 1


@pytest.mark.slow
def test_discernible_k2_grows_but_stays_on_the_image(real_model):
    ex = _explainer(real_model("efficientnet_lite0"))
    img = sd.chelsea()
    e = ex.explain(img, method="discernible", k=2)
    f = ex.explain(img, method="fixations")
    h, w = img.shape[:2]
    assert len(e.points) > len(f.points)
    assert (e.points[:, 0] >= 0).all() and (e.points[:, 0] < w).all()
    assert (e.points[:, 1] >= 0).all() and (e.points[:, 1] < h).all()
