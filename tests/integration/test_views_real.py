"""Survey views on a real model (EfficientNet-Lite0): activation grid, first-layer filters, muting pixels, a short
class impression."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data as sd

from onnxfix.interpret.impressions import class_impression
from onnxfix.interpret.views import activation_grid, first_conv, first_layer_filters, layer_channels
from tests.integration.test_real_models import COFFEE_CUP_AND_SAUCER, explainer, inside

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_views_on_efficientnet(real_model):
    ex = explainer(real_model("efficientnet_lite0"))
    img = sd.coffee()
    name, idx, maps_ = layer_channels(ex, img)
    assert len(idx) == 64 and maps_.shape == (64, 7, 7)
    assert activation_grid(ex, img).size[0] > 500
    node, w = first_conv(ex)
    assert w.shape == (32, 3, 3, 3)
    assert first_layer_filters(ex).size[0] > 300
    e = ex.explain(img, method="muting-pixels")
    assert e.label == "espresso" and e.attribution.shape == (8, 8)
    i, j = np.unravel_index(int(np.argmax(e.attribution)), e.attribution.shape)
    ye, xe = e.extras["y_edges"], e.extras["x_edges"]
    sy, sx = img.shape[0] / 224, img.shape[1] / 224  # the strongest cell's centre on the photo
    assert inside(((xe[j] + xe[j + 1]) / 2 * sx, (ye[i] + ye[i + 1]) / 2 * sy), COFFEE_CUP_AND_SAUCER)
    im, h = class_impression(ex, "flamingo", steps=20)
    assert im.size == (224, 224) and h.target == 130
    assert h.logit[-1] > h.logit[0] + 5 and h.logit[-1] > h.best_other[-1], (h.logit, h.best_other)
