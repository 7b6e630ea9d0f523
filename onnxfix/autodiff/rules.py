"""VJP rules, one small function per ONNX op type (DESIGN §3). See registry.py for the calling convention.

Backward ops in brief (docs/autodiff.md has the reasons and the measurements):

* **Conv** — input gradient by a ``Conv`` with the spatially flipped, per-group channel-swapped kernel where every
  stride is 1 (15× faster than a grouped ``ConvTranspose`` for depthwise convs); a ``MatMul`` for 1×1 pointwise
  convs; zeros inserted between gradient elements then the flipped-kernel ``Conv`` for strided depthwise convs;
  ``ConvTranspose`` with the end pads/``output_padding`` that give back the input size exactly for the rest.
  Bias gradient by ``ReduceSum``.
* **MaxPool** — recompute with the ``Indices`` output and ``ScatterElements(reduction="add")``.
* **AveragePool** — ``ConvTranspose`` of the gradient (channels folded into the batch) with a ones kernel, scaled
  per output window by 1/divisor, the divisor read from ORT's own ``AveragePool`` of ones (so ``pads``,
  ``ceil_mode`` and ``count_include_pad`` are honoured exactly as ORT computes the forward).
* **Gemm/MatMul** — ``Gemm``/``MatMul`` with transposed operands, ``ReduceSum`` over broadcast batch axes.
* **Slice, Pad, Gather** — ``Pad``/``Slice`` where they are the exact inverse, otherwise the *index trick*: run the
  same op on a grid of flat indices and scatter-add the gradient back.
* **Relu / Clip(min=0)** — the ReLU mode of the build: gradient, guided (Springenberg), deconvnet (Zeiler).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from onnxfix.autodiff.builder import INT64_MAX, Builder, broadcast_sym
from onnxfix.autodiff.registry import vjp
from onnxfix.graph import Node, resolve_pads


def _in(node: Node, i: int) -> str:
    return node.inputs[i] if i < len(node.inputs) else ""


def _none(node: Node) -> list[str | None]:
    return [None] * len(node.inputs)


def _axis(axis: int, rank: int | None) -> int:
    if axis < 0:
        if rank is None:
            raise ValueError("negative axis on a tensor of unknown rank")
        axis += rank
    return axis


def _where(b: Builder, cond: str, g: str, other: str | None = None, like: str | None = None) -> str:
    """``g`` where ``cond``, else ``other`` (default 0). Against 0 it is ``g · Cast(cond)``: ORT's ``Where`` with a
    broadcast scalar is 1.5–2× slower than ``Cast`` + ``Mul`` (the difference: a NaN/Inf in ``g`` stays NaN where
    masked, where ``Where`` would give 0; a finite ``g`` gives the same numbers). ``like``: the forward tensor whose
    gradient ``g`` is (for its dtype)."""
    if other is None:
        return b.mul(g, b.op("Cast", [cond], to=helper.np_dtype_to_tensor_dtype(b.float_dtype(like)), hint="mask"))
    return b.op("Where", [cond, g, other])


# ---------------------------------------------------------------------------------------------------------------
# Identity-like


@vjp("Identity", "Dropout")
def identity(b: Builder, node: Node, gy):
    out = _none(node)
    out[0] = gy[0]
    return out


@vjp("Cast")
def cast(b: Builder, node: Node, gy):
    x = node.inputs[0]
    if not b.is_float(x) or gy[0] is None:
        return [None]
    dt = b.dtype(x)
    if dt is not None and dt == b.dtype(node.outputs[0]):
        return [gy[0]]
    return [b.op("Cast", [gy[0]], to=helper.np_dtype_to_tensor_dtype(b.float_dtype(x)))]


@vjp("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape(b: Builder, node: Node, gy):
    out = _none(node)
    out[0] = b.op("Reshape", [gy[0], b.shape_tensor(node.inputs[0])])
    return out


@vjp("Transpose")
def transpose(b: Builder, node: Node, gy):
    perm = node.attrs.get("perm")
    if perm is None:
        r = b.rank(node.inputs[0])
        if r is None:
            raise b.unsupported(node, "unknown rank")
        perm = list(range(r))[::-1]
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[int(p)] = i
    return [b.op("Transpose", [gy[0]], perm=inv)]


# ---------------------------------------------------------------------------------------------------------------
# Elementwise arithmetic with broadcasting


@vjp("Add", "Sub")
def add(b: Builder, node: Node, gy):
    g, y = gy[0], node.outputs[0]
    x0, x1 = node.inputs
    out = _none(node)
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
    out = _none(node)
    if b.needs(x0):
        out[0] = b.unbroadcast(b.mul(g, x1), x0, y)
    if b.needs(x1):
        out[1] = b.unbroadcast(b.mul(g, x0), x1, y)
    return out


@vjp("Div")
def div(b: Builder, node: Node, gy):
    g, y = gy[0], node.outputs[0]
    x0, x1 = node.inputs
    out = _none(node)
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


@vjp("Expand")
def expand(b: Builder, node: Node, gy):
    return [b.unbroadcast(gy[0], node.inputs[0], node.outputs[0]), None]


# ---------------------------------------------------------------------------------------------------------------
# Activations


def _relu_mode(b: Builder, g: str, mask: str | None, like: str) -> str:
    """The three ReLU backward rules; ``mask`` is the forward condition (x > 0, or 0 < x < max for ReLU6)."""
    if b.mode == "deconvnet":
        return b.op("Relu", [g])
    if b.mode == "guided":
        return _where(b, mask, b.op("Relu", [g]), like=like) if mask is not None else b.op("Relu", [g])
    return _where(b, mask, g, like=like) if mask is not None else g


@vjp("Relu")
def relu(b: Builder, node: Node, gy):
    # The mask reads the output (y > 0 ⇔ x > 0), so that ORT may still fuse the producer with the Relu.
    y = node.outputs[0]
    return [_relu_mode(b, gy[0], b.op("Greater", [y, b.scalar(0.0, like=y)]), like=y)]


@vjp("Clip")
def clip(b: Builder, node: Node, gy):
    """Gradient mask ``min < x < max`` (strict, as torch's hardtanh); Clip(min=0) is a ReLU (ReLU6) for the modes.

    The mask reads the output y (min < y < max ⇔ min < x < max), so that ORT may still fuse Conv + Clip."""
    g = gy[0]
    x = node.outputs[0]
    a = node.attrs
    conds = []
    relu_like = False
    for idx, key, op in ((1, "min", "Greater"), (2, "max", "Less")):
        name = _in(node, idx)
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
    out = _none(node)
    if relu_like:
        out[0] = _relu_mode(b, g, mask, like=x)
    else:
        out[0] = _where(b, mask, g, like=x) if mask is not None else g
    return out


@vjp("LeakyRelu")
def leaky_relu(b: Builder, node: Node, gy):
    x, g = node.inputs[0], gy[0]
    alpha = float(node.attrs.get("alpha", 0.01))
    pos = b.op("Greater", [x, b.scalar(0.0, like=x)])
    return [_where(b, pos, g, b.mul(g, b.scalar(alpha, like=x)))]


@vjp("PRelu")
def prelu(b: Builder, node: Node, gy):
    x, s = node.inputs
    g, y = gy[0], node.outputs[0]
    pos = b.op("Greater", [x, b.scalar(0.0, like=x)])
    out = _none(node)
    if b.needs(x):
        out[0] = _where(b, pos, g, b.mul(g, s))
    if b.needs(s):
        out[1] = b.unbroadcast(_where(b, pos, b.scalar(0.0, like=x), b.mul(g, x)), s, y)
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
    return [_where(b, inside, b.mul(gy[0], b.scalar(alpha, like=y)), like=y)]


@vjp("HardSwish")
def hard_swish(b: Builder, node: Node, gy):
    """y = x·clip(x/6 + 1/2, 0, 1); dy/dx = 0 (x < −3), x/3 + 1/2 (−3 ≤ x ≤ 3), 1 (x > 3) — torch's branches."""
    x, g = node.inputs[0], gy[0]
    mid = b.mul(g, b.op("Add", [b.mul(x, b.scalar(1.0 / 3.0, like=x)), b.scalar(0.5, like=x)]))
    upper = _where(b, b.op("Greater", [x, b.scalar(3.0, like=x)]), g, mid)
    return [_where(b, b.op("Less", [x, b.scalar(-3.0, like=x)]), b.scalar(0.0, like=x), upper)]


def _softmax_axes(b: Builder, node: Node) -> list[int]:
    x = node.inputs[0]
    r = b.rank(x)
    default = -1 if b.opset >= 13 else 1
    axis = _axis(int(node.attrs.get("axis", default)), r)
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
    out = _none(node)
    out[0] = b.mul(gy[0], factor)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Linear algebra


@vjp("Gemm")
def gemm(b: Builder, node: Node, gy):
    """Y = α·A'B' + β·C with A' = Aᵀ if transA, B' = Bᵀ if transB."""
    a_, b_ = node.inputs[0], node.inputs[1]
    c_ = _in(node, 2)
    g = gy[0]
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    ta, tb = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    out = _none(node)
    if b.needs(a_):
        if not ta:
            out[0] = b.op("Gemm", [g, b_], alpha=alpha, transA=0, transB=1 - tb)
        else:
            out[0] = b.op("Gemm", [b_, g], alpha=alpha, transA=tb, transB=1)
    if b.needs(b_):
        if not tb:
            out[1] = b.op("Gemm", [a_, g], alpha=alpha, transA=1 - ta, transB=0)
        else:
            out[1] = b.op("Gemm", [g, a_], alpha=alpha, transA=1, transB=ta)
    if c_ and b.needs(c_):
        gc = g if beta == 1.0 else b.mul(g, b.scalar(beta, like=c_))
        out[2] = b.unbroadcast(gc, c_, node.outputs[0])
    return out


def _swap_last(b: Builder, name: str, rank: int) -> str:
    if b.is_const(name):
        return b.const(np.swapaxes(b.value(name), -1, -2))
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return b.op("Transpose", [name], perm=perm)


@vjp("MatMul")
def matmul(b: Builder, node: Node, gy):
    """numpy matmul semantics: batched, broadcast batch axes, 1-D operands promoted and their axis dropped."""
    a_, b_ = node.inputs
    g = gy[0]
    sa, sb = b.sym(a_), b.sym(b_)
    if sa is None or sb is None:
        raise b.unsupported(node, "operand of unknown rank")
    ra, rb = len(sa), len(sb)
    out = _none(node)
    if ra == 1 and rb == 1:
        if b.needs(a_):
            out[0] = b.mul(g, b_)
        if b.needs(b_):
            out[1] = b.mul(g, a_)
        return out
    batch = broadcast_sym(sa[:-2] if ra >= 2 else (), sb[:-2] if rb >= 2 else ())
    a2, b2 = sa if ra >= 2 else (1,) + sa, sb if rb >= 2 else sb + (1,)
    g2 = g
    if ra == 1:
        g2 = b.op("Unsqueeze", [g2, b.ints([-2])])
    if rb == 1:
        g2 = b.op("Unsqueeze", [g2, b.ints([-1])])
    if b.needs(a_):
        bb = b_ if rb >= 2 else b.op("Unsqueeze", [b_, b.ints([1])])
        ga = b.op("MatMul", [g2, _swap_last(b, bb, max(rb, 2))])  # batch + (M, K)
        out[0] = b.unbroadcast(ga, a_, batch + (a2[-2], a2[-1]))
    if b.needs(b_):
        aa = a_ if ra >= 2 else b.op("Unsqueeze", [a_, b.ints([0])])
        gb = b.op("MatMul", [_swap_last(b, aa, max(ra, 2)), g2])  # batch + (K, N)
        if rb == 1:
            gb = b.op("Squeeze", [gb, b.ints([-1])])
            out[1] = b.unbroadcast(gb, b_, batch + (b2[-2],))
        else:
            out[1] = b.unbroadcast(gb, b_, batch + (b2[-2], b2[-1]))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Convolution and pooling


def _spatial(b: Builder, node: Node, name: str) -> list[int]:
    s = b.shape(name)
    if s is None or any(d is None for d in s[2:]):
        raise b.unsupported(node, f"the spatial size of {name!r} is not static")
    return [int(d) for d in s[2:]]


def _out_size(S: list[int], k, s, d, pads) -> list[int]:
    n = len(S)
    return [(S[i] + pads[i] + pads[i + n] - (k[i] - 1) * d[i] - 1) // s[i] + 1 for i in range(n)]


def conv_transpose_back(b: Builder, g: str, w: str, S, O, k, s, d, pads, group: int = 1) -> str:
    """``ConvTranspose`` that maps a gradient of spatial size O back onto the input size S exactly: the begin pads
    crop what the forward padded, and the end is cropped (pads) or extended (output_padding) as needed."""
    n = len(S)
    ends, opad = [], []
    for i in range(n):
        full = s[i] * (O[i] - 1) + (k[i] - 1) * d[i] + 1
        e = full - pads[i] - S[i]
        ends.append(max(e, 0))
        opad.append(max(-e, 0))
    return b.op("ConvTranspose", [g, w], strides=list(s), dilations=list(d), pads=list(pads[:n]) + ends,
                output_padding=opad if any(opad) else None, group=group if group != 1 else None,
                kernel_shape=list(k), hint="convT")


def flipped_kernel(w: np.ndarray, group: int) -> np.ndarray:
    """Conv weight (M, C/g, k…) → the weight of the adjoint conv (C, M/g, k…): spatially flipped, channels
    swapped within each group."""
    n = w.ndim - 2
    M, cg = w.shape[:2]
    wf = w[(slice(None), slice(None)) + (slice(None, None, -1),) * n]
    wf = wf.reshape((group, M // group, cg) + w.shape[2:]).swapaxes(1, 2)
    return np.ascontiguousarray(wf.reshape((group * cg, M // group) + w.shape[2:]))


def conv_flipped_back(b: Builder, g: str, w: str, S, O, k, d, pads, group: int, like: str) -> str | None:
    """The input gradient of a stride-1 conv as a plain ``Conv`` with the flipped kernel (None if a pad would be
    negative, i.e. the forward padded by more than the kernel's extent)."""
    n = len(S)
    nb = [(k[i] - 1) * d[i] - pads[i] for i in range(n)]
    ne = [(k[i] - 1) * d[i] - pads[i + n] for i in range(n)]
    if min(nb + ne) < 0:
        return None
    wf = b.const(flipped_kernel(b.value(w), group), like=like)
    return b.op("Conv", [g, wf], pads=nb + ne, dilations=list(d), strides=[1] * n,
                group=group if group != 1 else None, kernel_shape=list(k), hint="convflip")


def conv_zero_insert_back(b: Builder, g: str, w: str, S, O, k, s, d, pads, group: int, like: str) -> str | None:
    """Strided input gradient: zeros inserted between the gradient's elements, then the flipped-kernel ``Conv``.
    Used for depthwise convs, whose grouped ``ConvTranspose`` is slower in ORT. The zeros go in with a one-channel
    ``ConvTranspose`` of a 1×1 ones kernel over (N·C, 1, O…), which just spreads the elements s apart."""
    n = len(S)
    nb = [(k[i] - 1) * d[i] - pads[i] for i in range(n)]
    L = [s[i] * (O[i] - 1) + 1 for i in range(n)]
    ne = [S[i] - L[i] - nb[i] + (k[i] - 1) * d[i] for i in range(n)]
    if min(nb + ne) < 0:
        return None
    C = int(b.value(w).shape[0])
    u = b.op("Reshape", [g, b.ints([-1, 1] + list(O))])
    one = b.const(np.ones([1, 1] + [1] * n), like=like)
    u = b.op("ConvTranspose", [u, one], strides=list(s), kernel_shape=[1] * n, hint="spread")  # (N·C, 1, L…)
    u = b.op("Reshape", [u, b.ints([-1, C] + L)])
    wf = b.const(flipped_kernel(b.value(w), group), like=like)
    return b.op("Conv", [u, wf], pads=nb + ne, dilations=list(d), strides=[1] * n,
                group=group if group != 1 else None, kernel_shape=list(k), hint="convzi")


def conv_pointwise_back(b: Builder, g: str, w: str, x: str) -> str:
    """A 1×1, stride-1, unpadded, ungrouped conv is a matrix product over channels: its input gradient is
    ``Wᵀ · g`` as a ``MatMul`` on (N, M, H·W) — no layout reorders, unlike an NCHWc ``Conv``."""
    wt = b.const(b.value(w).reshape(b.value(w).shape[:2]).T.copy(), like=x)  # (C, M)
    M = int(b.value(w).shape[0])
    flat = b.op("Reshape", [g, b.ints([0, M, -1])])
    return b.op("Reshape", [b.op("MatMul", [wt, flat], hint="pointwise"), b.shape_tensor(x)])


@vjp("Conv")
def conv(b: Builder, node: Node, gy):
    if _nearest(b, node):  # opt-in: Oramas et al.'s stride-1 + nearest-neighbour backward (end of file)
        return strided_nearest(b, node, gy, conv)
    x, w = node.inputs[0], node.inputs[1]
    bias = _in(node, 2)
    g = gy[0]
    a = node.attrs
    out = _none(node)
    if b.needs(w):
        raise b.unsupported(node, "gradient with respect to a weight computed at run time")
    if b.needs(x):
        S = _spatial(b, node, x)
        ws = b.shape(w)
        k = a.get("kernel_shape") or (list(ws[2:]) if ws else None)
        if k is None or any(v is None for v in k):
            raise b.unsupported(node, "unknown kernel shape")
        n = len(S)
        s, d = list(a.get("strides") or [1] * n), list(a.get("dilations") or [1] * n)
        attrs = dict(a, kernel_shape=k, strides=s, dilations=d)
        pads = resolve_pads(attrs, S)
        O = _out_size(S, k, s, d, pads)
        group = int(a.get("group", 1))
        choice = b.conv_input_grad
        res = None
        if b.is_const(w) and choice != "transpose":
            wv = b.value(w)
            pointwise = (all(v == 1 for v in k) and all(v == 1 for v in s) and not any(pads) and group == 1)
            if pointwise and choice == "auto":
                res = conv_pointwise_back(b, g, w, x)
            elif all(v == 1 for v in s):
                res = conv_flipped_back(b, g, w, S, O, k, d, pads, group, like=x)
            elif choice == "conv" or _is_depthwise(wv, group):
                res = conv_zero_insert_back(b, g, w, S, O, k, s, d, pads, group, like=x)
        if res is None:
            res = conv_transpose_back(b, g, w, S, O, k, s, d, pads, group)
        out[0] = res
    if bias and b.needs(bias):
        r = b.rank(node.outputs[0]) or 4
        out[2] = b.op("ReduceSum", [g, b.ints([0] + list(range(2, r)))], keepdims=0)
    return out


def _is_depthwise(w: np.ndarray, group: int) -> bool:
    return group > 1 and w.shape[1] == 1


def _pool_attrs(a: dict, n: int) -> dict:
    """The pooling attributes to re-emit (dilations only where they are not 1: AveragePool has them from opset 19)."""
    attrs = {"kernel_shape": list(a["kernel_shape"]), "strides": list(a.get("strides") or [1] * n),
             "ceil_mode": int(a.get("ceil_mode", 0))}
    auto = a.get("auto_pad", "NOTSET") or "NOTSET"
    if auto not in ("NOTSET", ""):
        attrs["auto_pad"] = auto
    else:
        attrs["pads"] = list(a.get("pads") or [0] * (2 * n))
    d = list(a.get("dilations") or [1] * n)
    if any(v != 1 for v in d):
        attrs["dilations"] = d
    return attrs


@vjp("MaxPool")
def max_pool(b: Builder, node: Node, gy):
    """Recompute with the Indices output (flat indices into x, storage order 0) and scatter-add the gradient."""
    if _nearest(b, node):  # opt-in: Oramas et al.'s stride-1 + nearest-neighbour backward (end of file)
        return strided_nearest(b, node, gy, max_pool)
    x, g = node.inputs[0], gy[0]
    if len(node.outputs) > 1 and gy[1] is not None:
        raise b.unsupported(node, "gradient flowing through MaxPool's Indices output")
    if len(node.outputs) > 1 and node.outputs[1] and int(node.attrs.get("storage_order", 0)) == 0:
        idx = node.outputs[1]
    else:
        attrs = _pool_attrs(node.attrs, len(node.attrs["kernel_shape"]))
        _, idx = b.op("MaxPool", [x], n_outputs=2, hint="maxpool_idx", **attrs)
    return [b.scatter_back(x, idx, g)]


def _ort_pool_of_ones(S: list[int], attrs: dict) -> np.ndarray:
    """ORT's AveragePool of a (1, 1, *S) ones tensor: the mean of ones per window, i.e. real elements/divisor."""
    import onnxruntime as ort
    from onnx import TensorProto

    node = helper.make_node("AveragePool", ["x"], ["y"], **attrs)
    g = helper.make_graph([node], "ones", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, *S])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19 if "dilations" in attrs else 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(["y"], {"x": np.ones([1, 1, *S], np.float32)})[0]


@vjp("AveragePool")
def average_pool(b: Builder, node: Node, gy):
    if _nearest(b, node):  # opt-in: Oramas et al.'s stride-1 + nearest-neighbour backward (end of file)
        return strided_nearest(b, node, gy, average_pool)
    x, g = node.inputs[0], gy[0]
    S = _spatial(b, node, x)
    n = len(S)
    a = node.attrs
    k = list(a["kernel_shape"])
    s = list(a.get("strides") or [1] * n)
    d = list(a.get("dilations") or [1] * n)
    pads = resolve_pads(dict(a, strides=s, dilations=d), S)
    attrs = _pool_attrs(a, n)
    # 1/divisor per output window, exactly as ORT divides: AveragePool(ones) / (number of real elements), with
    # AveragePool(ones) evaluated now by ORT itself (its output size under ceil_mode is ORT's, too).
    pooled_ones = _ort_pool_of_ones(S, dict(attrs, count_include_pad=int(a.get("count_include_pad", 0))))
    O = list(pooled_ones.shape[2:])
    counts = np.ones(O)
    for i in range(n):
        starts = np.arange(O[i]) * s[i] - pads[i]
        taps = starts[:, None] + np.arange(k[i])[None, :] * d[i]
        c = ((taps >= 0) & (taps < S[i])).sum(axis=1).astype(np.float64)
        counts = counts * c.reshape([-1 if j == i else 1 for j in range(n)])
    inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0).reshape([1, 1] + O)
    scale = b.const(pooled_ones.astype(np.float64) * inv, like=x)
    gs = b.op("Reshape", [b.mul(g, scale), b.ints([-1, 1] + O)])
    kernel = b.const(np.ones([1, 1] + k), like=x)
    gx = conv_transpose_back(b, gs, kernel, S, O, k, s, d, pads)
    return [b.op("Reshape", [gx, b.shape_tensor(x)])]


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
    if axes is None and _in(node, 1):
        raise b.unsupported(node, "axes computed at run time")
    out = _none(node)
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            out[0] = g
            return out
        axes = list(range(r))
    axes = sorted({_axis(int(v), r) for v in axes})
    if not int(node.attrs.get("keepdims", 1)):
        g = b.op("Unsqueeze", [g, b.ints(axes)])
    if node.op_type == "ReduceMean":
        g = b.op("Div", [g, b.count(x, axes, like=x)])
    out[0] = b.op("Expand", [g, b.shape_tensor(x)])
    return out


# ---------------------------------------------------------------------------------------------------------------
# Index maps


@vjp("Concat")
def concat(b: Builder, node: Node, gy):
    y, g = node.outputs[0], gy[0]
    r = b.rank(y)
    axis = _axis(int(node.attrs.get("axis", 0)), r)
    parts = [i for i in node.inputs if i]
    sizes = [b.shape(i)[axis] if b.shape(i) is not None else None for i in parts]
    out: list[str | None] = []
    if all(v is not None for v in sizes):
        pieces = b.op("Split", [g, b.ints(sizes)], n_outputs=len(parts), axis=axis) if len(parts) > 1 else [g]
        it = iter(pieces)
        for i in node.inputs:
            p = next(it) if i else None
            out.append(p if i and b.needs(i) else None)
        return out
    start: str = b.ints([0])
    for i in node.inputs:
        if not i:
            out.append(None)
            continue
        size = b.op("Gather", [b.shape_tensor(i), b.ints([axis])], axis=0)
        end = b.op("Add", [start, size])
        out.append(b.op("Slice", [g, start, end, b.ints([axis])]) if b.needs(i) else None)
        start = end
    return out


@vjp("Split")
def split(b: Builder, node: Node, gy):
    x = node.inputs[0]
    axis = _axis(int(node.attrs.get("axis", 0)), b.rank(x))
    parts = [gi if gi is not None else b.zeros_like(o) for o, gi in zip(node.outputs, gy, strict=True) if o]
    out = _none(node)
    out[0] = b.op("Concat", parts, axis=axis) if len(parts) > 1 else parts[0]
    return out


def _slice_params(node: Node):
    a = node.attrs
    starts, ends = a.get("starts"), a.get("ends")
    if starts is None or ends is None:
        return None
    axes = a.get("axes")
    if axes is None:
        if len(node.inputs) > 3 and node.inputs[3]:
            return None
        axes = list(range(len(starts)))
    steps = a.get("steps")
    if steps is None:
        if len(node.inputs) > 4 and node.inputs[4]:
            return None
        steps = [1] * len(starts)
    return [int(v) for v in starts], [int(v) for v in ends], [int(v) for v in axes], [int(v) for v in steps]


@vjp("Slice")
def slice_(b: Builder, node: Node, gy):
    x, g = node.inputs[0], gy[0]
    out = _none(node)
    params = _slice_params(node)
    xs = b.shape(x)
    if params is not None and xs is not None:
        starts, ends, axes, steps = params
        r = len(xs)
        axes = [_axis(v, r) for v in axes]
        if all(st == 1 for st in steps) and all(xs[ax] is not None for ax in axes):
            pads = [0] * (2 * r)
            for st, en, ax in zip(starts, ends, axes, strict=True):
                D = int(xs[ax])
                st = min(max(st + D if st < 0 else st, 0), D)
                en = min(max(en + D if en < 0 else en, 0), D)
                pads[ax] = st
                pads[ax + r] = D - max(en, st)
            out[0] = b.op("Pad", [g, b.ints(pads)]) if any(pads) else g
            return out
    if node.op_type == "Slice" and b.opset < 10:
        raise b.unsupported(node, "Slice-1 with dynamic parameters")
    mapped = b.op("Slice", [b.index_grid(x)] + [i for i in node.inputs[1:]])
    out[0] = b.scatter_back(x, mapped, g)
    return out


@vjp("Pad")
def pad(b: Builder, node: Node, gy):
    x, g = node.inputs[0], gy[0]
    a = node.attrs
    out = _none(node)
    r = b.rank(x)
    mode = a.get("mode", "constant")
    pads = a.get("pads")
    dynamic = pads is None or r is None or (len(node.inputs) > 3 and node.inputs[3] and "axes" not in a)
    if mode == "constant" and not dynamic:
        pads = [int(v) for v in pads]
        axes = [_axis(int(v), r) for v in a.get("axes", range(r))]
        k = len(axes)
        pb, pe = [0] * r, [0] * r
        for j, ax in enumerate(axes):
            pb[ax], pe[ax] = pads[j], pads[j + k]
        gg = g
        neg = [max(0, -v) for v in pb] + [max(0, -v) for v in pe]
        if any(neg):  # the forward cropped: the cropped part gets zero gradient
            gg = b.op("Pad", [gg, b.ints(neg)])
        if any(v > 0 for v in pb + pe):
            ends = [-v if v > 0 else INT64_MAX for v in pe]
            gg = b.op("Slice", [gg, b.ints([max(v, 0) for v in pb]), b.ints(ends), b.ints(range(r))])
        out[0] = gg
        return out
    # Index trick: pad a grid of (flat index + 1); padded positions read 0 (constant mode) and land in slot 0.
    ins = list(node.inputs) + [""] * (4 - len(node.inputs))
    if b.opset < 11:
        raise b.unsupported(node, "Pad-2 with this mode")
    grid = b.index_grid(x, offset=1)
    pad_ins = [grid, ins[1], b.const(np.array(0, np.int64)) if mode == "constant" else "", ins[3]]
    while pad_ins and not pad_ins[-1]:
        pad_ins.pop()
    mapped = b.op("Pad", pad_ins, mode=mode)
    out[0] = b.scatter_back(x, mapped, g, offset=1)
    return out


@vjp("Gather")
def gather(b: Builder, node: Node, gy):
    x, idx = node.inputs
    out = _none(node)
    mapped = b.op("Gather", [b.index_grid(x), idx], axis=int(node.attrs.get("axis", 0)))
    out[0] = b.scatter_back(x, mapped, gy[0])
    return out


@vjp("LSTM")
def lstm(b: Builder, node: Node, gy):  # pragma: no cover - LSTMs are lowered before the backward pass
    raise b.unsupported(node, "LSTM should have been lowered to primitives first")


# ---------------------------------------------------------------------------------------------------------------
# Strided ops, "nearest" variant (build_backward(..., strided="nearest")); the default ("exact") never comes here.
#
# Oramas, Wang & Tuytelaars (ICLR 2019): the backward pass of a strided Conv/MaxPool/AveragePool spreads the signal
# with zeros between its elements, which leaves a grid of the stride's period in deconvnet/guided-backprop images.
# Their fix runs the backward of the op with its stride set to 1 on the signal resampled by nearest neighbour.
# With z = op₁(x) the same op at stride 1 (same window, pads) and the forward y[o] = z[s·o]:
#   exact:    dx = op₁ᵀ(D_sᵀ g),  (D_sᵀ g)[i] = g[i/s] if s divides i, else 0     (zero insertion)
#   nearest:  dx = op₁ᵀ(U_s g),   (U_s g)[i] = g[⌊i/s⌋], i = 0 … O₁−1             (nearest-neighbour resampling)
# per spatial axis, O₁ the stride-1 output size. docs/views.md has the reasoning; not a gradient any more.


def _nearest(b: Builder, node: Node) -> bool:
    return getattr(b, "strided", "exact") == "nearest" and any(int(v) > 1 for v in node.attrs.get("strides") or [])


def strided_nearest(b: Builder, node: Node, gy, rule):
    """Backward of a strided Conv/MaxPool/AveragePool as its stride-1 twin applied to the nearest-neighbour
    upsampled gradient (``rule`` is the op's ordinary VJP rule, called on the twin)."""
    x, g = node.inputs[0], gy[0]
    S = _spatial(b, node, x)
    n = len(S)
    a = node.attrs
    ws = b.shape(node.inputs[1]) if node.op_type == "Conv" else None
    k = list(a.get("kernel_shape") or (list(ws[2:]) if ws else []))
    if len(k) != n or any(v is None for v in k):
        raise b.unsupported(node, "unknown kernel shape")
    s, d = list(a.get("strides") or [1] * n), list(a.get("dilations") or [1] * n)
    pads = resolve_pads(dict(a, kernel_shape=k, strides=s, dilations=d), S)
    ys = b.shape(node.outputs[0])
    if ys is not None and len(ys) == n + 2 and all(v is not None for v in ys[2:]):
        O = [int(v) for v in ys[2:]]
    else:
        O = _out_size(S, k, s, d, pads)
    # The stride-1 twin keeps the window and the begin pads; its end pads grow where ceil_mode made the strided op
    # read past them, so that every strided window o is the twin's window s·o.
    ends = [max(pads[n + i], s[i] * (O[i] - 1) + (k[i] - 1) * d[i] + 1 - S[i] - pads[i]) for i in range(n)]
    O1 = [S[i] + pads[i] + ends[i] - (k[i] - 1) * d[i] for i in range(n)]
    attrs = dict(a, kernel_shape=k, strides=[1] * n, dilations=d, pads=list(pads[:n]) + ends, auto_pad="NOTSET")
    if node.op_type != "Conv":
        attrs["ceil_mode"] = 0
    twin = Node(name=node.name, op_type=node.op_type, inputs=node.inputs, outputs=node.outputs[:1], attrs=attrs,
                domain=node.domain)
    u = nearest_resample(b, g, s, O, O1)
    out = list(rule(b, twin, [u]) or [])
    if node.op_type == "Conv" and len(out) > 2 and out[2] is not None:  # the bias keeps its true gradient
        r = b.rank(node.outputs[0]) or n + 2
        out[2] = b.op("ReduceSum", [g, b.ints([0] + list(range(2, r)))], keepdims=0)
    return out


def nearest_resample(b: Builder, g: str, s: list[int], O: list[int], O1: list[int]) -> str:
    """U_s: ``g`` (spatial size O) upsampled by the integer factors ``s`` with nearest neighbour — out[i] = g[⌊i/s⌋]
    (``Resize`` nearest, floor, asymmetric) — and cropped to O1 (s·O ≥ O1 always)."""
    n = len(s)
    scales = b.const(np.array([1.0, 1.0] + [float(v) for v in s], np.float32), dtype=np.float32)
    u = b.op("Resize", [g, "", scales], mode="nearest", nearest_mode="floor",
             coordinate_transformation_mode="asymmetric", hint="nearest")
    if any(s[i] * O[i] != O1[i] for i in range(n)):
        u = b.op("Slice", [u, b.ints([0] * n), b.ints(O1), b.ints(range(2, 2 + n))], hint="nearest_crop")
    return u
