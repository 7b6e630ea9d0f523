"""VJP rules of reductions and normalising maps over an axis: ReduceSum/Mean/Max/Min, GlobalAverage/MaxPool,
Softmax, LogSoftmax."""

from __future__ import annotations

from onnxfix.autodiff.emitter import Builder
from onnxfix.autodiff.registry import vjp
from onnxfix.autodiff.ruletools import axis_, in_, none
from onnxfix.graph import Node


def _softmax_axes(b: Builder, node: Node) -> list[int]:
    x = node.inputs[0]
    r = b.rank(x)
    default = -1 if b.opset >= 13 else 1
    axis = axis_(int(node.attrs.get("axis", default)), r)
    if b.opset >= 13:
        return [axis]
    return list(range(axis, r))  # opset < 13: the input is coerced to 2-D at ``axis``


@vjp("Softmax")
def softmax(b: Builder, node: Node, gy):
    y, g = node.outputs[0], gy[0]
    s = b.op("ReduceSum", [b.mul(g, y), b.ints(_softmax_axes(b, node))], keepdims=1)
    return [b.mul(y, b.op("Sub", [g, s]))]


@vjp("LogSoftmax")
def log_softmax(b: Builder, node: Node, gy):
    y, g = node.outputs[0], gy[0]
    s = b.op("ReduceSum", [g, b.ints(_softmax_axes(b, node))], keepdims=1)
    return [b.op("Sub", [g, b.mul(b.op("Exp", [y]), s)])]


@vjp("GlobalAveragePool")
def global_average_pool(b: Builder, node: Node, gy):
    x = node.inputs[0]
    r = b.rank(x)
    if r is None:
        raise b.unsupported(node, "unknown rank")
    inv = b.op("Div", [gy[0], b.count(x, list(range(2, r)), like=x)])
    return [b.op("Expand", [inv, b.shape_tensor(x)])]


@vjp("ReduceMean", "ReduceSum")
def reduce(b: Builder, node: Node, gy):
    x, g = node.inputs[0], gy[0]
    r = b.rank(x)
    if r is None:
        raise b.unsupported(node, "unknown rank")
    axes = node.attrs.get("axes")
    if axes is None and in_(node, 1):
        raise b.unsupported(node, "axes computed at run time")
    out = none(node)
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            out[0] = g
            return out
        axes = list(range(r))
    axes = sorted({axis_(int(v), r) for v in axes})
    if not int(node.attrs.get("keepdims", 1)):
        g = b.op("Unsqueeze", [g, b.ints(axes)])
    if node.op_type == "ReduceMean":
        g = b.op("Div", [g, b.count(x, axes, like=x)])
    out[0] = b.op("Expand", [g, b.shape_tensor(x)])
    return out


def _reduce_axes(b: Builder, node: Node) -> list[int] | None:
    """The normalised, sorted axes of a Reduce* node (``None``: a no-op reduction)."""
    x = node.inputs[0]
    r = b.rank(x)
    if r is None:
        raise b.unsupported(node, "unknown rank")
    axes = node.attrs.get("axes")
    if axes is None and in_(node, 1):
        raise b.unsupported(node, "axes computed at run time")
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            return None
        axes = list(range(r))
    return sorted({axis_(int(v), r) for v in axes})


@vjp("ReduceMax", "ReduceMin")
def reduce_max(b: Builder, node: Node, gy):
    """The gradient goes to the element(s) equal to the extremum; ties share it equally (torch's amax/amin)."""
    x, y, g = node.inputs[0], node.outputs[0], gy[0]
    out = none(node)
    axes = _reduce_axes(b, node)
    if axes is None:
        out[0] = g
        return out
    if not int(node.attrs.get("keepdims", 1)):
        g = b.op("Unsqueeze", [g, b.ints(axes)])
        y = b.op("Unsqueeze", [y, b.ints(axes)])
    out[0] = _to_extremum(b, x, y, g, axes)
    return out


def _to_extremum(b: Builder, x: str, y: str, g: str, axes: list[int]) -> str:
    from onnx import helper

    m = b.op("Cast", [b.op("Equal", [x, y])], to=helper.np_dtype_to_tensor_dtype(b.float_dtype(x)), hint="mask")
    count = b.op("ReduceSum", [m, b.ints(axes)], keepdims=1)
    return b.mul(m, b.op("Div", [g, count]))


@vjp("GlobalMaxPool")
def global_max_pool(b: Builder, node: Node, gy):
    x = node.inputs[0]
    r = b.rank(x)
    if r is None:
        raise b.unsupported(node, "unknown rank")
    return [_to_extremum(b, x, node.outputs[0], gy[0], list(range(2, r)))]
