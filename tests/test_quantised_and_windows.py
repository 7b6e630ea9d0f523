"""Quantised graphs: gradient methods refuse naming the integer ops, gradient-free ones run (issue #11 item 7);
occlusion's default window scales with the input's long side and its window count is capped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import onnxfix
from onnxfix.methods import METHODS
from onnxfix.methods.occlusion import MAX_WINDOWS, _count

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


@pytest.fixture(scope="module")
def quantised(tmp_path_factory):
    q = pytest.importorskip("onnxruntime.quantization")
    out = tmp_path_factory.mktemp("q") / "resnet_q.onnx"
    q.quantize_dynamic(str(SAMPLES / "resnet_shapes.onnx"), str(out), weight_type=q.QuantType.QUInt8)
    return onnxfix.Explainer(out)


def test_gradient_methods_name_the_quantised_ops(quantised):
    why = quantised.methods()
    ops = {n.op_type for n in quantised.model.graph.nodes}
    assert ops & {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
    for m in ("gradcam", "saliency", "gradcam++", "integrated-gradients"):
        assert why[m] is not None and "quantised" in why[m], (m, why[m])
    with pytest.raises(onnxfix.UnsupportedModel, match="quantised"):
        quantised.explain(np.zeros((64, 64, 3), np.uint8), method="gradcam")
    e = quantised.explain(np.zeros((64, 64, 3), np.uint8), method="occlusion", window=16, stride=16)
    assert np.isfinite(e.attribution).all()


@pytest.mark.parametrize(("h", "w"), [(48, 320), (32, 32), (224, 224), (64, 1024)])
def test_occlusion_default_windows_are_capped(h, w):
    from onnxfix.methods.occlusion import Occlusion

    assert isinstance(METHODS["occlusion"], Occlusion)
    k = max(2, min(min(h, w), max(h, w) // 8))
    s = max(1, k // 2)
    while _count(h, k, s) * _count(w, k, s) > MAX_WINDOWS:
        s += 1
    assert _count(h, k, s) * _count(w, k, s) <= MAX_WINDOWS
    if h == w:  # square inputs keep the window of 1/8 of the side and the stride of half of it
        assert (k, s) == (max(2, h // 8), max(1, max(2, h // 8) // 2))


def test_occlusion_on_a_wide_text_line_uses_the_long_side():
    crnn = Path(__file__).resolve().parents[1] / ".cache" / "real_models" / "models" / "captcha_crnn.onnx"
    if not crnn.exists():
        pytest.skip("captcha CRNN not obtained (tools/real_models.py)")
    ex = onnxfix.Explainer(crnn)
    e = ex.explain(np.full((60, 160, 3), 200, np.uint8), method="occlusion")
    assert e.extras["window"] == (20, 20) and e.extras["windows"] <= MAX_WINDOWS  # 160 // 8, not 60 // 8
