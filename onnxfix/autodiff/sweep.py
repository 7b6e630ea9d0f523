"""The reverse sweep: which nodes need a backward, the walk from ``of`` back to the ``wrt`` tensors, and the
assembly of forward + backward into one model (DESIGN §1).

Only the nodes on a data path from a ``wrt`` tensor to ``of`` get backward nodes; gradients are accumulated with
``Sum`` where a tensor has several consumers; a dead-code pass keeps only what the outputs read. The sweep never
looks at the mode: the :class:`~onnxfix.autodiff.emitter.Builder`'s rule stack decides which rule runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxfix.autodiff import lowering
from onnxfix.autodiff.emitter import Builder
from onnxfix.autodiff.registry import MODE_TABLES, VJP_RULES, RuleStack
from onnxfix.errors import InputError, UnsupportedModel, UnsupportedOp
from onnxfix.graph import Graph, Node


def check_request(graph: Graph, of: str, wrt: Sequence[str], mode: str, activations: Sequence[str]) -> None:
    if mode not in MODE_TABLES:
        raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(MODE_TABLES)}")
    for name in [of, *wrt, *activations]:
        if name not in graph.tensors:
            raise InputError(f"tensor {name!r} is not in the model")
    for name in [of, *wrt]:
        if name in graph.constants:
            raise InputError(f"tensor {name!r} is a constant of the model; ask for a data tensor")
        dt = graph.tensors[name].dtype
        if dt is not None and dt.kind != "f":
            raise InputError(f"tensor {name!r} is of type {dt}; gradients need floating-point tensors")
    if not wrt:
        raise InputError("no tensors to differentiate with respect to (wrt is empty)")


def needed_nodes(graph: Graph, of: str, wrt: Sequence[str]) -> list[Node]:
    return graph.nodes_between(list(dict.fromkeys(wrt)), of)


def _why_missing(graph: Graph, n: Node, rules: RuleStack | None) -> str | None:
    """``None`` if node ``n`` can be differentiated (a rule, or a lowering that applies), else ``""`` or a reason."""
    if lowering.has_lowering(n):
        why = lowering.why_not_lowerable(graph, n)
        if why == lowering.STATIC_T and any(
                graph.shape(i) is None or None in (graph.shape(i) or ()) for i in graph.inputs):
            return None  # a dynamic-size model: each input shape gets its own unrolled variant
        return why
    if n.domain not in ("", "ai.onnx"):
        return lowering.refusal(n)
    if rules is None:
        return None if n.op_type in VJP_RULES else ""
    return None if n.op_type in rules else ""


def missing_vjp_rules(graph: Graph, sources: Sequence[str], target: str, rules: RuleStack | None = None
                      ) -> list[Node]:
    """Nodes on a data path from ``sources`` to ``target`` that the autodiff engine cannot differentiate
    (``rules``: the build's rule stack; default the base rules)."""
    return [n for n in graph.nodes_between(list(sources), target) if _why_missing(graph, n, rules) is not None]


def raise_missing(graph: Graph, nodes: Sequence[Node], rules: RuleStack | None = None) -> None:
    """:class:`UnsupportedOp` naming every node of ``nodes`` without a rule (with the reasons where known)."""
    bad: list[tuple[str, str]] = []
    reasons: list[str] = []
    for n in nodes:
        why = _why_missing(graph, n, rules)
        if why is not None:
            bad.append((n.op_type, n.name))
            if why:
                reasons.append(f"{n.name}: {why}")
    if bad:
        err = UnsupportedOp("autodiff", bad)
        if reasons:
            err.args = (f"{err.args[0]} ({'; '.join(reasons)})",)
        raise err


def reverse_sweep(graph: Graph, of: str, wrt: list[str], mode: str, nodes: list[Node], conv_input_grad: str,
                  strided: str = "exact", rules: RuleStack | None = None) -> Builder:
    """Walk ``nodes`` (topologically sorted) backwards from ``of``, calling each node's rule; returns the builder
    holding the backward nodes and ``b.grads`` (wrt tensor → gradient name)."""
    reach = set(wrt) | {o for n in nodes for o in n.outputs if o}
    t = graph.tensors[of]
    b = Builder(graph, mode, reach, conv_input_grad,
                float_dtype=t.dtype if t.dtype is not None and t.dtype.kind == "f" else np.float32,
                strided=strided, rules=rules)
    pending: dict[str, list[str]] = {of: [b.seed]}
    totals: dict[str, str | None] = {}

    def total(name: str) -> str | None:
        if name in totals:
            return totals[name]
        parts = pending.get(name)
        if not parts:
            res = None
        elif len(parts) == 1:
            res = parts[0]
        else:
            res = b.op("Sum", parts, hint="acc")
        totals[name] = res
        return res

    for node in reversed(nodes):
        gy = [total(o) if o else None for o in node.outputs]
        if all(g is None for g in gy):
            continue
        gx = b.apply(node, gy)
        for name, g in zip(node.inputs, gx, strict=False):
            if g is None or not b.needs(name):
                continue
            pending.setdefault(name, []).append(g)
    for w in wrt:
        g = total(w)
        b.grads[w] = g if g is not None else b.zeros_like(w)
    return b


def _tensor_type(graph: Graph, b: Builder, name: str) -> int:
    dt = b.dtype(name)
    return helper.np_dtype_to_tensor_dtype(dt) if dt is not None else TensorProto.FLOAT


def assemble(graph: Graph, b: Builder, of: str, wrt: list[str], activations: list[str]
              ) -> tuple[onnx.ModelProto, str, dict[str, str]]:
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    g = model.graph
    # Outputs: of, activations (graph inputs among them are answered from the feeds), gradients.
    out_names: list[str] = []
    input_names = {i.name for i in g.input}
    for name in [of, *activations]:
        if name not in input_names and name not in out_names:
            out_names.append(name)
    bwd = list(b.nodes)
    grad_names: dict[str, str] = {}
    renamed: dict[str, str] = {}
    produced_by_bwd = {o: n for n in bwd for o in n.output}
    used_twice = {v for v in b.grads.values() if list(b.grads.values()).count(v) > 1}
    for w in wrt:
        src = b.grads[w]
        dst = f"grad:{w}"
        if src in produced_by_bwd and src not in used_twice and src not in renamed:
            renamed[src] = dst
        else:
            bwd.append(helper.make_node("Identity", [src], [dst], name=b.fresh("node/out")))
        grad_names[w] = dst
    if renamed:
        for n in bwd:
            for i, v in enumerate(n.input):
                if v in renamed:
                    n.input[i] = renamed[v]
            for i, v in enumerate(n.output):
                if v in renamed:
                    n.output[i] = renamed[v]
    all_nodes = list(g.node) + bwd
    # Dead-code elimination from the outputs: forward nodes past ``of`` and unused backward nodes go.
    wanted = set(out_names) | set(grad_names.values())
    keep: list[onnx.NodeProto] = []
    for n in reversed(all_nodes):
        if any(o in wanted for o in n.output if o):
            keep.append(n)
            wanted.update(i for i in n.input if i)
            for a in n.attribute:  # subgraphs (If/Loop) read outer tensors
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    for sn in sub.node:
                        wanted.update(i for i in sn.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in list(g.initializer) + b.initializers if i.name in wanted]
    del g.initializer[:]
    g.initializer.extend(inits)
    # The seed input, shaped like ``of``.
    dims = b.sym(of)
    seed_vi = helper.make_tensor_value_info(b.seed, _tensor_type(graph, b, of),
                                            list(dims) if dims is not None else None)
    g.input.append(seed_vi)
    del g.output[:]
    for name in out_names:
        g.output.append(helper.make_tensor_value_info(name, _tensor_type(graph, b, name), None))
    for w in wrt:
        g.output.append(helper.make_tensor_value_info(grad_names[w], _tensor_type(graph, b, w), None))
    # value_info of dropped tensors would only confuse; keep those still produced.
    produced = {o for n in keep for o in n.output}
    vis = [vi for vi in g.value_info if vi.name in produced]
    del g.value_info[:]
    g.value_info.extend(vis)
    if b.required_opset > graph.opset:  # pragma: no cover - build_backward upgrades before this
        raise UnsupportedModel(f"autodiff: the backward pass needs opset {b.required_opset}")
    return model, b.seed, grad_names
