"""graph.py (folding, validation, normalisation), io/image.py (decoding, preprocessing, frames), maps.py."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxfix import maps
from onnxfix.errors import InputError
from onnxfix.graph import Graph, resolve_pads
from onnxfix.io.image import Frame, decode_image, infer_preprocess, to_tensor
from tests.conftest import tiny_cnn


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def test_shape_subgraph_folds_into_pad_constant():
    """PyTorch's legacy 'same' padding: Shape→Gather→…→Concat→Cast feeding Pad folds to a constant."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i2"], ["h"], axis=0),
        helper.make_node("Sub", ["h", "four"], ["hm"]),
        helper.make_node("Concat", ["z2", "hm", "z3", "hm", "z1"], ["p"], axis=0),
        helper.make_node("Cast", ["p"], ["pads"], to=TensorProto.INT64),
        helper.make_node("Pad", ["x", "pads"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([2], np.int64), "i2"),
             numpy_helper.from_array(np.array([4], np.int64), "four"),
             numpy_helper.from_array(np.zeros(2, np.int64), "z2"),
             numpy_helper.from_array(np.zeros(3, np.int64), "z3"),
             numpy_helper.from_array(np.zeros(1, np.int64), "z1")]
    m = _model(nodes, [x], [y], inits)
    g = Graph.from_model(m)
    assert [n.op_type for n in g.nodes] == ["Pad"]
    assert g.nodes[0].attrs["pads"] == [0, 0, 1, 0, 0, 0, 1, 0]
    # the folded model computes what the original does
    xv = np.random.default_rng(0).normal(size=(1, 2, 5, 5)).astype(np.float32)
    a = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": xv})[0]
    b = ort.InferenceSession(g.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": xv})[0]
    np.testing.assert_array_equal(a, b)


def test_dynamic_batch_shape_is_not_folded():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])]
    g = Graph.from_model(_model(nodes, [x], [y]))
    assert [n.op_type for n in g.nodes] == ["Shape", "Reshape"]
    assert [n.op_type for n in g.nodes_between(["x"], "y")] == ["Reshape"]  # Shape carries no data


def test_defaults_filled_and_identity_of_weights_folded():
    m = tiny_cnn()
    g = Graph.from_model(m)
    conv = g.node_by_name["conv1"]
    assert conv.attrs["strides"] == [1, 1] and conv.attrs["dilations"] == [1, 1] and conv.attrs["group"] == 1
    assert conv.attrs["kernel_shape"] == [3, 3]
    gemm = g.node_by_name["fc"]
    assert gemm.attrs["alpha"] == 1.0 and gemm.attrs["transA"] == 0 and gemm.attrs["transB"] == 1
    assert not g.constants["w"].flags.writeable


def test_cycle_and_dangling_input_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    cyc = _model([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                  helper.make_node("Relu", ["a"], ["y"])], [x], [y])
    with pytest.raises(InputError, match="cycle"):
        Graph(cyc)
    dang = _model([helper.make_node("Add", ["x", "ghost"], ["y"])], [x], [y])
    with pytest.raises(InputError, match="ghost"):
        Graph(dang)


@pytest.mark.parametrize("auto,expect", [("SAME_UPPER", [0, 0, 1, 1]), ("SAME_LOWER", [1, 1, 0, 0]),
                                         ("VALID", [0, 0, 0, 0])])
def test_auto_pad_resolution(auto, expect):
    attrs = {"auto_pad": auto, "kernel_shape": [2, 2], "strides": [1, 1], "dilations": [1, 1], "pads": [0] * 4}
    assert resolve_pads(attrs, (6, 6)) == expect


def test_image_modes_decode_to_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgba = Image.fromarray((rng.random((6, 5, 4)) * 255).astype(np.uint8), "RGBA")
    pal = Image.fromarray((rng.random((6, 5, 3)) * 255).astype(np.uint8)).convert("P")
    gray16 = Image.fromarray((rng.random((6, 5)) * 65535).astype(np.uint16))
    cmyk = Image.fromarray((rng.random((6, 5, 3)) * 255).astype(np.uint8)).convert("CMYK")
    for i, im in enumerate([rgba, pal, gray16]):
        p = tmp_path / f"i{i}.png"
        im.save(p)
        out = decode_image(p)
        assert out.mode == "RGB" and out.size == (5, 6)
    p = tmp_path / "c.jpg"
    cmyk.save(p)
    assert decode_image(p).mode == "RGB"


def test_exif_rotation_is_honoured(tmp_path):
    im = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    p = tmp_path / "r.jpg"
    im.save(p, exif=exif)
    assert decode_image(p).size == (10, 20)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 255, 0)]]
    p = tmp_path / "a.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    assert decode_image(p).getpixel((0, 0))[0] > 200


def test_truncated_png_is_a_clear_error(tmp_path):
    p = tmp_path / "t.png"
    Image.fromarray(np.zeros((50, 50, 3), np.uint8) + 7).save(p)
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(InputError, match="t.png"):
        decode_image(p)


def test_preprocess_inference_and_tensor():
    spec = infer_preprocess((1, 3, 32, 48))
    assert (spec.layout, spec.height, spec.width, spec.channels) == ("nchw", 32, 48, "rgb")
    spec = infer_preprocess((None, 224, 224, 3))
    assert spec.layout == "nhwc"
    assert infer_preprocess((1, 1, 28, 28)).channels == "gray"
    with pytest.raises(InputError):
        infer_preprocess((1, 10))
    im = Image.fromarray(np.full((10, 10, 3), 255, np.uint8))
    t = to_tensor(im, infer_preprocess((1, 3, 4, 4)))
    assert t.shape == (1, 3, 4, 4)
    np.testing.assert_allclose(t[0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-6)


def test_frame_maps_pixel_centres_both_ways():
    f = Frame((4, 4), (8, 12))
    xy = np.array([[0.0, 0.0], [3.0, 3.0]])
    img = f.to_image(xy)
    np.testing.assert_allclose(img, [[1.0, 0.5], [10.0, 6.5]])
    np.testing.assert_allclose(f.to_input(img), xy)


def test_fixation_box_drops_outliers():
    rng = np.random.default_rng(0)
    cluster = rng.normal([50, 50], 3, size=(95, 2))
    outliers = np.array([[5, 5], [95, 5], [5, 95], [95, 95], [90, 10]], float)
    box = maps.fixation_box(np.vstack([cluster, outliers]), (100, 100))
    assert 35 < box[0] < 50 < box[2] < 65 and 35 < box[1] < 50 < box[3] < 65


def test_density_peaks_at_cluster_and_is_normalised():
    pts = np.array([[10, 10]] * 1 + [[30, 20], [31, 20], [30, 21], [31, 21]], float)
    d = maps.density(pts, (40, 50), sigma=2.0)
    assert d.shape == (40, 50) and d.max() == pytest.approx(1.0) and d.min() >= 0
    y, x = np.unravel_index(np.argmax(d), d.shape)
    assert 29 <= x <= 32 and 19 <= y <= 22


def test_heatmap_box_largest_component():
    m = np.zeros((20, 30), np.float32)
    m[2:5, 2:5] = 1.0
    m[10:18, 12:25] = 0.8
    assert maps.heatmap_box(m, rule="largest") == [12.0, 10.0, 24.0, 17.0]
