"""Methods that need no peer library: occlusion against a slow loop, CAM by hand, CAM ↔ Grad-CAM on GAP→fc nets,
layer selection errors, refusals, and ``--method all``."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxfix
from onnxfix.errors import InputError, UnsupportedModel
from tests.conftest import SAMPLES, run_cli, tiny_cnn

RESNET = SAMPLES / "resnet_shapes.onnx"


def _has_autodiff() -> bool:
    try:
        import onnxfix.autodiff  # noqa: F401
    except ImportError:
        return False
    return True


def _x(ex: onnxfix.Explainer, seed: int = 0) -> np.ndarray:
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in ex.model.input_shape]
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_occlusion_matches_a_slow_loop():
    ex = onnxfix.Explainer(tiny_cnn(softmax=False))
    x = _x(ex)
    e = ex.explain(x, method="occlusion", window=3, stride=2, target=1)
    sess = ex.model.runtime.session()
    base = sess.run(None, {"image": x})[0][0, 1]
    total, count = np.zeros((8, 8)), np.zeros((8, 8))
    for y in range(0, 8, 2):  # Captum's positions: 0, 2, 4, 6 (the last window cut at the edge)
        for xx in range(0, 8, 2):
            xp = x.copy()
            xp[:, :, y:y + 3, xx:xx + 3] = 0
            d = base - sess.run(None, {"image": xp})[0][0, 1]
            total[y:y + 3, xx:xx + 3] += d
            count[y:y + 3, xx:xx + 3] += 1
    ref = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    np.testing.assert_allclose(e.attribution, ref, rtol=1e-5, atol=1e-6)


def test_cam_equals_classifier_weights_times_features():
    ex = onnxfix.Explainer(RESNET)
    x = _x(ex)
    e = ex.explain(x, method="cam", target=2)
    layer = e.extras["layer"]
    a = ex.activations(x)[layer][0].astype(np.float64)
    gemm = [n for n in ex.model.graph.nodes if n.op_type == "Gemm"][-1]
    w = ex.model.graph.constants[gemm.inputs[1]].astype(np.float64)
    w = w if gemm.attrs["transB"] else w.T
    np.testing.assert_allclose(e.attribution, np.tensordot(w[2], a, axes=(0, 0)), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not _has_autodiff(), reason="autodiff engine not built")
def test_gradcam_is_relu_cam_over_area_on_gap_fc_nets():
    """For GAP → fc, α_k = w_ck / (h·w): Grad-CAM = ReLU(CAM) / (h·w) at the pooled feature map."""
    ex = onnxfix.Explainer(RESNET)
    x = _x(ex, 1)
    cam = ex.explain(x, method="cam", target=3)
    gc = ex.explain(x, method="gradcam", target=3, layer=cam.extras["layer"])
    h, w = cam.attribution.shape
    np.testing.assert_allclose(gc.attribution, np.maximum(cam.attribution, 0) / (h * w), rtol=1e-4, atol=1e-6)


def test_cam_refused_without_gap():
    ex = onnxfix.Explainer(tiny_cnn())
    assert "global average pool" in ex.methods()["cam"]
    with pytest.raises(UnsupportedModel, match="cam"):
        ex.explain(_x(ex), method="cam")


@pytest.mark.skipif(not _has_autodiff(), reason="autodiff engine not built")
def test_layer_errors_are_clear():
    ex = onnxfix.Explainer(RESNET)
    with pytest.raises(InputError, match="neither a tensor nor a node"):
        ex.explain(_x(ex), method="gradcam", layer="no/such/layer")
    with pytest.raises(InputError, match="4-D"):
        ex.explain(_x(ex), method="gradcam", layer=ex.model.head.logits)


def test_auto_layer_is_the_last_spatial_map():
    from onnxfix.methods.layers import auto_layer
    ex = onnxfix.Explainer(RESNET)
    layer = auto_layer(ex.model)
    shape = ex.model.graph.shape(layer)
    assert len(shape) == 4 and shape[2] * shape[3] > 1
    consumers = {n.op_type for n in ex.model.graph.consumers(layer)}
    assert "GlobalAveragePool" in consumers or "ReduceMean" in consumers


def test_method_all_renders_one_panel(tmp_path):
    r = run_cli(RESNET, SAMPLES / "resnet_shapes.png", "--method", "all", "--json", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    methods = {d["method"] for d in rows}
    assert {"fixations", "discernible", "occlusion", "muting-pixels", "cam"} <= methods
    if _has_autodiff():
        assert {"gradcam", "saliency", "guided-backprop", "gradcam++", "guided-gradcam"} <= methods
    assert (tmp_path / "resnet_shapes.all.png").is_file()
    assert len({d["target"]["index"] for d in rows}) == 1


def test_unknown_method_is_usage_error(tmp_path):
    r = run_cli(RESNET, SAMPLES / "resnet_shapes.png", "--method", "nope", "--out", tmp_path)
    assert r.returncode == 2 and "unknown method" in r.stderr


def test_nan_weights_are_reported_not_rendered(tmp_path):
    m = tiny_cnn(softmax=False)
    w = [i for i in m.graph.initializer if i.name == "fw"][0]
    arr = onnx.numpy_helper.to_array(w).copy()
    arr[:] = np.nan
    w.CopyFrom(onnx.numpy_helper.from_array(arr, "fw"))
    p = tmp_path / "nan.onnx"
    onnx.save(m, p)
    img = tmp_path / "i.png"
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    r = run_cli(p, img, "--out", tmp_path)
    assert r.returncode == 2 and "NaN" in r.stderr and not (tmp_path / "i.fixations.png").exists()


def test_occlusion_batches_a_fixed_batch_model_and_agrees_with_one_by_one():
    """A batch-1 export with Reshape([1, -1]) is rewritten batch-dynamic, validated, and gives the same map."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxfix.methods import occlusion as occ

    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    fw = rng.normal(size=(5, 256)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
                          initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(fw, "fw"),
                                       numpy_helper.from_array(np.array([1, -1], np.int64), "shape")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    batched = onnxfix.Explainer(m)
    x = _x(batched)
    a = batched.explain(x, method="occlusion", window=3, stride=2, target=4).attribution
    runtime, batch = occ.batched_runtime(batched.model, x)
    assert batch == occ.BATCH and runtime is not batched.model.runtime
    single = onnxfix.Explainer(m)
    single.model._occlusion_runtime = (single.model.runtime, 1)
    b = single.explain(x, method="occlusion", window=3, stride=2, target=4).attribution
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
