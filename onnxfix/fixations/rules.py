"""Backtrack rules of CNN Fixations (Mopuri, Garg, Babu), one class per op family (DESIGN §3, §4).

* **fc (Gemm, MatMul):** fc←fc: every input whose Hadamard contribution ``A[k]·W[k, j]`` to a selected output
  is > 0. fc←conv (the fc reads a flattened feature map with spatial extent, e.g. VGG's fc6 on pool5): per selected
  output only the argmax of the contributions — the authors' code (``layers.py``, ``Fixations.fc``) does this,
  and it is what keeps fixations on the object instead of spreading them over every positive position.
* **Conv:** per location, the receptive field ⊙ filter summed per input channel → argmax channel; the location is
  the argmax of that channel's contributions inside the field (exact for any stride, padding, dilation, group).
* **MaxPool, AveragePool:** the window argmax (DESIGN §3 allows it for average pooling; it keeps the pooled branch
  of an Inception block on its strongest input). **Global pooling** (GlobalAveragePool, GlobalMaxPool,
  ReduceMean/Sum/Max over spatial axes): each selected channel → its spatial argmax, as the authors' ResNet code
  does between ``pool5`` and ``res5c``.
* **Concat / Split / Slice / Pad / Gather / Transpose / reshapes:** exact index maps.
* **Add:** the data input with the larger value at that location; **Sub:** the larger of ``a`` and ``−b``.
* **Mul:** every data input keeps the location, broadcast — an SE gate of shape (N, C, 1, 1) keeps its channel.
* **Elementwise activations and normalisations:** the location passes through.

Ties always go to the first index (numpy's ``argmax`` order); the numba kernels break them the same way.
"""

from __future__ import annotations

import numpy as np

from onnxfix.errors import UnsupportedOp
from onnxfix.fixations.registry import Context, Locations, Rule, register
from onnxfix.graph import Node, resolve_pads
from onnxfix.kernels import conv_backtrack, fc_positive, pool_argmax

PASS_THROUGH = (
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "BatchNormalization",
    "Dropout", "Identity", "Softmax", "LogSoftmax", "Cast", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Gelu",
    "Erf", "Abs", "Neg", "Exp", "Mish", "ThresholdedRelu", "InstanceNormalization", "LpNormalization",
)


def _unsupported(node: Node, why: str) -> UnsupportedOp:
    err = UnsupportedOp("fixations", [(node.op_type, node.name)])
    err.args = (f"{err.args[0]} ({why})",)
    return err


def _param(node: Node, ctx: Context, key: str, index: int) -> list[int] | None:
    """An op parameter: the normalised attribute (constants folded by graph.py), else the value the forward
    pass computed for input ``index`` (e.g. a Slice end derived from Shape on a dynamic batch)."""
    if key in node.attrs and node.attrs[key] is not None:
        return [int(v) for v in np.asarray(node.attrs[key]).reshape(-1)]
    if index < len(node.inputs) and node.inputs[index]:
        name = node.inputs[index]
        if name in ctx.values or name in ctx.graph.constants:
            return [int(v) for v in np.asarray(ctx.value(name)).reshape(-1)]
    return None


def broadcast_to_input(out: Locations, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Locations:
    """Map output coordinates of a broadcasting op to one input's coordinates."""
    r = len(in_shape)
    coords = out[:, len(out_shape) - r:].copy() if r else np.zeros((len(out), 0), np.int64)
    for ax, d in enumerate(in_shape):
        if d == 1:
            coords[:, ax] = 0
    return coords


@register(*PASS_THROUGH)
class PassThrough(Rule):
    """Elementwise ops: the first input keeps the location."""

    def backtrack(self, node, ctx, out):
        locs = out[node.outputs[0]]
        x = node.inputs[0]
        if not ctx.is_data(x):
            return {}
        xs, ys = ctx.value(x).shape, ctx.value(node.outputs[0]).shape
        if xs == ys:
            return {x: locs}
        return {x: broadcast_to_input(locs, xs, ys)}


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze")
class SameOrder(Rule):
    """Ops that keep the row-major order of elements: the flat index is preserved."""

    def backtrack(self, node, ctx, out):
        x = node.inputs[0]
        ys, xs = ctx.value(node.outputs[0]).shape, ctx.value(x).shape
        flat = np.ravel_multi_index(tuple(out[node.outputs[0]].T), ys)
        return {x: np.stack(np.unravel_index(flat, xs), axis=1).astype(np.int64)}


@register("Transpose")
class TransposeRule(Rule):
    def backtrack(self, node, ctx, out):
        locs = out[node.outputs[0]]
        perm = node.attrs.get("perm") or list(range(locs.shape[1]))[::-1]
        coords = np.empty_like(locs)
        coords[:, perm] = locs
        return {node.inputs[0]: coords}


@register("Add", "Sum", "Max")
class AddRule(Rule):
    """The data input with the larger value (contribution) at the location."""

    sign = (1.0, 1.0)

    def backtrack(self, node, ctx, out):
        locs = out[node.outputs[0]]
        ys = ctx.value(node.outputs[0]).shape
        data = [(i, name) for i, name in enumerate(node.inputs) if ctx.is_data(name)]
        if not data:
            return {}
        if len(data) == 1:  # a bias: the location passes to the one data input
            name = data[0][1]
            return {name: broadcast_to_input(locs, ctx.value(name).shape, ys)}
        mapped = []
        for i, name in data:
            v = ctx.value(name)
            c = broadcast_to_input(locs, v.shape, ys)
            sgn = self.sign[min(i, len(self.sign) - 1)]
            mapped.append((name, c, sgn * v[tuple(c.T)].astype(np.float64)))
        if len(mapped) == 1:
            return {mapped[0][0]: mapped[0][1]}
        vals = np.stack([m[2] for m in mapped], axis=0)
        win = np.argmax(vals, axis=0)
        res: dict[str, Locations] = {}
        for j, (name, c, _) in enumerate(mapped):
            sel = c[win == j]
            res[name] = np.concatenate([res[name], sel]) if name in res else sel
        return res


@register("Sub")
class SubRule(AddRule):
    sign = (1.0, -1.0)


@register("Mul", "Div")
class MulRule(Rule):
    """Every data input keeps the (broadcast) location: the feature map its position, an SE gate its channel.

    For Div only the numerator is followed."""

    def backtrack(self, node, ctx, out):
        locs = out[node.outputs[0]]
        ys = ctx.value(node.outputs[0]).shape
        names = node.inputs[:1] if node.op_type == "Div" else node.inputs
        res = {}
        for name in names:
            if ctx.is_data(name):
                res[name] = broadcast_to_input(locs, ctx.value(name).shape, ys)
        return res


@register("Concat")
class ConcatRule(Rule):
    """Route each location to the input that owns its index along the axis."""

    def backtrack(self, node, ctx, out):
        locs = out[node.outputs[0]]
        rank = locs.shape[1]
        axis = node.attrs.get("axis", 0) % rank
        res: dict[str, Locations] = {}
        off = 0
        for name in node.inputs:
            if not name:
                continue
            n = ctx.value(name).shape[axis]
            sel = locs[(locs[:, axis] >= off) & (locs[:, axis] < off + n)].copy()
            sel[:, axis] -= off
            off += n
            if len(sel) and ctx.is_data(name):
                res[name] = np.concatenate([res[name], sel]) if name in res else sel
        return res


@register("Split")
class SplitRule(Rule):
    def backtrack(self, node, ctx, out):
        x = node.inputs[0]
        rank = ctx.value(x).ndim
        axis = node.attrs.get("axis", 0) % rank
        off, parts = 0, []
        for name in node.outputs:
            shape = ctx.shape(name)
            n = shape[axis] if shape is not None else 0
            if name in out:
                c = out[name].copy()
                c[:, axis] += off
                parts.append(c)
            off += n
        return {x: np.concatenate(parts)} if parts else {}


@register("Slice")
class SliceRule(Rule):
    def backtrack(self, node, ctx, out):
        x = node.inputs[0]
        xs = ctx.value(x).shape
        starts, ends = _param(node, ctx, "starts", 1), _param(node, ctx, "ends", 2)
        if starts is None or ends is None:
            raise _unsupported(node, "starts/ends are unknown")
        axes = _param(node, ctx, "axes", 3) or list(range(len(starts)))
        steps = _param(node, ctx, "steps", 4) or [1] * len(axes)
        coords = out[node.outputs[0]].copy()
        for st, en, ax, sp in zip(starts, ends, axes, steps, strict=False):
            ax %= len(xs)
            if sp < 0 and st < -xs[ax]:  # ONNX clamps this start to 0; a python slice would be empty
                st = 0
            idx = np.arange(xs[ax])[slice(st, en, sp)]
            coords[:, ax] = idx[coords[:, ax]]
        return {x: coords}


@register("Pad")
class PadRule(Rule):
    def backtrack(self, node, ctx, out):
        x = node.inputs[0]
        xs = ctx.value(x).shape
        a = node.attrs
        pads = _param(node, ctx, "pads", 1)
        if pads is None:
            raise _unsupported(node, "pads are unknown")
        rank = len(xs)
        axes_p = _param(node, ctx, "axes", 3)
        axes = [ax % rank for ax in axes_p] if axes_p else list(range(rank))
        begin = np.zeros(rank, np.int64)
        for j, ax in enumerate(axes):
            begin[ax] = pads[j]
        coords = out[node.outputs[0]] - begin
        dims = np.asarray(xs, np.int64)
        mode = a.get("mode", "constant")
        if mode == "edge":
            coords = np.clip(coords, 0, dims - 1)
        elif mode == "reflect":
            period = np.maximum(2 * (dims - 1), 1)
            m = np.mod(coords, period)
            coords = np.where(m >= dims, period - m, m)
        elif mode == "wrap":
            coords = np.mod(coords, dims)
        keep = np.all((coords >= 0) & (coords < dims), axis=1)
        return {x: coords[keep]}


@register("Gather")
class GatherRule(Rule):
    def backtrack(self, node, ctx, out):
        x, ind = node.inputs[0], node.inputs[1]
        if ctx.is_data(ind):
            raise _unsupported(node, "indices are computed at run time")
        indices = np.asarray(ctx.value(ind)).astype(np.int64)
        xs = ctx.value(x).shape
        axis = node.attrs.get("axis", 0) % len(xs)
        indices = np.where(indices < 0, indices + xs[axis], indices)
        locs = out[node.outputs[0]]
        r = indices.ndim
        picked = indices[tuple(locs[:, axis:axis + r].T)] if r else np.full(len(locs), int(indices))
        coords = np.concatenate([locs[:, :axis], picked[:, None], locs[:, axis + r:]], axis=1)
        return {x: coords}


_REORDER = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Dropout", "Cast"}


def reads_feature_map(ctx: Context, name: str) -> bool:
    """True when tensor ``name`` is a flattened/reshaped view of a feature map with spatial extent (at least two
    non-batch axes larger than one), i.e. an fc layer reading it is "fc on conv"."""
    seen = 0
    while seen < 32:
        node = ctx.graph.producer(name)
        if node is None or node.op_type not in _REORDER and node.op_type not in PASS_THROUGH:
            break
        name = node.inputs[0]
        seen += 1
    shape = ctx.shape(name) or ()
    return len(shape) >= 3 and sum(1 for d in shape[1:] if d > 1) >= 2


def _fc_2d(a: np.ndarray, b: np.ndarray, locs: np.ndarray, argmax: bool = False,
           want_b: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Y = a @ b; for selected outputs (m, n) the inputs a[m, k] / b[k, n] with positive contribution a·b, or with
    ``argmax`` only the first k maximising a[m, k]·b[k, n] per output."""
    locs = np.ascontiguousarray(locs, np.int64)
    if argmax:
        ks = np.empty(len(locs), np.int64)
        for s in range(0, len(locs), 256):
            m, n = locs[s:s + 256, 0], locs[s:s + 256, 1]
            prod = a[m].astype(np.float64) * b[:, n].T.astype(np.float64)
            ks[s:s + 256] = np.argmax(prod, axis=1)
        return np.stack([locs[:, 0], ks], axis=1), np.stack([ks, locs[:, 1]], axis=1)
    ma, mb = fc_positive(np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32), locs)
    cb = np.argwhere(mb).astype(np.int64) if want_b else np.zeros((0, 2), np.int64)
    return np.argwhere(ma).astype(np.int64), cb


@register("Gemm")
class GemmRule(Rule):
    """Y = alpha·A'·B' + beta·C: keep the inputs with a positive Hadamard contribution to a selected output."""

    def backtrack(self, node, ctx, out):
        an, bn = node.inputs[0], node.inputs[1]
        a, b = ctx.value(an), ctx.value(bn)
        ta, tb = node.attrs.get("transA", 0), node.attrs.get("transB", 0)
        a2 = a.T if ta else a
        b2 = b.T if tb else b
        if node.attrs.get("alpha", 1.0) < 0:
            b2 = -b2
        spatial = ctx.is_data(an) and not ctx.is_data(bn) and not ta and reads_feature_map(ctx, an)
        ca, cb = _fc_2d(a2, b2, out[node.outputs[0]], argmax=spatial, want_b=ctx.is_data(bn))
        res = {}
        if ctx.is_data(an):
            res[an] = ca[:, ::-1].copy() if ta else ca
        if ctx.is_data(bn):
            res[bn] = cb[:, ::-1].copy() if tb else cb
        return res


@register("MatMul")
class MatMulRule(Rule):
    """Batched MatMul with numpy broadcasting; each batch slice is an fc layer."""

    def backtrack(self, node, ctx, out):
        an, bn = node.inputs[0], node.inputs[1]
        a, b = ctx.value(an), ctx.value(bn)
        locs = out[node.outputs[0]]
        a_vec, b_vec = a.ndim == 1, b.ndim == 1
        a3 = a[None, :] if a_vec else a
        b3 = b[:, None] if b_vec else b
        if a_vec:
            locs = np.insert(locs, locs.shape[1] - (0 if b_vec else 1), 0, axis=1)
        if b_vec:
            locs = np.concatenate([locs, np.zeros((len(locs), 1), np.int64)], axis=1)
        spatial = a.ndim == 2 and ctx.is_data(an) and not ctx.is_data(bn) and reads_feature_map(ctx, an)
        batch_shape = tuple(np.broadcast_shapes(a3.shape[:-2], b3.shape[:-2]))
        nb = len(batch_shape)
        res: dict[str, list[np.ndarray]] = {an: [], bn: []}
        groups = np.unique(locs[:, :nb], axis=0) if nb else np.zeros((1, 0), np.int64)
        for gidx in groups:
            sel = np.all(locs[:, :nb] == gidx, axis=1) if nb else np.ones(len(locs), bool)
            ia = tuple(0 if d == 1 else int(i) for d, i in zip(a3.shape[:-2], gidx[nb - (a3.ndim - 2):], strict=True))
            ib = tuple(0 if d == 1 else int(i) for d, i in zip(b3.shape[:-2], gidx[nb - (b3.ndim - 2):], strict=True))
            ca, cb = _fc_2d(a3[ia], b3[ib], locs[sel][:, nb:], argmax=spatial, want_b=ctx.is_data(bn))
            pre_a = np.broadcast_to(np.asarray(ia, np.int64), (len(ca), len(ia)))
            pre_b = np.broadcast_to(np.asarray(ib, np.int64), (len(cb), len(ib)))
            res[an].append(np.concatenate([pre_a, ca], axis=1))
            res[bn].append(np.concatenate([pre_b, cb], axis=1))
        final = {}
        for name, parts, vec, col in ((an, res[an], a_vec, 0), (bn, res[bn], b_vec, 1)):
            if not ctx.is_data(name) or not parts:
                continue
            c = np.concatenate(parts)
            if vec:  # drop the inserted unit axis
                c = c[:, [1]] if col == 0 else c[:, [0]]
            final[name] = np.unique(c, axis=0)
        return final


def _spatial(node: Node, x: np.ndarray, n: int = 0) -> tuple[np.ndarray, int]:
    """View image ``n`` of a 1-D or 2-D conv/pool input as (C, H, W); returns it and the spatial rank."""
    if x.ndim == 4:
        return x[n], 2
    if x.ndim == 3:
        return x[n][:, None, :], 1
    raise _unsupported(node, f"{x.ndim - 2}-D spatial input")


def _spatial_rank(node: Node, x: np.ndarray) -> int:
    if x.ndim not in (3, 4):
        raise _unsupported(node, f"{x.ndim - 2}-D spatial input")
    return x.ndim - 2


def per_image(node: Node, x: np.ndarray, locs: np.ndarray, one) -> np.ndarray:
    """Run a (C, H, W) window kernel ``one(x3, chw_rows)`` per batch image of the output locations ``locs``;
    rows come back with their batch index (rows whose window lies outside the input are dropped)."""
    nsp = x.ndim - 2
    if len(locs) == 0:
        return np.zeros((0, x.ndim), np.int64)
    batch = locs[:, 0]
    parts = []
    for n in (np.unique(batch) if batch.min() != batch.max() else batch[:1]):
        sel = locs if batch.min() == batch.max() else locs[batch == n]
        x3, _ = _spatial(node, x, int(n))
        parts.append(_from_chw(one(x3, np.ascontiguousarray(_to_chw(sel, nsp))), nsp, int(n)))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _window(node: Node, x: np.ndarray, nsp: int) -> tuple[tuple, tuple, tuple, tuple]:
    a = node.attrs
    in_sp = x.shape[2:]
    pads = resolve_pads(a, in_sp)
    ks, st, dl = list(a["kernel_shape"]), list(a["strides"]), list(a.get("dilations") or [1] * nsp)
    if nsp == 1:
        return (1, ks[0]), (1, st[0]), (0, pads[0]), (1, dl[0])
    return tuple(ks), tuple(st), (pads[0], pads[1]), tuple(dl)


def _to_chw(locs: np.ndarray, nsp: int) -> np.ndarray:
    return locs[:, 1:] if nsp == 2 else np.stack([locs[:, 1], np.zeros(len(locs), np.int64), locs[:, 2]], axis=1)


def _from_chw(rows: np.ndarray, nsp: int, n: int = 0) -> np.ndarray:
    rows = rows[rows[:, 0] >= 0]
    zeros = np.full((len(rows), 1), n, np.int64)
    if nsp == 2:
        return np.concatenate([zeros, rows], axis=1)
    return np.concatenate([zeros, rows[:, [0, 2]]], axis=1)


@register("Conv")
class ConvRule(Rule):
    """Algorithm 2 of the paper, with the window argmax for the location (any stride, pad, dilation, group)."""

    def backtrack(self, node, ctx, out):
        xn, wn = node.inputs[0], node.inputs[1]
        if ctx.is_data(wn):
            raise _unsupported(node, "the filter is computed at run time")
        x = ctx.value(xn)
        nsp = _spatial_rank(node, x)
        w = ctx.value(wn)
        w4 = w if nsp == 2 else w[:, :, None, :]
        ks, st, pd, dl = _window(node, x, nsp)
        if w4.dtype != np.float32 or not w4.flags.c_contiguous:
            w4 = np.ascontiguousarray(w4, np.float32)
            w4.setflags(write=False)
        group = int(node.attrs.get("group", 1))

        def one(x3: np.ndarray, locs: np.ndarray) -> np.ndarray:
            return conv_backtrack(np.ascontiguousarray(x3, np.float32), w4, locs, st, pd, dl, group)

        return {xn: per_image(node, x, out[node.outputs[0]], one)}


def _window_argmax(node: Node, ctx: Context, out: dict[str, Locations]) -> dict[str, Locations]:
    if node.outputs[0] not in out:
        return {}
    xn = node.inputs[0]
    x = ctx.value(xn)
    nsp = _spatial_rank(node, x)
    ks, st, pd, dl = _window(node, x, nsp)

    def one(x3: np.ndarray, locs: np.ndarray) -> np.ndarray:
        return pool_argmax(np.ascontiguousarray(x3, np.float32), locs, ks, st, pd, dl)

    return {xn: per_image(node, x, out[node.outputs[0]], one)}


@register("MaxPool")
class MaxPoolRule(Rule):
    """The window argmax (padding never wins)."""

    def backtrack(self, node, ctx, out):
        return _window_argmax(node, ctx, out)


def _argmax_over(x: np.ndarray, locs: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Global pooling over ``axes``: for each selected output (coordinates with the reduced axes at 0) the first
    row-major argmax of ``x`` over the reduced axes — the authors' rule for ResNet's pool5 (one location per
    selected channel)."""
    keep = [ax for ax in range(x.ndim) if ax not in axes]
    moved = np.moveaxis(x, list(axes), list(range(len(keep), x.ndim)))
    flat = moved.reshape([x.shape[ax] for ax in keep] + [-1])
    am = np.argmax(flat[tuple(locs[:, keep].T)], axis=-1)
    coords = locs.copy()
    red = np.unravel_index(am, [x.shape[ax] for ax in axes])
    for j, ax in enumerate(axes):
        coords[:, ax] = red[j]
    return coords.astype(np.int64)


@register("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax")
class GlobalPoolRule(Rule):
    """Each selected output slice → the argmax position over the pooled axes."""

    def backtrack(self, node, ctx, out):
        xn = node.inputs[0]
        x = ctx.value(xn)
        locs = out[node.outputs[0]]
        if node.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
            axes = tuple(range(2, x.ndim))
        else:
            ax = _param(node, ctx, "axes", 1) if ctx.graph.opset >= 18 or node.op_type == "ReduceSum" else \
                node.attrs.get("axes")
            if ax is None:
                axes = () if node.attrs.get("noop_with_empty_axes") else tuple(range(x.ndim))
            else:
                axes = tuple(sorted(a % x.ndim for a in ax))
            if not axes:
                return {xn: locs}
            if not node.attrs.get("keepdims", 1):
                for a in axes:
                    locs = np.insert(locs, a, 0, axis=1)
        locs = locs.copy()
        locs[:, list(axes)] = 0
        return {xn: _argmax_over(x, locs, axes)}


@register("AveragePool")
class AveragePoolRule(Rule):
    """Window argmax; a window that covers the whole input is a global pool (same answer, faster path)."""

    def backtrack(self, node, ctx, out):
        xn = node.inputs[0]
        x = ctx.value(xn)
        y = ctx.value(node.outputs[0])
        pads = resolve_pads(node.attrs, x.shape[2:])
        covers = all(k >= d + p0 + p1 for k, d, p0, p1 in zip(
            node.attrs["kernel_shape"], x.shape[2:], pads[: x.ndim - 2], pads[x.ndim - 2:], strict=True))
        if covers and all(d == 1 for d in y.shape[2:]):
            locs = out[node.outputs[0]].copy()
            axes = tuple(range(2, x.ndim))
            locs[:, list(axes)] = 0
            return {xn: _argmax_over(x, locs, axes)}
        return _window_argmax(node, ctx, out)
