"""Slow, literal layer-wise discernible neurons (§3.1 Eq. 1–5, Alg. 1): python loops over neurons, nothing shared
with ``onnxfix.fixations.discernible``.

For a selected neuron θ of the succeeding layer and a neuron Θ of the current layer (the input of the node being
backtracked):

    Z_cur(Θ, θ) = A_cur · W_cur                       (Eq. 2; conv: Σ over θ's window of Θ's channel)
    Z_pre(Θ)    = max { A_pre · W_pre : connected preceding neurons }              (Eq. 3; conv: per channel,
                  summed over Θ's window; max pooling: weight 1; average pooling: weight 1/n; no weights: 0)
    Z_suc(Θ)    = #{θ' selected : Θ has the largest Z_cur(·, θ')}, or 1 when that is 0
    Ω_θ(Θ)      = α_suc · Z_suc(Θ) · (α_cur · Z_cur(Θ, θ) + α_pre · Z_pre(Θ))       (Eq. 1)
    N*_θ        = the k neurons with the largest Ω_θ (ties: the first)             (Eq. 4, Alg. 1 line 5)
    N*_cur      = ∪_θ N*_θ                                                          (Eq. 5, Alg. 1 line 7)

A conv neuron Θ of channel c for θ = (c_o, y, x) sits at θ's window centre (clipped into the input;
``location="centre"``) or at the in-input position of the window with the largest contribution of channel c
(``"argmax"``, first in row-major order). :func:`trace_ref` walks an ONNX model backwards with these rules for
Conv/Gemm/MatMul and the fixation reference for every other op.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from tests import fixation_reference as fixref

ELEMENTWISE = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
               "BatchNormalization", "Dropout", "Identity", "Cast", "Elu", "Selu", "Celu", "Softplus", "Softsign",
               "Gelu", "Erf", "Abs", "Neg", "Exp", "Mish", "ThresholdedRelu"}
RESHAPE = {"Flatten", "Reshape", "Squeeze", "Unsqueeze"}


class Net:
    """An ONNX model with every tensor's value: producers, attributes, constants."""

    def __init__(self, model: onnx.ModelProto, values: dict[str, np.ndarray]):
        self.model = model
        self.consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.values = values
        self.producer = {o: n for n in model.graph.node for o in n.output if o}

    def value(self, name: str) -> np.ndarray:
        return self.values[name] if name in self.values else self.consts[name]

    def is_data(self, name: str) -> bool:
        return bool(name) and name not in self.consts


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv_geometry(node: onnx.NodeProto, w_shape=None, x_shape=None):
    a = attrs(node)
    ks = list(a.get("kernel_shape", w_shape[2:] if w_shape is not None else [1, 1]))
    pads = list(a.get("pads", [0] * 4))
    return ks, list(a.get("strides", [1, 1])), pads[:2], list(a.get("dilations", [1, 1])), int(a.get("group", 1))


def _positions(oy, ox, ks, st, begins, dl, h, w):
    """(ky, kx, iy, ix) of one window, row-major, inside the input only."""
    out = []
    for ky in range(ks[0]):
        for kx in range(ks[1]):
            iy = oy * st[0] - begins[0] + ky * dl[0]
            ix = ox * st[1] - begins[1] + kx * dl[1]
            if 0 <= iy < h and 0 <= ix < w:
                out.append((ky, kx, iy, ix))
    return out


def channel_sum(x, w, c_in: int, c_out: int, cl: int, oy, ox, ks, st, begins, dl) -> float:
    """Σ over output (c_out, oy, ox)'s window of x[0, c_in] · w[c_out, cl] (in-input positions only)."""
    s = 0.0
    for ky, kx, iy, ix in _positions(oy, ox, ks, st, begins, dl, x.shape[2], x.shape[3]):
        s += float(x[0, c_in, iy, ix]) * float(w[c_out, cl, ky, kx])
    return s


def zpre_ref(net: Net, name: str, index: tuple[int, ...]) -> float:
    """Eq. 3 for the neuron ``index`` (full index, batch 0) of tensor ``name``."""
    shape = net.value(name).shape
    flat = int(np.ravel_multi_index(index, shape))
    while True:
        node = net.producer.get(name)
        if node is None:
            return 0.0
        x = node.input[0]
        if node.op_type in ELEMENTWISE | RESHAPE and net.is_data(x) and net.value(x).size == net.value(name).size:
            if node.op_type in ELEMENTWISE and net.value(x).shape != net.value(name).shape:
                break
            name = x
            continue
        break
    y_shape = net.value(name).shape
    idx = np.unravel_index(flat, y_shape)
    op = node.op_type
    if op == "Conv" and node.input[1] in net.consts:
        xv, w = net.value(x), net.consts[node.input[1]]
        ks, st, begins, dl, group = _conv_geometry(node, w.shape)
        _, c, y, xx = (int(v) for v in idx)
        cin_g = w.shape[1]
        g0 = c // (w.shape[0] // group) * cin_g
        return max(channel_sum(xv, w, g0 + cl, c, cl, y, xx, ks, st, begins, dl) for cl in range(cin_g))
    if op in ("MaxPool", "AveragePool") and len(node.output) == 1:
        a = attrs(node)
        xv = net.value(x)
        ks, st = list(a["kernel_shape"]), list(a.get("strides", [1, 1]))
        begins, dl = list(a.get("pads", [0] * 4))[:2], list(a.get("dilations", [1, 1]))
        _, c, y, xx = (int(v) for v in idx)
        pos = _positions(y, xx, ks, st, begins, dl, xv.shape[2], xv.shape[3])
        best = max(float(xv[0, c, iy, ix]) for _, _, iy, ix in pos)
        if op == "AveragePool":
            best /= ks[0] * ks[1] if a.get("count_include_pad", 0) else len(pos)
        return best
    if op in ("GlobalAveragePool", "GlobalMaxPool"):
        xv = net.value(x)
        c = int(idx[1])
        best = max(float(v) for v in xv[0, c].reshape(-1))
        return best / (xv[0, c].size if op == "GlobalAveragePool" else 1)
    if op in ("Gemm", "MatMul") and node.input[1] in net.consts and net.is_data(x):
        a = attrs(node)
        if a.get("transA", 0) or net.value(x).ndim != 2:
            return 0.0
        b = net.consts[node.input[1]]
        b = b.T if a.get("transB", 0) else b
        b = -b if a.get("alpha", 1.0) < 0 else b
        av = net.value(x)
        m, n = int(idx[0]), int(idx[1])
        return max(float(av[m, kk]) * float(b[kk, n]) for kk in range(av.shape[1]))
    return 0.0


def select_ref(cands: list[list[tuple[tuple[int, ...], float, float]]], alphas, k: int) -> tuple[list, set]:
    """Alg. 1. ``cands[j]`` lists (neuron, Z_cur, Z_pre) of succeeding neuron j in candidate order. Returns
    (per-j list of Ω in candidate order, the union of the chosen neurons)."""
    a_cur, a_pre, a_suc = alphas
    counter: dict[tuple[int, ...], int] = {}
    for lst in cands:  # Z_suc: who gives each θ its highest Z_cur
        best = 0
        for n in range(1, len(lst)):
            if lst[n][1] > lst[best][1]:
                best = n
        counter[lst[best][0]] = counter.get(lst[best][0], 0) + 1
    scores, chosen = [], set()
    for lst in cands:
        om = []
        for neuron, z_cur, z_pre in lst:
            z_suc = counter.get(neuron, 0) or 1
            om.append(a_suc * z_suc * (a_cur * z_cur + a_pre * z_pre))
        scores.append(om)
        ranked = sorted(range(len(lst)), key=lambda n: (-om[n], n))
        chosen.update(lst[n][0] for n in ranked[:k])
    return scores, chosen


def fc_ref(net: Net | None, an: str, a: np.ndarray, w: np.ndarray, locs: Iterable, alphas, k: int):
    """y = a @ w (2-D): selected (m, n) → chosen (m, i)."""
    rows = sorted({tuple(int(v) for v in r) for r in locs})
    cands = []
    for m, n in rows:
        lst = []
        for i in range(a.shape[1]):
            zp = zpre_ref(net, an, (m, i)) if net is not None else 0.0
            lst.append(((m, i), float(a[m, i]) * float(w[i, n]), zp))
        cands.append(lst)
    return select_ref(cands, alphas, k)


def conv_ref(net: Net | None, xn: str, x: np.ndarray, w: np.ndarray, locs: Iterable, strides, begins, dilations,
             group: int, alphas, k: int, location: str = "centre"):
    """2-D conv, batch 1: x (1, C, H, W), w (C_out, C_in/g, kh, kw); selected (0, co, oy, ox) → chosen
    (0, ci, iy, ix)."""
    _, _, h, wd = x.shape
    c_out, cin_g, kh, kw = w.shape
    rows = sorted({tuple(int(v) for v in r) for r in locs})
    cands = []
    for _, co, oy, ox in rows:
        if not _positions(oy, ox, (kh, kw), strides, begins, dilations, h, wd):
            continue  # θ's window lies wholly on padding: no neuron of the current layer is connected
        g0 = co // (c_out // group) * cin_g
        lst = []
        for cl in range(cin_g):
            ci = g0 + cl
            z_cur = channel_sum(x, w, ci, co, cl, oy, ox, (kh, kw), strides, begins, dilations)
            if location == "centre":
                ly = min(max(oy * strides[0] - begins[0] + kh // 2 * dilations[0], 0), h - 1)
                lx = min(max(ox * strides[1] - begins[1] + kw // 2 * dilations[1], 0), wd - 1)
            else:
                best, ly, lx = None, 0, 0
                for ky, kx, iy, ix in _positions(oy, ox, (kh, kw), strides, begins, dilations, h, wd):
                    c = float(x[0, ci, iy, ix]) * float(w[co, cl, ky, kx])
                    if best is None or c > best:
                        best, ly, lx = c, iy, ix
            zp = zpre_ref(net, xn, (0, ci, ly, lx)) if net is not None else 0.0
            lst.append(((0, ci, ly, lx), z_cur, zp))
        cands.append(lst)
    return select_ref(cands, alphas, k)


def trace_ref(model: onnx.ModelProto, values: dict[str, np.ndarray], source: str, start: str, start_locs: Iterable,
              alphas, k: int, location: str = "centre", layers: dict | None = None) -> dict[str, set]:
    """The fixation reference walk with Conv (2-D, constant filter), Gemm (A data, B constant, no transA) and 2-D
    MatMul replaced by Alg. 1; ``layers`` maps node names to their own α."""
    net = Net(model, values)
    consts = net.consts
    producers = net.producer
    live = {source}
    for node in model.graph.node:
        if any(i in live for i in node.input):
            live.update(o for o in node.output if o)
    locs: dict[str, set] = {start: {tuple(int(v) for v in r) for r in start_locs}}
    for node in reversed(list(model.graph.node)):
        outs = {o: locs[o] for o in node.output if o and locs.get(o)}
        if not outs:
            continue
        a = attrs(node)
        al = (layers or {}).get(node.name, alphas)
        sent = None
        if node.op_type == "Conv" and node.input[1] in consts and node.output[0] in outs:
            w = consts[node.input[1]]
            ks, st, begins, dl, group = _conv_geometry(node, w.shape)
            sent = {node.input[0]: conv_ref(net, node.input[0], net.value(node.input[0]), w, outs[node.output[0]],
                                            st, begins, dl, group, al, k, location)[1]}
        elif (node.op_type in ("Gemm", "MatMul") and node.input[1] in consts and not a.get("transA", 0)
              and net.is_data(node.input[0]) and net.value(node.input[0]).ndim == 2
              and consts[node.input[1]].ndim == 2 and node.output[0] in outs):
            b = consts[node.input[1]]
            b = b.T if a.get("transB", 0) else b
            b = -b if a.get("alpha", 1.0) < 0 else b
            sent = {node.input[0]: fc_ref(net, node.input[0], net.value(node.input[0]), b, outs[node.output[0]],
                                          al, k)[1]}
        if sent is None:
            sent = fixref.backtrack_ref(node, net.value, consts, outs, producers)
        for name, rows in sent.items():
            if name in live:
                locs.setdefault(name, set()).update(rows)
    return locs
