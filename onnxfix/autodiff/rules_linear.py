"""VJP rules of the linear-algebra ops: Gemm, MatMul (batched, broadcast, 1-D), Einsum.

``Gemm``/``MatMul`` with transposed operands (a constant when the operand is a weight), ``ReduceSum`` over
broadcast batch axes.
"""

from __future__ import annotations

import numpy as np

from onnxfix.autodiff.emitter import Builder, broadcast_sym
from onnxfix.autodiff.registry import vjp
from onnxfix.autodiff.ruletools import in_, none
from onnxfix.graph import Node


@vjp("Gemm")
def gemm(b: Builder, node: Node, gy):
    """Y = α·A'B' + β·C with A' = Aᵀ if transA, B' = Bᵀ if transB."""
    a_, b_ = node.inputs[0], node.inputs[1]
    c_ = in_(node, 2)
    g = gy[0]
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    ta, tb = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    out = none(node)
    if b.needs(a_):
        if not ta:
            out[0] = b.op("Gemm", [g, b_], alpha=alpha, transA=0, transB=1 - tb)
        else:
            out[0] = b.op("Gemm", [b_, g], alpha=alpha, transA=tb, transB=1)
    if b.needs(b_):
        if not tb:
            out[1] = b.op("Gemm", [a_, g], alpha=alpha, transA=1 - ta, transB=0)
        else:
            out[1] = b.op("Gemm", [g, a_], alpha=alpha, transA=1, transB=ta)
    if c_ and b.needs(c_):
        gc = g if beta == 1.0 else b.mul(g, b.scalar(beta, like=c_))
        out[2] = b.unbroadcast(gc, c_, node.outputs[0])
    return out


def _swap_last(b: Builder, name: str, rank: int) -> str:
    if b.is_const(name):
        return b.const(np.swapaxes(b.value(name), -1, -2))
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return b.op("Transpose", [name], perm=perm)


@vjp("MatMul")
def matmul(b: Builder, node: Node, gy):
    """numpy matmul semantics: batched, broadcast batch axes, 1-D operands promoted and their axis dropped."""
    a_, b_ = node.inputs
    g = gy[0]
    sa, sb = b.sym(a_), b.sym(b_)
    if sa is None or sb is None:
        raise b.unsupported(node, "operand of unknown rank")
    ra, rb = len(sa), len(sb)
    out = none(node)
    if ra == 1 and rb == 1:
        if b.needs(a_):
            out[0] = b.mul(g, b_)
        if b.needs(b_):
            out[1] = b.mul(g, a_)
        return out
    batch = broadcast_sym(sa[:-2] if ra >= 2 else (), sb[:-2] if rb >= 2 else ())
    a2, b2 = sa if ra >= 2 else (1,) + sa, sb if rb >= 2 else sb + (1,)
    g2 = g
    if ra == 1:
        g2 = b.op("Unsqueeze", [g2, b.ints([-2])])
    if rb == 1:
        g2 = b.op("Unsqueeze", [g2, b.ints([-1])])
    if b.needs(a_):
        bb = b_ if rb >= 2 else b.op("Unsqueeze", [b_, b.ints([1])])
        ga = b.op("MatMul", [g2, _swap_last(b, bb, max(rb, 2))])  # batch + (M, K)
        out[0] = b.unbroadcast(ga, a_, batch + (a2[-2], a2[-1]))
    if b.needs(b_):
        aa = a_ if ra >= 2 else b.op("Unsqueeze", [a_, b.ints([0])])
        gb = b.op("MatMul", [_swap_last(b, aa, max(ra, 2)), g2])  # batch + (K, N)
        if rb == 1:
            gb = b.op("Squeeze", [gb, b.ints([-1])])
            out[1] = b.unbroadcast(gb, b_, batch + (b2[-2],))
        else:
            out[1] = b.unbroadcast(gb, b_, batch + (b2[-2], b2[-1]))
    return out


def parse_einsum(eq: str, n_inputs: int) -> tuple[list[str], str]:
    """(input terms, output term) of an Einsum equation, the ellipsis as ``.`` (implicit output: the letters that
    appear once, in alphabetical order, after the ellipsis)."""
    eq = eq.replace(" ", "").replace("...", ".")
    if "->" in eq:
        lhs, rhs = eq.split("->")
    else:
        lhs = eq
        letters = [c for c in lhs.replace(",", "") if c != "."]
        rhs = ("." if "." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    terms = lhs.split(",")
    if len(terms) != n_inputs:
        raise ValueError(f"equation {eq!r} has {len(terms)} operands, the node {n_inputs}")
    return terms, rhs


def _eq(t: str) -> str:
    return t.replace(".", "...")


@vjp("Einsum")
def einsum(b: Builder, node: Node, gy):
    """The gradient of operand k is the Einsum of the output gradient with the other operands, into operand k's
    letters; letters that only operand k has (summed away) come back by ``Unsqueeze`` + ``Expand``. Not supported
    (refused): a letter repeated within one operand (diagonals/traces); an ellipsis that is not at the start of
    a term."""
    try:
        terms, rhs = parse_einsum(str(node.attrs["equation"]), len(node.inputs))
    except (KeyError, ValueError) as exc:
        raise b.unsupported(node, f"equation: {exc}") from None
    for t in terms:
        letters = t.replace(".", "")
        if len(set(letters)) != len(letters):
            raise b.unsupported(node, f"letter repeated within the operand {t!r} (diagonal)")
        if "." in t[1:]:
            raise b.unsupported(node, "an ellipsis that is not at the start of the operand")
    g = gy[0]
    out = none(node)
    for k, x in enumerate(node.inputs):
        if not b.needs(x):
            continue
        others = [(terms[j], node.inputs[j]) for j in range(len(terms)) if j != k]
        avail = set(rhs) | {c for t, _ in others for c in t}
        present = "".join(c for c in terms[k] if c in avail)
        eq = ",".join([_eq(rhs)] + [_eq(t) for t, _ in others]) + "->" + _eq(present)
        gk = b.op("Einsum", [g] + [name for _, name in others], equation=eq)
        missing = [i for i, c in enumerate(terms[k]) if c not in avail]
        if missing and "." in terms[k]:
            raise b.unsupported(node, "a letter summed within one operand next to an ellipsis")
        if missing:
            gk = b.op("Unsqueeze", [gk, b.ints(missing)])
            gk = b.op("Expand", [gk, b.shape_tensor(x)])
        if "." in terms[k]:
            gk = b._unbroadcast_dynamic(gk, x, None if b.rank(x) is None else _grad_rank(b, node, terms, rhs, k))
        out[k] = gk
    return out


def _grad_rank(b: Builder, node: Node, terms: list[str], rhs: str, k: int) -> int:
    """Rank of operand k's raw gradient: its letters plus the broadcast ellipsis rank of the others and the output."""
    ell = 0
    for t, name in zip(terms, node.inputs, strict=True):
        r = b.rank(name)
        if "." in t and r is not None:
            ell = max(ell, r - (len(t) - 1))
    return ell + len(terms[k]) - 1
