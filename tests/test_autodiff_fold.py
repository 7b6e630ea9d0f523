"""Zero Pads feeding a Conv are folded into the Conv before differentiating: same gradients, no Pad/Slice pair."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfix.autodiff import GradientProgram, builder
from onnxfix.autodiff.program import clear_cache
from onnxfix.graph import Graph


def _model(pad_value: float = 0.0, mode: str = "constant", second_reader: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array(pad_value, np.float32), "pad_value"),
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(5, 4)).astype(np.float32), "fw"),
    ]
    nodes = [
        helper.make_node("Pad", ["x", "pads", "pad_value"], ["xp"], mode=mode, name="pad"),
        helper.make_node("Conv", ["xp", "w", "b"], ["c"], strides=[2, 1], pads=[1, 0, 0, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw"], ["logits"], transB=1, name="fc"),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])]
    if second_reader:
        nodes.append(helper.make_node("ReduceMean", ["xp"], ["side"], keepdims=0, name="side"))
        outputs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 8])],
                          outputs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _grad(graph: Graph, fold: bool, wrt: str = "x") -> tuple[np.ndarray, list[str]]:
    clear_cache()
    old = builder.FOLD_PADS
    builder.FOLD_PADS = fold
    try:
        prog = GradientProgram(graph, of="logits", wrt=[wrt])
    finally:
        builder.FOLD_PADS = old
    x = np.random.default_rng(1).normal(size=(1, 3, 9, 8)).astype(np.float32)
    seed = np.zeros((1, 5), np.float32)
    seed[0, 2] = 1
    return prog.run({"x": x}, seed)["grad:" + wrt], [n.op_type for n in prog.model.graph.node]


def test_folded_gradient_equals_unfolded_and_drops_the_pad():
    graph = Graph.from_model(_model())
    folded, ops_f = _grad(graph, True)
    plain, ops_p = _grad(graph, False)
    assert "Pad" in ops_p and "Pad" not in ops_f and "Slice" not in ops_f
    np.testing.assert_allclose(folded, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", [{"pad_value": 1.0}, {"mode": "reflect"}, {"second_reader": True}])
def test_pads_that_are_not_zero_padding_of_one_conv_stay(kw):
    graph = Graph.from_model(_model(**kw))
    _, ops = _grad(graph, True)
    assert "Pad" in ops


def test_a_requested_pad_output_is_kept():
    graph = Graph.from_model(_model())
    g, ops = _grad(graph, True, wrt="xp")
    assert "Pad" in ops and g.shape == (1, 3, 12, 11)
