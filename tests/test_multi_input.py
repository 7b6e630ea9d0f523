"""Several inputs: the image is explained, the others are held fixed (Model(inputs=...) / --input NAME=FILE.npy)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.model import Model


def two_input_model() -> onnx.ModelProto:
    """image [N,3,8,8] and query [N,2]: logits = GAP(conv(image)) * (query @ W)  → [N, 3]."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 3, 3)).astype(np.float32)
    q = rng.standard_normal((2, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["query", "q"], ["qq"]),
             helper.make_node("Mul", ["f", "qq"], ["logits"])]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8]),
                                         helper.make_tensor_value_info("query", TensorProto.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(q, "q")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_fixed_input_matches_ort_and_batches():
    proto = two_input_model()
    q = np.array([[0.3, -1.2]], np.float32)
    m = Model(proto, inputs={"query": q})
    assert m.input == "image" and list(m.fixed_inputs) == ["query"]
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(proto.SerializeToString()).run(None, {"image": x, "query": np.repeat(q, 3, 0)})[0]
    got = m.runtime.run({"image": x}, ["logits"])["logits"]
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_gradient_wrt_image_with_fixed_query():
    torch = pytest.importorskip("torch")
    proto = two_input_model()
    q = np.array([[0.5, 0.25]], np.float32)
    import onnxfix

    ex = onnxfix.Explainer(proto, inputs={"query": q}) if "inputs" in onnxfix.Explainer.__init__.__code__.co_varnames \
        else None
    m = ex.model if ex is not None else Model(proto, inputs={"query": q})
    from onnxfix.methods.base import METHODS

    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    att = METHODS["saliency"].attribute(m, x, [1])
    w = torch.from_numpy(numpy_helper.to_array(proto.graph.initializer[0]).copy())
    qq = torch.from_numpy(q) @ torch.from_numpy(numpy_helper.to_array(proto.graph.initializer[1]).copy())
    xt = torch.from_numpy(x).requires_grad_(True)
    out = torch.relu(torch.nn.functional.conv2d(xt, w, padding=1)).mean((2, 3)) * qq
    out[0, 1].backward()
    np.testing.assert_allclose(att.values, xt.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_missing_or_wrong_inputs_are_refused():
    proto = two_input_model()
    with pytest.raises(UnsupportedModel, match="query"):
        Model(proto)
    with pytest.raises(InputError, match="no input"):
        Model(proto, inputs={"nope": np.zeros((1, 2), np.float32)})
    with pytest.raises(InputError, match="shape"):
        Model(proto, inputs={"query": np.zeros((1, 5), np.float32)})


def test_image_size_input_gets_a_default():
    proto = two_input_model()
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    proto.graph.input[1].name = "image_size"
    for n in proto.graph.node:
        n.input[:] = ["image_size" if i == "query" else i for i in n.input]
    proto.graph.input[1].type.tensor_type.shape.dim[0].dim_value = 1
    m = Model(proto)
    np.testing.assert_array_equal(m.fixed_inputs["image_size"], [[8, 8]])
