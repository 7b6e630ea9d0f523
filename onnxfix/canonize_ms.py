"""Fused attention-era ops rewritten as the plain ONNX ops they fuse, before a graph is analysed (issue #12).

ORT's transformer optimiser (``onnxruntime.transformers.optimizer``) writes ``com.microsoft`` ops that hide what
every engine of onnxfix needs to see — the attention probabilities (a ``Softmax`` output), the LayerNorm, the
residual ``Add`` — and the ONNX ``Attention`` op (opset 23) does the same in the standard domain. Both engines
(autodiff's VJP rules, the fixation rules) and the attention methods (rollout, Chefer) read plain ops, so
:func:`decompose_fused` replaces each such node by the ops it computes, keeping its output names (a layer named
``…/norm1/LayerNormalization_output_0`` stays that name):

=================================  ==================================================================================
``FastGelu(x, b?)``                tanh GELU of ``x + b``: ``0.5·y·(1 + tanh(√(2/π)·(y + 0.044715·y³)))``
``BiasGelu(x, b)``, ``Gelu(x)``    erf GELU of ``x + b``: ``0.5·y·(1 + erf(y/√2))``
``QuickGelu(x)``                   ``x·sigmoid(α·x)`` (α = 1.702)
``SkipLayerNormalization``         ``s = (input + bias) + skip``; ``LayerNormalization(s, γ, β)``; output 3 is ``s``
``SkipSimplifiedLayerNormalization``  the same with an RMS norm (no mean, no β)
``Attention`` (ONNX, opset 23)     ``softmax((Q·√σ)(K·√σ)ᵀ + mask)·V`` per head (3-D inputs split into heads)
``Attention`` (com.microsoft)      ``[Q K V] = x·W + b`` split by ``qkv_hidden_sizes``, then as above, σ = ``scale``
``MultiHeadAttention``             separate 3-D ``query``, ``key``, ``value`` (+ packed bias), then as above
=================================  ==================================================================================

What is not decomposed stays in the graph untouched (a forward still runs on ONNX Runtime), and the engines that
need it refuse by the op's name with :func:`why_not` in the message: past key/value caches, causal masks on
unknown lengths, grouped-query heads, the ``qk_matmul_output`` / ``present`` outputs, rotary embeddings, packed
KV/QKV layouts of MultiHeadAttention, key-length ``mask_index`` forms. The gradient-free methods (occlusion, rise)
still work on such a model.

The module reads only ``onnx`` and ``numpy`` (``onnxfix.graph`` calls it before folding constants).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"

#: (domain, op type) of the ops this module decomposes (when :func:`why_not` says nothing against a node).
FUSED: frozenset[tuple[str, str]] = frozenset({
    (MS, "FastGelu"), (MS, "BiasGelu"), (MS, "Gelu"), (MS, "QuickGelu"), (MS, "SkipLayerNormalization"),
    (MS, "SkipSimplifiedLayerNormalization"), (MS, "Attention"), (MS, "MultiHeadAttention"), ("", "Attention"),
})

#: Methods that never read a gradient or a rule: what still works on a model with an undecomposed fused op.
GRADIENT_FREE = ("occlusion", "rise")


def _dom(node: onnx.NodeProto) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _in(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if i < len(node.input) else ""


def _out(node: onnx.NodeProto, i: int) -> str:
    return node.output[i] if i < len(node.output) else ""


def _opset(model: onnx.ModelProto) -> int:
    return next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)


class _Ctx:
    """What a decomposition may read: initializers, static shapes, element types, the opset; fresh names."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.opset = _opset(model)
        self.shapes: dict[str, tuple] = {}
        self.types: dict[str, int] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model).graph
        except Exception:  # noqa: BLE001 - shapes are a help, not a requirement
            inferred = g
        for vi in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
            tt = vi.type.tensor_type
            self.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        for t in g.initializer:
            self.types[t.name] = t.data_type
            self.shapes[t.name] = tuple(t.dims)
        self.taken = {n for node in g.node for n in list(node.output) + [node.name]} | set(self.inits) | \
            {i.name for i in g.input}
        self.count = 0

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    def np_dtype(self, name: str) -> np.dtype:
        t = self.types.get(name, TensorProto.FLOAT) or TensorProto.FLOAT
        return np.dtype(helper.tensor_dtype_to_np_dtype(t))


class _Emit:
    def __init__(self, ctx: _Ctx, node: onnx.NodeProto, dtype: np.dtype):
        self.ctx, self.dtype = ctx, dtype
        self.prefix = f"{node.name or node.op_type}/decomposed/"
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def fresh(self, hint: str) -> str:
        while True:
            self.ctx.count += 1
            name = f"{self.prefix}{hint}_{self.ctx.count}"
            if name not in self.ctx.taken:
                self.ctx.taken.add(name)
                return name

    def op(self, op_type: str, inputs, out: str | None = None, n_out: int = 1, **attrs):
        outs = [out] if out else [self.fresh(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh(f"node/{op_type}"), **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=None) -> str:
        name = self.fresh("const")
        self.inits.append(numpy_helper.from_array(np.array(value, dtype=dtype or self.dtype), name))
        return name

    def ints(self, value) -> str:
        return self.const(np.asarray(value, np.int64), np.int64)


# ------------------------------------------------------------------------------------------------ activations


def _gelu(e: _Emit, x: str, out: str, tanh: bool) -> None:
    if tanh:
        x3 = e.op("Mul", [e.op("Mul", [x, x]), x])
        inner = e.op("Mul", [e.op("Add", [x, e.op("Mul", [x3, e.const(0.044715)])]), e.const(np.sqrt(2.0 / np.pi))])
        t = e.op("Add", [e.op("Tanh", [inner]), e.const(1.0)])
    else:
        t = e.op("Add", [e.op("Erf", [e.op("Div", [x, e.const(np.sqrt(2.0))])]), e.const(1.0)])
    e.op("Mul", [e.op("Mul", [x, t]), e.const(0.5)], out=out)


def _dec_gelu(ctx: _Ctx, node: onnx.NodeProto, e: _Emit) -> None:
    x = node.input[0]
    if _in(node, 1):
        x = e.op("Add", [x, node.input[1]])
    if node.op_type == "QuickGelu":
        alpha = float(_attrs(node).get("alpha", 1.702))
        e.op("Mul", [x, e.op("Sigmoid", [e.op("Mul", [x, e.const(alpha)])])], out=node.output[0])
        return
    _gelu(e, x, node.output[0], tanh=node.op_type == "FastGelu")


# ------------------------------------------------------------------------------------------------ skip layer norm


def _why_skip_ln(ctx: _Ctx, node: onnx.NodeProto) -> str | None:
    if node.op_type == "SkipSimplifiedLayerNormalization" and (_out(node, 1) or _out(node, 2)):
        return "its mean / inverse-std-dev outputs are read"
    return None


def _dec_skip_ln(ctx: _Ctx, node: onnx.NodeProto, e: _Emit) -> None:
    a = _attrs(node)
    eps = float(a.get("epsilon", 1e-12))
    simplified = node.op_type == "SkipSimplifiedLayerNormalization"
    bias = _in(node, 3 if simplified else 4)
    x = e.op("Add", [node.input[0], bias]) if bias else node.input[0]
    s = e.op("Add", [x, node.input[1]], out=_out(node, 3) or None)
    gamma = node.input[2]
    if simplified:
        ms = _mean_last(e, e.op("Mul", [s, s]))
        inv = e.op("Reciprocal", [e.op("Sqrt", [e.op("Add", [ms, e.const(eps)])])])
        e.op("Mul", [e.op("Mul", [s, inv]), gamma], out=node.output[0])
        return
    beta = _in(node, 3)
    if ctx.opset >= 17:
        outs = [node.output[0], _out(node, 1), _out(node, 2)]
        while outs and not outs[-1]:
            outs.pop()
        e.nodes.append(helper.make_node("LayerNormalization", [s, gamma] + ([beta] if beta else []), outs,
                                        name=e.fresh("node/LayerNormalization"), axis=-1, epsilon=eps))
        return
    # before opset 17: the decomposed form (ReduceMean/Sub/Mul/Sqrt/Div), as the legacy exporter writes it
    mean = _mean_last(e, s, out=_out(node, 1) or None)
    d = e.op("Sub", [s, mean])
    var = _mean_last(e, e.op("Mul", [d, d]))
    inv = e.op("Reciprocal", [e.op("Sqrt", [e.op("Add", [var, e.const(eps)])])], out=_out(node, 2) or None)
    y = e.op("Mul", [e.op("Mul", [d, inv]), gamma], out=None if beta else node.output[0])
    if beta:
        e.op("Add", [y, beta], out=node.output[0])


def _mean_last(e: _Emit, x: str, out: str | None = None) -> str:
    if e.ctx.opset >= 18:
        return e.op("ReduceMean", [x, e.ints([-1])], out=out, keepdims=1)
    return e.op("ReduceMean", [x], out=out, axes=[-1], keepdims=1)


# ------------------------------------------------------------------------------------------------ attention


def _heads(e: _Emit, x: str, n_heads: int) -> str:
    """(B, S, H·d) → (B, H, S, d)."""
    return e.op("Transpose", [e.op("Reshape", [x, e.ints([0, 0, n_heads, -1])])], perm=[0, 2, 1, 3])


def _merge(e: _Emit, x: str, out: str) -> str:
    """(B, H, S, d) → (B, S, H·d)."""
    return e.op("Reshape", [e.op("Transpose", [x], perm=[0, 2, 1, 3]), e.ints([0, 0, -1])], out=out)


def _sdpa(e: _Emit, q: str, k: str, v: str, sqrt_scale: float | None, scale: float | None, bias: list[str],
          softcap: float = 0.0) -> str:
    """softmax(q·kᵀ (scaled) + Σ bias)·v on (B, H, S, d) tensors; the ``Softmax`` output is the attention."""
    if sqrt_scale is not None:
        q = e.op("Mul", [q, e.const(sqrt_scale)])
        k = e.op("Mul", [k, e.const(sqrt_scale)])
    s = e.op("MatMul", [q, e.op("Transpose", [k], perm=[0, 1, 3, 2])])
    if scale is not None:
        s = e.op("Mul", [s, e.const(scale)])
    for b in bias:
        s = e.op("Add", [s, b])
    if softcap > 0:
        s = e.op("Mul", [e.op("Tanh", [e.op("Div", [s, e.const(softcap)])]), e.const(softcap)])
    p = e.op("Softmax", [s], axis=-1)
    return e.op("MatMul", [p, v])


def _why_onnx_attention(ctx: _Ctx, node: onnx.NodeProto) -> str | None:
    a = _attrs(node)
    if _in(node, 4) or _in(node, 5):
        return "past_key / past_value caches are not decomposed"
    if _in(node, 6):
        return "nonpad_kv_seqlen is not decomposed"
    if any(_out(node, i) for i in (1, 2, 3)):
        return "its present_key / present_value / qk_matmul_output outputs are read"
    if int(a.get("qk_matmul_output_mode", 0)):
        return "qk_matmul_output_mode ≠ 0"
    if int(a.get("left_window_size", -1)) >= 0 or int(a.get("right_window_size", -1)) >= 0:
        return "sliding-window attention is not decomposed"
    rq, rk = ctx.rank(node.input[0]), ctx.rank(node.input[1])
    if rq not in (3, 4) or rk != rq:
        return "the rank of Q / K is unknown or not 3 / 4"
    if rq == 3:
        if "q_num_heads" not in a or int(a.get("kv_num_heads", a["q_num_heads"])) != int(a["q_num_heads"]):
            return "grouped-query heads (kv_num_heads ≠ q_num_heads) are not decomposed"
    else:
        hq, hk = ctx.shapes[node.input[0]][1], ctx.shapes[node.input[1]][1]
        if hq is None or hq != hk:
            return "grouped-query heads (or unknown head counts) are not decomposed"
    if int(a.get("is_causal", 0)):
        sq = ctx.shapes.get(node.input[0], ())
        sk = ctx.shapes.get(node.input[1], ())
        ax = 1 if rq == 3 else 2
        if len(sq) <= ax or len(sk) <= ax or not sq[ax] or not sk[ax]:
            return "is_causal with sequence lengths unknown before the run is not decomposed"
    m = _in(node, 3)
    if m and ctx.shapes.get(m) is not None and ctx.shapes[m] and ctx.shapes[m][-1] is None:
        return "a mask of unknown key length is not decomposed"
    return None


def _head_dim(ctx: _Ctx, node: onnx.NodeProto) -> int | None:
    a = _attrs(node)
    s = ctx.shapes.get(node.input[0])
    if s is None or s[-1] is None:
        return None
    return int(s[-1]) // int(a["q_num_heads"]) if len(s) == 3 else int(s[-1])


def _mask_bias(e: _Emit, ctx: _Ctx, mask: str) -> str:
    if ctx.types.get(mask) == TensorProto.BOOL:
        return e.op("Where", [mask, e.const(0.0), e.const(-np.inf)])
    return mask


def _dec_onnx_attention(ctx: _Ctx, node: onnx.NodeProto, e: _Emit) -> None:
    a = _attrs(node)
    q, k, v = node.input[0], node.input[1], node.input[2]
    three = ctx.rank(q) == 3
    if three:
        h = int(a["q_num_heads"])
        q, k, v = _heads(e, q, h), _heads(e, k, h), _heads(e, v, h)
    scale = a.get("scale")
    if scale is None:
        d = _head_dim(ctx, node)
        if d is None:
            raise _NotDecomposed("the head size is unknown before the run (no scale attribute)")
        scale = 1.0 / np.sqrt(d)
    bias = []
    if _in(node, 3):
        bias.append(_mask_bias(e, ctx, node.input[3]))
    if int(a.get("is_causal", 0)):
        ax = 1 if three else 2
        sq, sk = ctx.shapes[node.input[0]][ax], ctx.shapes[node.input[1]][ax]
        bias.append(e.const(np.where(np.tril(np.ones((sq, sk), bool)), 0.0, -np.inf)))
    y = _sdpa(e, q, k, v, float(np.sqrt(np.float32(scale))), None, bias, float(a.get("softcap", 0.0)))
    if three:
        _merge(e, y, node.output[0])
    else:
        e.op("Identity", [y], out=node.output[0])


def _why_ms_attention(ctx: _Ctx, node: onnx.NodeProto) -> str | None:
    a = _attrs(node)
    if int(a.get("unidirectional", 0)):
        return "unidirectional (causal) attention is not decomposed"
    if int(a.get("do_rotary", 0)):
        return "rotary embeddings are not decomposed"
    if _in(node, 4) or _in(node, 6) or _out(node, 1):
        return "past / present key-value caches are not decomposed"
    if _in(node, 1) not in ctx.inits:
        return "the QKV weights are computed at run time"
    m = _in(node, 3)
    if m and (ctx.rank(m) != 2 or ctx.types.get(m) not in (TensorProto.INT32, TensorProto.INT64)):
        return "only a raw (batch, sequence) 0/1 mask_index is decomposed"
    if ctx.rank(node.input[0]) != 3:
        return "the input is not (batch, sequence, hidden)"
    return None


def _dec_ms_attention(ctx: _Ctx, node: onnx.NodeProto, e: _Emit) -> None:
    a = _attrs(node)
    h = int(a["num_heads"])
    w = ctx.inits[node.input[1]]
    total = int(w.dims[1])
    sizes = [int(v) for v in a.get("qkv_hidden_sizes") or [total // 3] * 3]
    qkv = e.op("MatMul", [node.input[0], node.input[1]])
    if _in(node, 2):
        qkv = e.op("Add", [qkv, node.input[2]])
    q, k, v = e.op("Split", [qkv, e.ints(sizes)], n_out=3, axis=-1) if ctx.opset >= 13 else \
        e.op("Split", [qkv], n_out=3, axis=-1, split=sizes)
    q, k, v = _heads(e, q, h), _heads(e, k, h), _heads(e, v, h)
    scale = float(a.get("scale", 0.0)) or 1.0 / np.sqrt(sizes[0] // h)
    bias = []
    if _in(node, 3):
        bias.append(_padding_bias(e, node.input[3], float(a.get("mask_filter_value", -10000.0))))
    if _in(node, 5):
        bias.append(node.input[5])
    _merge(e, _sdpa(e, q, k, v, None, scale, bias), node.output[0])


def _padding_bias(e: _Emit, mask: str, fill: float) -> str:
    """(B, L) 0/1 key mask → (B, 1, 1, L) additive bias: 0 where kept, ``fill`` where masked."""
    m = e.op("Cast", [mask], to=helper.np_dtype_to_tensor_dtype(e.dtype))
    b = e.op("Mul", [e.op("Sub", [e.const(1.0), m]), e.const(fill)])
    return e.op("Reshape", [b, e.ints([0, 1, 1, -1])])


def _why_mha(ctx: _Ctx, node: onnx.NodeProto) -> str | None:
    a = _attrs(node)
    if int(a.get("unidirectional", 0)):
        return "unidirectional (causal) attention is not decomposed"
    if not _in(node, 1) or not _in(node, 2) or ctx.rank(node.input[1]) != 3 or ctx.rank(node.input[2]) != 3 \
            or ctx.rank(node.input[0]) != 3:
        return "packed QKV / KV or BNSH layouts are not decomposed (only separate 3-D query, key, value)"
    if _in(node, 4):
        return "key_padding_mask is not decomposed"
    if _in(node, 6) or _in(node, 7) or _out(node, 1) or _out(node, 2):
        return "past / present key-value caches are not decomposed"
    if _in(node, 3) and (node.input[3] not in ctx.inits or len(ctx.inits[node.input[3]].dims) != 1):
        return "the bias is not a constant vector"
    return None


def _dec_mha(ctx: _Ctx, node: onnx.NodeProto, e: _Emit) -> None:
    a = _attrs(node)
    h = int(a["num_heads"])
    q, k, v = node.input[0], node.input[1], node.input[2]
    if _in(node, 3):
        b = numpy_helper.to_array(ctx.inits[node.input[3]])
        dq = ctx.shapes[q][-1]
        dk = ctx.shapes[k][-1]
        if dq is None or dk is None:
            raise _NotDecomposed("the hidden sizes are unknown before the run")
        q = e.op("Add", [q, e.const(b[:dq])])
        k = e.op("Add", [k, e.const(b[dq:dq + dk])])
        v = e.op("Add", [v, e.const(b[dq + dk:])])
    dq = ctx.shapes[node.input[0]][-1]
    scale = float(a.get("scale", 0.0))
    if not scale:
        if dq is None:
            raise _NotDecomposed("the head size is unknown before the run (no scale attribute)")
        scale = 1.0 / np.sqrt(dq // h)
    bias = [node.input[5]] if _in(node, 5) else []
    _merge(e, _sdpa(e, _heads(e, q, h), _heads(e, k, h), _heads(e, v, h), None, scale, bias), node.output[0])


class _NotDecomposed(Exception):
    pass


def _never(ctx: _Ctx, node: onnx.NodeProto) -> str | None:
    return None


_TABLE = {
    (MS, "FastGelu"): (_never, _dec_gelu), (MS, "BiasGelu"): (_never, _dec_gelu), (MS, "Gelu"): (_never, _dec_gelu),
    (MS, "QuickGelu"): (_never, _dec_gelu),
    (MS, "SkipLayerNormalization"): (_why_skip_ln, _dec_skip_ln),
    (MS, "SkipSimplifiedLayerNormalization"): (_why_skip_ln, _dec_skip_ln),
    ("", "Attention"): (_why_onnx_attention, _dec_onnx_attention),
    (MS, "Attention"): (_why_ms_attention, _dec_ms_attention),
    (MS, "MultiHeadAttention"): (_why_mha, _dec_mha),
}


def why_not(model: onnx.ModelProto, node: onnx.NodeProto) -> str | None:
    """Why ``node`` (a fused op of :data:`FUSED`) is not decomposed; ``None`` if it is (or is not a fused op)."""
    entry = _TABLE.get((_dom(node), node.op_type))
    return None if entry is None else entry[0](_Ctx(model), node)


def kept_fused(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """The fused nodes :func:`decompose_fused` leaves in ``model``: (op type, node name, why)."""
    ctx = _Ctx(model)
    res = []
    for node in model.graph.node:
        entry = _TABLE.get((_dom(node), node.op_type))
        if entry is not None:
            why = entry[0](ctx, node)
            if why is not None:
                res.append((node.op_type, node.name, why))
    return res


def refusal(op_type: str, name: str, why: str, method: str) -> str:
    """The one-line refusal for a fused op that stayed fused (engines call it with their method name)."""
    return (f"{method} cannot explain through {op_type} (node {name}): {why}; methods that still work: "
            f"{', '.join(GRADIENT_FREE)}")


def decompose_fused(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every decomposable fused op (:data:`FUSED`) replaced by plain ONNX ops of the same outputs.

    Returns ``model`` itself when it has no such op (the common case costs one pass over the node list); else a
    copy. Nodes :func:`why_not` refuses stay as they are (see :func:`kept_fused`).
    """
    if not any((_dom(n), n.op_type) in FUSED for n in model.graph.node):
        return model
    ctx = _Ctx(model)
    new_nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    changed = False
    for node in model.graph.node:
        entry = _TABLE.get((_dom(node), node.op_type))
        if entry is None or entry[0](ctx, node) is not None:
            new_nodes.append(node)
            continue
        x0 = node.input[0]
        e = _Emit(ctx, node, ctx.np_dtype(x0))
        try:
            entry[1](ctx, node, e)
        except _NotDecomposed:
            new_nodes.append(node)
            continue
        new_nodes.extend(e.nodes)
        inits.extend(e.inits)
        changed = True
    if not changed:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    out.graph.initializer.extend(inits)
    return out


__all__ = ["FUSED", "GRADIENT_FREE", "decompose_fused", "kept_fused", "refusal", "why_not"]
