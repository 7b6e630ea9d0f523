"""Composite ops lowered to primitives before the backward pass (DESIGN §1): the ONNX ``LSTM``.

The LSTM is unrolled over its static sequence length T into MatMul/Add/Split/Sigmoid/Tanh/Mul/Concat nodes that
compute the same ``Y``, ``Y_h`` and ``Y_c`` (same tensor names), in the order of the ONNX spec (gates i, o, f, c):

    i = f(Xt·Wiᵀ + H·Riᵀ + Pi⊙C + Wbi + Rbi)        f = f(Xt·Wfᵀ + H·Rfᵀ + Pf⊙C + Wbf + Rbf)
    c = g(Xt·Wcᵀ + H·Rcᵀ + Wbc + Rbc)              C' = f⊙C + i⊙c
    o = f(Xt·Woᵀ + H·Roᵀ + Po⊙C' + Wbo + Rbo)       H' = o⊙h(C')

for ``forward``, ``reverse`` and ``bidirectional``, ``layout`` 0 and 1, optional initial states, biases and
peepholes. The lowered graph replaces the LSTM node in the model that runs, so the forward pass and the backward
pass see the same numbers; tests check it against ORT's own LSTM. Not lowered (→ ``UnsupportedOp``): ``clip``,
``input_forget``, activations other than Sigmoid/Tanh/Relu, a dynamic T, weights computed at run time, and
``sequence_lens`` shorter than T.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from onnxfix.graph import Graph, Node

_ACTS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}


def _in(node: Node, i: int) -> str:
    return node.inputs[i] if i < len(node.inputs) else ""


def why_not_lowerable(graph: Graph, node: Node) -> str | None:
    """``None`` if ``node`` (an LSTM) can be lowered, else the reason."""
    a = node.attrs
    if a.get("clip") is not None:
        return "the clip attribute is not supported"
    if int(a.get("input_forget", 0)):
        return "input_forget=1 is not supported"
    acts = [str(v).lower() for v in a.get("activations") or []]
    if any(v not in _ACTS for v in acts):
        return f"activations {acts} (only Sigmoid, Tanh, Relu are lowered)"
    for i in (1, 2, 3, 7):
        name = _in(node, i)
        if name and name not in graph.constants:
            return "W, R, B and P must be constants"
    xs = graph.shape(node.inputs[0])
    layout = int(a.get("layout", 0))
    if xs is None or len(xs) != 3 or xs[1 if layout else 0] is None:
        return "the sequence length must be static"
    T = int(xs[1 if layout else 0])
    sl = _in(node, 4)
    if sl:
        if sl not in graph.constants:
            return "sequence_lens computed at run time"
        if np.any(graph.constants[sl] != T):
            return "sequence_lens shorter than the sequence"
    return None


class _Emitter:
    def __init__(self, prefix: str, taken: set[str], dtype: np.dtype):
        self.prefix, self.taken, self.dtype = prefix, taken, dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def fresh(self, hint: str) -> str:
        while True:
            self.n += 1
            name = f"{self.prefix}{hint}_{self.n}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def op(self, op_type: str, inputs, n_outputs: int = 1, out: list[str] | None = None, **attrs):
        outs = out or [self.fresh(op_type.lower()) for _ in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh(f"node/{op_type}"),
                                           **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, arr, dtype=None) -> str:
        arr = np.asarray(arr, dtype=dtype or self.dtype)
        name = self.fresh("const")
        self.inits.append(numpy_helper.from_array(np.array(arr, order="C", copy=True), name))
        return name


def _lower_lstm(graph: Graph, node: Node, taken: set[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    a = node.attrs
    H = int(a["hidden_size"])
    layout = int(a.get("layout", 0))
    direction = a.get("direction", "forward")
    D = 2 if direction == "bidirectional" else 1
    W = graph.constants[node.inputs[1]]
    R = graph.constants[node.inputs[2]]
    dtype = W.dtype
    B = graph.constants[_in(node, 3)] if _in(node, 3) else None
    P = graph.constants[_in(node, 7)] if _in(node, 7) else None
    h0, c0 = _in(node, 5), _in(node, 6)
    acts = [_ACTS[str(v).lower()] for v in (a.get("activations") or ["Sigmoid", "Tanh", "Tanh"] * D)]
    if len(acts) == 3 and D == 2:
        acts = acts * 2
    e = _Emitter(f"lstm/{node.name}/", taken, dtype)
    x = node.inputs[0]
    xs = graph.shape(x)
    T = int(xs[1 if layout else 0])
    if layout:
        x = e.op("Transpose", [x], perm=[1, 0, 2])  # → [T, N, I]
        if h0:
            h0 = e.op("Transpose", [h0], perm=[1, 0, 2])  # [N, D, H] → [D, N, H]
        if c0:
            c0 = e.op("Transpose", [c0], perm=[1, 0, 2])
    outs = list(node.outputs) + [""] * (3 - len(node.outputs))
    ys_d, yh_d, yc_d = [], [], []
    for d in range(D):
        f_act, g_act, h_act = acts[3 * d: 3 * d + 3]
        bias = (B[d, :4 * H] + B[d, 4 * H:]) if B is not None else None
        xw = e.op("MatMul", [x, e.const(W[d].T)])  # [T, N, 4H]
        if bias is not None and np.any(bias):
            xw = e.op("Add", [xw, e.const(bias)])
        rt = e.const(R[d].T)
        pi, po, pf = ((e.const(P[d, :H]), e.const(P[d, H:2 * H]), e.const(P[d, 2 * H:])) if P is not None
                      else (None, None, None))
        if h0:
            h = e.op("Gather", [h0, e.const(np.array(d, np.int64), np.int64)], axis=0)
        else:
            h = None
        if c0:
            c = e.op("Gather", [c0, e.const(np.array(d, np.int64), np.int64)], axis=0)
        else:
            c = None
        reverse = direction == "reverse" or d == 1
        steps = range(T - 1, -1, -1) if reverse else range(T)
        hs: dict[int, str] = {}
        for t in steps:
            gates = e.op("Gather", [xw, e.const(np.array(t, np.int64), np.int64)], axis=0)  # [N, 4H]
            if h is not None:
                gates = e.op("Add", [gates, e.op("MatMul", [h, rt])])
            gi, go, gf, gc = e.op("Split", [gates, e.const(np.array([H] * 4, np.int64), np.int64)], n_outputs=4,
                                  axis=1)
            if pi is not None and c is not None:
                gi = e.op("Add", [gi, e.op("Mul", [c, pi])])
                gf = e.op("Add", [gf, e.op("Mul", [c, pf])])
            it = e.op(f_act, [gi])
            ct_ = e.op(g_act, [gc])
            new_c = e.op("Mul", [it, ct_])
            if c is not None:
                ft = e.op(f_act, [gf])
                new_c = e.op("Add", [e.op("Mul", [ft, c]), new_c])
            c = new_c
            if po is not None:
                go = e.op("Add", [go, e.op("Mul", [c, po])])
            ot = e.op(f_act, [go])
            h = e.op("Mul", [ot, e.op(h_act, [c])])
            hs[t] = h
        if T == 0:  # pragma: no cover - ONNX forbids an empty sequence in practice
            raise ValueError("empty sequence")
        if outs[0]:
            ys_d.append(e.op("Unsqueeze", [e.op("Concat", [e.op("Unsqueeze", [hs[t], e.const(np.array([0]), np.int64)])
                                                             for t in range(T)], axis=0),
                                           e.const(np.array([1]), np.int64)]))  # [T, 1, N, H]
        yh_d.append(h)
        yc_d.append(c)

    def stack(parts: list[str], axis: int) -> str:
        if len(parts) == 1:
            return parts[0]
        return e.op("Concat", parts, axis=axis)

    if outs[0]:
        y = stack(ys_d, 1)  # [T, D, N, H]
        e.op("Transpose" if layout else "Identity", [y], out=[outs[0]], **({"perm": [2, 0, 1, 3]} if layout else {}))
    for name, parts in ((outs[1], yh_d), (outs[2], yc_d)):
        if not name:
            continue
        st = stack([e.op("Unsqueeze", [p, e.const(np.array([0]), np.int64)]) for p in parts], 0)  # [D, N, H]
        e.op("Transpose" if layout else "Identity", [st], out=[name], **({"perm": [1, 0, 2]} if layout else {}))
    return e.nodes, e.inits


def lower(graph: Graph, nodes: list[Node]) -> Graph:
    """A new :class:`Graph` in which each of ``nodes`` (LSTMs) is replaced by its lowered primitives."""
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    g = model.graph
    taken = set(graph.tensors) | {n.name for n in graph.nodes}
    by_outputs = {tuple(n.outputs): n for n in nodes}
    new_nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    for pn in g.node:
        node = by_outputs.get(tuple(pn.output))
        if node is None or pn.op_type != "LSTM":
            new_nodes.append(pn)
            continue
        lowered, extra = _lower_lstm(graph, node, taken)
        new_nodes.extend(lowered)
        inits.extend(extra)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(inits)
    try:
        model = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - shapes are a help, not a requirement
        pass
    return Graph(model, original=graph.original)
