"""VJP rule of Resize (and of Upsample, which the opset upgrade turns into Resize).

Every mode of Resize (nearest with each ``nearest_mode``, linear, cubic, with any
``coordinate_transformation_mode``, ``exclude_outside``, ``antialias``, ``tf_crop_and_resize`` with its
extrapolation) is a linear map that acts on each axis separately: y = R_H · x · R_Wᵀ per image, R_a the
(out × in) interpolation matrix of axis a. Its adjoint is gx = R_Hᵀ · g · R_W. The rule does not re-derive R from
the spec: it asks ONNX Runtime at build time, running the same Resize node on the identity matrix (one axis at a
time; minus the response to zeros, which removes the extrapolation constant), so the gradient is the exact adjoint
of what ORT computes forward — the AveragePool rule's approach. Then one ``MatMul`` per resized axis.

Needs the input's size and the scales/sizes at build time (a model with symbolic H/W gets them per input shape:
``GradientProgram`` builds one variant per shape). ``keep_aspect_ratio_policy`` other than ``stretch`` is refused.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnxfix.autodiff.emitter import Builder
from onnxfix.autodiff.registry import vjp
from onnxfix.autodiff.ruletools import in_, none
from onnxfix.graph import Node
from onnxfix.sessions import make_session

_PROBE_ATTRS = ("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a", "exclude_outside",
                "extrapolation_value", "antialias")


def _resize_params(b: Builder, node: Node, S: list[int]) -> tuple[list[float] | None, list[int], list[list[float]]]:
    """(scales or None when sizes drive it, output sizes, roi [start, end] per axis) over all axes of x."""
    r = len(S)
    a = node.attrs
    axes = [int(v) % r for v in (a.get("axes") or range(r))]
    roi_name, scales_name, sizes_name = in_(node, 1), in_(node, 2), in_(node, 3)
    roi = [[0.0, 1.0] for _ in range(r)]
    if roi_name and str(a.get("coordinate_transformation_mode", "half_pixel")) == "tf_crop_and_resize":
        if not b.is_const(roi_name):
            raise b.unsupported(node, "roi computed at run time")
        rv = b.value(roi_name).astype(np.float64).reshape(-1)
        if rv.size:
            k = rv.size // 2
            for j, ax in enumerate(axes[:k]):
                roi[ax] = [float(rv[j]), float(rv[j + k])]
    scales_v = b.value(scales_name).reshape(-1) if scales_name and b.is_const(scales_name) else None
    sizes_v = b.value(sizes_name).reshape(-1) if sizes_name and b.is_const(sizes_name) else None
    if scales_v is not None and scales_v.size:
        scales = [1.0] * r
        for j, ax in enumerate(axes):
            scales[ax] = float(np.float32(scales_v[j]))
        O = [int(np.floor(S[i] * (roi[i][1] - roi[i][0]) * scales[i] + 1e-9)) for i in range(r)]
        ys = b.static_shape(node.outputs[0])
        if ys is not None and len(ys) == r:
            O = list(ys)
        return scales, O, roi
    if sizes_v is not None and sizes_v.size:
        policy = str(a.get("keep_aspect_ratio_policy", "stretch"))
        if policy != "stretch":
            raise b.unsupported(node, f"keep_aspect_ratio_policy={policy!r}")
        O = list(S)
        for j, ax in enumerate(axes):
            O[ax] = int(sizes_v[j])
        return None, O, roi
    raise b.unsupported(node, "scales/sizes computed at run time (models with symbolic H/W are built per input "
                              "shape; here they are not constant even then)")


def _probe(b: Builder, node: Node, n_in: int, scale: float | None, n_out: int, roi: list[float]) -> np.ndarray:
    """R (n_out × n_in) of one axis: ORT's Resize of the identity (rows = basis vectors) minus that of zeros."""

    attrs = {k: node.attrs[k] for k in _PROBE_ATTRS if k in node.attrs}
    inits = [helper.make_tensor("roi", TensorProto.FLOAT, [4], [0.0, roi[0], 1.0, roi[1]])]
    if scale is not None:
        inits.append(helper.make_tensor("scales", TensorProto.FLOAT, [2], [1.0, scale]))
        ins = ["x", "roi", "scales"]
    else:
        inits.append(helper.make_tensor("sizes", TensorProto.INT64, [2], [n_in, n_out]))
        ins = ["x", "roi", "", "sizes"]
    res = helper.make_node("Resize", ins, ["y"], **attrs)
    g = helper.make_graph([res], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n_in, n_in])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    opset = max(13, min(b.opset, 21))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset <= 17 else (9 if opset <= 20 else 10)
    try:
        sess = make_session(m)
        eye = sess.run(["y"], {"x": np.eye(n_in, dtype=np.float32)})[0]
        zero = sess.run(["y"], {"x": np.zeros((n_in, n_in), np.float32)})[0]
    except Exception as exc:  # noqa: BLE001 - ORT raises many types
        raise b.unsupported(node, f"ONNX Runtime cannot resize one axis this way: {str(exc).splitlines()[0][:200]}"
                            ) from None
    if eye.shape != (n_in, n_out):
        raise b.unsupported(node, f"per-axis probe gave {eye.shape}, expected {(n_in, n_out)}")
    return (eye.astype(np.float64) - zero.astype(np.float64)).T  # (n_out, n_in)


@vjp("Resize")
def resize(b: Builder, node: Node, gy):
    x, g = node.inputs[0], gy[0]
    out = none(node)
    S = b.static_shape(x)
    if S is None:
        raise b.unsupported(node, "the input size is not static (symbolic H/W are resolved per input shape)")
    S = list(S)
    mode = str(node.attrs.get("mode", "nearest"))
    if mode not in ("nearest", "linear", "cubic"):
        raise b.unsupported(node, f"mode {mode!r}")
    scales, O, roi = _resize_params(b, node, S)
    ctm = str(node.attrs.get("coordinate_transformation_mode", "half_pixel"))
    gg = g
    r = len(S)
    for ax in range(r):
        identity = O[ax] == S[ax] and (scales is None or scales[ax] == 1.0) and ctm != "tf_crop_and_resize"
        if identity:
            continue
        R = _probe(b, node, S[ax], None if scales is None else scales[ax], O[ax], roi[ax])
        if ax == r - 1:
            gg = b.op("MatMul", [gg, b.const(R, like=x)], hint="resize_back")
        elif ax == r - 2:
            gg = b.op("MatMul", [b.const(np.ascontiguousarray(R.T), like=x), gg], hint="resize_back")
        else:
            perm = list(range(r))
            perm[ax], perm[-1] = perm[-1], perm[ax]
            t = b.op("Transpose", [gg], perm=perm)
            t = b.op("MatMul", [t, b.const(R, like=x)], hint="resize_back")
            gg = b.op("Transpose", [t], perm=perm)
    out[0] = gg
    return out
