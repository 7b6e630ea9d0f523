"""VJP rules of elementwise ops: arithmetic with broadcasting (``unbroadcast`` sums over broadcast axes) and
activations. Masks at kinks follow torch (ReLU passes nothing at 0, Clip/HardSigmoid use strict inequalities,
HardSwish torch's three branches). The ReLU modes (guided, deconvnet) are override tables in modes.py.
"""

from __future__ import annotations

import numpy as np

from onnxfix.autodiff.emitter import Builder
from onnxfix.autodiff.registry import vjp
from onnxfix.autodiff.ruletools import in_, none, where
from onnxfix.graph import Node


@vjp("Add", "Sub")
def add(b: Builder, node: Node, gy):
    g, y = gy[0], node.outputs[0]
    x0, x1 = node.inputs
    out = none(node)
    if b.needs(x0):
        out[0] = b.unbroadcast(g, x0, y)
    if b.needs(x1):
        g1 = b.op("Neg", [g]) if node.op_type == "Sub" else g
        out[1] = b.unbroadcast(g1, x1, y)
    return out


@vjp("Sum")
def sum_(b: Builder, node: Node, gy):
    return [b.unbroadcast(gy[0], x, node.outputs[0]) if b.needs(x) else None for x in node.inputs]


@vjp("Mul")
def mul(b: Builder, node: Node, gy):
    g, y = gy[0], node.outputs[0]
    x0, x1 = node.inputs
    out = none(node)
    if b.needs(x0):
        out[0] = b.unbroadcast(b.mul(g, x1), x0, y)
    if b.needs(x1):
        out[1] = b.unbroadcast(b.mul(g, x0), x1, y)
    return out


@vjp("Div")
def div(b: Builder, node: Node, gy):
    g, y = gy[0], node.outputs[0]
    x0, x1 = node.inputs
    out = none(node)
    gq = None
    if b.needs(x0) or b.needs(x1):
        gq = b.op("Div", [g, x1])
    if b.needs(x0):
        out[0] = b.unbroadcast(gq, x0, y)
    if b.needs(x1):
        out[1] = b.unbroadcast(b.op("Neg", [b.mul(gq, y)]), x1, y)
    return out


@vjp("Neg")
def neg(b: Builder, node: Node, gy):
    return [b.op("Neg", [gy[0]])]


@vjp("Relu")
def relu(b: Builder, node: Node, gy):
    # The mask reads the output (y > 0 ⇔ x > 0), so that ORT may still fuse the producer with the Relu.
    y = node.outputs[0]
    return [where(b, relu_mask(b, node), gy[0], like=y)]


def relu_mask(b: Builder, node: Node) -> str:
    """y > 0 for a Relu node (the output is read, not the input)."""
    y = node.outputs[0]
    return b.op("Greater", [y, b.scalar(0.0, like=y)])


def clip_mask(b: Builder, node: Node) -> tuple[str | None, bool]:
    """(the mask ``min < y < max`` or ``None`` when unbounded, whether the Clip is a ReLU: ``min == 0``).

    The mask reads the output y (min < y < max ⇔ min < x < max), so that ORT may still fuse Conv + Clip."""
    x = node.outputs[0]
    a = node.attrs
    conds = []
    relu_like = False
    for idx, key, op in ((1, "min", "Greater"), (2, "max", "Less")):
        name = in_(node, idx)
        if name and not b.is_const(name):
            conds.append(b.op(op, [x, name]))  # a bound computed at run time
            continue
        v = a.get(key)
        if v is None or not np.isfinite(v) or abs(v) >= 3.4e38:
            continue
        if key == "min" and v == 0.0:
            relu_like = True
        conds.append(b.op(op, [x, b.scalar(float(v), like=x)]))
    mask = conds[0] if len(conds) == 1 else (b.op("And", conds) if conds else None)
    return mask, relu_like


@vjp("Clip")
def clip(b: Builder, node: Node, gy):
    """Gradient mask ``min < x < max`` (strict, as torch's hardtanh); Clip(min=0) is a ReLU (ReLU6) for the modes
    (modes.py)."""
    g = gy[0]
    mask, _ = clip_mask(b, node)
    out = none(node)
    out[0] = where(b, mask, g, like=node.outputs[0]) if mask is not None else g
    return out


@vjp("LeakyRelu")
def leaky_relu(b: Builder, node: Node, gy):
    x, g = node.inputs[0], gy[0]
    alpha = float(node.attrs.get("alpha", 0.01))
    pos = b.op("Greater", [x, b.scalar(0.0, like=x)])
    return [where(b, pos, g, b.mul(g, b.scalar(alpha, like=x)))]


@vjp("PRelu")
def prelu(b: Builder, node: Node, gy):
    x, s = node.inputs
    g, y = gy[0], node.outputs[0]
    pos = b.op("Greater", [x, b.scalar(0.0, like=x)])
    out = none(node)
    if b.needs(x):
        out[0] = where(b, pos, g, b.mul(g, s))
    if b.needs(s):
        out[1] = b.unbroadcast(where(b, pos, b.scalar(0.0, like=x), b.mul(g, x)), s, y)
    return out


@vjp("Sigmoid")
def sigmoid(b: Builder, node: Node, gy):
    y = node.outputs[0]
    return [b.mul(gy[0], b.mul(y, b.op("Sub", [b.scalar(1.0, like=y), y])))]


@vjp("Tanh")
def tanh(b: Builder, node: Node, gy):
    y = node.outputs[0]
    return [b.mul(gy[0], b.op("Sub", [b.scalar(1.0, like=y), b.mul(y, y)]))]


@vjp("HardSigmoid")
def hard_sigmoid(b: Builder, node: Node, gy):
    """y = max(0, min(1, αx + β)); dy/dx = α where 0 < y < 1 (strict, as torch)."""
    y = node.outputs[0]
    alpha = float(node.attrs.get("alpha", 0.2))
    inside = b.op("And", [b.op("Greater", [y, b.scalar(0.0, like=y)]), b.op("Less", [y, b.scalar(1.0, like=y)])])
    return [where(b, inside, b.mul(gy[0], b.scalar(alpha, like=y)), like=y)]


@vjp("HardSwish")
def hard_swish(b: Builder, node: Node, gy):
    """y = x·clip(x/6 + 1/2, 0, 1); dy/dx = 0 (x < −3), x/3 + 1/2 (−3 ≤ x ≤ 3), 1 (x > 3) — torch's branches."""
    x, g = node.inputs[0], gy[0]
    mid = b.mul(g, b.op("Add", [b.mul(x, b.scalar(1.0 / 3.0, like=x)), b.scalar(0.5, like=x)]))
    upper = where(b, b.op("Greater", [x, b.scalar(3.0, like=x)]), g, mid)
    return [where(b, b.op("Less", [x, b.scalar(-3.0, like=x)]), b.scalar(0.0, like=x), upper)]


@vjp("Exp")
def exp(b: Builder, node: Node, gy):
    return [b.mul(gy[0], node.outputs[0])]


@vjp("Log")
def log(b: Builder, node: Node, gy):
    return [b.op("Div", [gy[0], node.inputs[0]])]


@vjp("Sqrt")
def sqrt(b: Builder, node: Node, gy):
    y = node.outputs[0]
    return [b.op("Div", [gy[0], b.mul(y, b.scalar(2.0, like=y))])]


# ---------------------------------------------------------------------------------------------------------------
# Selection and piecewise ops


@vjp("Where")
def where_(b: Builder, node: Node, gy):
    """y = cond ? x1 : x2 — the gradient goes to the branch that was taken (torch.where's backward)."""
    cond, x1, x2 = node.inputs
    g, y = gy[0], node.outputs[0]
    out = none(node)
    if b.needs(x1):
        out[1] = b.unbroadcast(where(b, cond, g, like=y), x1, y)
    if b.needs(x2):
        out[2] = b.unbroadcast(where(b, b.op("Not", [cond]), g, like=y), x2, y)
    return out


@vjp("Max", "Min")
def max_min(b: Builder, node: Node, gy):
    """Variadic Max/Min: the gradient goes to the input(s) equal to the output; ties share it equally (torch's
    ``maximum``/``minimum`` backward gives g/2 to each of two tied inputs)."""
    g, y = gy[0], node.outputs[0]
    ins = [x for x in node.inputs if x]
    if len(ins) == 1:
        return [g if b.needs(ins[0]) else None]
    masks = [b.op("Cast", [b.op("Equal", [x, y])], to=_tt(b, y), hint="mask") for x in ins]
    count = b.op("Sum", masks) if len(masks) > 1 else masks[0]
    share = b.op("Div", [g, count])
    return [b.unbroadcast(b.mul(share, m), x, y) if b.needs(x) else None for x, m in zip(ins, masks, strict=True)]


def _tt(b: Builder, like: str) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(b.float_dtype(like))


@vjp("Abs")
def abs_(b: Builder, node: Node, gy):
    """d|x|/dx = sign(x) (0 at 0, as torch)."""
    return [b.mul(gy[0], b.op("Sign", [node.inputs[0]]))]


@vjp("Floor", "Ceil")
def step(b: Builder, node: Node, gy):
    """Piecewise constant: zero gradient almost everywhere (torch's floor/ceil backward)."""
    return [None]


# ---------------------------------------------------------------------------------------------------------------
# Smooth unary ops


@vjp("Pow")
def pow_(b: Builder, node: Node, gy):
    """y = x^p: dy/dx = p·x^(p−1); dy/dp = y·ln(x) (where x > 0; 0 elsewhere, as torch does for x = 0)."""
    x, p = node.inputs
    g, y = gy[0], node.outputs[0]
    out = none(node)
    if b.needs(x):
        if b.is_const(p):
            pv = b.value(p).astype(np.float64)
            if pv.size == 1 and float(pv.reshape(-1)[0]) == 2.0:
                d = b.mul(x, b.scalar(2.0, like=x))
            elif pv.size == 1 and float(pv.reshape(-1)[0]) == 1.0:
                d = None
            else:
                d = b.mul(b.const(pv, like=x), b.op("Pow", [x, b.const(pv - 1.0, like=x)]))
        else:
            pm1 = b.op("Sub", [p, b.const(np.array(1.0), dtype=b.dtype(p) or np.float32)])
            d = b.mul(b.op("Cast", [p], to=_tt(b, x)) if b.dtype(p) != b.dtype(x) else p, b.op("Pow", [x, pm1]))
        out[0] = b.unbroadcast(b.mul(g, d) if d is not None else g, x, y)
    if b.needs(p):
        pos = b.op("Greater", [x, b.scalar(0.0, like=x)])
        safe = b.op("Where", [pos, x, b.scalar(1.0, like=x)])
        out[1] = b.unbroadcast(b.mul(b.mul(g, y), b.op("Log", [safe])), p, y)
    return out


@vjp("Erf")
def erf(b: Builder, node: Node, gy):
    """d erf(x)/dx = 2/√π · exp(−x²)."""
    x = node.inputs[0]
    e = b.op("Exp", [b.op("Neg", [b.mul(x, x)])])
    return [b.mul(gy[0], b.mul(e, b.scalar(2.0 / np.sqrt(np.pi), like=x)))]


def gelu_derivative(b: Builder, x: str, approximate: str = "none") -> str:
    """dGELU/dx: Φ(x) + x·φ(x) (exact), or the derivative of the tanh approximation (Hendrycks & Gimpel 2016)."""
    if approximate == "tanh":
        c = float(np.sqrt(2.0 / np.pi))
        x2 = b.mul(x, x)
        inner = b.mul(b.mul(x, b.op("Add", [b.scalar(1.0, like=x), b.mul(x2, b.scalar(0.044715, like=x))])),
                      b.scalar(c, like=x))
        t = b.op("Tanh", [inner])
        dinner = b.mul(b.op("Add", [b.scalar(1.0, like=x), b.mul(x2, b.scalar(3 * 0.044715, like=x))]),
                       b.scalar(c, like=x))
        sech2 = b.op("Sub", [b.scalar(1.0, like=x), b.mul(t, t)])
        left = b.mul(b.op("Add", [b.scalar(1.0, like=x), t]), b.scalar(0.5, like=x))
        right = b.mul(b.mul(b.mul(x, sech2), dinner), b.scalar(0.5, like=x))
        return b.op("Add", [left, right])
    cdf = b.mul(b.op("Add", [b.scalar(1.0, like=x), b.op("Erf", [b.mul(x, b.scalar(1 / np.sqrt(2.0), like=x))])]),
                b.scalar(0.5, like=x))
    pdf = b.mul(b.op("Exp", [b.mul(b.mul(x, x), b.scalar(-0.5, like=x))]), b.scalar(1 / np.sqrt(2 * np.pi), like=x))
    return b.op("Add", [cdf, b.mul(x, pdf)])


@vjp("Gelu")
def gelu(b: Builder, node: Node, gy):
    """ONNX Gelu (opset 20), ``approximate`` "none" or "tanh"."""
    x = node.inputs[0]
    return [b.mul(gy[0], gelu_derivative(b, x, str(node.attrs.get("approximate", "none"))))]


@vjp("Elu")
def elu(b: Builder, node: Node, gy):
    """y = x (x > 0), α(eˣ − 1) else; dy/dx = 1, y + α (torch: the x ≤ 0 branch at 0)."""
    x, y, g = node.inputs[0], node.outputs[0], gy[0]
    alpha = float(node.attrs.get("alpha", 1.0))
    pos = b.op("Greater", [x, b.scalar(0.0, like=x)])
    return [b.op("Where", [pos, g, b.mul(g, b.op("Add", [y, b.scalar(alpha, like=y)]))])]


@vjp("Selu")
def selu(b: Builder, node: Node, gy):
    """y = γx (x > 0), γα(eˣ − 1) else; dy/dx = γ, y + γα."""
    x, y, g = node.inputs[0], node.outputs[0], gy[0]
    alpha = float(node.attrs.get("alpha", 1.67326319217681884765625))
    gamma = float(node.attrs.get("gamma", 1.05070102214813232421875))
    pos = b.op("Greater", [x, b.scalar(0.0, like=x)])
    return [b.op("Where", [pos, b.mul(g, b.scalar(gamma, like=x)),
                           b.mul(g, b.op("Add", [y, b.scalar(gamma * alpha, like=y)]))])]


@vjp("Softplus")
def softplus(b: Builder, node: Node, gy):
    """y = ln(1 + eˣ); dy/dx = σ(x)."""
    return [b.mul(gy[0], b.op("Sigmoid", [node.inputs[0]]))]


@vjp("Mish")
def mish(b: Builder, node: Node, gy):
    """y = x·tanh(softplus(x)); dy/dx = tanh(sp) + x·σ(x)·(1 − tanh²(sp)) (Misra 2019, eq. 2)."""
    x = node.inputs[0]
    t = b.op("Tanh", [b.op("Softplus", [x])])
    sech2 = b.op("Sub", [b.scalar(1.0, like=x), b.mul(t, t)])
    d = b.op("Add", [t, b.mul(b.mul(x, b.op("Sigmoid", [x])), sech2)])
    return [b.mul(gy[0], d)]


@vjp("Reciprocal")
def reciprocal(b: Builder, node: Node, gy):
    """y = 1/x; dy/dx = −y²."""
    y = node.outputs[0]
    return [b.op("Neg", [b.mul(gy[0], b.mul(y, y))])]
