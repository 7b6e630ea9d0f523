"""Occlusion's local recomputation (onnxfix/methods/local_forward.py) against brute force: receptive-field geometry
against single-pixel perturbations, and the whole occlusion map against recomputing every window in full."""

from __future__ import annotations

import numpy as np
import pytest

from onnxfix import Explainer
from onnxfix.methods import local_forward as lf
from tests.conftest import SAMPLES

SAMPLE_NAMES = ["resnet_shapes", "inception_shapes", "mobile_shapes", "digits_cnn"]


@pytest.fixture(scope="module", params=SAMPLE_NAMES)
def ex(request):
    return Explainer(SAMPLES / f"{request.param}.onnx")


def test_geometry_bounds_what_a_pixel_changes(ex):
    """Perturb one input pixel: every changed position o of a cut must satisfy s·o + lo ≤ pixel ≤ s·o + hi."""
    m = ex.model
    cuts, _, _ = lf._cuts(m)
    assert cuts, "every sample model has at least one cut"
    geo = lf.geometry(m.graph, m.input, m.graph.nodes_between([m.input], m.head.logits))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, *m.input_shape[1:])).astype(np.float32)
    clean = m.runtime.run({m.input: x}, cuts)
    H, W = x.shape[2:]
    for py, px in [(0, 0), (H // 2, W // 3), (H - 1, W - 1)]:
        xp = x.copy()
        xp[0, :, py, px] += 5.0
        pert = m.runtime.run({m.input: xp}, cuts)
        for c in cuts:
            g = geo[c]
            oy, ox = np.nonzero(np.abs(pert[c] - clean[c]).max(axis=(0, 1)) > 1e-6)
            assert np.all(g.s[0] * oy + g.lo[0] <= py) and np.all(py <= g.s[0] * oy + g.hi[0]), c
            assert np.all(g.s[1] * ox + g.lo[1] <= px) and np.all(px <= g.s[1] * ox + g.hi[1]), c


@pytest.mark.parametrize("window,stride,baseline", [(None, None, 0.0), (5, 3, 0.0), (8, 8, -1.0), (3, 2, 0.5)])
def test_local_occlusion_equals_full_recomputation(ex, window, stride, baseline):
    image = SAMPLES / "resnet_shapes.png"
    opts = {"baseline": baseline}
    if window:
        opts.update(window=window, stride=stride)
    local = ex.explain(image, method="occlusion", **opts)
    full = ex.explain(image, method="occlusion", local=False, **opts)
    plans = [p for p in ex.model.cache.get("local_plans", dict).values() if p is not None]
    assert plans, "the sample models are all local enough for a plan"
    scale = max(1e-6, float(np.abs(full.attribution).max()))
    assert np.abs(local.attribution - full.attribution).max() / scale < 1e-4


def test_a_failed_check_falls_back_to_full_recomputation(monkeypatch):
    ex = Explainer(SAMPLES / "resnet_shapes.onnx")
    real = lf.run_windows
    monkeypatch.setattr(lf, "run_windows", lambda *a, **k: real(*a, **k) + 1.0)  # a wrong plan
    import onnxfix.methods.occlusion as occ

    monkeypatch.setattr(occ, "run_windows", lf.run_windows)
    image = SAMPLES / "resnet_shapes.png"
    got = ex.explain(image, method="occlusion", window=6, stride=3).attribution
    assert list(ex.model.cache.get("local_plans", dict).values()) == [None]
    want = ex.explain(image, method="occlusion", window=6, stride=3, local=False).attribution
    np.testing.assert_array_equal(got, want)


def test_axis_plan_crops_cover_what_they_must():
    n, s, lo, hi = 64, 4, -6, 9
    nt = n // s
    windows = [(p, p + 7) for p in range(0, n - 7, 5)]
    ap = lf._axis_plan(n, nt, s, lo, hi, windows)
    assert ap is not None and ap.size % s == 0 and ap.size < n
    for (p0, p1), start, (a, b) in zip(windows, ap.starts, ap.reach, strict=True):
        assert start % s == 0 and 0 <= start <= n - ap.size
        changed = [o for o in range(nt) if s * o + lo <= p1 and s * o + hi >= p0]
        assert (a, b) == (min(changed), max(changed))
        # every reached position reads only crop pixels, or the crop edge is the image edge
        assert s * a + lo >= start or start == 0
        assert s * b + hi <= start + ap.size - 1 or start + ap.size == n
