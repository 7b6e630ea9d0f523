"""Head recognition, numpy decoding + NMS (checked against ONNX Runtime's NonMaxSuppression), Box/Region targets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfix import heads
from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.model import Model
from onnxfix.targets import Box, Region

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = Path(os.environ.get("ONNXFIX_SAMPLES_V2", ROOT / "sample_models"))


def det_graph(layout: str, n_anchors: int = 64, C: int = 3) -> onnx.ModelProto:
    """A tiny detector: Conv on an 8×8 map, Sigmoid, outputs concatenated as YOLO exports do."""
    rng = np.random.default_rng(0)
    F = (4 + C) if layout == "yolov8" else (5 + C)
    w = rng.standard_normal((F, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "s"], ["r"]),
             helper.make_node("Split", ["r", "split"], ["box", "cls"], axis=1),
             helper.make_node("Sigmoid", ["cls"], ["p"]),
             helper.make_node("Concat", ["box", "p"], ["cat"], axis=1)]
    out = "cat"
    if layout == "yolov5":
        nodes.append(helper.make_node("Transpose", ["cat"], ["out"], perm=[0, 2, 1]))
        out = "out"
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1, F, n_anchors], np.int64), "s"),
             numpy_helper.from_array(np.array([4, F - 4], np.int64), "split")]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("layout", ["yolov8", "yolov5"])
def test_recognises_yolo_layouts(layout):
    m = Model(det_graph(layout))
    assert m.head.kind == "detection" and m.head.layout == layout and m.n_classes == 3


def test_sequence_is_not_taken_for_a_detector_and_override():
    # a CRNN-like [1, 26, 37] head (MatMul at the end): a sequence, not YOLOv5
    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])], "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 26, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 26, 37])],
        [numpy_helper.from_array(np.array([1, 26, 8], np.int64), "s"),
         numpy_helper.from_array(rng.standard_normal((8, 37)).astype(np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    assert Model(m).head.kind == "sequence"
    with pytest.raises(InputError, match="--head"):
        Model(m, head="bogus")
    assert Model(m, head="yolov5").head.layout == "yolov5"


def test_nms_matches_onnxruntime():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 50, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (200, 2))], 1).astype(np.float32)
    scores = rng.random(200).astype(np.float32)
    node = helper.make_node("NonMaxSuppression", ["b", "s", "k", "i", "t"], ["sel"])
    g = helper.make_graph([node], "nms", [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 200, 4]),
                                          helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1, 200])],
                          [helper.make_tensor_value_info("sel", TensorProto.INT64, None)],
                          [numpy_helper.from_array(np.array([1000], np.int64), "k"),
                           numpy_helper.from_array(np.array([0.45], np.float32), "i"),
                           numpy_helper.from_array(np.array([0.0], np.float32), "t")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    sel = ort.InferenceSession(m.SerializeToString()).run(None, {"b": boxes[None], "s": scores[None, None]})[0]
    np.testing.assert_array_equal(heads.nms(boxes, scores, 0.45), sel[:, 2])


def test_box_target_weights_select_the_raw_prediction():
    m = Model(det_graph("yolov8"))
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    out = m.runtime.run({"x": x}, [m.head.logits])[m.head.logits]
    dets = heads.detections(m.head, out[0:1], conf=0.0)
    r = m.resolve_target(out, Box(i=0, conf=0.0))
    assert r.prediction == dets[0].index and r.box == dets[0].box
    assert r.weights[0, 4 + r.index, r.prediction] == 1 and r.weights.sum() == 1
    assert r.logit == pytest.approx(out[0, 4 + r.index, r.prediction])
    rb = m.resolve_target(out, Box(i=0, conf=0.0, part="box"))
    assert rb.weights[0, :4, rb.prediction].tolist() == [1, 1, 1, 1]
    # a user box: matched by IoU with the detections
    k = next(i for i, d in enumerate(dets) if i and d.box[2] > d.box[0] and d.box[3] > d.box[1])
    ru = m.resolve_target(out, Box(xyxy=dets[k].box, conf=0.0))
    assert ru.prediction == dets[k].index
    with pytest.raises(InputError, match="detections"):
        m.resolve_target(out, Box(i=10**6, conf=0.0))


def test_box_on_a_classifier_is_refused():
    g = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["g"]),
                           helper.make_node("Flatten", ["g"], ["y"])], "c",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    model = Model(m)
    with pytest.raises(UnsupportedModel, match="detection"):
        model.resolve_target(np.zeros((1, 3), np.float32), Box(i=0))


def test_single_map_region_is_the_thresholded_map():
    g = helper.make_graph([helper.make_node("ReduceMean", ["x", "ax"], ["m"], keepdims=1),
                           helper.make_node("Sigmoid", ["m"], ["y"])], "s",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [numpy_helper.from_array(np.array([1], np.int64), "ax")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    model = Model(m)
    assert model.head.kind == "dense"
    out = np.full((1, 1, 8, 8), 0.2, np.float32)
    out[0, 0, 2:4, 3:6] = 0.9
    r = model.resolve_target(out, Region())
    assert r.weights.sum() == 6 and r.weights[0, 0, 2:4, 3:6].all()


@pytest.mark.parametrize("name,kind,layout", [("yolov8_shapes", "detection", "yolov8"),
                                              ("yolov5_shapes", "detection", "yolov5"),
                                              ("nms_shapes", "nms", "nms"), ("unet_shapes", "dense", None)])
def test_sample_heads(name, kind, layout):
    p = SAMPLES / f"{name}.onnx"
    if not p.exists():
        pytest.skip(f"sample model {name} not built yet")
    m = Model(p)
    assert (m.head.kind, m.head.layout) == (kind, layout)
    assert m.labels[-3:] == ["circle", "square", "triangle"]


def yolox_graph(C: int = 2, size: int = 32) -> onnx.ModelProto:
    """A YOLOX-like head with decode_in_inference=False: per stride (8, 16, 32) a strided Conv to 5 + C channels,
    flattened and concatenated over the levels; objectness and classes sigmoided, the box left raw."""
    rng = np.random.default_rng(2)
    F = 5 + C
    nodes, inits, levels = [], [], []
    for s in (8, 16, 32):
        nodes += [helper.make_node("Conv", ["x", f"w{s}"], [f"c{s}"], strides=[s, s], kernel_shape=[s, s]),
                  helper.make_node("Reshape", [f"c{s}", "flat"], [f"f{s}"])]
        inits.append(numpy_helper.from_array(rng.standard_normal((F, 3, s, s)).astype(np.float32) * 0.05, f"w{s}"))
        levels.append(f"f{s}")
    nodes += [helper.make_node("Concat", levels, ["all"], axis=2),
              helper.make_node("Split", ["all", "split"], ["box", "rest"], axis=1),
              helper.make_node("Sigmoid", ["rest"], ["p"]),
              helper.make_node("Concat", ["box", "p"], ["cat"], axis=1),
              helper.make_node("Transpose", ["cat"], ["out"], perm=[0, 2, 1])]
    inits += [numpy_helper.from_array(np.array([1, F, -1], np.int64), "flat"),
              numpy_helper.from_array(np.array([4, F - 4], np.int64), "split")]
    g = helper.make_graph(nodes, "yolox", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_yolox_is_recognised_and_decoded_as_yolox_demo_postprocess():
    m = Model(yolox_graph())
    assert (m.head.kind, m.head.layout, m.n_classes) == ("detection", "yolox", 2)
    assert heads.kind_summary(m.head) == "detection (yolox, 2 classes, boxes xywh)"
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    out = m.runtime.run({"x": x}, [m.head.logits])[m.head.logits]
    assert out.shape == (1, 16 + 4 + 1, 7)
    # YOLOX's demo_postprocess (yolox/utils/demo_utils.py), written out
    grids, strides = [], []
    for s in (8, 16, 32):
        xv, yv = np.meshgrid(np.arange(32 // s), np.arange(32 // s))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((grids[-1].shape[0], 1), s))
    o = out[0].astype(np.float64)
    xy = (o[:, :2] + np.concatenate(grids)) * np.concatenate(strides)
    wh = np.exp(o[:, 2:4]) * np.concatenate(strides)
    boxes, cls, obj = heads.decode(m.head, out[0])
    np.testing.assert_allclose(boxes, np.concatenate([xy - wh / 2, xy + wh / 2], 1))
    np.testing.assert_array_equal(obj, o[:, 4])
    np.testing.assert_array_equal(cls, o[:, 5:])
    r = m.resolve_target(out, Box(i=0, conf=0.0))  # the class score column is 5 + k, as YOLOv5's
    assert r.weights[0, r.prediction, 5 + r.index] == 1 and r.weights.sum() == 1
    # named otherwise, it is a YOLOv5 head (boxes taken as decoded); a YOLOv5 with anchors stays one
    assert Model(yolox_graph(), head="yolov5").head.layout == "yolov5"
    assert Model(det_graph("yolov5")).head.layout == "yolov5"
    with pytest.raises(UnsupportedModel, match="yolox"):
        Model(det_graph("yolov5"), head="yolox")
