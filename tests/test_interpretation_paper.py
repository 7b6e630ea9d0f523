""""Visual Explanation by Interpretation" (Oramas et al., ICLR 2019) as written: §3.2's r = w ∘ x selection, §3.3's
Eq. 3 resampling size, and the explain-time heatmap of §4.3 / Table 1 on the bundled an8Flower set (issue 16)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import onnxfix
import onnxfix.interpret.explanation  # noqa: F401 - registers the "interpretation" method
from onnxfix.autodiff import GradientProgram
from onnxfix.errors import OnnxfixError
from onnxfix.evaluate.metrics.mask_iou import mask_iou_auc
from onnxfix.interpret import filters as F
from onnxfix.interpret import relevant as rv
from tests.conftest import ROOT, SAMPLES
from tests.test_filters_textual import one_op

DATA = ROOT / "sample_data" / "an8flower6"


# ------------------------------------------------------------------------------------------------ §3.2: r = w ∘ x
def test_contributions_are_weight_times_the_training_time_response():
    rng = np.random.default_rng(0)
    acts = {"a": rng.random((1, 5, 4, 3)).astype(np.float32), "b": rng.random((1, 3, 2, 2)).astype(np.float32)}
    entries = [{"layer": "a", "filter": 3, "weight": 2.0}, {"layer": "b", "filter": 0, "weight": 0.5},
               {"layer": "a", "filter": 1, "weight": -1.0}]
    got = rv.contributions(entries, acts)
    for e, r in zip(entries, got, strict=True):
        a = acts[e["layer"]][0].astype(np.float64)
        norms = [np.sqrt(sum(float(v) ** 2 for v in a[c].ravel())) for c in range(a.shape[0])]
        assert r == pytest.approx(e["weight"] * norms[e["filter"]] / sum(norms), rel=1e-9)


def test_strongest_ranks_by_contribution_not_by_response():
    acts = {"a": np.zeros((1, 3, 2, 2), np.float32)}
    acts["a"][0, 0] = 10.0  # the strongest response …
    acts["a"][0, 1] = 1.0
    acts["a"][0, 2] = 0.0  # … and one that does not respond
    entries = [{"layer": "a", "filter": 0, "weight": 0.01}, {"layer": "a", "filter": 1, "weight": 1.0},
               {"layer": "a", "filter": 2, "weight": 5.0}]
    top = rv.strongest(entries, acts, k=3)
    assert [e["filter"] for e in top] == [1, 0]  # r = 1/11 > 0.1/11; r = 0 is not a contribution
    assert top[0]["contribution"] == pytest.approx(1.0 / 11)


# --------------------------------------------------------------------------------------- §3.3 Eq. 3: A + 2O − M + 1
@pytest.mark.parametrize("A", [7, 8])
def test_stride1_backward_runs_on_the_signal_resampled_to_eq3_size(A):
    """MaxPool M = 2, S = 2, O = 0: the backward runs the stride-1 pool on g resampled by nearest neighbour to
    B|S=1 = A + 2·O − M + 1 (numpy loops)."""
    rng = np.random.default_rng(A)
    x = rng.normal(size=(1, 1, A, A)).astype(np.float32)
    graph = one_op("MaxPool", shape=x.shape, kernel_shape=[2, 2], strides=[2, 2])
    B = (A - 2) // 2 + 1
    g = rng.normal(size=(1, 1, B, B)).astype(np.float32)
    got = GradientProgram(graph, of="y", wrt=["x"], strided="nearest").run({"x": x}, g)["grad:x"][0, 0]
    B1 = A + 2 * 0 - 2 + 1
    u = np.array([[g[0, 0, i // 2, j // 2] for j in range(B1)] for i in range(B1)])  # U_s g, size B1 x B1
    ref = np.zeros((A, A))
    for i in range(B1):
        for j in range(B1):
            win = x[0, 0, i:i + 2, j:j + 2]
            p, q = np.unravel_index(int(np.argmax(win)), win.shape)
            ref[i + p, j + q] += u[i, j]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ the explain-time map
@pytest.fixture(scope="module")
def an8(tmp_path_factory):
    """an8flower6 with its relevant filters (``onnxfix interpret`` on the bundled set), in a scratch folder."""
    from onnxfix.interpret.cmd_interpret import cmd_interpret

    d = tmp_path_factory.mktemp("an8")
    for suffix in (".onnx", ".labels.txt"):
        shutil.copyfile(SAMPLES / f"an8flower6{suffix}", d / f"an8flower6{suffix}")
    with contextlib.redirect_stdout(io.StringIO()):
        assert cmd_interpret([str(d / "an8flower6.onnx"), str(DATA)]) == 0
    return onnxfix.Explainer(d / "an8flower6.onnx"), rv.load_relevant(d / "an8flower6.interpret.json")


def test_heatmap_is_the_contribution_weighted_mean_of_the_filters_guided_nearest_maps(an8):
    ex, rel = an8
    img = DATA / "images" / "0003.png"
    e = ex.explain(img, method="interpretation", k=2)
    mdl = ex.model
    x, _, _ = ex.prepare(img)
    entries = rv.relevant_filters(rel, e.target)
    acts = mdl.runtime.run({mdl.input: x}, list({en["layer"] for en in entries}))
    top = rv.strongest(entries, acts, 2)
    assert [(f["layer"], f["filter"]) for f in e.extras["filters"]] == [(t["layer"], t["filter"]) for t in top]
    ref = np.zeros(x.shape[2:])
    for t in top:  # the public gradient API with the paper's backward: guided, stride-1 + nearest
        g = ex.gradient(img, of=t["layer"], seed=F.filter_seed(acts[t["layer"]], t["filter"]), mode="guided",
                        strided="nearest")[mdl.input][0]
        m = np.abs(g).sum(axis=0)
        ref += t["contribution"] * m / m.max()
    ref /= sum(t["contribution"] for t in top)
    np.testing.assert_allclose(e.attribution, ref, rtol=1e-4, atol=1e-6)


def test_table1_ordering_on_an8flower6(an8):
    """§4.3 Table 1 in small (12 images, relevant filters fitted on all 60 — tools/an8flower_table1.py runs the
    5-fold protocol): ours (guided + stride-1 fix) > Deconv+GB (true strided backward) > upsampled activations
    and Grad-CAM, on the area under the IoU curve against the an8Flower masks."""
    ex, _ = an8
    ann = json.loads((DATA / "annotations.json").read_text())["images"][::5]
    scores: dict[str, list[float]] = {}
    runs = {"ours": ("interpretation", {}), "deconv+gb": ("interpretation", {"visual": "exact"}),
            "upsampled": ("interpretation", {"visual": "activation"}), "gradcam": ("gradcam", {})}
    for it in ann:
        mask = np.asarray(Image.open(DATA / it["mask"])) > 0
        for name, (method, opts) in runs.items():
            e = ex.explain(DATA / it["file"], method=method, target=it["label"], **opts)
            scores.setdefault(name, []).append(mask_iou_auc(e.heatmap, mask))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean["ours"] > mean["deconv+gb"] + 0.03, mean
    assert mean["deconv+gb"] > max(mean["upsampled"], mean["gradcam"]), mean


def test_method_needs_an_interpretation_file(tmp_path, an8):
    shutil.copyfile(SAMPLES / "an8flower6.onnx", tmp_path / "m.onnx")
    ex = onnxfix.Explainer(tmp_path / "m.onnx")
    assert "onnxfix interpret" in ex.methods()["interpretation"]
    with pytest.raises(OnnxfixError, match="onnxfix interpret"):
        ex.explain(DATA / "images" / "0000.png", method="interpretation")
    with pytest.raises(OnnxfixError, match="visual"):
        an8[0].explain(DATA / "images" / "0000.png", method="interpretation", visual="bilinear")
    with pytest.raises(OnnxfixError, match="k must be"):
        an8[0].explain(DATA / "images" / "0000.png", method="interpretation", k=0)
