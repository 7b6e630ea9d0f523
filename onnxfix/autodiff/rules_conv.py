"""VJP rules of convolution and pooling: Conv, ConvTranspose, MaxPool, AveragePool.

* **Conv** — input gradient by a ``Conv`` with the spatially flipped, per-group channel-swapped kernel where every
  stride is 1 (15× faster than a grouped ``ConvTranspose`` for depthwise convs); a ``MatMul`` for 1×1 pointwise
  convs; zeros inserted between gradient elements then the flipped-kernel ``Conv`` for strided depthwise convs;
  ``ConvTranspose`` with the end pads/``output_padding`` that give back the input size exactly for the rest.
  Bias gradient by ``ReduceSum``.
* **ConvTranspose** — its adjoint is a ``Conv`` with the same weight, strides, dilations, pads and groups.
* **MaxPool** — recompute with the ``Indices`` output and ``ScatterElements(reduction="add")``.
* **AveragePool** — ``ConvTranspose`` of the gradient (channels folded into the batch) with a ones kernel, scaled
  per output window by 1/divisor, the divisor read from ORT's own ``AveragePool`` of ones (so ``pads``,
  ``ceil_mode`` and ``count_include_pad`` are honoured exactly as ORT computes the forward).

The strided "nearest" variant (Oramas et al.) is an override table in modes.py.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from onnxfix.autodiff.emitter import Builder
from onnxfix.autodiff.registry import vjp
from onnxfix.autodiff.ruletools import in_, none
from onnxfix.graph import Node, resolve_pads
from onnxfix.sessions import make_session


def spatial(b: Builder, node: Node, name: str) -> list[int]:
    s = b.shape(name)
    if s is None or any(d is None for d in s[2:]):
        raise b.unsupported(node, f"the spatial size of {name!r} is not static")
    return [int(d) for d in s[2:]]


def out_size(S: list[int], k, s, d, pads) -> list[int]:
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


def _window_geometry(b: Builder, node: Node, x: str, w: str) -> tuple[list[int], list[int], list[int], list[int]]:
    """(spatial size of x, kernel, strides, dilations) of a Conv / ConvTranspose, defaults filled in."""
    a = node.attrs
    S = spatial(b, node, x)
    ws = b.shape(w)
    k = a.get("kernel_shape") or (list(ws[2:]) if ws else None)
    if k is None or any(v is None for v in k):
        raise b.unsupported(node, "unknown kernel shape")
    n = len(S)
    return S, k, list(a.get("strides") or [1] * n), list(a.get("dilations") or [1] * n)


def _bias_grad(b: Builder, node: Node, g):
    """The gradient of a Conv / ConvTranspose bias: g summed over the batch and spatial axes."""
    r = b.rank(node.outputs[0]) or 4
    return b.op("ReduceSum", [g, b.ints([0] + list(range(2, r)))], keepdims=0)


@vjp("Conv")
def conv(b: Builder, node: Node, gy):
    x, w = node.inputs[0], node.inputs[1]
    bias = in_(node, 2)
    g = gy[0]
    a = node.attrs
    out = none(node)
    if b.needs(w):
        raise b.unsupported(node, "gradient with respect to a weight computed at run time")
    if b.needs(x):
        S, k, s, d = _window_geometry(b, node, x, w)
        attrs = dict(a, kernel_shape=k, strides=s, dilations=d)
        pads = resolve_pads(attrs, S)
        O = out_size(S, k, s, d, pads)
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
        out[2] = _bias_grad(b, node, g)
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
    from onnx import TensorProto

    node = helper.make_node("AveragePool", ["x"], ["y"], **attrs)
    g = helper.make_graph([node], "ones", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, *S])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19 if "dilations" in attrs else 17)])
    m.ir_version = 8
    sess = make_session(m)
    return sess.run(["y"], {"x": np.ones([1, 1, *S], np.float32)})[0]


@vjp("AveragePool")
def average_pool(b: Builder, node: Node, gy):
    x, g = node.inputs[0], gy[0]
    S = spatial(b, node, x)
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


def conv_transpose_pads(b: Builder, node: Node, S: list[int], k: list[int], s: list[int], d: list[int]
                        ) -> tuple[list[int], list[int]]:
    """(begin + end pads, output_padding) of a ConvTranspose, with ``output_shape``/``auto_pad`` resolved as the
    ONNX spec says: total = s·(I − 1) + output_padding + (k − 1)·d + 1 − output_shape, SAME_UPPER puts the odd
    pixel at the end."""
    a = node.attrs
    n = len(S)
    opad = [int(v) for v in (a.get("output_padding") or [0] * n)]
    auto = a.get("auto_pad", "NOTSET") or "NOTSET"
    out_shape = a.get("output_shape")
    if out_shape is None and auto in ("NOTSET", "VALID"):
        return ([0] * (2 * n) if auto == "VALID" else [int(v) for v in (a.get("pads") or [0] * (2 * n))]), opad
    if out_shape is None:
        out_shape = [S[i] * s[i] for i in range(n)]
    out_shape = [int(v) for v in list(out_shape)[-n:]]
    begins, ends = [], []
    for i in range(n):
        total = s[i] * (S[i] - 1) + opad[i] + (k[i] - 1) * d[i] + 1 - out_shape[i]
        if total < 0:  # the output is larger than the full result: ONNX pads with output_padding at the end
            opad[i] += -total
            total = 0
        if auto == "SAME_UPPER":
            begins.append(total // 2)
            ends.append(total - total // 2)
        else:
            begins.append(total - total // 2)
            ends.append(total // 2)
    return begins + ends, opad


@vjp("ConvTranspose")
def conv_transpose(b: Builder, node: Node, gy):
    """The adjoint of a transposed convolution is the convolution with the same weight, strides, dilations, pads
    and groups (no flip: ConvTranspose scatters x[i]·w[k] to s·i + d·k − pad, the Conv gathers from there)."""
    x, w = node.inputs[0], node.inputs[1]
    bias = in_(node, 2)
    g = gy[0]
    a = node.attrs
    out = none(node)
    if b.needs(w):
        raise b.unsupported(node, "gradient with respect to a weight computed at run time")
    if b.needs(x):
        S, k, s, d = _window_geometry(b, node, x, w)
        pads, _ = conv_transpose_pads(b, node, S, list(k), s, d)
        group = int(a.get("group", 1))
        out[0] = b.op("Conv", [g, w], pads=pads, dilations=d, strides=s, group=group if group != 1 else None,
                      kernel_shape=list(k), hint="convT_back")
    if bias and b.needs(bias):
        out[2] = _bias_grad(b, node, g)
    return out
