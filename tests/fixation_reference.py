"""Slow, obviously-correct CNN-Fixations backtrack rules, written from the paper and DESIGN §3–§4.

Nothing here is shared with ``onnxfix.fixations``: every rule is a plain python loop over the selected output
locations and the terms of the op, reading numpy arrays. Locations are python sets of full-index tuples (batch
axis included). Ties always go to the first candidate in the order named in each rule. :func:`trace_ref` walks
an ONNX ModelProto backwards from a tensor to the image input with these rules.

Two choices follow the authors' code, as ``onnxfix/fixations/rules.py`` documents them (DESIGN §3 leaves them open):
an fc layer that reads a flattened feature map with spatial extent ("fc on conv") keeps only the argmax term per
selected output, and global pooling keeps the argmax position of each selected slice (``GLOBAL_POSITIVE = True``
switches to DESIGN's other reading: every positive position, the argmax where none is).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

Locs = set[tuple[int, ...]]

#: global pooling: every positive position of the slice (True) or its argmax position (False, the authors' code)
GLOBAL_POSITIVE = False


def _tuples(rows: Iterable) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in r) for r in rows]


def _first_argmax(values: list[float]) -> int:
    """Index of the first maximum (strict ``>`` scan)."""
    best = 0
    for i in range(1, len(values)):
        if values[i] > values[best]:
            best = i
    return best


def _broadcast_index(out_idx: tuple[int, ...], in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """numpy broadcasting: align right, a dimension of size 1 reads index 0."""
    tail = out_idx[len(out_idx) - len(in_shape):] if in_shape else ()
    return tuple(0 if d == 1 else int(i) for i, d in zip(tail, in_shape, strict=True))


# ----------------------------------------------------------------------------------------------------------------
# fully connected


def gemm_ref(a: np.ndarray, b: np.ndarray, locs: Iterable, trans_a: int = 0, trans_b: int = 0,
             alpha: float = 1.0, argmax: bool = False) -> tuple[Locs, Locs]:
    """Y[m, n] = alpha · Σ_k A'[m, k] B'[k, n]: every (A, B) entry whose product term is > 0 (fc ← fc), or with
    ``argmax`` only the first k with the largest term (fc ← conv)."""
    la: Locs = set()
    lb: Locs = set()
    k_dim = a.shape[0] if trans_a else a.shape[1]
    for m, n in _tuples(locs):
        terms = []
        for k in range(k_dim):
            ia = (k, m) if trans_a else (m, k)
            ib = (n, k) if trans_b else (k, n)
            terms.append((float(alpha) * float(a[ia]) * float(b[ib]), ia, ib))
        chosen = [terms[_first_argmax([t[0] for t in terms])]] if argmax else [t for t in terms if t[0] > 0]
        for _, ia, ib in chosen:
            la.add(ia)
            lb.add(ib)
    return la, lb


def matmul_ref(a: np.ndarray, b: np.ndarray, locs: Iterable, argmax: bool = False) -> tuple[Locs, Locs]:
    """numpy matmul semantics (1-D operands promoted, batch dims broadcast); positive product terms, or the first
    largest one with ``argmax``."""
    a_vec, b_vec = a.ndim == 1, b.ndim == 1
    a2 = a.reshape(1, -1) if a_vec else a
    b2 = b.reshape(-1, 1) if b_vec else b
    la: Locs = set()
    lb: Locs = set()
    for o in _tuples(locs):
        full = list(o)
        if b_vec:
            full = full + [0]
        if a_vec:
            full = full[:-1] + [0] + full[-1:]
        batch, m, n = tuple(full[:-2]), full[-2], full[-1]
        ba = _broadcast_index(batch, a2.shape[:-2])
        bb = _broadcast_index(batch, b2.shape[:-2])
        terms = [(float(a2[ba + (m, k)]) * float(b2[bb + (k, n)]), k) for k in range(a2.shape[-1])]
        if argmax:
            terms = [terms[_first_argmax([t[0] for t in terms])]]
        for v, k in terms:
            if argmax or v > 0:
                la.add((k,) if a_vec else ba + (m, k))
                lb.add((k,) if b_vec else bb + (k, n))
    return la, lb


# ----------------------------------------------------------------------------------------------------------------
# windows


def explicit_pads(auto_pad: str, pads: list[int] | None, in_sp: tuple[int, ...], kernel: list[int],
                  strides: list[int], dilations: list[int]) -> list[int]:
    """Begin pads of a Conv/Pool, from the ONNX operator spec (SAME_*: output = ceil(in / stride))."""
    n = len(in_sp)
    if auto_pad in ("NOTSET", "", None):
        return list(pads[:n]) if pads else [0] * n
    if auto_pad == "VALID":
        return [0] * n
    begins = []
    for i in range(n):
        out = math.ceil(in_sp[i] / strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sp[i])
        begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    return begins


def _window_positions(o: tuple[int, ...], kernel, strides, begins, dilations, in_sp):
    """Row-major list of (kernel offset, input position) of the window of output ``o`` inside the input."""
    res = []
    for kpos in itertools.product(*[range(k) for k in kernel]):
        ipos = tuple(o[i] * strides[i] - begins[i] + kpos[i] * dilations[i] for i in range(len(kernel)))
        if all(0 <= ipos[i] < in_sp[i] for i in range(len(kernel))):
            res.append((kpos, ipos))
    return res


def conv_ref(x: np.ndarray, w: np.ndarray, locs: Iterable, strides, begins, dilations, group: int = 1) -> Locs:
    """Paper's Algorithm 2: per output, Σ contributions per input channel of its group → first argmax channel,
    then the first row-major argmax of that channel's contributions among the valid window positions."""
    res: Locs = set()
    c_out, cin_g = w.shape[0], w.shape[1]
    in_sp = x.shape[2:]
    kernel = w.shape[2:]
    for loc in _tuples(locs):
        co, o = loc[1], loc[2:]
        g = co // (c_out // group)
        window = _window_positions(o, kernel, strides, begins, dilations, in_sp)
        if not window:
            continue
        sums = []
        for cl in range(cin_g):
            s = 0.0
            for kpos, ipos in window:
                s += float(x[(0, g * cin_g + cl) + ipos]) * float(w[(co, cl) + kpos])
            sums.append(s)
        best = _first_argmax(sums)
        contrib = [float(x[(0, g * cin_g + best) + ipos]) * float(w[(co, best) + kpos]) for kpos, ipos in window]
        res.add((0, g * cin_g + best) + window[_first_argmax(contrib)][1])
    return res


def window_argmax_ref(x: np.ndarray, locs: Iterable, kernel, strides, begins, dilations) -> Locs:
    """Pooling: the first row-major argmax of the window, padding never wins."""
    res: Locs = set()
    for loc in _tuples(locs):
        n, c, o = loc[0], loc[1], loc[2:]
        window = _window_positions(o, kernel, strides, begins, dilations, x.shape[2:])
        if window:
            vals = [float(x[(n, c) + ipos]) for _, ipos in window]
            res.add((n, c) + window[_first_argmax(vals)][1])
    return res


def global_pool_ref(x: np.ndarray, locs: Iterable, axes: list[int], keepdims: int = 1) -> Locs:
    """Global pooling over ``axes``: the first row-major argmax of the pooled slice (with ``GLOBAL_POSITIVE``:
    every position of the slice with x > 0, the argmax where none is positive)."""
    axes = sorted(a % x.ndim for a in axes)
    res: Locs = set()
    for loc in _tuples(locs):
        full = list(loc)
        if not keepdims:
            for a in axes:
                full.insert(a, 0)
        slice_idx = []
        for pos in itertools.product(*[range(x.shape[a]) for a in axes]):
            idx = list(full)
            for a, p in zip(axes, pos, strict=True):
                idx[a] = p
            slice_idx.append(tuple(idx))
        pos_idx = [i for i in slice_idx if float(x[i]) > 0] if GLOBAL_POSITIVE else []
        if pos_idx:
            res.update(pos_idx)
        else:
            res.add(slice_idx[_first_argmax([float(x[i]) for i in slice_idx])])
    return res


def avgpool_ref(x: np.ndarray, y_shape, locs: Iterable, kernel, strides, begins) -> Locs:
    """Global (one output whose window covers the whole input) → as global pooling; local → window argmax."""
    in_sp = x.shape[2:]
    covers = all(d == 1 for d in y_shape[2:]) and all(
        -begins[i] <= 0 and -begins[i] + kernel[i] - 1 >= in_sp[i] - 1 for i in range(len(in_sp)))
    if covers:
        zeroed = [loc[:2] + (0,) * len(in_sp) for loc in _tuples(locs)]
        return global_pool_ref(x, zeroed, list(range(2, x.ndim)))
    return window_argmax_ref(x, locs, kernel, strides, begins, [1] * len(in_sp))


# ----------------------------------------------------------------------------------------------------------------
# index maps


def concat_ref(shapes: list[tuple[int, ...]], axis: int, locs: Iterable) -> list[Locs]:
    """Route each location to the input owning its index along ``axis``."""
    res: list[Locs] = [set() for _ in shapes]
    for loc in _tuples(locs):
        axis_ = axis % len(loc)
        i = loc[axis_]
        for j, s in enumerate(shapes):
            if i < s[axis_]:
                res[j].add(loc[:axis_] + (i,) + loc[axis_ + 1:])
                break
            i -= s[axis_]
    return res


def split_ref(sizes: list[int], axis: int, locs_per_output: dict[int, Iterable]) -> Locs:
    res: Locs = set()
    for q, locs in locs_per_output.items():
        off = sum(sizes[:q])
        for loc in _tuples(locs):
            a = axis % len(loc)
            res.add(loc[:a] + (loc[a] + off,) + loc[a + 1:])
    return res


def slice_ref(x_shape, starts, ends, axes, steps, locs: Iterable) -> Locs:
    """ONNX Slice: clamp the start as the operator spec says, then input = start + j·step (the output's
    length, which ``ends`` fixes, comes from the forward pass)."""
    rank = len(x_shape)
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(axes) if steps is None else list(steps)
    first = [0] * rank
    step = [1] * rank
    for st, _en, ax, sp in zip(starts, ends, axes, steps, strict=True):
        ax %= rank
        d = x_shape[ax]
        if st < 0:
            st += d
        st = min(max(st, 0), d) if sp > 0 else min(max(st, 0), d - 1)
        first[ax], step[ax] = st, sp
    return {tuple(first[a] + loc[a] * step[a] for a in range(rank)) for loc in _tuples(locs)}


def pad_ref(x_shape, pads: list[int], mode: str, locs: Iterable) -> Locs:
    rank = len(x_shape)
    res: Locs = set()
    for loc in _tuples(locs):
        idx = []
        keep = True
        for a in range(rank):
            i, d = loc[a] - pads[a], x_shape[a]
            if mode == "edge":
                i = min(max(i, 0), d - 1)
            elif mode == "reflect":
                while d > 1 and (i < 0 or i >= d):
                    i = -i if i < 0 else 2 * (d - 1) - i
                i = min(max(i, 0), d - 1)
            elif not 0 <= i < d:
                keep = False
            idx.append(i)
        if keep:
            res.add(tuple(idx))
    return res


def gather_ref(x_shape, indices: np.ndarray, axis: int, locs: Iterable) -> Locs:
    axis %= len(x_shape)
    r = indices.ndim
    res: Locs = set()
    for loc in _tuples(locs):
        i = int(indices[loc[axis:axis + r]]) if r else int(indices)
        if i < 0:
            i += x_shape[axis]
        res.add(loc[:axis] + (i,) + loc[axis + r:])
    return res


def transpose_ref(perm: list[int], locs: Iterable) -> Locs:
    res: Locs = set()
    for loc in _tuples(locs):
        idx = [0] * len(loc)
        for k, p in enumerate(perm):
            idx[p] = loc[k]
        res.add(tuple(idx))
    return res


def reshape_ref(x_shape, y_shape, locs: Iterable) -> Locs:
    """Row-major order is kept: the flat index is the same."""
    res: Locs = set()
    for loc in _tuples(locs):
        flat = 0
        for i, d in zip(loc, y_shape, strict=True):
            flat = flat * d + i
        idx = []
        for d in reversed(x_shape):
            idx.append(flat % d)
            flat //= d
        res.add(tuple(reversed(idx)))
    return res


# ----------------------------------------------------------------------------------------------------------------
# elementwise


def add_ref(inputs: list[np.ndarray | None], signs: list[float], locs: Iterable) -> list[Locs]:
    """Add/Sub: the data input (``None`` = constant) with the larger signed value at the broadcast location;
    ties → the first input."""
    res: list[Locs] = [set() for _ in inputs]
    data = [i for i, v in enumerate(inputs) if v is not None]
    for loc in _tuples(locs):
        idx = {i: _broadcast_index(loc, inputs[i].shape) for i in data}
        if len(data) == 1:
            res[data[0]].add(idx[data[0]])
            continue
        vals = [signs[i] * float(inputs[i][idx[i]]) for i in data]
        win = data[_first_argmax(vals)]
        res[win].add(idx[win])
    return res


def broadcast_ref(in_shape, locs: Iterable) -> Locs:
    """Mul (SE gate) and pass-through: the input keeps the (broadcast) location."""
    return {_broadcast_index(loc, tuple(in_shape)) for loc in _tuples(locs)}


# ----------------------------------------------------------------------------------------------------------------
# ops of detectors, segmenters and OCR models (onnxfix/fixations/rules_more.py), from the ONNX operator spec


def resize_source(x_r: int, n_in: int, n_out: int, scale: float, ctm: str) -> float:
    """The original coordinate of output index ``x_r`` along one axis (ONNX Resize,
    ``coordinate_transformation_mode``), computed in float32 as ONNX Runtime does."""
    f = np.float32
    xr, s = f(x_r), f(scale)
    if ctm == "half_pixel":
        return float((xr + f(0.5)) / s - f(0.5))
    if ctm == "pytorch_half_pixel":
        return float((xr + f(0.5)) / s - f(0.5)) if n_out > 1 else 0.0
    if ctm == "align_corners":
        return 0.0 if n_out == 1 else float(xr * f(n_in - 1) / f(n_out - 1))
    if ctm == "asymmetric":
        return float(xr / s)
    if ctm == "tf_half_pixel_for_nn":
        return float((xr + f(0.5)) / s)
    if ctm == "half_pixel_symmetric":
        adj = f(n_out) / (s * f(n_in))
        off = f(n_in) / f(2) * (f(1) - adj)
        return float(off + (xr + f(0.5)) / s - f(0.5))
    raise NotImplementedError(ctm)


def _cubic_coeffs(t: float, a: float) -> list[float]:
    """Keys' cubic convolution weights of the four neighbours floor(x) - 1 .. floor(x) + 2 (ONNX Resize spec)."""
    return [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a]


def resize_axis_ref(n_in: int, n_out: int, scale: float, mode: str, ctm: str, nearest_mode: str = "round_prefer_floor",
                    cubic_a: float = -0.75, exclude_outside: int = 0) -> list[list[tuple[int, float]]]:
    """For every output index of one axis: its sources as (input index, weight), weights of the same (clamped)
    index added, zero weights dropped, by increasing index."""
    res = []
    for o in range(n_out):
        xo = resize_source(o, n_in, n_out, scale, ctm)
        terms: list[tuple[int, float]] = []
        if mode == "nearest":
            fl = math.floor(xo)
            frac = xo - fl
            if nearest_mode == "floor":
                i = fl
            elif nearest_mode == "ceil":
                i = math.ceil(xo)
            elif nearest_mode == "round_prefer_ceil":
                i = fl + 1 if frac >= 0.5 else fl
            else:  # round_prefer_floor
                i = fl + 1 if frac > 0.5 else fl
            terms.append((i, 1.0))
        elif mode == "linear":
            xc = min(max(xo, 0.0), n_in - 1.0)  # ORT clamps the source coordinate into the input
            fl = math.floor(xc)
            t = xc - fl
            terms += [(fl, 1.0 - t), (fl + 1, t)]
        elif mode == "cubic":
            fl = math.floor(xo)
            cs = _cubic_coeffs(xo - fl, cubic_a)
            idx = [fl - 1 + k for k in range(4)]
            if exclude_outside:
                cs = [c if 0 <= i < n_in else 0.0 for c, i in zip(cs, idx, strict=True)]
                tot = sum(cs)
                cs = [c / tot for c in cs]
            terms += list(zip(idx, cs, strict=True))
        else:
            raise NotImplementedError(mode)
        acc: dict[int, float] = {}
        for i, w in terms:
            i = min(max(int(i), 0), n_in - 1)  # outside the input: the edge value
            acc[i] = acc.get(i, 0.0) + w
        res.append([(i, acc[i]) for i in sorted(acc) if acc[i] != 0.0])
    return res


def resize_tables(x_shape, y_shape, scales, attrs: dict) -> dict[int, list[list[tuple[int, float]]]]:
    """{axis: resize_axis_ref table} of every axis that Resize changes (``scales`` None: from the sizes)."""
    tables = {}
    for ax, (n_in, n_out) in enumerate(zip(x_shape, y_shape, strict=True)):
        s = float(scales[ax]) if scales is not None else n_out / n_in
        if n_in == n_out and s == 1.0:
            continue
        tables[ax] = resize_axis_ref(n_in, n_out, s, attrs.get("mode", "nearest"),
                                     attrs.get("coordinate_transformation_mode", "half_pixel"),
                                     attrs.get("nearest_mode", "round_prefer_floor"),
                                     attrs.get("cubic_coeff_a", -0.75), attrs.get("exclude_outside", 0))
    return tables


def resize_forward_ref(x: np.ndarray, y_shape, tables: dict) -> np.ndarray:
    """Y = the separable weighted sum of the tables (float64), to check the tables against ORT's output."""
    y = np.zeros(tuple(y_shape))
    for o in itertools.product(*[range(d) for d in y_shape]):
        v = 0.0
        for combo in itertools.product(*[tables[ax][o[ax]] for ax in sorted(tables)]):
            idx, w = list(o), 1.0
            for ax, (i, wi) in zip(sorted(tables), combo, strict=True):
                idx[ax] = i
                w *= wi
            v += w * float(x[tuple(idx)])
        y[o] = v
    return y


def resize_ref(x: np.ndarray, tables: dict, locs: Iterable) -> Locs:
    """Each output location → the source with the largest weight × activation (first in index order on ties;
    nearest: the one source)."""
    res: Locs = set()
    axes = sorted(tables)
    for loc in _tuples(locs):
        best, top = None, -math.inf
        for combo in itertools.product(*[tables[ax][loc[ax]] for ax in axes]):
            idx, w = list(loc), 1.0
            for ax, (i, wi) in zip(axes, combo, strict=True):
                idx[ax] = i
                w *= wi
            v = w * float(x[tuple(idx)])
            if best is None or v > top:
                best, top = tuple(idx), v
        res.add(best)  # type: ignore[arg-type]
    return res


def conv_transpose_pads(x_shape, w_shape, y_shape, a: dict) -> list[int]:
    """Begin pads of a ConvTranspose (ONNX spec: explicit pads, or from output_shape / auto_pad)."""
    nsp = len(x_shape) - 2
    st = a.get("strides", [1] * nsp)
    dl = a.get("dilations", [1] * nsp)
    op = a.get("output_padding", [0] * nsp)
    auto = a.get("auto_pad", "NOTSET")
    if "pads" in a and auto in ("NOTSET", "") and "output_shape" not in a:  # output_shape: pads are ignored
        return list(a["pads"][:nsp])
    begins = []
    for i in range(nsp):
        total = st[i] * (x_shape[2 + i] - 1) + op[i] + (w_shape[2 + i] - 1) * dl[i] + 1 - y_shape[2 + i]
        begins.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
    return begins


def conv_transpose_terms(x: np.ndarray, w: np.ndarray, loc: tuple[int, ...], begins, a: dict
                         ) -> dict[int, list[tuple[tuple[int, ...], float]]]:
    """{input channel: [(input position, x × w)]} of output ``loc``: y[n, o, p] = Σ x[n, c, i] w[c, o', k] over
    i · stride − pad + k · dilation = p, channels c of o's group (positions row-major)."""
    nsp = x.ndim - 2
    st = a.get("strides", [1] * nsp)
    dl = a.get("dilations", [1] * nsp)
    g = a.get("group", 1)
    cout_g = w.shape[1]
    cin_g = w.shape[0] // g
    n, co, p = loc[0], loc[1], loc[2:]
    grp, col = co // cout_g, co % cout_g
    terms: dict[int, list] = {}
    for c in range(grp * cin_g, (grp + 1) * cin_g):
        for i in itertools.product(*[range(d) for d in x.shape[2:]]):
            for k in itertools.product(*[range(d) for d in w.shape[2:]]):
                if all(i[d] * st[d] - begins[d] + k[d] * dl[d] == p[d] for d in range(nsp)):
                    terms.setdefault(c, []).append((i, float(x[(n, c) + i]) * float(w[(c, col) + k])))
    return terms


def conv_transpose_forward_ref(x: np.ndarray, w: np.ndarray, bias, y_shape, a: dict) -> np.ndarray:
    begins = conv_transpose_pads(x.shape, w.shape, y_shape, a)
    y = np.zeros(tuple(y_shape))
    for loc in itertools.product(*[range(d) for d in y_shape]):
        terms = conv_transpose_terms(x, w, loc, begins, a)
        y[loc] = sum(v for t in terms.values() for _, v in t) + (0.0 if bias is None else float(bias[loc[1]]))
    return y


def conv_transpose_ref(x: np.ndarray, w: np.ndarray, y_shape, a: dict, locs: Iterable) -> Locs:
    """Algorithm 2 as for a Conv (a transposed convolution is one, on the stride-dilated input): the input channel
    of the output's group with the largest sum of contributions (first on ties), then that channel's position with
    the largest contribution (first in row-major order); an output no input reaches (padding) has none."""
    begins = conv_transpose_pads(x.shape, w.shape, y_shape, a)
    res: Locs = set()
    for loc in _tuples(locs):
        terms = conv_transpose_terms(x, w, loc, begins, a)
        if not terms:
            continue
        chans = sorted(terms)
        c = chans[_first_argmax([sum(v for _, v in terms[ch]) for ch in chans])]
        pos = terms[c][_first_argmax([v for _, v in terms[c]])][0]
        res.add((loc[0], c) + pos)
    return res


def index_forward_ref(op: str, x_shape, a: dict, extra=None) -> np.ndarray:
    """The op applied to the flat index of every input element (np.arange), as the ONNX spec writes it with
    reshape/transpose (DepthToSpace DCR/CRD, SpaceToDepth), np.tile (Tile) or broadcasting (Expand)."""
    idx = np.arange(int(np.prod(x_shape))).reshape(x_shape)
    if op == "DepthToSpace":
        b = a["blocksize"]
        n, c, h, w = x_shape
        if a.get("mode", "DCR") == "DCR":
            t = idx.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
        else:
            t = idx.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
        return t.reshape(n, c // (b * b), h * b, w * b)
    if op == "SpaceToDepth":
        b = a["blocksize"]
        n, c, h, w = x_shape
        t = idx.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
        return t.reshape(n, c * b * b, h // b, w // b)
    if op == "Tile":
        return np.tile(idx, [int(r) for r in extra])
    if op == "Expand":
        return idx * np.ones(tuple(int(s) for s in extra), np.int64)
    raise NotImplementedError(op)


def index_ref(fwd: np.ndarray, x_shape, locs: Iterable) -> Locs:
    """Index-only ops: the input element whose index the output location holds."""
    return {tuple(int(v) for v in np.unravel_index(int(fwd[loc]), x_shape)) for loc in _tuples(locs)}


def where_ref(cond: np.ndarray, a_shape, b_shape, locs: Iterable) -> tuple[Locs, Locs]:
    """Where: X's (broadcast) location where the condition holds, Y's elsewhere."""
    la: Locs = set()
    lb: Locs = set()
    for loc in _tuples(locs):
        if bool(cond[_broadcast_index(loc, cond.shape)]):
            la.add(_broadcast_index(loc, tuple(a_shape)))
        else:
            lb.add(_broadcast_index(loc, tuple(b_shape)))
    return la, lb


# ----------------------------------------------------------------------------------------------------------------
# LSTM


def lstm_ref(x: np.ndarray, w: np.ndarray, r: np.ndarray, y: np.ndarray, direction: str,
             y_locs: Iterable = (), yh_locs: Iterable = (), h0: np.ndarray | None = None) -> tuple[Locs, Locs]:
    """ONNX LSTM, layout 0 (x [T, N, I], Y [T, D, N, H], Y_h [D, N, H]).

    Per direction and batch row, walking the steps in that direction's reverse time order: the units to explain
    at step t are those carried from step t+1 (forward) plus the one arriving unit with the largest hidden value
    Y[t]; x_t gets every input k with x_t[k]·W[g·H+u, k] > 0 for any gate g and unit u; h_{t−1} (Y of the previous
    step, or a data initial_h) every k with h[k]·R[g·H+u, k] > 0, which are the units carried on.
    Returns (x locations, initial_h locations).
    """
    t_len, n_len, i_len = x.shape
    n_dir, h_len = w.shape[0], r.shape[2]
    arriving: dict[tuple[int, int, int], set[int]] = {}
    for t, d, n, j in _tuples(y_locs):
        arriving.setdefault((d, n, t), set()).add(j)
    x_res: Locs = set()
    h0_res: Locs = set()
    for d in range(n_dir):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        for dd, n, j in _tuples(yh_locs):
            if dd == d:
                arriving.setdefault((d, n, 0 if reverse else t_len - 1), set()).add(j)
        steps = list(range(t_len)) if reverse else list(range(t_len - 1, -1, -1))
        for n in range(n_len):
            carried: set[int] = set()
            for t in steps:
                units = set(carried)
                cand = sorted(arriving.get((d, n, t), ()))
                if cand:
                    units.add(cand[_first_argmax([float(y[t, d, n, j]) for j in cand])])
                carried = set()
                prev = t + 1 if reverse else t - 1
                if 0 <= prev < t_len:
                    h_prev = y[prev, d, n]
                elif h0 is not None:
                    h_prev = h0[d, n]
                else:
                    h_prev = None
                for u in sorted(units):
                    for g in range(4):
                        row = g * h_len + u
                        for k in range(i_len):
                            if float(x[t, n, k]) * float(w[d, row, k]) > 0:
                                x_res.add((t, n, k))
                        if h_prev is None:
                            continue
                        for k in range(h_len):
                            if float(h_prev[k]) * float(r[d, row, k]) > 0:
                                if 0 <= prev < t_len:
                                    carried.add(k)
                                else:
                                    h0_res.add((d, n, k))
    return x_res, h0_res


# ----------------------------------------------------------------------------------------------------------------
# dispatch over an ONNX node, and the tracer

PASS = {
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "BatchNormalization",
    "Dropout", "Identity", "Softmax", "LogSoftmax", "Cast", "Elu", "Selu", "Softplus", "Softsign", "Erf", "Abs",
    "Neg", "Exp",
}


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


#: elementwise ops of rules_more.py: the first input keeps the location
PASS_MORE = {"Pow", "Floor", "Ceil", "Round", "Sqrt", "Reciprocal", "Sign", "Log", "Sin", "Cos", "Shrink"}

REORDER = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Dropout", "Cast"}


def feature_map_view(producers: dict[str, onnx.NodeProto], value: Callable[[str], np.ndarray], name: str) -> bool:
    """Whether tensor ``name`` is a reshaped/activated view of a tensor with two or more non-batch axes > 1."""
    node = producers.get(name)
    while node is not None and (node.op_type in REORDER or node.op_type in PASS):
        name = node.input[0]
        node = producers.get(name)
    shape = value(name).shape
    return len(shape) >= 3 and sum(d > 1 for d in shape[1:]) >= 2


def backtrack_ref(node: onnx.NodeProto, value: Callable[[str], np.ndarray], consts: dict[str, np.ndarray],
                  outs: dict[str, Locs], producers: dict[str, onnx.NodeProto] | None = None) -> dict[str, Locs]:
    """Reference rule for one ONNX node: {data input name: locations}. ``producers`` (tensor → node) tells an fc
    on a flattened feature map from an fc on a vector."""
    op, a = node.op_type, _attrs(node)
    ins = list(node.input)

    def is_data(name: str) -> bool:
        return bool(name) and name not in consts

    def opt(idx: int):
        return consts[ins[idx]] if idx < len(ins) and ins[idx] else None

    y = node.output[0]
    locs = outs.get(y, set())
    res: dict[str, Locs] = {}

    def put(name: str, rows: Iterable) -> None:
        if is_data(name):
            res.setdefault(name, set()).update(rows)

    if op in PASS:
        put(ins[0], broadcast_ref(value(ins[0]).shape, locs))
    elif op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
        put(ins[0], reshape_ref(value(ins[0]).shape, value(y).shape, locs))
    elif op == "Transpose":
        perm = a.get("perm", list(range(value(ins[0]).ndim))[::-1])
        put(ins[0], transpose_ref(perm, locs))
    elif op in ("Add", "Sub"):
        vals = [value(n) if is_data(n) else None for n in ins]
        for n, rows in zip(ins, add_ref(vals, [1.0, -1.0 if op == "Sub" else 1.0], locs), strict=True):
            put(n, rows)
    elif op == "Mul":
        for n in ins:
            put(n, broadcast_ref(value(n).shape, locs))
    elif op == "Concat":
        for n, rows in zip(ins, concat_ref([value(n).shape for n in ins], a["axis"], locs), strict=True):
            put(n, rows)
    elif op == "Split":
        axis = a.get("axis", 0)
        split = opt(1)
        dim = value(ins[0]).shape[axis]
        sizes = [int(s) for s in split] if split is not None else [dim // len(node.output)] * len(node.output)
        per = {q: outs[o] for q, o in enumerate(node.output) if o in outs}
        put(ins[0], split_ref(sizes, axis, per))
    elif op == "Slice":
        axes, steps = opt(3), opt(4)
        put(ins[0], slice_ref(value(ins[0]).shape, [int(v) for v in opt(1)], [int(v) for v in opt(2)],
                              None if axes is None else [int(v) for v in axes],
                              None if steps is None else [int(v) for v in steps], locs))
    elif op == "Pad":
        put(ins[0], pad_ref(value(ins[0]).shape, [int(v) for v in opt(1)], a.get("mode", "constant"), locs))
    elif op == "Gather":
        put(ins[0], gather_ref(value(ins[0]).shape, np.asarray(consts[ins[1]]), a.get("axis", 0), locs))
    elif op == "Gemm":
        on_conv = is_data(ins[0]) and not is_data(ins[1]) and not a.get("transA", 0) and feature_map_view(
            producers or {}, value, ins[0])
        la, lb = gemm_ref(value(ins[0]), value(ins[1]), locs, a.get("transA", 0), a.get("transB", 0),
                          a.get("alpha", 1.0), argmax=on_conv)
        put(ins[0], la)
        put(ins[1], lb)
    elif op == "MatMul":
        on_conv = value(ins[0]).ndim == 2 and is_data(ins[0]) and not is_data(ins[1]) and feature_map_view(
            producers or {}, value, ins[0])
        la, lb = matmul_ref(value(ins[0]), value(ins[1]), locs, argmax=on_conv)
        put(ins[0], la)
        put(ins[1], lb)
    elif op in ("Conv", "MaxPool", "AveragePool"):
        x = value(ins[0])
        in_sp = x.shape[2:]
        kernel = a["kernel_shape"] if "kernel_shape" in a else list(consts[ins[1]].shape[2:])
        nsp = len(in_sp)
        strides = a.get("strides", [1] * nsp)
        dil = a.get("dilations", [1] * nsp)
        begins = explicit_pads(a.get("auto_pad", "NOTSET"), a.get("pads"), in_sp, kernel, strides, dil)
        if op == "Conv":
            put(ins[0], conv_ref(x, consts[ins[1]], locs, strides, begins, dil, a.get("group", 1)))
        elif op == "MaxPool":
            put(ins[0], window_argmax_ref(x, locs, kernel, strides, begins, dil))
        else:
            put(ins[0], avgpool_ref(x, value(y).shape, locs, kernel, strides, begins))
    elif op in ("GlobalAveragePool", "GlobalMaxPool"):
        x = value(ins[0])
        put(ins[0], global_pool_ref(x, locs, list(range(2, x.ndim))))
    elif op in ("ReduceMean", "ReduceSum", "ReduceMax"):
        x = value(ins[0])
        axes = opt(1) if op == "ReduceSum" else a.get("axes")
        axes = list(range(x.ndim)) if axes is None else [int(v) for v in axes]
        put(ins[0], global_pool_ref(x, locs, axes, a.get("keepdims", 1)))
    elif op == "LSTM":
        ins += [""] * (8 - len(ins))
        outs_ = list(node.output) + [""] * (3 - len(node.output))
        layout = a.get("layout", 0)
        x, yv = value(ins[0]), value(outs_[0])
        y_locs = _tuples(outs.get(outs_[0], ()))
        yh_locs = _tuples(outs.get(outs_[1], ())) if outs_[1] else []
        h0 = value(ins[5]) if is_data(ins[5]) else None
        if layout == 1:  # map everything to layout 0 and back
            x, yv = x.transpose(1, 0, 2), yv.transpose(1, 2, 0, 3)
            y_locs = [(t, d, n, j) for n, t, d, j in y_locs]
            yh_locs = [(d, n, j) for n, d, j in yh_locs]
            h0 = None if h0 is None else h0.transpose(1, 0, 2)
        xl, hl = lstm_ref(x, consts[ins[1]], consts[ins[2]], yv, a.get("direction", "forward"), y_locs, yh_locs, h0)
        if layout == 1:
            xl = {(n, t, k) for t, n, k in xl}
            hl = {(n, d, k) for d, n, k in hl}
        put(ins[0], xl)
        if h0 is not None:
            put(ins[5], hl)
    elif op in PASS_MORE:  # Pow's exponent is not followed
        put(ins[0], broadcast_ref(value(ins[0]).shape, locs))
    elif op in ("Min", "Max"):
        vals = [value(n) if is_data(n) else None for n in ins]
        for n, rows in zip(ins, add_ref(vals, [-1.0 if op == "Min" else 1.0] * len(ins), locs), strict=True):
            put(n, rows)
    elif op == "Where":
        la, lb = where_ref(value(ins[0]), value(ins[1]).shape, value(ins[2]).shape, locs)
        put(ins[1], la)
        put(ins[2], lb)
    elif op in ("Resize", "Upsample"):
        x = value(ins[0])
        if op == "Upsample":
            sc = a.get("scales", opt(1))
            attrs = {"mode": a.get("mode", "nearest"), "coordinate_transformation_mode": "asymmetric",
                     "nearest_mode": "floor"}
        else:
            sc = opt(2)
            attrs = {k: v for k, v in a.items() if k != "axes"}
            if sc is not None and a.get("axes") is not None and len(sc):
                full = [1.0] * x.ndim
                for ax, v in zip(a["axes"], sc, strict=True):
                    full[ax % x.ndim] = float(v)
                sc = full
        sc = None if sc is None or not len(sc) else [float(v) for v in np.asarray(sc).reshape(-1)]
        put(ins[0], resize_ref(x, resize_tables(x.shape, value(y).shape, sc, attrs), locs))
    elif op == "ConvTranspose":
        put(ins[0], conv_transpose_ref(value(ins[0]), consts[ins[1]], value(y).shape, a, locs))
    elif op in ("DepthToSpace", "SpaceToDepth", "Tile", "Expand"):
        xs = value(ins[0]).shape
        extra = None if op in ("DepthToSpace", "SpaceToDepth") else value(y).shape if op == "Expand" else opt(1)
        put(ins[0], index_ref(index_forward_ref(op, xs, a, extra), xs, locs))
    else:
        raise NotImplementedError(op)
    return res


def trace_ref(model: onnx.ModelProto, values: dict[str, np.ndarray], source: str, start: str,
              start_locs: Iterable) -> dict[str, Locs]:
    """Walk ``model`` (nodes in topological order) backwards from ``start`` to ``source`` with the reference
    rules; a tensor read by several nodes gets the union. Only tensors computed from ``source`` are followed."""
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def value(name: str) -> np.ndarray:
        return values[name] if name in values else consts[name]

    producers = {o: n for n in model.graph.node for o in n.output if o}
    live = {source}
    for node in model.graph.node:
        if any(i in live for i in node.input):
            live.update(o for o in node.output if o)
    locs: dict[str, Locs] = {start: set(_tuples(start_locs))}
    for node in reversed(list(model.graph.node)):
        outs = {o: locs[o] for o in node.output if o and locs.get(o)}
        if not outs:
            continue
        for name, rows in backtrack_ref(node, value, consts, outs, producers).items():
            if name in live:
                locs.setdefault(name, set()).update(rows)
    return locs
