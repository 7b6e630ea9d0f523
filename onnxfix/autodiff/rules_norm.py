"""VJP rules of the normalisations: BatchNormalization (inference), InstanceNormalization, LayerNormalization."""

from __future__ import annotations

import numpy as np

from onnxfix.autodiff.emitter import Builder
from onnxfix.autodiff.registry import vjp
from onnxfix.autodiff.ruletools import in_, none
from onnxfix.graph import Node


@vjp("BatchNormalization")
def batch_norm(b: Builder, node: Node, gy):
    """Inference mode: y = scale·(x − mean)/sqrt(var + ε) + B, a per-channel affine map of x."""
    if int(node.attrs.get("training_mode", 0)) or any(o for o in node.outputs[1:]):
        raise b.unsupported(node, "BatchNormalization in training mode")
    x, scale, bias, mean, var = node.inputs[:5]
    for p in (scale, bias, mean, var):
        if b.needs(p):
            raise b.unsupported(node, "gradient with respect to BatchNormalization parameters")
    r = b.rank(x)
    if r is None:
        raise b.unsupported(node, "unknown rank")
    eps = float(node.attrs.get("epsilon", 1e-5))
    bshape = [-1] + [1] * (r - 2)
    if b.is_const(scale) and b.is_const(var):
        f = b.value(scale).astype(np.float64) / np.sqrt(b.value(var).astype(np.float64) + eps)
        factor = b.const(f.reshape(bshape), like=x)
    else:
        std = b.op("Sqrt", [b.op("Add", [var, b.scalar(eps, like=x)])])
        factor = b.op("Reshape", [b.op("Div", [scale, std]), b.ints(bshape)])
    out = none(node)
    out[0] = b.mul(gy[0], factor)
    return out


def normalized(b: Builder, x: str, axes: list[int], eps: float) -> tuple[str, str]:
    """(x̂, 1/σ): x standardised over ``axes`` (biased variance, as the ONNX ops), recomputed from x."""
    mu = b.reduce("ReduceMean", x, axes)
    xc = b.op("Sub", [x, mu])
    var = b.reduce("ReduceMean", b.mul(xc, xc), axes)
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.scalar(eps, like=x)])])])
    return b.mul(xc, inv), inv


def normalize_back(b: Builder, xhat: str, inv: str, g_hat: str, axes: list[int]) -> str:
    """The input gradient of x ↦ x̂ = (x − μ)/σ over ``axes`` given the gradient ``g_hat`` of x̂:
    (1/σ)·(g − mean(g) − x̂·mean(g·x̂))."""
    m1 = b.reduce("ReduceMean", g_hat, axes)
    m2 = b.reduce("ReduceMean", b.mul(g_hat, xhat), axes)
    return b.mul(inv, b.op("Sub", [b.op("Sub", [g_hat, m1]), b.mul(xhat, m2)]))


@vjp("LayerNormalization")
def layer_norm(b: Builder, node: Node, gy):
    """y = x̂·scale + B, x̂ standardised over the axes from ``axis`` to the last (opset 17)."""
    if any(g is not None for g in gy[1:]):
        raise b.unsupported(node, "gradient flowing through LayerNormalization's Mean/InvStdDev outputs")
    x, scale = node.inputs[0], node.inputs[1]
    bias = in_(node, 2)
    y, g = node.outputs[0], gy[0]
    r = b.rank(x)
    if r is None:
        raise b.unsupported(node, "unknown rank")
    axis = int(node.attrs.get("axis", -1))
    axis = axis + r if axis < 0 else axis
    axes = list(range(axis, r))
    xhat, inv = normalized(b, x, axes, float(node.attrs.get("epsilon", 1e-5)))
    out = none(node)
    if b.needs(x):
        out[0] = normalize_back(b, xhat, inv, b.mul(g, scale), axes)
    if b.needs(scale):
        out[1] = b.unbroadcast(b.mul(g, xhat), scale, y)
    if bias and b.needs(bias):
        out[2] = b.unbroadcast(g, bias, y)
    return out


@vjp("InstanceNormalization")
def instance_norm(b: Builder, node: Node, gy):
    """y = x̂·scale[c] + B[c], x̂ standardised per (n, c) over the spatial axes."""
    x, scale, bias = node.inputs[:3]
    g = gy[0]
    r = b.rank(x)
    if r is None:
        raise b.unsupported(node, "unknown rank")
    axes = list(range(2, r))
    xhat, inv = normalized(b, x, axes, float(node.attrs.get("epsilon", 1e-5)))
    shape = b.ints([-1] + [1] * (r - 2))
    out = none(node)
    if b.needs(x):
        out[0] = normalize_back(b, xhat, inv, b.mul(g, b.op("Reshape", [scale, shape])), axes)
    red = b.ints([0] + axes)
    if b.needs(scale):
        out[1] = b.op("ReduceSum", [b.mul(g, xhat), red], keepdims=0)
    if b.needs(bias):
        out[2] = b.op("ReduceSum", [g, red], keepdims=0)
    return out
