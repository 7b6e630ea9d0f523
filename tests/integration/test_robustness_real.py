"""Issue #5 on a real model: the memory estimate behind the budget is exact on EfficientNet-Lite0."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def test_memory_estimate_and_budget_on_efficientnet(real_model):
    from onnxfix import Explainer
    from onnxfix.errors import InputError

    entry = real_model("efficientnet_lite0")
    ex = Explainer(entry["path"], threads=1)
    mdl = ex.model
    image = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    x = ex.prepare(image)[0]
    acts = ex.activations(image)
    names = [t for n in mdl.graph.nodes for t in n.outputs if t]
    exact = sum(acts[n].nbytes for n in names)
    assert mdl.runtime.exposed_bytes(names, {mdl.input: x}) == exact
    assert exact > 20 * 1024**2  # tens of MB of feature maps: what the budget is about
    small = Explainer(entry["path"], threads=1, memory_budget_mb=exact / 1024**2 / 2)
    with pytest.raises(InputError, match="memory budget"):
        small.activations(image)
    assert small.explain(image, method="saliency").heatmap.shape == (96, 128)  # exposes only the logits
