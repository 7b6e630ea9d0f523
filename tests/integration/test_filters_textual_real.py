"""EfficientNet-Lite0: the stride-1 fix removes the grid from a filter's guided-backprop picture; Grad-CAM's textual
explanation lands where the cat is (issue #6 items 2b and 4)."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data as sd

import onnxfix
from onnxfix.interpret import filters as F
from onnxfix.methods.layers import feature_maps

pytestmark = pytest.mark.integration

CAT_FACE = (60, 20, 390, 290)  # as in test_real_models.py


@pytest.fixture(scope="module")
def effnet(real_model):
    entry = real_model("efficientnet_lite0")
    pre = {k: entry[k] for k in ("mean", "std", "scale", "channels", "layout") if entry.get(k) is not None}
    return onnxfix.Explainer(entry["path"], labels=entry.get("labels"), preprocess=pre)


def test_stride_fix_removes_the_grid_on_efficientnet(effnet):
    """Guided backprop from a stride-8 layer's strongest class filter: the fix divides the energy on the stride
    lattice by more than 3 (measured ≈ 7×, 0.028 → 0.004)."""
    mdl = effnet.model
    layer = [t for t in feature_maps(mdl) if mdl.graph.shape(t)[2] == 28][-1]
    fv = F.relevant_filter_views(effnet, sd.chelsea(), k=1, layer=layer,
                                 variants=(("guided", "nearest"), ("guided", "exact")))
    assert fv.label in ("Egyptian cat", "tabby", "tiger cat") and fv.period[layer] == 8
    v = fv.views[0]
    assert v.grid["guided/nearest"] < v.grid["guided/exact"] / 3, v.to_json()


def test_textual_top_channels_fire_on_the_cat(effnet):
    e = effnet.explain(sd.chelsea(), method="gradcam", textual=True)
    text = e.extras["textual"]
    assert len(text["top"]) == 5 and len(text["bottom"]) == 5
    alphas = [t["alpha"] for t in text["top"]]
    assert alphas == sorted(alphas, reverse=True) and alphas[-1] > max(t["alpha"] for t in text["bottom"])
    # where the top channels fire (those that fire on this image at all: a large α does not mean a response)
    peaks = np.array([t["peak"] for t in text["top"] if t["peak"] is not None])
    x0, y0, x1, y1 = CAT_FACE
    assert len(peaks) >= 2
    assert ((peaks[:, 0] >= x0) & (peaks[:, 0] <= x1) & (peaks[:, 1] >= y0) & (peaks[:, 1] <= y1)).all(), peaks
