"""VJP rules of the index maps: identity-like ops, reshapes, transposes, Concat/Split, Slice/Pad/Gather, Expand,
Tile, DepthToSpace/SpaceToDepth.

``Pad``/``Slice`` where they are the exact inverse, otherwise the *index trick*: run the same op on a grid of flat
indices and scatter-add the gradient back (``Builder.index_grid``/``scatter_back``).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from onnxfix.autodiff.emitter import INT64_MAX, Builder
from onnxfix.autodiff.registry import vjp
from onnxfix.autodiff.ruletools import axis_, none
from onnxfix.graph import Node


@vjp("Identity", "Dropout")
def identity(b: Builder, node: Node, gy):
    out = none(node)
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
    out = none(node)
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


@vjp("Expand")
def expand(b: Builder, node: Node, gy):
    return [b.unbroadcast(gy[0], node.inputs[0], node.outputs[0]), None]


@vjp("Concat")
def concat(b: Builder, node: Node, gy):
    y, g = node.outputs[0], gy[0]
    r = b.rank(y)
    axis = axis_(int(node.attrs.get("axis", 0)), r)
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
    axis = axis_(int(node.attrs.get("axis", 0)), b.rank(x))
    parts = [gi if gi is not None else b.zeros_like(o) for o, gi in zip(node.outputs, gy, strict=True) if o]
    out = none(node)
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
    out = none(node)
    params = _slice_params(node)
    xs = b.shape(x)
    if params is not None and xs is not None:
        starts, ends, axes, steps = params
        r = len(xs)
        axes = [axis_(v, r) for v in axes]
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
    out = none(node)
    r = b.rank(x)
    mode = a.get("mode", "constant")
    pads = a.get("pads")
    dynamic = pads is None or r is None or (len(node.inputs) > 3 and node.inputs[3] and "axes" not in a)
    if mode == "constant" and not dynamic:
        pads = [int(v) for v in pads]
        axes = [axis_(int(v), r) for v in a.get("axes", range(r))]
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
    out = none(node)
    mapped = b.op("Gather", [b.index_grid(x), idx], axis=int(node.attrs.get("axis", 0)))
    out[0] = b.scatter_back(x, mapped, gy[0])
    return out


@vjp("Tile")
def tile(b: Builder, node: Node, gy):
    """Sum the gradient over the copies: reshape to (repeats₀, size₀, repeats₁, size₁, …) and ``ReduceSum`` the
    repeat axes (static sizes); the index trick otherwise."""
    x, reps = node.inputs[0], node.inputs[1]
    g = gy[0]
    out = none(node)
    xs = b.static_shape(x)
    if xs is not None and b.is_const(reps):
        r = [int(v) for v in b.value(reps).reshape(-1)]
        inter = [v for pair in zip(r, xs, strict=True) for v in pair]
        red = [2 * i for i in range(len(xs)) if r[i] != 1]
        gg = b.op("Reshape", [g, b.ints(inter)])
        if red:
            gg = b.op("ReduceSum", [gg, b.ints(red)], keepdims=0)
        out[0] = b.op("Reshape", [gg, b.ints(xs)])
        return out
    mapped = b.op("Tile", [b.index_grid(x), reps])
    out[0] = b.scatter_back(x, mapped, g)
    return out


def _permute_back(b: Builder, node: Node, g: str, pre: list[int], perm: list[int]) -> str:
    """Gradient of Reshape(pre) → Transpose(perm) → Reshape: undo the three (the batch axis may be dynamic)."""
    mid = [pre[p] for p in perm]
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    gg = b.op("Reshape", [g, b.ints(mid)])
    gg = b.op("Transpose", [gg], perm=inv)
    return b.op("Reshape", [gg, b.shape_tensor(node.inputs[0])])


def _chw(b: Builder, node: Node) -> tuple[int, int, int]:
    s = b.shape(node.inputs[0])
    if s is None or len(s) != 4 or any(d is None for d in s[1:]):
        raise b.unsupported(node, "needs a 4-D input with static C, H, W")
    return int(s[1]), int(s[2]), int(s[3])


@vjp("DepthToSpace")
def depth_to_space(b: Builder, node: Node, gy):
    """An index permutation: its gradient is the inverse permutation (modes DCR and CRD, as the ONNX spec)."""
    C, H, W = _chw(b, node)
    k = int(node.attrs["blocksize"])
    if str(node.attrs.get("mode", "DCR")) == "CRD":
        pre, perm = [-1, C // (k * k), k, k, H, W], [0, 1, 4, 2, 5, 3]
    else:
        pre, perm = [-1, k, k, C // (k * k), H, W], [0, 3, 4, 1, 5, 2]
    return [_permute_back(b, node, gy[0], pre, perm)]


@vjp("SpaceToDepth")
def space_to_depth(b: Builder, node: Node, gy):
    C, H, W = _chw(b, node)
    k = int(node.attrs["blocksize"])
    return [_permute_back(b, node, gy[0], [-1, C, H // k, k, W // k, k], [0, 3, 5, 1, 2, 4])]
