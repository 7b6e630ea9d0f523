"""Relevant filters by μ-lasso, average patches and the ablation check (issue #6 item 2 a, c, d)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxfix.cli import main
from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.graph import Graph
from onnxfix.interpret import ablation as ab
from onnxfix.interpret import patches as pt
from onnxfix.interpret import relevant as rv
from onnxfix.model import Model
from tests.conftest import ROOT, SAMPLES


# ------------------------------------------------------------------------------------------------------- the lasso
def _orthonormal(n: int, f: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, f)))
    return q


def test_penalty_lasso_orthonormal_is_soft_thresholding():
    X = _orthonormal(40, 12, 0)
    Y = np.random.default_rng(1).normal(size=(40, 3)) * 3
    mu = 1.7
    W, info = rv.lasso(X, Y, mu=mu, form="penalty", tol=1e-12)
    expect = np.sign(X.T @ Y) * np.maximum(np.abs(X.T @ Y) - mu / 2, 0)
    assert info["converged"]
    np.testing.assert_allclose(W, expect, atol=1e-9)
    assert (W == 0).any() and (W != 0).any()  # the threshold matters in this case


def test_constraint_lasso_orthonormal_is_l1_ball_projection():
    X = _orthonormal(30, 10, 2)
    y = np.random.default_rng(3).normal(size=30) * 4
    mu = 2.5
    w, info = rv.lasso(X, y, mu=mu, form="constraint", tol=1e-12)
    v = X.T @ y
    assert np.abs(v).sum() > mu  # the constraint is active
    # closed form: soft-thresholding of v at the θ that puts it on the ball
    lo, hi = 0.0, np.abs(v).max()
    for _ in range(200):
        th = (lo + hi) / 2
        lo, hi = (th, hi) if np.maximum(np.abs(v) - th, 0).sum() > mu else (lo, th)
    expect = np.sign(v) * np.maximum(np.abs(v) - th, 0)
    assert info["converged"]
    np.testing.assert_allclose(w, expect, atol=1e-8)
    assert abs(np.abs(w).sum() - mu) < 1e-8
    # inside the ball the projection is the identity
    np.testing.assert_allclose(rv.project_l1_ball(v * 1e-3, mu), v * 1e-3)


def test_lasso_one_dimensional_closed_forms():
    x = np.array([[1.0], [2.0], [-1.0], [0.5]])
    y = np.array([2.0, 3.0, -1.0, 1.0])
    xy, xx = float(x[:, 0] @ y), float(x[:, 0] @ x[:, 0])
    for mu in (0.5, 4.0, 30.0):
        w, _ = rv.lasso(x, y, mu=mu, form="penalty", tol=1e-13)
        assert w[0] == pytest.approx(np.sign(xy) * max(abs(xy) - mu / 2, 0) / xx, abs=1e-9)
        w, _ = rv.lasso(x, y, mu=mu, form="constraint", tol=1e-13)
        assert w[0] == pytest.approx(np.clip(xy / xx, -mu, mu), abs=1e-9)


def test_penalty_lasso_matches_sklearn_on_correlated_data():
    sk = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(4)
    X = rng.random((60, 25))
    X[:, 1] = X[:, 0] + 0.05 * rng.random(60)  # correlated columns
    y = (rng.random(60) > 0.5).astype(float)
    mu = 0.3
    w, info = rv.lasso(X, y, mu=mu, form="penalty", tol=1e-12, max_iter=200000)
    # sklearn minimises (1/2n)||y − Xw||² + α||w||₁  ⇔  ||y − Xw||² + 2nα||w||₁
    ref = sk.Lasso(alpha=mu / (2 * len(y)), fit_intercept=False, tol=1e-12, max_iter=200000).fit(X, y).coef_
    assert info["converged"]
    obj = info["objective"][0]
    obj_ref = ((X @ ref - y) ** 2).sum() + mu * np.abs(ref).sum()
    assert obj <= obj_ref + 1e-7
    np.testing.assert_allclose(w, ref, atol=1e-4)


@pytest.mark.parametrize("form,mu", [("constraint", 10.0), ("penalty", 0.05)])
def test_working_set_solver_equals_full_fista(form, mu):
    """Many more filters than images: the working-set path must reach the full problem's optimum."""
    rng = np.random.default_rng(6)
    labels = np.repeat(np.arange(4), 5)
    X = rng.random((20, 700)) ** 4
    X /= X.sum(axis=1, keepdims=True) / 10
    X[labels == 2, 17] += 0.05
    Y = rv.indicator(labels, range(4))
    W, info = rv.lasso(X, Y, mu=mu, form=form, tol=1e-10)
    assert info["working_set_rounds"] >= 1 and info["converged"]
    W_full, _, ok = rv._fista(X, Y, mu, form, 1e-10, 200000, np.zeros_like(W))
    assert ok
    np.testing.assert_allclose(info["objective"], rv._objective(X, Y, W_full, mu, form), rtol=1e-8)
    np.testing.assert_allclose(W, W_full, atol=1e-5)
    assert ((W > 1e-6) == (W_full > 1e-6)).all()


def test_lasso_rejects_bad_arguments():
    with pytest.raises(InputError, match="mu"):
        rv.lasso(np.eye(3), np.ones(3), mu=0)
    with pytest.raises(InputError, match="form"):
        rv.lasso(np.eye(3), np.ones(3), form="ridge")
    with pytest.raises(InputError, match="lasso"):
        rv.lasso(np.eye(3), np.ones(4))


def test_channel_responses_l2_then_l1_per_layer():
    a = np.zeros((2, 3, 2, 2))
    a[0, 0] = 1.0  # norm 2
    a[0, 1, 0, 0] = 2.0  # norm 2
    a[1, 2] = [[3.0, 4.0], [0.0, 0.0]]  # norm 5
    b = np.ones((2, 2, 1, 1))
    b[1] = 0  # an all-zero layer stays zero
    X = rv.channel_responses([a, b])
    np.testing.assert_allclose(X, [[0.5, 0.5, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 0.0, 0.0]])


def test_relevant_keeps_positive_weights_sorted():
    W = np.array([[0.2, -1.0], [0.0, 0.3], [0.9, 0.1]])
    d = rv.relevant_from_weights(W, [4, 7], ["a", "b"], [2, 1])
    assert d == {"4": [{"layer": "b", "filter": 0, "weight": 0.9}, {"layer": "a", "filter": 0, "weight": 0.2}],
                 "7": [{"layer": "a", "filter": 1, "weight": 0.3}, {"layer": "b", "filter": 0, "weight": 0.1}]}


def test_lasso_finds_the_class_filter():
    """A filter that fires only for class 1 must be its most relevant one."""
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1, 2], 20)
    X = rng.random((60, 8)) * 0.2
    X[labels == 1, 5] += 1.0
    X[labels == 2, 2] += 1.0
    cls, info = rv.find_relevant(X, labels, [0, 1, 2], ["t"], [8], mu=10.0)
    assert info["converged"]
    assert cls["1"][0]["filter"] == 5 and cls["2"][0]["filter"] == 2
    assert all(e["weight"] > 0 for v in cls.values() for e in v)


# ---------------------------------------------------------------------------------------------------------- JSON
def test_json_round_trip_and_relevant_filters(tmp_path):
    cls = {"0": [{"layer": "x", "filter": 3, "weight": 0.5}, {"layer": "y", "filter": 1, "weight": 0.9}], "2": []}
    rec = rv.build_record("m.onnx", 10, "constraint", ["x", "y"], "data", 12, cls)
    p = rv.save_relevant(rec, tmp_path / "m.interpret.json")
    assert p == tmp_path / "m.interpret.json" and not list(tmp_path.glob("*.part"))
    back = rv.load_relevant(p)
    assert back["mu"] == 10.0 and back["images"] == 12 and back["layers"] == ["x", "y"]
    assert [e["filter"] for e in rv.relevant_filters(back, 0)] == [1, 3]  # sorted by weight
    assert rv.relevant_filters(back, 0, top=1) == [{"layer": "y", "filter": 1, "weight": 0.9}]
    assert rv.relevant_filters(back, 2) == [] and rv.relevant_filters(back, 5, top=3) == []
    assert rv.default_json_path("/a/b/net.onnx") == Path("/a/b/net.interpret.json")


def test_load_relevant_errors(tmp_path):
    with pytest.raises(InputError, match="no such"):
        rv.load_relevant(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        rv.load_relevant(bad)
    bad.write_text(json.dumps({"model": "m", "mu": 1, "layers": [], "classes": {"0": [{"layer": "x"}]}}))
    with pytest.raises(InputError, match="entries need"):
        rv.load_relevant(bad)


# --------------------------------------------------------------------------------------------- receptive fields
def _model(nodes, inits, in_shape, out_name, out_shape) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
                          initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _rf_model() -> onnx.ModelProto:
    """Pad → Conv 3×3 s2 | branch Conv 5×5 s2 dilation 2 → Add → Relu → AveragePool 2 → SE-style Mul (1×1 gate).

    Linear on positive inputs, so the brute-force support of an output is exactly its receptive field (a MaxPool
    would hide the pixels that lose its argmax)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Pad", ["image", "pads"], ["p"], mode="constant"),
        helper.make_node("Conv", ["p", "w1"], ["c1"], strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Conv", ["image", "w2"], ["c2"], strides=[2, 2], dilations=[2, 2], pads=[4, 4, 5, 5]),
        helper.make_node("Add", ["c1", "c2"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("AveragePool", ["r"], ["m"], kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("GlobalAveragePool", ["m"], ["gap"]),
        helper.make_node("Sigmoid", ["gap"], ["gate"]),
        helper.make_node("Mul", ["m", "gate"], ["out"]),
    ]
    inits = {"pads": np.array([0, 0, 1, 2, 0, 0, 1, 0], np.int64), "w1": rng.random((2, 1, 3, 3)) + 0.1,
             "w2": rng.random((2, 1, 5, 5)) + 0.1}
    m = _model(nodes, {k: v for k, v in inits.items() if k != "pads"}, [1, 1, 16, 16], "out", None)
    m.graph.initializer.append(numpy_helper.from_array(inits["pads"], "pads"))
    return m


def test_receptive_field_matches_brute_force_support():
    proto = _rf_model()
    g = Graph.from_model(proto)
    sess = ort.InferenceSession(proto.SerializeToString())
    fy, fx = pt.receptive_field(g, "image", "m")
    base = np.random.default_rng(1).random((1, 1, 16, 16)).astype(np.float32) + 1.0
    # which input pixels change output position (y, x) of "m"?  Perturb all 256 pixels in one batch.
    m_name = "m"
    m2 = onnx.ModelProto()
    m2.CopyFrom(proto)
    m2.graph.output.append(helper.make_tensor_value_info(m_name, TensorProto.FLOAT, None))
    m2.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "b"
    sess = ort.InferenceSession(m2.SerializeToString())
    batch = np.repeat(base, 257, axis=0)
    for k in range(256):
        batch[k + 1, 0, k // 16, k % 16] += 5.0
    out = sess.run([m_name], {"image": batch})[0]
    changed = np.abs(out[1:] - out[:1]).max(axis=1) > 1e-6  # (256, H, W)
    H, W = out.shape[2:]
    for y, x in [(0, 0), (2, 3), (H - 1, W - 1), (H // 2, 0)]:
        sup = np.flatnonzero(changed[:, y, x])
        ys, xs = sup // 16, sup % 16
        y0, y1 = fy.a * y + fy.b0, fy.a * y + fy.b1
        x0, x1 = fx.a * x + fx.b0, fx.a * x + fx.b1
        # the computed field is the exact box of the support, clipped to the image
        assert (ys.min(), ys.max()) == (max(0, y0), min(15, y1)), (y, x)
        assert (xs.min(), xs.max()) == (max(0, x0), min(15, x1)), (y, x)


def test_receptive_field_refuses_a_global_op_and_follows_nhwc():
    proto = _rf_model()
    g = Graph.from_model(proto)
    with pytest.raises(UnsupportedModel, match="GlobalAveragePool"):
        pt.receptive_field(g, "image", "gate")
    # the SE-style gate (N×C×1×1) scales channels: the field of the gated map is the map's own
    assert pt.receptive_field(g, "image", "out") == pt.receptive_field(g, "image", "m")
    nodes = [helper.make_node("Transpose", ["image"], ["chw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["chw", "w"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])]
    g2 = Graph.from_model(_model(nodes, {"w": np.ones((2, 3, 3, 3))}, [1, 8, 8, 3], "c", [1, 2, 4, 4]))
    assert pt.receptive_field(g2, "image", "c", layout="nhwc") == (pt.Field(2, -1, 1), pt.Field(2, -1, 1))


# ---------------------------------------------------------------------------------------------- average patches
def _identity_conv_model(tmp_path: Path) -> Path:
    """1×1×8×8 → Conv 3×3 (centre tap 1, pad 1) → Relu → GAP → Flatten → Gemm(→2); Conv output = the image."""
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, 1, 1] = 1.0
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1)]
    p = tmp_path / "ident.onnx"
    m = _model(nodes, {"w": w, "fw": [[1.0], [-1.0]], "fb": [0.0, 0.0]}, [1, 1, 8, 8], "logits", [1, 2])
    helper.set_model_props(m, {"onnxfix.channels": "gray", "onnxfix.mean": "0", "onnxfix.std": "1",
                               "onnxfix.scale": "1"})
    onnx.save(m, p)
    return p


def test_average_patches_on_a_hand_case(tmp_path):
    model = Model(_identity_conv_model(tmp_path))
    imgs = []
    spots = [(0, 0, 9.0), (4, 5, 7.0), (7, 7, 5.0), (3, 3, 1.0)]  # (y, x, value): one bright pixel per image
    for y, x, v in spots:
        a = np.zeros((8, 8, 1))
        a[y, x] = v
        a[y, min(7, x + 1)] += 0.5 if x < 7 else 0  # a dimmer right neighbour
        imgs.append(a)
    inputs = [a.transpose(2, 0, 1)[None].astype(np.float32) for a in imgs]
    assert pt.receptive_field(model.graph, "image", "r") == (pt.Field(1, -1, 1), pt.Field(1, -1, 1))
    out = pt.average_patches(model, inputs, imgs, [("r", 0)], k=3)
    patch = out[("r", 0)][:, :, 0]
    # top 3 positions: the 9, 7 and 5 pixels; their 3×3 crops, NaN outside the image, averaged per pixel
    crops = [pt.crop_field(imgs[i], (pt.Field(1, -1, 1),) * 2, y, x)[:, :, 0] for i, (y, x, _) in enumerate(spots[:3])]
    expect = np.nanmean(np.stack(crops), axis=0)
    np.testing.assert_allclose(patch, expect)
    assert patch[1, 1] == pytest.approx(7.0)  # centre: mean of 9, 7, 5
    assert patch[1, 2] == pytest.approx(0.5)  # right: 0.5 (image 0) and 0.5 (image 1); image 2 is at the edge
    assert patch[0, 0] == pytest.approx(0.0)  # top-left: only image 1 and 2 cover it, both 0
    # a pixel no crop covers is NaN, and the tile keeps only the covered part
    corner = pt.average_patch(imgs, (pt.Field(1, -1, 1),) * 2, [(0, 0, 0)])
    assert np.isnan(corner[0]).all() and np.isnan(corner[:, 0]).all() and corner[1, 1, 0] == 9.0
    assert pt._tile_array(corner).shape == (2, 2, 1)
    # per_image caps the crops one image may give
    top = pt.TopK([0], k=5, per_image=1)
    top.update(np.stack([a.transpose(2, 0, 1) for a in imgs]), 0)
    assert list(top.images[0][:4]) == [0, 1, 2, 3]
    grid = pt.patch_grid([("0 a", [("L0:0", out[("r", 0)])]), ("1 b", [])])
    assert grid.size[0] > 64 and grid.mode == "RGB"


# ------------------------------------------------------------------------------------------------------- ablation
def _two_filter_model(tmp_path: Path, bias: float = 0.01) -> Path:
    """Conv 1×1 (w = +1 | −1) → Relu → GAP → Flatten → Gemm identity + (0, bias): positive images are class 0,
    negative ones class 1; zeroing filter 0 turns positive images into class 1."""
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1)]
    inits = {"w": np.array([1.0, -1.0]).reshape(2, 1, 1, 1), "b": [0.0, 0.0], "fw": np.eye(2), "fb": [0.0, bias]}
    p = tmp_path / "two.onnx"
    m = _model(nodes, inits, ["batch", 1, 4, 4], "logits", ["batch", 2])
    helper.set_model_props(m, {"onnxfix.channels": "gray", "onnxfix.mean": "0", "onnxfix.std": "1",
                               "onnxfix.scale": "1", "onnxfix.labels": '["pos", "neg"]'})
    onnx.save(m, p)
    return p


def test_ablation_zeroing_a_known_filter_changes_the_prediction(tmp_path):
    model = Model(_two_filter_model(tmp_path))
    inputs = [np.full((1, 1, 4, 4), s, np.float32) for s in (1.0, 2.0, -1.0, -3.0)]
    labels = [0, 0, 1, 1]
    abl = ab.Ablator(model, ["r"], inputs, labels, [[]] * 4)
    assert list(abl.predictions()) == [0, 0, 1, 1]
    assert list(abl.predictions({"r": [0]})) == [1, 1, 1, 1]
    assert list(abl.predictions({"r": [1]})) == [0, 0, 1, 1]  # negatives keep class 1 through the bias
    # the mask equals zeroing the Conv weight and bias of the filter (no BN between Conv and ReLU here)
    proto = onnx.load(tmp_path / "two.onnx")
    for init in proto.graph.initializer:
        if init.name in ("w", "b"):
            a = numpy_helper.to_array(init).copy()
            a[0] = 0
            init.CopyFrom(numpy_helper.from_array(a, init.name))
    sess = ort.InferenceSession(proto.SerializeToString())
    x = np.concatenate(inputs)
    masked, _ = ab.masked_model(model, ["r"])
    s2 = ort.InferenceSession(masked.SerializeToString())
    got = s2.run(["logits"], {"image": x, "onnxfix_mask_0": np.array([0, 1], np.float32).reshape(1, 2, 1, 1)})[0]
    np.testing.assert_allclose(got, sess.run(["logits"], {"image": x})[0])

    rel = {"layers": ["r"], "classes": {"0": [{"layer": "r", "filter": 0, "weight": 1.0}], "1": []}}
    r = ab.ablation(model, rel, inputs, labels, seeds=4)
    assert r["base"] == 1.0 and r["relevant"] == 0.5 and r["drop_relevant"] == 0.5 and r["filters"] == 1
    assert len(r["random"]) == 4 and set(r["random"]) <= {0.5, 1.0}  # filter 0: 0.5; filter 1: no change
    assert r["random_mean"] == pytest.approx(np.mean(r["random"])) and set(r["random_pooled"]) <= {0.5, 1.0}
    assert r["per_class"]["0"] == {"images": 2, "base": 1.0, "relevant": 0.0}
    assert ab.random_like({"r": [0]}, {"r": 2}, np.random.default_rng(0))["r"][0] in (0, 1)
    with pytest.raises(InputError, match="not in this model"):
        ab.ablation(model, {"layers": ["zz"], "classes": {"0": [{"layer": "zz", "filter": 0, "weight": 1}]}},
                    inputs, labels)


# ------------------------------------------------------------------------------------------------ CLI end to end
def _shapes_dataset(folder: Path, n: int = 30) -> Path:
    spec = importlib.util.spec_from_file_location("_samples_data", ROOT / "tools" / "samples_data.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_samples_data", mod)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(7)
    (folder / "images").mkdir(parents=True)
    items = []
    for i in range(n):
        img, cls, box = mod.render_shapes(rng, 64)
        img.save(folder / "images" / f"{i:03d}.png")
        items.append({"file": f"images/{i:03d}.png", "label": mod.SHAPE_CLASSES[cls] if i % 2 else cls,
                      "boxes": [box]})
    (folder / "annotations.json").write_text(json.dumps({"images": items}))
    return folder


def test_cli_end_to_end_on_resnet_shapes(tmp_path, capsys):
    data = _shapes_dataset(tmp_path / "shapes")
    out = tmp_path / "o" / "resnet_shapes.interpret.json"
    code = main(["interpret", str(SAMPLES / "resnet_shapes.onnx"), str(data), "--out", str(out), "--patches",
                 "--ablation", "--seeds", "3", "--crops", "20"])
    text = capsys.readouterr().out
    assert code == 0, text
    d = rv.load_relevant(out)
    assert d["mu"] == 10.0 and d["images"] == 30 and len(d["layers"]) == 7  # the seven ReLU outputs
    assert set(d["classes"]) == {"0", "1", "2", "3", "4"}
    assert all(rv.relevant_filters(d, c) for c in range(5))
    assert all(e["layer"] in d["layers"] for v in d["classes"].values() for e in v)
    assert rv.resolve_layers(Model(SAMPLES / "resnet_shapes.onnx"), ["last:2"]) == d["layers"][-2:]
    assert d["converged"]
    r = d["ablation"]
    assert r["base"] > 0.8 and r["drop_relevant"] > r["drop_random"]
    png = tmp_path / "o" / "resnet_shapes.patches.png"
    assert png.is_file() and Image.open(png).size[0] > 100
    assert "relevant filters" in text and "ablation" in text


def test_cli_errors(tmp_path, capsys):
    data = _shapes_dataset(tmp_path / "shapes", n=4)
    model = str(SAMPLES / "resnet_shapes.onnx")
    assert main(["interpret", model, str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["interpret", model, str(data), "--layers", "no_such_tensor", "--out", str(tmp_path / "x.json")]) == 2
    assert "no_such_tensor" in capsys.readouterr().err
    assert main(["interpret", model, str(data), "--mu", "-1"]) == 2
    assert main(["interpret", model, str(data), "--layers", "last:x"]) == 2
    assert "last:K" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "annotations.json").write_text(json.dumps({"images": [{"file": "../x.png", "label": 0}]}))
    assert main(["interpret", model, str(tmp_path / "bad")]) == 2
    assert "no usable labelled images" in capsys.readouterr().err
    (tmp_path / "bad" / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "bad" / "images" / "000.png")
    (tmp_path / "bad" / "annotations.json").write_text(json.dumps({"images": [{"file": "images/000.png",
                                                                               "label": "hexagon"}]}))
    assert main(["interpret", model, str(tmp_path / "bad")]) == 2
    assert "hexagon" in capsys.readouterr().err
