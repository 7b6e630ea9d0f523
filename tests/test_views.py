"""Survey views (issue #6 item 3): activation grids, first-layer filters, muting pixels, class impressions.

"Monotone" for class impressions means: the target logit measured on the *un-transformed* image at every
checkpoint (every 10 steps, step 0 and the last included) never decreases — checked exactly, no tolerance.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import onnxfix
from onnxfix.cli import main
from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.interpret import impressions as imp
from onnxfix.interpret.views import activation_grid, first_conv, first_layer_filters, layer_channels
from onnxfix.methods import METHODS
from tests.conftest import SAMPLES, run_cli, tiny_cnn

RESNET = SAMPLES / "resnet_shapes.onnx"


def _x(ex: onnxfix.Explainer, seed: int = 0) -> np.ndarray:
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in ex.model.input_shape]
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("beta", [2.0, 1.0])
def test_tv_gradient_matches_finite_differences(beta):
    rng = np.random.default_rng(0)
    u = rng.random((6, 7, 3))
    _, g = imp.tv_loss(u, beta, eps=1e-3)
    h = 1e-6
    num = np.zeros_like(u)
    for i in np.ndindex(u.shape):
        d = np.zeros_like(u)
        d[i] = h
        num[i] = (imp.tv_loss(u + d, beta, 1e-3)[0] - imp.tv_loss(u - d, beta, 1e-3)[0]) / (2 * h)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-7)
    # β = 2 is the sum of squared forward differences on the (H−1)×(W−1) crop
    v2 = imp.tv_loss(u, 2.0, eps=0.0)[0]
    ref = np.sum((u[1:, :-1] - u[:-1, :-1]) ** 2 + (u[:-1, 1:] - u[:-1, :-1]) ** 2)
    assert v2 == pytest.approx(ref)


def test_warp_adjoint_and_geometry():
    rng = np.random.default_rng(1)
    w = imp.affine_warp((9, 11), scale=1.07, degrees=13.0)
    u, v = rng.normal(size=(9, 11, 3)), rng.normal(size=(9, 11, 3))
    assert np.vdot(w.apply(u), v) == pytest.approx(np.vdot(u, w.adjoint(v)), rel=1e-12)
    np.testing.assert_allclose(imp.affine_warp((9, 11)).apply(u), u, atol=1e-12)  # identity
    sq = rng.normal(size=(7, 7, 1))
    np.testing.assert_allclose(imp.affine_warp((7, 7), degrees=90.0).apply(sq), np.rot90(sq, -1, axes=(0, 1)),
                               atol=1e-9)  # clockwise on screen
    big = imp.affine_warp((7, 7), scale=2.0).apply(sq)
    assert big[3, 3, 0] == pytest.approx(sq[3, 3, 0])
    assert big[3, 5, 0] == pytest.approx(sq[3, 4, 0])  # two pixels from the centre samples one pixel out


def test_pixel_gradient_is_the_exact_chain_rule():
    """d logit / du through de-normalisation, warp and roll, against central differences (piecewise-linear net)."""
    from onnxfix.autodiff import GradientProgram
    from onnxfix.methods.gradients import seed_for

    m = tiny_cnn(softmax=False)
    helper.set_model_props(m, {"onnxfix.mean": "0.3,0.4,0.5", "onnxfix.std": "0.2,0.25,0.5"})
    ex = onnxfix.Explainer(m)
    px = imp._Pixels(ex)
    u = np.random.default_rng(2).random((8, 8, 3))
    warp = imp.affine_warp((8, 8), 1.04, 7.0)
    prog = GradientProgram(ex.model.graph, of="logits", wrt=["image"])
    logits = ex.model.runtime.run({"image": px.to_model(u)}, ["logits"])["logits"]
    tgt = ex.model.resolve_target(logits, 2)
    seed = seed_for(logits, tgt)
    out, g = imp.pixel_gradient(prog, "image", px, u, warp, (1, -2), seed)

    def f(v):
        vt = np.roll(warp.apply(v), (1, -2), axis=(0, 1))
        return float(ex.model.runtime.run({"image": px.to_model(vt)}, ["logits"])["logits"][0, 2])

    assert float(out[0, 2]) == pytest.approx(f(u), rel=1e-5)
    for k in range(3):
        d = np.random.default_rng(10 + k).normal(size=u.shape)
        h = 1e-3
        num = (f(u + h * d) - f(u - h * d)) / (2 * h)
        assert np.vdot(g, d) == pytest.approx(num, rel=2e-2, abs=2e-2)


# ------------------------------------------------------------------------------------------------ class impressions
def test_class_impressions_raise_the_target_logit_monotonically():
    """With jitter, scaling and rotation (the defaults), on digits_cnn, for every class."""
    ex = onnxfix.Explainer(SAMPLES / "digits_cnn.onnx")
    for c in range(10):
        img, h = imp.class_impression(ex, c, steps=60, seed=c)
        lg = np.asarray(h.logit)
        assert h.steps == [0, 10, 20, 30, 40, 50, 60] and len(h.jittered_logit) == 60
        assert np.all(np.diff(lg) >= 0), (c, lg)  # monotone on the un-transformed image, no tolerance
        assert lg[-1] > lg[0] + 50, (c, lg)
        assert lg[-1] > h.best_other[-1] + 10 and h.probability[-1] > 0.999, (c, lg, h.best_other)
        assert img.size == (56, 56) and img.mode == "RGB"
        # the PNG is the image the model saw: preprocessed again, it is still classified as the target
        assert ex.predict(np.asarray(img), k=1)[0]["index"] == c


def test_class_impressions_on_a_residual_net():
    """resnet_shapes: without transforms the ascent of the logit is monotone at every checkpoint. With them it is a
    stochastic ascent of the expected logit (the un-transformed logit may dip early), and raising one raw logit can
    raise another more (circle's impression scores higher as another shape); the log-softmax objective pushes the
    other classes down: every impression then ends far above its start and above every other class."""
    ex = onnxfix.Explainer(RESNET)
    for c in range(5):
        _, h = imp.class_impression(ex, c, steps=40, seed=c, jitter=0, scale=0, rotate=0)
        assert np.all(np.diff(h.logit) >= 0) and h.logit[-1] > h.logit[0] + 30, (c, h.logit)
        img, h = imp.class_impression(ex, c, steps=60, seed=c, objective="log-softmax")
        assert h.logit[-1] > h.logit[0] + 8 and h.logit[-1] > h.best_other[-1] + 3, (c, h.logit, h.best_other)
        assert h.probability[-1] > h.probability[0] and h.probability[-1] > 0.99, (c, h.probability)
        assert ex.predict(np.asarray(img), k=1)[0]["index"] == c


def test_class_impression_is_deterministic_and_validates_arguments():
    ex = onnxfix.Explainer(SAMPLES / "digits_cnn.onnx")
    a, ha = imp.class_impression(ex, "7", steps=12, seed=3)
    b, hb = imp.class_impression(ex, 7, steps=12, seed=3)
    assert ha.target == 7 and np.array_equal(np.asarray(a), np.asarray(b)) and ha.logit == hb.logit
    assert np.asarray(a).std(axis=2).max() == 0  # a gray model gives a gray picture
    with pytest.raises(InputError, match="out of range"):
        imp.class_impression(ex, 10, steps=2)
    with pytest.raises(InputError, match="steps"):
        imp.class_impression(ex, 1, steps=0)
    with pytest.raises(InputError, match="objective"):
        imp.class_impression(ex, 1, steps=2, objective="prob")


def test_progress_bar_writes_to_the_stream():
    import io

    s = io.StringIO()
    ex = onnxfix.Explainer(tiny_cnn(softmax=False))
    imp.class_impression(ex, 1, steps=20, progress=True, stream=s)
    lines = s.getvalue().splitlines()
    assert 2 <= len(lines) <= 12 and "20/20" in lines[-1] and "it/s" in lines[-1]


# ------------------------------------------------------------------------------------------------ muting pixels
def test_muting_pixels_matches_a_slow_loop():
    ex = onnxfix.Explainer(tiny_cnn(softmax=False))
    x = _x(ex)
    e = ex.explain(x, method="muting-pixels", grid=4, target=1)
    sess = ex.model.runtime.session()
    base = sess.run(None, {"image": x})[0][0, 1]
    mean = x[0].mean(axis=(1, 2))
    ref = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            xp = x.copy()
            xp[0, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = mean[:, None, None]
            ref[i, j] = base - sess.run(None, {"image": xp})[0][0, 1]
    np.testing.assert_allclose(e.attribution, ref, rtol=1e-5, atol=1e-5)
    assert e.heatmap.shape == (8, 8)
    plane = np.kron(np.maximum(ref, 0), np.ones((2, 2)))  # each cell's drop on its own pixels, exactly
    np.testing.assert_allclose(e.heatmap, plane / plane.max(), atol=1e-5)
    z = ex.explain(x, method="muting-pixels", grid=(2, 4), baseline="zero", target=1)
    assert z.attribution.shape == (2, 4) and z.extras["baseline"] == 0.0


def test_muting_pixels_nhwc_cells_and_errors():
    ex = onnxfix.Explainer(tiny_cnn(softmax=False, nhwc=True))
    x = np.random.default_rng(4).normal(size=(1, 8, 8, 3)).astype(np.float32)
    e = ex.explain(x, method="muting-pixels", cell=3, target=0)  # cells 3, 3, 2 per axis
    assert e.attribution.shape == (3, 3) and e.extras["y_edges"] == [0, 3, 6, 8]
    xp = x.copy()
    xp[0, 6:8, 3:6, :] = x[0].mean(axis=(0, 1))
    sess = ex.model.runtime.session()
    d = sess.run(None, {"image": x})[0][0, 0] - sess.run(None, {"image": xp})[0][0, 0]
    assert e.attribution[2, 1] == pytest.approx(d, rel=1e-5, abs=1e-5)
    with pytest.raises(InputError, match="grid"):
        ex.explain(x, method="muting-pixels", grid=0)
    with pytest.raises(InputError, match="baseline"):
        ex.explain(x, method="muting-pixels", baseline="blue")


def test_muting_pixels_is_listed_and_finds_the_object(capsys):
    assert "muting-pixels" in METHODS
    assert main(["methods"]) == 0 and "muting-pixels" in capsys.readouterr().out
    ex = onnxfix.Explainer(RESNET)
    e = ex.explain(SAMPLES / "resnet_shapes.png", method="muting-pixels")
    truth = json.loads((SAMPLES / "resnet_shapes.json").read_text())["boxes"][0]
    y, x = np.unravel_index(int(np.argmax(e.heatmap)), e.heatmap.shape)
    assert truth[0] <= x <= truth[2] and truth[1] <= y <= truth[3]
    assert e.attribution.shape == (8, 8) and e.extras["cells"] == 64


# ------------------------------------------------------------------------------------------------ views
def test_activation_grid_shows_the_strongest_channels():
    ex = onnxfix.Explainer(RESNET)
    x = _x(ex)
    name, idx, maps_ = layer_channels(ex, x, max_channels=5)
    from onnxfix.methods.layers import auto_layer
    assert name == auto_layer(ex.model)
    act = ex.model.runtime.run({ex.model.input: x}, [name])[name][0]
    np.testing.assert_array_equal(idx, np.argsort(-act.mean(axis=(1, 2)), kind="stable")[:5])
    np.testing.assert_array_equal(maps_, act[idx])
    np.testing.assert_allclose(maps_, ex.activations(x)[name][0][idx], rtol=1e-5, atol=1e-5)
    _, idx2, _ = layer_channels(ex, x, layer=name, max_channels=3, order="index")
    assert idx2.tolist() == [0, 1, 2]
    im = activation_grid(ex, x, max_channels=5)
    assert im.mode == "RGB" and im.size[0] >= 3 * 64 and im.size[1] >= 2 * 64
    with pytest.raises(InputError, match="neither a tensor nor a node"):
        activation_grid(ex, x, layer="nope")


def test_first_layer_filters_are_the_normalised_kernels():
    ex = onnxfix.Explainer(RESNET)
    node, w = first_conv(ex)
    assert w.shape[1] == 3
    im = np.asarray(first_layer_filters(ex))
    O, _, k, _ = w.shape
    f0 = w[0]
    t = ((f0 - f0.min()) / (f0.max() - f0.min())).transpose(1, 2, 0)
    from onnxfix.interpret.views import LABEL_H, PAD, TITLE_H
    z = int(np.ceil(48 / k))
    y0, x0 = TITLE_H + PAD + LABEL_H, PAD
    tile = im[y0:y0 + k * z:z, x0:x0 + k * z:z]  # one pixel per kernel cell
    np.testing.assert_array_equal(tile, np.round(t * 255).astype(np.uint8))
    grey = np.asarray(first_layer_filters(onnxfix.Explainer(SAMPLES / "digits_cnn.onnx")))
    assert grey.shape[2] == 3


def test_first_layer_filters_need_a_conv():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Flatten", ["image"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "fc", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
                          initializer=[numpy_helper.from_array(rng.normal(size=(2, 48)).astype(np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with pytest.raises(UnsupportedModel, match="no Conv"):
        first_layer_filters(onnxfix.Explainer(m))


# ------------------------------------------------------------------------------------------------ CLI
def _cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_view_cli(tmp_path, capsys):
    img = SAMPLES / "resnet_shapes.png"
    rc, out, err = _cli(capsys, "view", RESNET, img, "--activations", "--max-channels", "8", "--out", tmp_path)
    assert rc == 0, err
    assert Image.open(tmp_path / "resnet_shapes.activations.png").size[0] > 100
    rc, out, err = _cli(capsys, "view", RESNET, "--first-layer-filters", "--out", tmp_path / "f.png")
    assert rc == 0 and (tmp_path / "f.png").is_file() and out.strip() == str(tmp_path / "f.png"), err
    rc, _, err = _cli(capsys, "view", RESNET, "--activations")
    assert rc == 2 and "IMAGE" in err
    rc, _, err = _cli(capsys, "view", RESNET, img)
    assert rc == 2  # one of --activations / --first-layer-filters / --filters is required
    rc, _, err = _cli(capsys, "view", RESNET, img, "--filters", "--out", tmp_path)
    try:
        import onnxfix.interpret.filters  # noqa: F401
    except ImportError:
        assert rc == 2 and "onnxfix.interpret.filters" in err
    else:
        assert rc == 0 and (tmp_path / "resnet_shapes.filters.png").is_file(), err


def test_impression_cli(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(onnx.load(SAMPLES / "mobile_shapes.onnx"), model)
    rc, out, err = _cli(capsys, "impression", model, "--target", "star", "--steps", "20", "--json", "--out", tmp_path)
    assert rc == 0, err
    d = json.loads(out)
    assert d["target"] == 4 and d["label"] == "star" and d["logit"][-1] > d["logit"][0]
    assert "20/20" in err  # the progress bar
    assert Image.open(d["png"]).size == (256, 256)
    before = model.read_bytes()
    rc, _, err = _cli(capsys, "impression", model, "--target", "1", "--steps", "2", "--quiet", "--out", model)
    assert rc == 2 and "refusing" in err and model.read_bytes() == before
    rc, _, err = _cli(capsys, "impression", model, "--target", "nope", "--steps", "2")
    assert rc == 2 and "nope" in err


def test_impression_cli_subprocess(tmp_path):
    r = run_cli("impression", SAMPLES / "digits_cnn.onnx", "--target", "3", "--steps", "5", "--quiet", "--zoom", "1",
                "--out", tmp_path / "d.png")
    assert r.returncode == 0 and "class 3" in r.stdout, r.stderr
    assert Image.open(tmp_path / "d.png").size == (56, 56)
