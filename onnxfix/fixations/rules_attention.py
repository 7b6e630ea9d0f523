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
"""

from __future__ import annotations

from onnxfix.fixations.registry import Context, Rule, register
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


@register("LayerNormalization", "SimplifiedLayerNormalization")
class LayerNormRule(PassThrough):
    """LayerNorm (per token over channels, then γ, β): the location passes to the data input."""


@register("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
class SkipLayerNormRule(Rule):
    """ORT's fused ``LN(input + skip + bias)``: the residual Add rule between ``input`` and ``skip``, then LayerNorm's
    pass-through."""

    def backtrack(self, node, ctx, out):
        y = node.outputs[0]
        if y not in out:
            return {}
        locs = out[y]
        ys = ctx.value(y).shape
        data = [n for n in node.inputs[:2] if ctx.is_data(n)]
        if len(data) <= 1:
            return {n: broadcast_to_input(locs, ctx.value(n).shape, ys) for n in data}
        add = Node(name=node.name + "/add", op_type="Add", inputs=tuple(data), outputs=(y,))
        return AddRule().backtrack(add, ctx, {y: locs})


__all__ = ["AttentionMatMul", "LayerNormRule", "SkipLayerNormRule", "is_attention"]
