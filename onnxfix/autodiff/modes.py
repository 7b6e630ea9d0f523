"""The built-in override tables (modes), layered over the base rules by the build's rule stack (registry.py).

ReLU modes — applied to ``Relu`` and to ``Clip`` with ``min == 0`` (ReLU6); every other op keeps its true
gradient, and a non-ReLU ``Clip`` defers to the base rule:

=============  ===========================  ===============================
mode           Relu                         Clip(0, max)
=============  ===========================  ===============================
gradient       g·[y > 0] (base rule)        g·[0 < y < max] (base rule)
guided         g·[y > 0]·[g > 0]            g·[0 < y < max]·[g > 0]
deconvnet      g·[g > 0]                    g·[g > 0]
=============  ===========================  ===============================

(Springenberg et al. 2015, §3.4; Zeiler & Fergus 2014, §2.1; Captum's definitions: ``relu(grad_input)`` /
``relu(grad_output)`` from a backward hook.)

Strided "nearest" (``strided="nearest"``), Oramas, Wang & Tuytelaars (ICLR 2019): the backward pass of a strided
Conv/MaxPool/AveragePool spreads the signal with zeros between its elements, which leaves a grid of the stride's
period in deconvnet/guided-backprop images. Their fix runs the backward of the op with its stride set to 1 on the
signal resampled by nearest neighbour. With z = op₁(x) the same op at stride 1 (same window, pads) and the forward
y[o] = z[s·o]:

    exact:    dx = op₁ᵀ(D_sᵀ g),  (D_sᵀ g)[i] = g[i/s] if s divides i, else 0     (zero insertion)
    nearest:  dx = op₁ᵀ(U_s g),   (U_s g)[i] = g[⌊i/s⌋], i = 0 … O₁−1             (nearest-neighbour resampling)

per spatial axis, O₁ the stride-1 output size. docs/views.md has the reasoning; not a gradient any more.

LRP composites (rules_lrp.py, docs/lrp.md) are override tables too, filed per set of parameters by
``rules_lrp.lrp_mode`` (a mode name such as ``lrp:epsilon-plus:eps=1e-06:...``) rather than at import.
"""
from __future__ import annotations

import numpy as np

from onnxfix.autodiff import rules_lrp  # noqa: F401 - the LRP composites (filed by rules_lrp.lrp_mode)
from onnxfix.autodiff.emitter import Builder
from onnxfix.autodiff.registry import override
from onnxfix.autodiff.rules_conv import out_size, spatial
from onnxfix.autodiff.rules_elementwise import clip_mask, relu_mask
from onnxfix.autodiff.ruletools import none, where
from onnxfix.graph import Node, resolve_pads

# ---------------------------------------------------------------------------------------------------------------
# guided backpropagation and deconvnet


@override("guided", "Relu")
def guided_relu(b: Builder, node: Node, gy):
    return [where(b, relu_mask(b, node), b.op("Relu", [gy[0]]), like=node.outputs[0])]


@override("guided", "Clip")
def guided_clip(b: Builder, node: Node, gy):
    mask, relu_like = clip_mask(b, node)
    if not relu_like:
        return b.defer(node, gy)
    out = none(node)
    g = b.op("Relu", [gy[0]])
    out[0] = where(b, mask, g, like=node.outputs[0]) if mask is not None else g
    return out


@override("deconvnet", "Relu")
def deconvnet_relu(b: Builder, node: Node, gy):
    return [b.op("Relu", [gy[0]])]


@override("deconvnet", "Clip")
def deconvnet_clip(b: Builder, node: Node, gy):
    if not clip_is_relu(b, node):
        return b.defer(node, gy)
    out = none(node)
    out[0] = b.op("Relu", [gy[0]])
    return out


def clip_is_relu(b: Builder, node: Node) -> bool:
    """Whether a Clip's lower bound is the constant 0 (a ReLU6-like clip)."""
    name = node.inputs[1] if len(node.inputs) > 1 else ""
    if name and not b.is_const(name):
        return False
    return node.attrs.get("min") == 0.0


# ---------------------------------------------------------------------------------------------------------------
# strided ops, "nearest" variant


def strided_nearest(b: Builder, node: Node, gy, rule=None):
    """Backward of a strided Conv/MaxPool/AveragePool as its stride-1 twin applied to the nearest-neighbour
    upsampled gradient (the twin goes to the rule below this table, ``b.defer``; or to ``rule`` if given).
    Unstrided nodes go straight to the rule below."""
    if not any(int(v) > 1 for v in node.attrs.get("strides") or []):
        return rule(b, node, gy) if rule is not None else b.defer(node, gy)
    x, g = node.inputs[0], gy[0]
    S = spatial(b, node, x)
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
        O = out_size(S, k, s, d, pads)
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
    out = list((rule(b, twin, [u]) if rule is not None else b.defer(twin, [u])) or [])
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


@override("nearest", "Conv", "MaxPool", "AveragePool", strided=True)
def strided_nearest_rule(b: Builder, node: Node, gy):
    return strided_nearest(b, node, gy)
