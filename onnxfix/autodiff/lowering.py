"""Composite ops lowered to primitives before the backward pass (DESIGN §1; a canonizer, canonize.py).

**Recurrent ops** — ``LSTM``, ``GRU`` and ``RNN`` are unrolled over their static sequence length T into
MatMul/Add/Split/activation/Mul/Concat nodes that compute the same outputs (same tensor names), in the gate order of
the ONNX spec:

    LSTM (i, o, f, c):  i = f(Xt·Wiᵀ + H·Riᵀ + Pi⊙C + Wbi + Rbi)    f = f(Xt·Wfᵀ + H·Rfᵀ + Pf⊙C + Wbf + Rbf)
                        c = g(Xt·Wcᵀ + H·Rcᵀ + Wbc + Rbc)          C' = f⊙C + i⊙c
                        o = f(Xt·Woᵀ + H·Roᵀ + Po⊙C' + Wbo + Rbo)   H' = o⊙h(C')
    GRU (z, r, h):      z = f(Xt·Wzᵀ + H·Rzᵀ + Wbz + Rbz)          r = f(Xt·Wrᵀ + H·Rrᵀ + Wbr + Rbr)
                        h = g(Xt·Whᵀ + (r⊙H)·Rhᵀ + Rbh + Wbh)      (linear_before_reset = 0)
                        h = g(Xt·Whᵀ + r⊙(H·Rhᵀ + Rbh) + Wbh)      (linear_before_reset = 1)
                        H' = (1 − z)⊙h + z⊙H
    RNN:                H' = f(Xt·Wᵀ + H·Rᵀ + Wb + Rb)

for ``forward``, ``reverse`` and ``bidirectional``, ``layout`` 0 and 1, optional initial states, biases and
peepholes, and ``sequence_lens`` (constant or computed at run time): item n's state is updated only at steps
t < L_n (so the forward direction's last state is the one at L_n − 1 and the reverse direction starts at L_n − 1),
and ``Y`` is zero at t ≥ L_n, as ORT computes. The lowered graph replaces the node in the model that runs, so the
forward pass and the backward pass see the same numbers; tests check it against ORT's own op and against the ONNX
backend test cases. Not lowered (→ ``UnsupportedOp``): ``clip``, LSTM's ``input_forget``, activations other than
Sigmoid/Tanh/Relu, a dynamic T, weights computed at run time.

**com.microsoft fused ops** that ORT's transformer optimiser writes — ``FastGelu``, ``BiasGelu``,
``SkipLayerNormalization`` (and ``SkipSimplifiedLayerNormalization``) — are expanded to the ONNX ops they fuse
(Tanh-approximated GELU, Erf GELU, Add + LayerNormalization), with the same output names.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from onnxfix.errors import UnsupportedOp
from onnxfix.graph import Graph, Node

_ACTS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}
#: Gates per op and the default activations per direction.
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def _in(node: Node, i: int) -> str:
    return node.inputs[i] if i < len(node.inputs) else ""


def _domain(node: Node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


#: the one reason a recurrent op cannot be lowered that a concrete input shape fixes (a per-shape gradient variant
#: of :class:`~onnxfix.autodiff.program.GradientProgram` unrolls it over the call's T)
STATIC_T = "the sequence length must be static"


def why_not_lowerable(graph: Graph, node: Node) -> str | None:
    """``None`` if ``node`` (any op with a lowering) can be lowered, else the reason."""
    entry = LOWERINGS.get((_domain(node), node.op_type))
    if entry is None:
        return f"no lowering for {node.op_type}"
    return entry[0](graph, node)


def has_lowering(node: Node) -> bool:
    """Whether ``node``'s op type is lowered to primitives before the sweep."""
    return (_domain(node), node.op_type) in LOWERINGS


#: Fused ops of other domains that are refused with a reason (they have no lowering yet).
REFUSED = {
    ("com.microsoft", "Attention"): "the fused com.microsoft.Attention has no gradient rule; export without ORT's "
                                    "transformer optimiser (plain MatMul/Softmax attention is supported)",
    ("com.microsoft", "MultiHeadAttention"): "the fused com.microsoft.MultiHeadAttention has no gradient rule; export "
                                             "without ORT's transformer optimiser",
}


def refusal(node: Node) -> str:
    """Why a node of a custom domain without a lowering has no gradient (for the error message)."""
    why = REFUSED.get((node.domain, node.op_type))
    return why or f"{node.domain}.{node.op_type} has no gradient rule"


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


# ---------------------------------------------------------------------------------------------------------------
# Recurrent ops


def _why_not_recurrent(graph: Graph, node: Node) -> str | None:
    """``None`` if ``node`` (an LSTM, GRU or RNN) can be lowered, else the reason."""
    a = node.attrs
    if a.get("clip") is not None:
        return "the clip attribute is not supported"
    if int(a.get("input_forget", 0)):
        return "input_forget=1 is not supported"
    acts = [str(v).lower() for v in a.get("activations") or []]
    if any(v not in _ACTS for v in acts):
        return f"activations {acts} (only Sigmoid, Tanh, Relu are lowered)"
    weights = (1, 2, 3, 7) if node.op_type == "LSTM" else (1, 2, 3)
    for i in weights:
        name = _in(node, i)
        if name and name not in graph.constants:
            return "W, R, B and P must be constants"
    xs = graph.shape(node.inputs[0])
    layout = int(a.get("layout", 0))
    if xs is None or len(xs) != 3 or xs[1 if layout else 0] is None:
        return STATIC_T
    return None


def _seq_masks(e: _Emitter, graph: Graph, node: Node, T: int):
    """A function t → (N, 1) float mask [t < L_n], or ``None`` when every sequence has the full length T."""
    sl = _in(node, 4)
    if not sl:
        return None
    if sl in graph.constants:
        L = graph.constants[sl].astype(np.int64).reshape(-1)
        if np.all(L >= T):
            return None
        return lambda t: e.const((L > t).astype(e.dtype)[:, None])
    seq = e.op("Unsqueeze", [e.op("Cast", [sl], to=onnx.TensorProto.INT64), e.const(np.array([1]), np.int64)])
    to = helper.np_dtype_to_tensor_dtype(np.dtype(e.dtype))
    return lambda t: e.op("Cast", [e.op("Greater", [seq, e.const(np.array(t), np.int64)])], to=to)


def _masked(e: _Emitter, m: str | None, new: str, old: str | None) -> str:
    """m ⊙ new + (1 − m) ⊙ old (old = 0 when ``None``); ``new`` when there is no mask."""
    if m is None:
        return new
    kept = e.op("Mul", [m, new])
    if old is None:
        return kept
    return e.op("Add", [kept, e.op("Mul", [e.op("Sub", [e.const(1.0), m]), old])])


def _lower_recurrent(graph: Graph, node: Node, taken: set[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    op = node.op_type
    a = node.attrs
    H = int(a["hidden_size"])
    layout = int(a.get("layout", 0))
    direction = a.get("direction", "forward")
    D = 2 if direction == "bidirectional" else 1
    G = _GATES[op]
    W = graph.constants[node.inputs[1]]
    R = graph.constants[node.inputs[2]]
    dtype = W.dtype
    B = graph.constants[_in(node, 3)] if _in(node, 3) else None
    P = graph.constants[_in(node, 7)] if op == "LSTM" and _in(node, 7) else None
    h0 = _in(node, 5)
    c0 = _in(node, 6) if op == "LSTM" else ""
    defaults = _DEFAULT_ACTS[op]
    acts = [_ACTS[str(v).lower()] for v in (a.get("activations") or defaults * D)]
    if len(acts) == len(defaults) and D == 2:
        acts = acts * 2
    lbr = int(a.get("linear_before_reset", 0))
    e = _Emitter(f"{op.lower()}/{node.name}/", taken, dtype)
    x = node.inputs[0]
    T = int(graph.shape(x)[1 if layout else 0])
    if layout:
        x = e.op("Transpose", [x], perm=[1, 0, 2])  # → [T, N, I]
        if h0:
            h0 = e.op("Transpose", [h0], perm=[1, 0, 2])  # [N, D, H] → [D, N, H]
        if c0:
            c0 = e.op("Transpose", [c0], perm=[1, 0, 2])
    mask_at = _seq_masks(e, graph, node, T)
    outs = list(node.outputs) + [""] * (3 - len(node.outputs))
    ys_d, yh_d, yc_d = [], [], []
    n_act = len(defaults)
    for d in range(D):
        fa = acts[n_act * d: n_act * d + n_act]
        wb = B[d, :G * H] if B is not None else None
        rb = B[d, G * H:] if B is not None else None
        if op == "GRU" and B is not None:
            # Xt·Wᵀ gets Wb (all gates) + Rb of z and r; Rbh stays inside the h gate (both forms of lbr).
            bias_x = wb + np.concatenate([rb[:2 * H], np.zeros(H, dtype)])
        else:
            bias_x = (wb + rb) if B is not None else None
        xw = e.op("MatMul", [x, e.const(W[d].T)])  # [T, N, G·H]
        if bias_x is not None and np.any(bias_x):
            xw = e.op("Add", [xw, e.const(bias_x)])
        h = e.op("Gather", [h0, e.const(np.array(d, np.int64), np.int64)], axis=0) if h0 else None
        c = e.op("Gather", [c0, e.const(np.array(d, np.int64), np.int64)], axis=0) if c0 else None
        reverse = direction == "reverse" or d == 1
        steps = range(T - 1, -1, -1) if reverse else range(T)
        hs: dict[int, str] = {}
        state = {"h": h, "c": c}
        for t in steps:
            m = mask_at(t) if mask_at is not None else None
            xt = e.op("Gather", [xw, e.const(np.array(t, np.int64), np.int64)], axis=0)  # [N, G·H]
            if op == "LSTM":
                new_h, new_c = _lstm_cell(e, xt, state["h"], state["c"], R[d], P[d] if P is not None else None,
                                          H, fa)
                state["c"] = _masked(e, m, new_c, state["c"])
            elif op == "GRU":
                new_h = _gru_cell(e, xt, state["h"], R[d], rb[2 * H:] if rb is not None else None, H, fa, lbr)
            else:
                new_h = _rnn_cell(e, xt, state["h"], R[d], fa)
            state["h"] = _masked(e, m, new_h, state["h"])
            hs[t] = _masked(e, m, new_h, None)
        if outs[0]:
            u0 = e.const(np.array([0]), np.int64)
            ys_d.append(e.op("Unsqueeze", [e.op("Concat", [e.op("Unsqueeze", [hs[t], u0]) for t in range(T)], axis=0),
                                           e.const(np.array([1]), np.int64)]))  # [T, 1, N, H]
        yh_d.append(state["h"])
        yc_d.append(state["c"])

    def stack(parts: list[str], axis: int) -> str:
        return parts[0] if len(parts) == 1 else e.op("Concat", parts, axis=axis)

    if outs[0]:
        y = stack(ys_d, 1)  # [T, D, N, H]
        e.op("Transpose" if layout else "Identity", [y], out=[outs[0]], **({"perm": [2, 0, 1, 3]} if layout else {}))
    for name, parts in ((outs[1], yh_d), (outs[2], yc_d)):
        if not name:
            continue
        st = stack([e.op("Unsqueeze", [p, e.const(np.array([0]), np.int64)]) for p in parts], 0)  # [D, N, H]
        e.op("Transpose" if layout else "Identity", [st], out=[name], **({"perm": [1, 0, 2]} if layout else {}))
    return e.nodes, e.inits


def _lstm_cell(e: _Emitter, gates: str, h: str | None, c: str | None, R: np.ndarray, P: np.ndarray | None, H: int,
               acts: list[str]) -> tuple[str, str]:
    f_act, g_act, h_act = acts
    if h is not None:
        gates = e.op("Add", [gates, e.op("MatMul", [h, e.const(R.T)])])
    gi, go, gf, gc = e.op("Split", [gates, e.const(np.array([H] * 4, np.int64), np.int64)], n_outputs=4, axis=1)
    if P is not None and c is not None:
        gi = e.op("Add", [gi, e.op("Mul", [c, e.const(P[:H])])])
        gf = e.op("Add", [gf, e.op("Mul", [c, e.const(P[2 * H:])])])
    new_c = e.op("Mul", [e.op(f_act, [gi]), e.op(g_act, [gc])])
    if c is not None:
        new_c = e.op("Add", [e.op("Mul", [e.op(f_act, [gf]), c]), new_c])
    if P is not None:
        go = e.op("Add", [go, e.op("Mul", [new_c, e.const(P[H:2 * H])])])
    new_h = e.op("Mul", [e.op(f_act, [go]), e.op(h_act, [new_c])])
    return new_h, new_c


def _gru_cell(e: _Emitter, gates: str, h: str | None, R: np.ndarray, rbh: np.ndarray | None, H: int,
              acts: list[str], lbr: int) -> str:
    f_act, g_act = acts
    gz, gr, gh = e.op("Split", [gates, e.const(np.array([H] * 3, np.int64), np.int64)], n_outputs=3, axis=1)
    if h is not None:
        hr = e.op("MatMul", [h, e.const(R[:2 * H].T)])
        rz, rr = e.op("Split", [hr, e.const(np.array([H, H], np.int64), np.int64)], n_outputs=2, axis=1)
        gz, gr = e.op("Add", [gz, rz]), e.op("Add", [gr, rr])
    z = e.op(f_act, [gz])
    r = e.op(f_act, [gr])
    rh = R[2 * H:].T
    if h is None:
        rec = e.const(rbh) if rbh is not None and np.any(rbh) else None
        if rec is not None:
            gh = e.op("Add", [gh, e.op("Mul", [r, rec]) if lbr else rec])
    elif lbr:
        lin = e.op("MatMul", [h, e.const(rh)])
        if rbh is not None and np.any(rbh):
            lin = e.op("Add", [lin, e.const(rbh)])
        gh = e.op("Add", [gh, e.op("Mul", [r, lin])])
    else:
        lin = e.op("MatMul", [e.op("Mul", [r, h]), e.const(rh)])
        if rbh is not None and np.any(rbh):
            lin = e.op("Add", [lin, e.const(rbh)])
        gh = e.op("Add", [gh, lin])
    hh = e.op(g_act, [gh])
    new_h = e.op("Mul", [e.op("Sub", [e.const(1.0), z]), hh])
    if h is not None:
        new_h = e.op("Add", [new_h, e.op("Mul", [z, h])])
    return new_h


def _rnn_cell(e: _Emitter, gates: str, h: str | None, R: np.ndarray, acts: list[str]) -> str:
    if h is not None:
        gates = e.op("Add", [gates, e.op("MatMul", [h, e.const(R.T)])])
    return e.op(acts[0], [gates])


# ---------------------------------------------------------------------------------------------------------------
# com.microsoft fused ops


def _why_not_fused(graph: Graph, node: Node) -> str | None:
    if node.op_type.startswith("Skip"):
        if any(o for o in node.outputs[1:3]):
            return "the mean / inverse-std-dev outputs of SkipLayerNormalization are not supported"
    return None


def _dtype_of(graph: Graph, name: str) -> np.dtype:
    t = graph.tensors.get(name)
    return t.dtype if t is not None and t.dtype is not None else np.dtype(np.float32)


def _lower_gelu(graph: Graph, node: Node, taken: set[str]):
    """FastGelu(x, bias) = GELU_tanh(x + bias); BiasGelu(x, bias) = GELU_erf(x + bias)."""
    e = _Emitter(f"{node.op_type.lower()}/{node.name}/", taken, _dtype_of(graph, node.inputs[0]))
    x = node.inputs[0]
    if _in(node, 1):
        x = e.op("Add", [x, node.inputs[1]])
    if node.op_type == "FastGelu":
        c = float(np.sqrt(2.0 / np.pi))
        inner = e.op("Mul", [e.op("Add", [x, e.op("Mul", [e.op("Mul", [e.op("Mul", [x, x]), x]), e.const(0.044715)])]),
                             e.const(c)])
        t = e.op("Add", [e.op("Tanh", [inner]), e.const(1.0)])
        e.op("Mul", [e.op("Mul", [x, t]), e.const(0.5)], out=[node.outputs[0]])
    else:
        erf = e.op("Erf", [e.op("Mul", [x, e.const(1.0 / np.sqrt(2.0))])])
        e.op("Mul", [e.op("Mul", [x, e.op("Add", [erf, e.const(1.0)])]), e.const(0.5)], out=[node.outputs[0]])
    return e.nodes, e.inits


def _lower_skip_ln(graph: Graph, node: Node, taken: set[str]):
    """SkipLayerNormalization(input, skip, gamma, beta?, bias?) = LayerNorm(input + skip + bias)·gamma + beta; the
    fourth output (when present) is input + skip + bias. The Simplified form is an RMS norm (no mean, no beta)."""
    e = _Emitter(f"skipln/{node.name}/", taken, _dtype_of(graph, node.inputs[0]))
    eps = float(node.attrs.get("epsilon", 1e-12))
    simplified = node.op_type == "SkipSimplifiedLayerNormalization"
    s = e.op("Add", [node.inputs[0], node.inputs[1]])
    bias = _in(node, 3 if simplified else 4)
    if bias:
        s = e.op("Add", [s, bias])
    outs = list(node.outputs) + [""] * (4 - len(node.outputs))
    if outs[3]:
        e.op("Identity", [s], out=[outs[3]])
    if simplified:
        sq = e.op("Mul", [s, s])
        ms = (e.op("ReduceMean", [sq, e.const(np.array([-1]), np.int64)], keepdims=1) if graph.opset >= 18 else
              e.op("ReduceMean", [sq], axes=[-1], keepdims=1))
        inv = e.op("Reciprocal", [e.op("Sqrt", [e.op("Add", [ms, e.const(eps)])])])
        e.op("Mul", [e.op("Mul", [s, inv]), node.inputs[2]], out=[outs[0]])
    else:
        ins = [s, node.inputs[2]] + ([node.inputs[3]] if _in(node, 3) else [])
        e.op("LayerNormalization", ins, out=[outs[0]], axis=-1, epsilon=eps)
    return e.nodes, e.inits


#: (domain, op type) → (why_not(graph, node) -> str | None, lower(graph, node, taken) -> (nodes, initializers)).
LOWERINGS: dict[tuple[str, str], tuple] = {
    ("", "LSTM"): (_why_not_recurrent, _lower_recurrent),
    ("", "GRU"): (_why_not_recurrent, _lower_recurrent),
    ("", "RNN"): (_why_not_recurrent, _lower_recurrent),
    ("com.microsoft", "FastGelu"): (_why_not_fused, _lower_gelu),
    ("com.microsoft", "BiasGelu"): (_why_not_fused, _lower_gelu),
    ("com.microsoft", "SkipLayerNormalization"): (_why_not_fused, _lower_skip_ln),
    ("com.microsoft", "SkipSimplifiedLayerNormalization"): (_why_not_fused, _lower_skip_ln),
}


def lower(graph: Graph, nodes: list[Node]) -> Graph:
    """A new :class:`Graph` in which each of ``nodes`` (ops with a lowering) is replaced by its primitives."""
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    g = model.graph
    taken = set(graph.tensors) | {n.name for n in graph.nodes}
    by_outputs = {tuple(n.outputs): n for n in nodes}
    new_nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    for pn in g.node:
        node = by_outputs.get(tuple(pn.output))
        if node is None or pn.op_type != node.op_type or not has_lowering(node):
            new_nodes.append(pn)
            continue
        why = why_not_lowerable(graph, node)
        if why is not None:  # e.g. STATIC_T on the generic graph: the caller builds per input shape instead
            err = UnsupportedOp("autodiff", [(node.op_type, node.name)])
            err.args = (f"{err.args[0]} ({node.name}: {why})",)
            raise err
        lowered, extra = LOWERINGS[(_domain(node), node.op_type)][1](graph, node, taken)
        new_nodes.extend(lowered)
        inits.extend(extra)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(inits)
    if any(n.op_type == "LayerNormalization" for n in new_nodes) and _opset(model) < 17:
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                imp.version = 17
    try:
        model = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - shapes are a help, not a requirement
        pass
    return Graph(model, original=graph.original)


def _opset(model: onnx.ModelProto) -> int:
    return next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
