"""CNN Fixations through attention (issue #12): the rules a vision transformer adds to the paper's.

Mopuri, Garg & Babu backtrack a selected neuron through each layer to the inputs that *contribute positively* to it
(§3.1, fc layers: the inputs ``a_k`` with ``a_k·w_kj > 0``). A transformer block is written in those terms:

* **Attention** ``out = softmax(QKᵀ)·V`` is a fully-connected layer whose weights are computed from the input: for a
  selected output ``out[h, t, d] = Σ_k A[h, t, k]·V[h, k, d]`` the inputs are the value entries ``V[h, k, d]`` with a
  positive contribution ``A[h, t, k]·V[h, k, d] > 0`` — the paper's fc rule with the attention weights as the
  weights (:class:`AttentionMatMul`). The weights are not backtracked (the paper never backtracks into a layer's
  weights), so the ``QKᵀ`` product is never entered; only the value path carries locations, down through the
  ``qkv`` projection (an fc layer) to the tokens that were attended to.
* **MLP** (``fc1`` → GELU → ``fc2``): fc rule, activation passes through (already in :mod:`onnxfix.fixations.rules`).
* **LayerNorm**: a per-token normalisation; like BatchNorm in the paper, the location passes through
  (:class:`LayerNormRule`; ORT's fused ``SkipLayerNormalization`` is the residual Add rule followed by it).
* **Residual Add**: the paper's Add rule — the branch with the larger value at the location (already there).
* The class token is a constant (Expand/Concat): locations on it stop; patch tokens go back through the
  Transpose/Reshape to the patch-embedding Conv, then the Conv rule to pixels.

Registered with the fixation rule table's decorator; ``MatMul`` is re-registered as :class:`AttentionMatMul`, which
keeps :class:`onnxfix.fixations.rules.MatMulRule`'s answer for every other MatMul unchanged.

**Selective variants** (:class:`AttentionPolicy`, the fixations method's ``attention`` option). Attention weights
are all positive, so the positive-contribution rule keeps every key token ``k`` whose value ``V[h, k, d]`` is
positive: after one block almost every token is selected. The paper meets the same spread where an fc layer reads a
conv feature map and keeps, per selected output, only the *argmax* of the contributions (§3.1; the authors'
``Fixations.fc``). In the data-dependent fc layer ``A·V`` the neurons that attention mixes are *tokens*: per
selected output token ``(h, t)`` (with its selected channels ``D``) keep the key token
``argmax_j A[h, t, j]·Σ_{d∈D} V[h, j, d]`` (``argmax``), or the ``k`` tokens of largest positive contribution
(``topk``), and in a kept token the value entries ``(j, d ∈ D)`` of positive contribution; a token with no positive
contribution keeps nothing, as under the positive rule. Everything else (fc, Add, LayerNorm, Conv) is the paper's
rule unchanged.
"""

from __future__ import annotations

import numpy as np

from onnxfix.fixations.registry import Context, Locations, Rule, SelectionPolicy, register
from onnxfix.fixations.rules import AddRule, MatMulRule, PassThrough, broadcast_to_input
from onnxfix.graph import Node

_THROUGH = ("Dropout", "Identity", "Cast")


def is_attention(ctx: Context, name: str) -> bool:
    """Whether ``name`` holds attention probabilities: a last-axis Softmax output (…, T, T), perhaps through
    Dropout/Identity/Cast."""
    g = ctx.graph
    node = g.producer(name)
    hops = 0
    while node is not None and node.op_type in _THROUGH and hops < 3:
        node, hops = g.producer(node.inputs[0]), hops + 1
    if node is None or node.op_type != "Softmax":
        return False
    shape = ctx.shape(node.outputs[0])
    if shape is None or len(shape) < 3 or shape[-1] != shape[-2]:
        return False
    return node.attrs.get("axis", -1) % len(shape) == len(shape) - 1


def has_attention(graph) -> bool:
    """Whether some MatMul reads a Softmax output as its left operand (perhaps through Dropout/Identity/Cast): the
    cheap, shape-free test of whether a model has ``softmax(QKᵀ)·V`` (a classifier's final Softmax does not count)."""
    for node in graph.nodes:
        if node.op_type != "MatMul":
            continue
        p, hops = graph.producer(node.inputs[0]), 0
        while p is not None and p.op_type in _THROUGH and hops < 3:
            p, hops = graph.producer(p.inputs[0]), hops + 1
        if p is not None and p.op_type == "Softmax":
            return True
    return False


@register("MatMul")
class AttentionMatMul(MatMulRule):
    """``softmax(QKᵀ)·V`` as a data-dependent fc layer: only ``V`` is backtracked, to the entries with a positive
    contribution ``A[t, k]·V[k, d]`` (module docstring); any other MatMul as :class:`MatMulRule`."""

    def backtrack(self, node: Node, ctx: Context, out):
        an, bn = node.inputs[0], node.inputs[1]
        if not (ctx.is_data(an) and ctx.is_data(bn) and is_attention(ctx, an)):
            return super().backtrack(node, ctx, out)
        sent = super().backtrack(node, ctx, out)
        return {bn: sent[bn]} if bn in sent else {}


def attention_select(node: Node, ctx: Context, out: dict[str, Locations], mode: str, k: int = 1) -> dict:
    """The selective attention rule on ``o = A·V`` (module docstring). The output neurons of this data-dependent fc
    layer are the tokens: for each selected output token ``(…, h, t)`` with selected channels ``D``, key token ``j``
    contributes ``A[…, h, t, j]·Σ_{d∈D} V[…, h, j, d]``; the ``k`` key tokens of largest positive contribution are
    kept (``argmax``: k = 1; ties to the lower token index), and in each the value entries ``(j, d)``, ``d ∈ D``,
    of positive contribution ``A[…, t, j]·V[…, j, d] > 0`` (the paper's fc rule inside the chosen token)."""
    an, bn = node.inputs[0], node.inputs[1]
    if not ctx.is_data(bn):
        return {}
    a, v = ctx.value(an), ctx.value(bn)
    locs = out[node.outputs[0]]
    if mode == "positive" or a.ndim < 2 or v.ndim < 2 or a.ndim != v.ndim:
        sent = MatMulRule().backtrack(node, ctx, out)
        return {bn: sent[bn]} if bn in sent else {}
    nb = a.ndim - 2
    keep = 1 if mode == "argmax" else int(k)
    rows = locs[np.lexsort(locs.T[::-1])]
    token = rows[:, :nb + 1]
    starts = np.flatnonzero(np.r_[True, np.any(token[1:] != token[:-1], axis=1)])
    ends = np.r_[starts[1:], len(rows)]
    parts = []
    for s0, s1 in zip(starts, ends, strict=True):
        pre = tuple(0 if dim == 1 else int(i) for dim, i in zip(a.shape[:nb], rows[s0, :nb], strict=True))
        prev = tuple(0 if dim == 1 else int(i) for dim, i in zip(v.shape[:nb], rows[s0, :nb], strict=True))
        t, dsel = int(rows[s0, nb]), rows[s0:s1, nb + 1]
        w = np.asarray(a[pre + (t,)], np.float64)  # (T,) the attention row
        vd = np.asarray(v[prev][:, dsel], np.float64)  # (T, |D|)
        c = w * vd.sum(axis=1)
        order = np.argsort(-c, kind="stable")[:keep]
        for j in order[c[order] > 0]:
            ds = dsel[w[j] * vd[j] > 0]
            if len(ds):
                parts.append(np.concatenate([np.broadcast_to(np.asarray(prev, np.int64), (len(ds), nb)),
                                             np.full((len(ds), 1), j, np.int64), ds[:, None]], axis=1))
    if not parts:
        return {}
    return {bn: np.unique(np.concatenate(parts).astype(np.int64), axis=0)}


class AttentionPolicy(SelectionPolicy):
    """The fixations tracer with a selective rule on ``softmax(QKᵀ)·V`` (``"argmax"`` or ``"topk"``; module
    docstring); every other node follows its op's rule. ``"positive"`` is the default rule itself."""

    name = "fixations-attention"

    def __init__(self, mode: str = "argmax", k: int = 3):
        if mode not in ("positive", "argmax", "topk"):
            raise ValueError(f"attention={mode!r}: one of positive, argmax, topk")
        self.mode, self.k = mode, int(k)

    def backtrack(self, node: Node, ctx: Context, out: dict[str, Locations]) -> dict[str, Locations] | None:
        if node.op_type != "MatMul" or self.mode == "positive":
            return None
        an, bn = node.inputs[0], node.inputs[1]
        if not (ctx.is_data(an) and ctx.is_data(bn) and is_attention(ctx, an)):
            return None
        return attention_select(node, ctx, out, self.mode, self.k)


@register("LayerNormalization", "SimplifiedLayerNormalization")
class LayerNormRule(PassThrough):
    """LayerNorm (per token over channels, then γ, β): the location passes to the data input."""


@register("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
class SkipLayerNormRule(Rule):
    """ORT's fused ``LN((input + bias) + skip)`` (a graph that :mod:`onnxfix.canonize_ms` did not rewrite): the
    residual Add rule between ``input + bias`` and ``skip`` for the locations of output 0 (through LayerNorm's
    pass-through) and of output 3 (the sum itself), as on the decomposed graph."""

    def backtrack(self, node, ctx, out):
        outs = [node.outputs[i] for i in (0, 3) if i < len(node.outputs) and node.outputs[i] in out]
        if not outs:
            return {}
        locs = np.unique(np.concatenate([out[o] for o in outs]), axis=0)
        y = outs[0]
        ys = ctx.value(y).shape
        data = [n for n in node.inputs[:2] if ctx.is_data(n)]
        if len(data) <= 1:
            return {n: broadcast_to_input(locs, ctx.value(n).shape, ys) for n in data}
        bias_at = 3 if node.op_type == "SkipSimplifiedLayerNormalization" else 4
        bias = node.inputs[bias_at] if len(node.inputs) > bias_at and node.inputs[bias_at] else ""
        if not bias or ctx.is_data(bias):
            add = Node(name=node.name + "/add", op_type="Add", inputs=tuple(data), outputs=(y,))
            return AddRule().backtrack(add, ctx, {y: locs})
        a, b = ctx.value(data[0]) + ctx.value(bias), ctx.value(data[1])  # (input + bias) against skip
        ca, cb = broadcast_to_input(locs, a.shape, ys), broadcast_to_input(locs, b.shape, ys)
        first = a[tuple(ca.T)] >= b[tuple(cb.T)]
        return {data[0]: ca[first], data[1]: cb[~first]}


__all__ = ["AttentionMatMul", "AttentionPolicy", "LayerNormRule", "SkipLayerNormRule", "attention_select",
           "has_attention", "is_attention"]
