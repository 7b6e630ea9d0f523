"""A model with a dynamic input height/width takes each image at its own size (onnxfix/api.py ``Explainer.prepare``,
docs/decisions.md): long side ≤ 640, short side ≥ 32 (aspect kept), rounded up to multiples of 32 only where the
model does not run at the image's own size; a given ``--size`` / ``preprocess`` wins."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

import onnxfix
from onnxfix.io.image import own_size
from tests.hostile import models as M


def test_own_size_rule():
    assert own_size((48, 131)) == (48, 131)
    assert own_size((1000, 2000)) == (320, 640)
    assert own_size((10, 20)) == (32, 64)
    assert own_size((4, 2000)) == (1, 640)  # the long side wins over the short minimum


def _dynamic(tmp_path, multiple: int | None = None):
    m = M.cnn(shape=("N", 3, "H", "W"), head="gap")
    if multiple:  # a detector-like constraint: SpaceToDepth → DepthToSpace runs only on multiples of `multiple`
        g = m.graph
        x = g.input[0].name
        for n in g.node:
            for i, name in enumerate(n.input):
                if name == x:
                    n.input[i] = "xc"
        g.node.insert(0, helper.make_node("DepthToSpace", ["s2d"], ["xc"], blocksize=multiple))
        g.node.insert(0, helper.make_node("SpaceToDepth", [x], ["s2d"], blocksize=multiple))
    p = tmp_path / ("dyn.onnx" if not multiple else f"dyn{multiple}.onnx")
    onnx.save(m, p)
    return p


def test_dynamic_model_takes_the_image_size(tmp_path):
    ex = onnxfix.Explainer(str(_dynamic(tmp_path)), threads=1)
    img = np.random.default_rng(0).integers(0, 255, (40, 70, 3)).astype(np.uint8)
    x, frame, _ = ex.prepare(img)
    assert x.shape == (1, 3, 40, 70) and frame.input_hw == (40, 70)
    r = ex.explain(img, method="saliency")
    assert r.heatmap.shape == (40, 70)
    fixed = onnxfix.Explainer(str(_dynamic(tmp_path)), threads=1, preprocess={"height": 24, "width": 24})
    assert fixed.prepare(img)[0].shape == (1, 3, 24, 24)


def test_rounds_up_where_the_model_needs_multiples(tmp_path):
    ex = onnxfix.Explainer(str(_dynamic(tmp_path, multiple=8)), threads=1)
    img = np.random.default_rng(0).integers(0, 255, (40, 70, 3)).astype(np.uint8)
    assert ex.prepare(img)[0].shape == (1, 3, 64, 96)  # 40×70 does not run; multiples of 32 do
    r = ex.explain(img, method="gradcam")
    assert r.heatmap.shape == (40, 70) and np.isfinite(r.heatmap).all()


def test_batch_of_different_sizes(tmp_path):
    ex = onnxfix.Explainer(str(_dynamic(tmp_path)), threads=1)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, hw + (3,)).astype(np.uint8) for hw in ((40, 70), (50, 50), (40, 70))]
    out = ex.explain(imgs, method="saliency", batch_size=3)
    assert [o.heatmap.shape for o in out] == [(40, 70), (50, 50), (40, 70)]
    for img, o in zip(imgs, out, strict=True):  # each as if explained alone
        np.testing.assert_allclose(o.heatmap, ex.explain(img, method="saliency").heatmap, rtol=1e-5, atol=1e-6)
