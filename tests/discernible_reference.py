"""Slow, obviously-correct layer-wise discernible neurons: Ω and the top-k choice as plain python loops.

Nothing is shared with ``onnxfix.fixations.discernible``. For a selected output neuron j and a candidate input
neuron i (definitions in that module's docstring):

    Z_cur(i, j) = max(a_i·w_ij, 0) / max_i' max(a_i'·w_i'j, 0)
    Z_pre(i)    = |a_i| / max |a|                                   (over the whole input tensor)
    Z_suc(i)    = S(i) / max S,  S(i) = Σ_{selected j} max(a_i·w_ij, 0)
    Ω(i, j)     = α_suc · Z_suc(i) · (α_cur · Z_cur(i, j) + α_pre · Z_pre(i))

Per selected j: the k candidates with a_i·w_ij > 0 and the largest Ω (ties: first candidate in order), or, when
none is positive, the first largest nonzero contribution among the candidates inside the input; when all are zero,
a conv's centre tap (first channel of the group) if inside the input, else the first candidate.
:func:`trace_ref` walks an ONNX model backwards with these rules for Conv/Gemm/MatMul and the fixation reference
for every other op.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from tests import fixation_reference as fixref


def _div(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def select_ref(cands: list[list[tuple[tuple[int, ...], float]]], a_abs_max: float, a_abs: dict, alphas, k: int,
               centres: list | None = None):
    """``cands[j]`` lists (input index, contribution) of selected output j in candidate order (positions outside
    the input left out); ``centres[j]`` is the input index of j's centre tap (None: none or outside). Returns
    (per-j list of (index, Ω) in candidate order, chosen input indices)."""
    ac, ap, asuc = alphas
    suc: dict[tuple[int, ...], float] = {}
    for lst in cands:
        for idx, c in lst:
            suc[idx] = suc.get(idx, 0.0) + max(c, 0.0)
    suc_max = max(suc.values(), default=0.0)
    scores, chosen = [], set()
    for j, lst in enumerate(cands):
        cmax = max((max(c, 0.0) for _, c in lst), default=0.0)
        om = []
        for idx, c in lst:
            z_cur = _div(max(c, 0.0), cmax)
            z_pre = _div(a_abs[idx], a_abs_max)
            z_suc = _div(suc[idx], suc_max)
            om.append((idx, asuc * z_suc * (ac * z_cur + ap * z_pre)))
        scores.append(om)
        elig = [(o, n) for n, ((idx, o), (_, c)) in enumerate(zip(om, lst, strict=True)) if c > 0]
        if elig:
            elig.sort(key=lambda t: (-t[0], t[1]))
            chosen.update(lst[n][0] for _, n in elig[:k])
        elif lst:  # no positive contribution: the first largest nonzero one, else the centre tap, else the first
            pool = [n for n in range(len(lst)) if lst[n][1] != 0]
            if not pool:
                centre = centres[j] if centres else None
                chosen.add(centre if centre is not None else lst[0][0])
                continue
            best = pool[0]
            for n in pool[1:]:
                if lst[n][1] > lst[best][1]:
                    best = n
            chosen.add(lst[best][0])
    return scores, chosen


def fc_ref(a: np.ndarray, w: np.ndarray, locs: Iterable, alphas, k: int):
    """y = a @ w (2-D): selected (m, n) → chosen (m, k). Returns (scores per selected output, chosen)."""
    chosen: set = set()
    scores = []
    rows = sorted({tuple(int(v) for v in r) for r in locs})
    for m in sorted({r[0] for r in rows}):
        sel = [r for r in rows if r[0] == m]
        cands = [[((m, kk), float(a[m, kk]) * float(w[kk, n])) for kk in range(a.shape[1])] for _, n in sel]
        a_abs = {(m, kk): abs(float(a[m, kk])) for kk in range(a.shape[1])}
        sc, ch = select_ref(cands, max(a_abs.values()), a_abs, alphas, k)
        scores += sc
        chosen |= ch
    return scores, chosen


def conv_ref(x: np.ndarray, w: np.ndarray, locs: Iterable, strides, begins, dilations, group: int, alphas, k: int):
    """2-D conv, batch 1: x (1, C, H, W), w (C_out, C_in/g, kh, kw); selected (0, co, oy, ox) → chosen
    (0, ci, iy, ix). Candidates in (channel, ky, kx) order."""
    _, c_in, h, wd = x.shape
    c_out, cin_g, kh, kw = w.shape
    cout_g = c_out // group
    rows = sorted({tuple(int(v) for v in r) for r in locs})
    cands, centres = [], []
    for _, co, oy, ox in rows:
        lst = []
        cy = oy * strides[0] - begins[0] + kh // 2 * dilations[0]
        cx = ox * strides[1] - begins[1] + kw // 2 * dilations[1]
        centres.append((0, co // cout_g * cin_g, cy, cx) if 0 <= cy < h and 0 <= cx < wd else None)
        for cl in range(cin_g):
            ci = co // cout_g * cin_g + cl
            for ky in range(kh):
                for kx in range(kw):
                    iy = oy * strides[0] - begins[0] + ky * dilations[0]
                    ix = ox * strides[1] - begins[1] + kx * dilations[1]
                    if 0 <= iy < h and 0 <= ix < wd:
                        lst.append(((0, ci, iy, ix), float(x[0, ci, iy, ix]) * float(w[co, cl, ky, kx])))
        cands.append(lst)
    a_abs = {(0, c, y, xx): abs(float(x[0, c, y, xx])) for c in range(c_in) for y in range(h) for xx in range(wd)}
    return select_ref(cands, max(a_abs.values()), a_abs, alphas, k, centres)


def trace_ref(model: onnx.ModelProto, values: dict[str, np.ndarray], source: str, start: str, start_locs: Iterable,
              alphas, k: int) -> dict[str, set]:
    """The fixation reference walk with Conv (2-D), Gemm (A data, B constant, no transA) and 2-D MatMul replaced
    by the discernible rule."""
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def value(name: str) -> np.ndarray:
        return values[name] if name in values else consts[name]

    producers = {o: n for n in model.graph.node for o in n.output if o}
    live = {source}
    for node in model.graph.node:
        if any(i in live for i in node.input):
            live.update(o for o in node.output if o)
    locs: dict[str, set] = {start: {tuple(int(v) for v in r) for r in start_locs}}
    for node in reversed(list(model.graph.node)):
        outs = {o: locs[o] for o in node.output if o and locs.get(o)}
        if not outs:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        sent = None
        if node.op_type == "Conv" and node.input[1] in consts:
            x = value(node.input[0])
            pads = list(attrs.get("pads", [0] * 4))
            sent = {node.input[0]: conv_ref(x, consts[node.input[1]], outs[node.output[0]],
                                            list(attrs.get("strides", [1, 1])), pads[:2],
                                            list(attrs.get("dilations", [1, 1])), int(attrs.get("group", 1)),
                                            alphas, k)[1]}
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in consts and not attrs.get("transA", 0):
            b = consts[node.input[1]]
            b = b.T if attrs.get("transB", 0) else b
            b = -b if attrs.get("alpha", 1.0) < 0 else b
            sent = {node.input[0]: fc_ref(value(node.input[0]), b, outs[node.output[0]], alphas, k)[1]}
        if sent is None:
            sent = fixref.backtrack_ref(node, value, consts, outs, producers)
        for name, rows in sent.items():
            if name in live:
                locs.setdefault(name, set()).update(rows)
    return locs
