"""Filter visualisation with Oramas et al.'s stride-1 + nearest-neighbour backward, the relevant-filter view, and
Grad-CAM's textual explanation (issue #6 items 2b and 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import onnxfix
from onnxfix.autodiff import GradientProgram, build_backward
from onnxfix.cli import main
from onnxfix.errors import InputError
from onnxfix.graph import Graph, resolve_pads
from onnxfix.interpret import filters as F
from onnxfix.methods import textual as T

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
SHAPE = (1, 3, 9, 10)


# ------------------------------------------------------------------------------------ the paper's equations, numpy
def one_op(op: str, w: np.ndarray | None = None, shape=SHAPE, **attrs) -> Graph:
    inits, ins = [], ["x"]
    if w is not None:
        inits, ins = [numpy_helper.from_array(w, "w")], ["x", "w"]
    node = helper.make_node(op, ins, ["y"], name="op", **attrs)
    g = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return Graph.from_model(onnx.shape_inference.infer_shapes(m))


def twin_size(S, k, s, d, pads, O):
    """Output size O1 of the stride-1 twin of a strided op (end pads grown to cover every strided window, as
    under ceil_mode); twin output i reads the input taps i + t·d − p_begin."""
    n = len(S)
    ends = [max(pads[n + a], s[a] * (O[a] - 1) + (k[a] - 1) * d[a] + 1 - S[a] - pads[a]) for a in range(n)]
    return [S[a] + pads[a] + ends[a] - (k[a] - 1) * d[a] for a in range(n)]


def upsample(g: np.ndarray, s, O1) -> np.ndarray:
    """U_s: (U_s g)[i, j] = g[⌊i/s_h⌋, ⌊j/s_w⌋] for i < O1_h, j < O1_w."""
    return g[..., np.arange(O1[0]) // s[0], :][..., np.arange(O1[1]) // s[1]]


def ref_conv(x, w, g, s, d, pads, group=1):
    """dx = conv₁ᵀ(U_s g): Σ over twin positions (i, j) and taps (p, q) of W[m, c, p, q]·u[m, i, j] at
    x[c, i + p·d − pt, j + q·d − pl]."""
    _, C, H, W = x.shape
    M, cg, kh, kw = w.shape
    O = [g.shape[2], g.shape[3]]
    O1 = twin_size([H, W], [kh, kw], s, d, pads, O)
    u = upsample(g[0], s, O1)
    dx = np.zeros((C, H, W))
    for m in range(M):
        gi = m // (M // group)
        for i in range(O1[0]):
            for j in range(O1[1]):
                for p in range(kh):
                    for q in range(kw):
                        yy, xx = i + p * d[0] - pads[0], j + q * d[1] - pads[1]
                        if 0 <= yy < H and 0 <= xx < W:
                            dx[gi * cg:(gi + 1) * cg, yy, xx] += w[m, :, p, q] * u[m, i, j]
    return dx


def ref_pool(x, g, k, s, pads, kind, count_include_pad=0):
    """dx = pool₁ᵀ(U_s g): every twin window sends u to its argmax (max) or u/divisor to each tap (average)."""
    _, C, H, W = x.shape
    O = [g.shape[2], g.shape[3]]
    O1 = twin_size([H, W], k, s, [1, 1], pads, O)
    u = upsample(g[0], s, O1)
    dx = np.zeros((C, H, W))
    for c in range(C):
        for i in range(O1[0]):
            for j in range(O1[1]):
                taps = [(i + p - pads[0], j + q - pads[1]) for p in range(k[0]) for q in range(k[1])]
                real = [(a, b) for a, b in taps if 0 <= a < H and 0 <= b < W]
                if kind == "max":
                    a, b = max(real, key=lambda t: x[0, c, t[0], t[1]])
                    dx[c, a, b] += u[c, i, j]
                else:
                    div = k[0] * k[1] if count_include_pad else len(real)
                    for a, b in real:
                        dx[c, a, b] += u[c, i, j] / div
    return dx


def backward(graph: Graph, x: np.ndarray, strided: str, seed_rng: int = 2) -> tuple[np.ndarray, np.ndarray]:
    prog = GradientProgram(graph, of="y", wrt=["x"], strided=strided)
    g = np.random.default_rng(seed_rng).normal(size=graph.shape("y")).astype(np.float32)
    return prog.run({"x": x}, g)["grad:x"][0], g


X = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)

CONV_CASES = [
    dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(strides=[2, 3], pads=[0, 1, 2, 0]),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[3, 2], pads=[1, 1, 1, 1], dilations=[2, 1]),
    dict(strides=[2, 2], pads=[1, 1, 1, 1], group=3),  # depthwise
]


@pytest.mark.parametrize("attrs", CONV_CASES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_strided_conv_nearest_matches_paper_equations(attrs):
    group = attrs.get("group", 1)
    w = np.random.default_rng(0).normal(size=(6, 3 // group, 3, 3)).astype(np.float32)
    g = one_op("Conv", w, kernel_shape=[3, 3], **attrs)
    d = attrs.get("dilations", [1, 1])
    pads = resolve_pads(dict(attrs, kernel_shape=[3, 3], dilations=d), [SHAPE[2], SHAPE[3]])
    dx, seed = backward(g, X, "nearest")
    ref = ref_conv(X, w, seed, attrs["strides"], d, pads, group)
    np.testing.assert_allclose(dx, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[2, 3], strides=[3, 2], pads=[0, 1, 1, 0]),
], ids=["k3s2p1", "k2s2", "k3s2ceil", "k2x3s3x2"])
@pytest.mark.parametrize("kind", ["MaxPool", "AveragePool"])
def test_strided_pool_nearest_matches_paper_equations(kind, attrs):
    g = one_op(kind, **attrs)
    pads = resolve_pads(dict({"pads": [0, 0, 0, 0]}, **attrs, dilations=[1, 1]), [SHAPE[2], SHAPE[3]])
    dx, seed = backward(g, X, "nearest")
    ref = ref_pool(X, seed, attrs["kernel_shape"], attrs["strides"], pads, "max" if kind == "MaxPool" else "avg")
    np.testing.assert_allclose(dx, ref, rtol=1e-5, atol=1e-5)


def test_average_pool_count_include_pad():
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    dx, seed = backward(one_op("AveragePool", **attrs), X, "nearest")
    np.testing.assert_allclose(dx, ref_pool(X, seed, [3, 3], [2, 2], [1, 1, 1, 1], "avg", 1), rtol=1e-5, atol=1e-5)


def test_default_backward_is_unchanged_and_exact():
    """No flag = strided="exact" = the same model bytes; its gradient is the true adjoint (zero insertion), which
    the nearest variant is not; an op without stride is identical under both."""
    w = np.random.default_rng(0).normal(size=(6, 3, 3, 3)).astype(np.float32)
    g = one_op("Conv", w, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    default = build_backward(g, "y", ["x"])[0].SerializeToString()
    assert default == build_backward(g, "y", ["x"], strided="exact")[0].SerializeToString()
    assert default != build_backward(g, "y", ["x"], strided="nearest")[0].SerializeToString()
    dx, seed = backward(g, X, "exact")
    full = np.zeros((1, 6, 9, 10), np.float32)  # D_sᵀ g: zeros inserted on the twin's 9×10 grid
    full[:, :, ::2, ::2] = seed
    # the exact adjoint is the stride-1 adjoint of the zero-inserted gradient: the nearest reference with s = 1
    np.testing.assert_allclose(dx, ref_conv(X, w, full, [1, 1], [1, 1], [1, 1, 1, 1]), rtol=1e-4, atol=1e-4)
    dn, _ = backward(g, X, "nearest")
    assert np.abs(dn - dx).max() > 0.1
    flat = one_op("Conv", w, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    assert (build_backward(flat, "y", ["x"], strided="nearest")[0].SerializeToString()
            == build_backward(flat, "y", ["x"])[0].SerializeToString())


def test_bad_strided_value_is_an_input_error():
    g = one_op("MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    with pytest.raises(InputError, match="strided"):
        build_backward(g, "y", ["x"], strided="bilinear")


# ---------------------------------------------------------------------------------------------- numbers of the view
def test_grid_energy_sees_a_grid_and_not_a_blob():
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((yy - 30.0) ** 2 + (xx - 34.0) ** 2) / 200.0)
    grid = (1 + blob) * ((yy % 4 == 0) & (xx % 4 == 0))  # a period-4 grid of dots over a blob
    noise = np.random.default_rng(0).random((64, 64))
    assert F.grid_energy(blob, 4) < 1e-4 and F.grid_energy(noise, 4) < 0.01  # white noise: ≈ 15/4096
    assert F.grid_energy(grid, 4) > 0.9
    assert F.grid_energy(grid, 1) == 0.0 and F.grid_energy(np.ones((8, 8)), 2) == 0.0
    assert F.layer_period((64, 64), (8, 8)) == 8


def test_filter_seed():
    act = np.random.default_rng(0).normal(size=(1, 4, 3, 5)).astype(np.float32)
    s = F.filter_seed(act, 2, "map")
    assert np.array_equal(s[0, 2], act[0, 2]) and not s[0, [0, 1, 3]].any()
    s = F.filter_seed(act, 1, "max")
    assert np.count_nonzero(s) == 1 and s.max() == act[0, 1].max() and s[0, 1].max() == act[0, 1].max()
    with pytest.raises(InputError):
        F.filter_seed(act, 1, "mean")


@pytest.fixture(scope="module")
def resnet():
    return onnxfix.Explainer(SAMPLES / "resnet_shapes.onnx")


def write_relevant(path: Path, classes: dict) -> Path:
    path.write_text(json.dumps({"model": "m.onnx", "mu": 10.0, "layers": [], "classes": classes}))
    return path


def test_relevant_view_picks_top_responding_filters_and_reduces_grid(resnet, tmp_path):
    """The k relevant filters of the predicted class with the largest r = w ∘ x (Oramas et al. §3.2: weight times
    the L1-normalised ‖A_j‖₂), each visualised; the stride-1 fix cuts the energy at the stride lattice (the grid) by
    far, for guided backprop and for deconvnet."""
    img = SAMPLES / "resnet_shapes.png"
    mdl = resnet.model
    layer = "/layer2/Relu_1_output_0"
    x, _, _ = resnet.prepare(img)
    a = mdl.runtime.run({mdl.input: x}, [layer])[layer][0]
    norms = np.linalg.norm(a.reshape(a.shape[0], -1), axis=1)
    cand = [int(j) for j in np.argsort(norms)[::3][:8]]  # a mix of weak and strong filters
    weights = {j: 1.0 / (1.0 + 0.5 * i) for i, j in enumerate(cand)}  # the strongest filters weigh least
    target = resnet.predict(img, k=1)[0]["index"]
    rel = write_relevant(tmp_path / "r.json", {str(target): [
        {"layer": layer, "filter": j, "weight": weights[j]} for j in sorted(cand, key=lambda j: -weights[j])]})
    fv = F.relevant_filter_views(resnet, img, relevant=rel, k=3)
    assert fv.target == target and str(rel) in fv.source
    r = {j: weights[j] * norms[j] / norms.sum() for j in cand}
    want = sorted(cand, key=lambda j: -r[j])[:3]
    assert want != sorted(cand, key=lambda j: -norms[j])[:3]  # the weights matter in this case
    assert [v.filter for v in fv.views] == want
    assert [v.layer for v in fv.views] == [layer] * 3
    np.testing.assert_allclose([v.response for v in fv.views], norms[want], rtol=1e-5)
    assert fv.period[layer] == 4
    for v in fv.views:
        assert set(v.grads) == {F.key(m, s) for m, s in F.VARIANTS}
        assert v.grads["guided/exact"].shape == (3, 64, 64)
        for mode in ("guided", "deconvnet"):
            assert v.grid[f"{mode}/nearest"] < 0.5 * v.grid[f"{mode}/exact"], v.to_json()
    # the plain guided picture is exactly Explainer.gradient with the filter's map as seed
    ref = resnet.gradient(img, of=layer, seed=F.filter_seed(a[None], want[0]), mode="guided")[mdl.input][0]
    np.testing.assert_allclose(fv.views[0].grads["guided/exact"], ref, rtol=1e-5, atol=1e-7)
    im = F.render_views(fv)
    assert isinstance(im, Image.Image) and im.width > 5 * 112 and im.height > 3 * 112
    json.dumps(fv.to_json())


def test_view_without_interpretation_falls_back_to_gradcam_channels(resnet, tmp_path):
    img = SAMPLES / "resnet_shapes.png"
    fv = F.relevant_filter_views(resnet, img, k=2, variants=(("guided", "nearest"),))
    assert "no interpretation file" in fv.source and len(fv.views) == 2
    e = resnet.explain(img, method="gradcam")  # the fallback ranks the Grad-CAM layer's channels by α·‖A‖₂
    x, _, _ = resnet.prepare(img)
    a = resnet.model.runtime.run({resnet.model.input: x}, [e.extras["layer"]])[e.extras["layer"]][0]
    norms = np.linalg.norm(a.reshape(a.shape[0], -1), axis=1)
    chosen = np.argsort(-(e.extras["weights"].astype(np.float64) * norms))[:2]
    assert [v.filter for v in fv.views] == sorted(chosen.tolist(), key=lambda j: -norms[j])  # shown by response
    assert all(v.layer == e.extras["layer"] for v in fv.views)
    rel = write_relevant(tmp_path / "r.json", {"0": [{"layer": "/layer2/Relu_1_output_0", "filter": 1,
                                                      "weight": 0.5}]})
    fv2 = F.relevant_filter_views(resnet, img, relevant=rel, target=4, k=2, variants=(("guided", "nearest"),))
    assert "no relevant filters for class 4" in fv2.source
    assert [v.filter for v in fv2.views] == [v.filter for v in fv.views]
    bad = write_relevant(tmp_path / "bad.json", {"4": [{"layer": "/layer2/Relu_1_output_0", "filter": 999,
                                                        "weight": 0.5}]})
    with pytest.raises(InputError, match="999"):
        F.relevant_filter_views(resnet, img, relevant=bad, target=4)
    with pytest.raises(InputError):
        F.relevant_filter_views(resnet, img, relevant=tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------------- textual (§7)
def test_textual_channels_are_argsort_of_independent_alpha(resnet):
    img = SAMPLES / "resnet_shapes.png"
    assert "textual" not in resnet.explain(img, method="gradcam").extras  # only when asked for
    e = resnet.explain(img, method="gradcam", textual=True)
    text = e.extras["textual"]
    layer = text["layer"]
    onehot = np.zeros((1, 5), np.float32)
    onehot[0, e.target] = 1
    g = resnet.gradient(img, of=resnet.model.head.logits, wrt=[layer], seed=onehot)[layer][0]
    alpha = g.astype(np.float64).mean(axis=(1, 2))
    assert [t["channel"] for t in text["top"]] == list(np.argsort(-alpha, kind="stable")[:5])
    assert [t["channel"] for t in text["bottom"]] == list(np.argsort(alpha, kind="stable")[:5])
    np.testing.assert_allclose([t["alpha"] for t in text["top"]], np.sort(alpha)[::-1][:5], rtol=1e-4)
    assert e.extras["textual_maps"].shape == (10, 8, 8)
    H, W = e.heatmap.shape
    for t in text["top"] + text["bottom"]:
        if t["box"] is not None:
            x0, y0, x1, y1 = t["box"]
            assert 0 <= x0 <= x1 <= W - 1 and 0 <= y0 <= y1 <= H - 1
        assert t["peak"] is None or (0 <= t["peak"][0] <= W and 0 <= t["peak"][1] <= H)
    d = e.to_json("i.png", "m.onnx", None)
    assert d["textual"] == json.loads(json.dumps(text))
    panel = T.textual_panel(e)
    assert panel.width >= 5 * T.TILE and panel.height >= 2 * T.TILE
    with pytest.raises(InputError, match="textual"):  # an option a method does not declare is refused (core contract)
        resnet.explain(img, method="gradcam++", textual=True)


def test_textual_helpers():
    a = np.array([0.3, -0.1, 0.3, 0.0, -0.5])
    assert T.top_bottom(a, 2) == ([0, 2], [4, 1])
    acts = np.zeros((5, 4, 4), np.float32)
    acts[2, 1, 3] = 2.0
    text, amaps = T.textual_explanation(a, acts, (8, 8), k=2)
    e = text["top"][1]
    assert e["channel"] == 2 and e["peak"] == [6.5, 2.5] and e["box"] is not None
    assert text["top"][0]["box"] is None and text["top"][0]["peak"] is None  # channel 0 never fires
    assert amaps.shape == (4, 4, 4)
    with pytest.raises(ValueError):
        T.textual_explanation(a[:3], acts, (8, 8))


# ----------------------------------------------------------------------------------------------------- end to end
def test_cli_textual_json_and_panel(tmp_path, capsys):
    model, img = SAMPLES / "resnet_shapes.onnx", SAMPLES / "resnet_shapes.png"
    assert main([str(model), str(img), "--method", "gradcam", "--textual", "--json", "--out", str(tmp_path)]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(d["textual"]["top"]) == 5 and len(d["textual"]["bottom"]) == 5
    assert {"channel", "alpha", "box", "peak"} <= set(d["textual"]["top"][0])
    png = Path(d["textual_png"])
    assert png.name == "resnet_shapes.textual.png" and Image.open(png).size[0] > 500
    assert main([str(model), str(img), "--method", "fixations", "--textual", "--out", str(tmp_path)]) == 2
    assert "--method gradcam" in capsys.readouterr().err


def test_cli_view_filters(tmp_path, capsys):
    model, img = SAMPLES / "digits_cnn.onnx", SAMPLES / "digits_cnn.png"
    out = tmp_path / "f.png"
    assert main(["view", str(model), str(img), "--filters", "--out", str(out)]) == 0
    im = Image.open(out)
    assert im.width > 5 * 112 and im.height > 4 * 112
