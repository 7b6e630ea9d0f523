"""Fixation rules for the ops detectors, segmenters and OCR models add (issue 11): Resize/Upsample, ConvTranspose,
Pow/Floor/Sqrt-like elementwise ops, Min, Where, Expand, Tile, DepthToSpace/SpaceToDepth.

The CNN Fixations rule of a linear op with a weight window (Mopuri et al., §3.2, Algorithm 2 for convolutions): an
output location backtracks to the input location that contributes most to it (weight × activation). A Resize is
linear in its input with fixed weights per axis: its weights are read from ONNX Runtime itself (the node's own
attributes applied to the identity matrix, one axis at a time — every mode and coordinate transformation), the
candidates of an output element are the inputs with a non-zero weight, and the winner has the largest weight ×
activation (nearest: the one source). ConvTranspose is the same with its filter. Index-only ops (Expand, Tile,
DepthToSpace, SpaceToDepth) map locations exactly; Where follows the branch the condition chose.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
from onnx import TensorProto, helper

from onnxfix.fixations.registry import RULES, Rule, register
from onnxfix.fixations.rules import PassThrough, _unsupported, broadcast_to_input

_RESIZE_ATTRS = ("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a", "exclude_outside",
                 "extrapolation_value")


@functools.lru_cache(maxsize=256)
def resize_matrix(attrs: tuple, n_in: int, n_out: int, scale: float | None, opset: int) -> np.ndarray:
    """R (n_out × n_in): one axis of Resize with these attributes, read from ONNX Runtime (identity minus zeros)."""

    kw = dict(attrs)
    if scale is not None:
        inits = [helper.make_tensor("scales", TensorProto.FLOAT, [2], [1.0, scale])]
        ins = ["x", "", "scales"]
    else:
        inits = [helper.make_tensor("sizes", TensorProto.INT64, [2], [n_in, n_out])]
        ins = ["x", "", "", "sizes"]
    node = helper.make_node("Resize", ins, ["y"], **kw)
    g = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n_in, n_in])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    op = max(13, min(opset, 19))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", op)])
    m.ir_version = 8 if op <= 17 else 9
    from onnxfix.sessions import make_session

    sess = make_session(m)
    eye = sess.run(["y"], {"x": np.eye(n_in, dtype=np.float32)})[0]
    zero = sess.run(["y"], {"x": np.zeros((n_in, n_in), np.float32)})[0]
    if eye.shape != (n_in, n_out):
        raise ValueError(f"probe gave {eye.shape}, expected {(n_in, n_out)}")
    return (eye.astype(np.float64) - zero.astype(np.float64)).T


def _scales(node, ctx, rank: int) -> list[float] | None:
    if node.op_type == "Upsample":
        v = node.attrs.get("scales")
        if v is None and len(node.inputs) > 1 and node.inputs[1]:
            v = ctx.value(node.inputs[1])
        return None if v is None else [float(s) for s in np.asarray(v).reshape(-1)]
    for key, idx in (("scales", 2),):
        if key in node.attrs and node.attrs[key] is not None and np.asarray(node.attrs[key]).size:
            return [float(s) for s in np.asarray(node.attrs[key]).reshape(-1)]
        if idx < len(node.inputs) and node.inputs[idx]:
            v = np.asarray(ctx.value(node.inputs[idx]), np.float64).reshape(-1)
            if v.size:
                axes = node.attrs.get("axes")
                if axes is not None and len(axes) != rank:
                    full = [1.0] * rank
                    for a, s in zip(axes, v, strict=True):
                        full[int(a) % rank] = float(s)
                    return full
                return [float(s) for s in v]
    return None


@register("Resize", "Upsample")
class ResizeRule(Rule):
    """Each output location → the input location with the largest weight × activation among its sources."""

    def backtrack(self, node, ctx, out):
        xn, yn = node.inputs[0], node.outputs[0]
        xs, ys = ctx.value(xn).shape, ctx.value(yn).shape
        mode = str(node.attrs.get("mode", "nearest"))
        ctm = str(node.attrs.get("coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize"
                                 else "asymmetric"))
        if ctm == "tf_crop_and_resize":
            raise _unsupported(node, "coordinate_transformation_mode tf_crop_and_resize")
        attrs = [(k, node.attrs[k]) for k in _RESIZE_ATTRS if k in node.attrs]
        if node.op_type == "Upsample":
            attrs = [("mode", "nearest" if mode == "nearest" else "linear"),
                     ("coordinate_transformation_mode", "asymmetric")]
            if mode == "nearest":
                attrs.append(("nearest_mode", "floor"))
        attrs = tuple((k, v.decode() if isinstance(v, bytes) else v) for k, v in attrs)
        scales = _scales(node, ctx, len(xs))
        mats: dict[int, np.ndarray] = {}
        for ax in range(len(xs)):
            if xs[ax] == ys[ax] and (scales is None or scales[ax] == 1.0):
                continue
            s = None if scales is None else float(np.float32(scales[ax]))
            try:
                mats[ax] = resize_matrix(attrs, int(xs[ax]), int(ys[ax]), s, ctx.graph.opset)
            except Exception as exc:  # noqa: BLE001 - ORT raises many types
                raise _unsupported(node, f"cannot read its weights from ONNX Runtime: {str(exc)[:120]}") from None
        locs = out[yn]
        if not mats:
            return {xn: locs.copy()}
        nearest = mode == "nearest"
        x = None if nearest else np.asarray(ctx.value(xn))
        res = locs.copy()
        axes = sorted(mats)
        for k, row in enumerate(locs):
            cands = []
            for ax in axes:
                r = mats[ax][row[ax]]
                nz = np.flatnonzero(r)
                cands.append([(int(i), float(r[i])) for i in nz] or [(int(np.argmax(np.abs(r))), 1.0)])
            if nearest or all(len(c) == 1 for c in cands):
                best = [max(c, key=lambda t: abs(t[1]))[0] for c in cands]
            else:
                best, top = None, -np.inf
                for combo in itertools.product(*cands):
                    idx = list(row)
                    w = 1.0
                    for ax, (i, wi) in zip(axes, combo, strict=True):
                        idx[ax] = i
                        w *= wi
                    v = w * float(x[tuple(idx)])  # type: ignore[index]
                    if v > top:
                        best, top = [i for i, _ in combo], v
            for ax, i in zip(axes, best, strict=True):  # type: ignore[arg-type]
                res[k, ax] = i
        return {xn: res}


@register("ConvTranspose")
class ConvTransposeRule(Rule):
    """Algorithm 2 for a transposed convolution, as for a Conv (a transposed convolution is one, on the
    stride-dilated input): the input channel of the output's group with the largest sum of activation × filter
    weight over the input positions that reach the output location, then that channel's position with the largest
    contribution (first on ties, positions row-major); any stride, pad, output padding, dilation, group."""

    def backtrack(self, node, ctx, out):
        xn, wn = node.inputs[0], node.inputs[1]
        if ctx.is_data(wn):
            raise _unsupported(node, "the filter is computed at run time")
        x = np.asarray(ctx.value(xn), np.float64)
        w = np.asarray(ctx.value(wn), np.float64)
        if x.ndim != 4:
            raise _unsupported(node, f"{x.ndim - 2}-D spatial input")
        a = node.attrs
        g = int(a.get("group", 1))
        st = list(a.get("strides") or [1, 1])
        dl = list(a.get("dilations") or [1, 1])
        ks = w.shape[2:]
        pads = a.get("pads")
        ys = ctx.value(node.outputs[0]).shape
        # output_shape makes the pads (ONNX spec: "pads values are ignored"; the graph fills zeros in for them)
        if pads is None or a.get("output_shape") is not None or \
                str(a.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID", ""):
            op = list(a.get("output_padding") or [0, 0])
            total = [st[i] * (x.shape[2 + i] - 1) + op[i] + ((ks[i] - 1) * dl[i] + 1) - ys[2 + i] for i in range(2)]
            upper = str(a.get("auto_pad", "NOTSET")) == "SAME_UPPER"
            pads = [t // 2 if upper else t - t // 2 for t in total] + [0, 0]
        pt, pl = int(pads[0]), int(pads[1])
        cin, cout_g = w.shape[0], w.shape[1]
        cin_g = cin // g
        res = []
        for row in out[node.outputs[0]]:
            n, co, oy, ox = (int(v) for v in row)
            grp, col = co // cout_g, co % cout_g
            chans = np.arange(grp * cin_g, (grp + 1) * cin_g)
            taps = []  # (iy, ix, ky, kx): the input positions that reach this output, row-major
            for ky in range(ks[0]):
                ny = oy + pt - ky * dl[0]
                if ny % st[0] or not 0 <= ny // st[0] < x.shape[2]:
                    continue
                for kx in range(ks[1]):
                    nx_ = ox + pl - kx * dl[1]
                    if nx_ % st[1] or not 0 <= nx_ // st[1] < x.shape[3]:
                        continue
                    taps.append((ny // st[0], nx_ // st[1], ky, kx))
            if not taps:  # only padding reaches this output
                continue
            taps.sort()
            iy, ix, ky, kx = (np.array(t) for t in zip(*taps, strict=True))
            # contributions [channel, tap]; Algorithm 2: the channel with the largest sum, then its largest tap
            c = x[n][np.ix_(chans, iy, ix)].diagonal(axis1=1, axis2=2) * w[chans, col][:, ky, kx]
            j = int(np.argmax(c.sum(axis=1)))
            t = int(np.argmax(c[j]))
            res.append((n, int(chans[j]), int(iy[t]), int(ix[t])))
        return {xn: np.array(res, np.int64).reshape(-1, 4)}


_ELEMENTWISE = ("Pow", "Floor", "Ceil", "Round", "Sqrt", "Reciprocal", "Sign", "Log", "Sin", "Cos", "Shrink")
register(*[op for op in _ELEMENTWISE if op not in RULES])(type("ElementwiseMore", (PassThrough,), {
    "__doc__": "Elementwise ops of one data input (the exponent of Pow a constant): the location is kept."}))

if "Min" not in RULES and "Max" in RULES:
    # Max's rule (rules.AddRule) takes the input with the largest sign × value: Min is the smallest
    register("Min")(type("MinRule", (type(RULES["Max"]),), {
        "__doc__": "Min: the data input with the smallest value at the location (ties: the first).",
        "sign": (-1.0,)}))


@register("Where")
class WhereRule(Rule):
    """The branch the condition chose at each location keeps it."""

    def backtrack(self, node, ctx, out):
        cn, an, bn = node.inputs[:3]
        locs = out[node.outputs[0]]
        ys = ctx.value(node.outputs[0]).shape
        cond = np.broadcast_to(np.asarray(ctx.value(cn)).astype(bool), ys)[tuple(locs.T)]
        res = {}
        for name, pick in ((an, cond), (bn, ~cond)):
            if ctx.is_data(name) and pick.any():
                res[name] = broadcast_to_input(locs[pick], ctx.value(name).shape, ys)
        return res


@register("Expand")
class ExpandRule(Rule):
    def backtrack(self, node, ctx, out):
        xn = node.inputs[0]
        return {xn: broadcast_to_input(out[node.outputs[0]], ctx.value(xn).shape,
                                       ctx.value(node.outputs[0]).shape)}


@register("Tile")
class TileRule(Rule):
    def backtrack(self, node, ctx, out):
        xn = node.inputs[0]
        xs = ctx.value(xn).shape
        return {xn: out[node.outputs[0]] % np.array(xs, np.int64)}


@register("DepthToSpace", "SpaceToDepth")
class DepthSpaceRule(Rule):
    """Exact index map (DCR and CRD modes)."""

    def backtrack(self, node, ctx, out):
        xn = node.inputs[0]
        xs = ctx.value(xn).shape
        b = int(node.attrs.get("blocksize"))
        locs = out[node.outputs[0]]
        n, c, y, x = (locs[:, i] for i in range(4))
        if node.op_type == "DepthToSpace":
            C = xs[1] // (b * b)
            by, bx = y % b, x % b
            ci = (by * b + bx) * C + c if str(node.attrs.get("mode", "DCR")) == "DCR" else c * b * b + by * b + bx
            return {xn: np.stack([n, ci, y // b, x // b], axis=1).astype(np.int64)}
        C = xs[1]
        blk, ci = c // C, c % C
        return {xn: np.stack([n, ci, y * b + blk // b, x * b + blk % b], axis=1).astype(np.int64)}


__all__ = ["ConvTransposeRule", "DepthSpaceRule", "ExpandRule", "ResizeRule", "TileRule", "WhereRule",
           "resize_matrix"]
