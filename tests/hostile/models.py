"""Tiny ONNX models (onnx.helper, no torch) and the ways to break them, for the hostile-input corpus.

Every builder returns a fresh ``onnx.ModelProto``; the mutators copy before they change anything.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _ir_for(opsets: list[onnx.OperatorSetIdProto]) -> int:
    try:
        return max(helper.find_min_ir_version_for(opsets, ignore_unknown=True), 3)
    except Exception:  # noqa: BLE001 - very new opsets unknown to the table
        return 8


def cnn(
    opset: int = 17,
    head: str = "pool",
    shape: tuple = (1, 3, 8, 8),
    seed: int = 0,
    softmax: bool = True,
    extra: tuple | list[tuple] | None = None,
    elem: int = TensorProto.FLOAT,
    input_elem: int | None = None,
    outputs: int = 1,
    second_input: bool = False,
) -> onnx.ModelProto:
    """Conv(3→4, 3×3, pad 1) → Relu [→ extra op] → head → Gemm(→5) [→ Softmax].

    Parameters
    ----------
    head : "pool" (MaxPool 2 → Flatten, needs an 8×8 input) or "gap" (GlobalAveragePool → Flatten: any H×W).
    shape : the input shape; strings are symbolic dimensions.
    extra : (op_type, domain[, attrs]) of a one-input op inserted after the Relu, or a list of them (a chain).
    elem : element type of weights and activations (FLOAT, FLOAT16, DOUBLE).
    input_elem : element type of the graph input, cast to ``elem`` by a first Cast node (int8 / double inputs).
    outputs : 1, or 2 for an extra output (the feature map) after the logits.
    second_input : add a second graph input "scale" (1,) multiplied into the logits.
    """
    rng = np.random.default_rng(seed)
    npdt = helper.tensor_dtype_to_np_dtype(elem)
    w = rng.normal(size=(4, 3, 3, 3)).astype(npdt)
    b = rng.normal(size=(4,)).astype(npdt)
    feat = 64 if head == "pool" else 4
    fw = rng.normal(size=(5, feat)).astype(npdt)
    fb = np.zeros(5, npdt)
    nodes = []
    src = "image"
    in_elem = input_elem if input_elem is not None else elem
    if input_elem is not None:
        nodes.append(helper.make_node("Cast", ["image"], ["image_f"], to=elem, name="cast_in"))
        src = "image_f"
    nodes += [helper.make_node("Conv", [src, "w", "b"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], name="conv1"),
              helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    last = "r1"
    opsets = [helper.make_opsetid("", opset)]
    chain = [extra] if isinstance(extra, tuple) else list(extra or [])
    for k, (op, domain, *attrs) in enumerate(chain):
        suffix = "" if k == len(chain) - 1 else f"_{k}"
        nodes.append(helper.make_node(op, [last], ["odd" + suffix], domain=domain, name="odd_node" + suffix,
                                      **(attrs[0] if attrs else {})))
        last = "odd" + suffix
        if domain and domain not in {o.domain for o in opsets}:
            opsets.append(helper.make_opsetid(domain, 1))
    if head == "pool":
        nodes.append(helper.make_node("MaxPool", [last], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"))
    else:
        nodes.append(helper.make_node("GlobalAveragePool", [last], ["p1"], name="gap"))
    nodes += [helper.make_node("Flatten", ["p1"], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1, name="fc")]
    out = "logits"
    inputs = [helper.make_tensor_value_info("image", in_elem, list(shape))]
    if second_input:
        inputs.append(helper.make_tensor_value_info("scale", elem, [1]))
        nodes.append(helper.make_node("Mul", ["logits", "scale"], ["scaled"], name="mul_scale"))
        out = "scaled"
    if softmax:
        nodes.append(helper.make_node("Softmax", [out], ["prob"], axis=1, name="softmax"))
        out = "prob"
    outs = [helper.make_tensor_value_info(out, elem, [shape[0], 5])]
    if outputs == 2:
        outs.append(helper.make_tensor_value_info("r1", elem, None))
    g = helper.make_graph(nodes, "hostile", inputs, outs,
                          initializer=[numpy_helper.from_array(a, n) for a, n in
                                       ((w, "w"), (b, "b"), (fw, "fw"), (fb, "fb"))])
    m = helper.make_model(g, opset_imports=opsets, producer_name="onnxfix-hostile")
    m.ir_version = _ir_for(opsets)
    if m.ir_version < 4:  # IR 3 (opset ≤ 8): every initializer is also a graph input, as old exporters wrote
        m.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in m.graph.initializer)
    helper.set_model_props(m, {"onnxfix.labels": '["a", "b", "c", "d", "e"]'})
    return m


def copy(m: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    return out


def node(m: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in m.graph.node if n.name == name)


def init(m: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in m.graph.initializer if t.name == name)


def with_cycle() -> onnx.ModelProto:
    """relu1 reads the output of pool1, which reads relu1's output: a cycle."""
    m = cnn()
    node(m, "conv1").output[0] = "c1_unused"
    node(m, "relu1").input[0] = "p1"
    return m


def with_dangling_input() -> onnx.ModelProto:
    m = cnn()
    node(m, "relu1").input[0] = "ghost_tensor"
    return m


def with_duplicate_output() -> onnx.ModelProto:
    """relu1 and conv1 both produce "c1"."""
    m = cnn()
    node(m, "relu1").output[0] = "c1"
    node(m, "pool1").input[0] = "c1"
    return m


def with_output_shadowing_initializer() -> onnx.ModelProto:
    m = cnn()
    node(m, "relu1").output[0] = "w"
    node(m, "pool1").input[0] = "w"
    return m


def without_initializer(name: str) -> onnx.ModelProto:
    m = cnn()
    keep = [t for t in m.graph.initializer if t.name != name]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    return m


def with_short_initializer(name: str, keep_bytes: int) -> onnx.ModelProto:
    """``name``'s raw data cut to ``keep_bytes`` bytes while its dims still declare the full size."""
    m = cnn()
    t = init(m, name)
    raw = numpy_helper.to_array(t).tobytes()
    t.ClearField("float_data")
    t.raw_data = raw[:keep_bytes]
    return m


def with_wrong_dims(name: str, dims: list[int]) -> onnx.ModelProto:
    """``name`` reshaped (consistent data) to ``dims``: the graph no longer type-checks."""
    m = cnn()
    t = init(m, name)
    arr = numpy_helper.to_array(t)
    n = int(np.prod(dims))
    data = np.resize(arr.reshape(-1), n).reshape(dims).astype(arr.dtype)
    t.CopyFrom(numpy_helper.from_array(data, name))
    return m


def with_huge_declared_dims(name: str) -> onnx.ModelProto:
    """``name`` declares dims worth > 2 GiB with no data behind them."""
    m = cnn()
    t = init(m, name)
    t.ClearField("raw_data")
    t.ClearField("float_data")
    del t.dims[:]
    t.dims.extend([4, 3, 65536, 65536])
    return m


def with_weights(value: float, name: str = "fw") -> onnx.ModelProto:
    m = cnn()
    t = init(m, name)
    arr = numpy_helper.to_array(t).copy()
    arr.reshape(-1)[::3] = value
    t.CopyFrom(numpy_helper.from_array(arr, name))
    return m


def with_external(location: str, length: int | None = None, offset: int = 0, name: str = "fw") -> onnx.ModelProto:
    """``name``'s data moved to an external-data reference at ``location`` (the bytes are not written)."""
    m = cnn()
    t = init(m, name)
    arr = numpy_helper.to_array(t)
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(arr.nbytes if length is None
                                                                                   else length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return m


def fw_bytes() -> bytes:
    return numpy_helper.to_array(init(cnn(), "fw")).tobytes()


def not_a_model_protos() -> dict[str, bytes]:
    """Valid protobuf messages of other types (and a model without its graph)."""
    m = cnn()
    out = {
        "tensorproto": numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "t").SerializeToString(),
        "graphproto": m.graph.SerializeToString(),
        "nodeproto": m.graph.node[0].SerializeToString(),
        "valueinfo": m.graph.input[0].SerializeToString(),
    }
    no_graph = copy(m)
    no_graph.ClearField("graph")
    out["model_without_graph"] = no_graph.SerializeToString()
    no_io = copy(m)
    del no_io.graph.input[:]
    out["model_without_inputs"] = no_io.SerializeToString()
    no_out = copy(m)
    del no_out.graph.output[:]
    out["model_without_outputs"] = no_out.SerializeToString()
    return out
