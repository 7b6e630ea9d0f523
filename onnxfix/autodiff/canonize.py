"""Canonizers: passes that rewrite the forward graph before the reverse sweep (Zennit's canonizers).

Each pass takes a :class:`~onnxfix.graph.Graph` and returns an equivalent one (the same graph when it has nothing to
do); the results are cached per graph. In the order :func:`~onnxfix.autodiff.builder.build_backward` runs them:

1. :func:`upgrade_graph` — a model older than the rules' ONNX syntax (opset 13) is converted with onnx's version
   converter to opset 17, and the copy's forward outputs are checked against the original's on ORT;
2. :func:`fold_pads` — zero ``Pad`` nodes that only feed a ``Conv`` are folded into the conv's pads;
3. :func:`lower_composites` — composite ops (``LSTM``, ``GRU``, ``RNN``, the ``com.microsoft`` fused ops) are
   replaced by primitives that compute the same outputs (lowering.py), so that only primitives need rules.

:func:`fold_batchnorm` (Zennit's ``SequentialMergeBatchNorm``) is not run by every build: the LRP method
(methods/lrp.py) runs it on its graph first, since the LRP rules, unlike gradients, see a layer and a following
BatchNormalization differently from the one folded layer.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfix.autodiff import lowering
from onnxfix.errors import UnsupportedModel
from onnxfix.graph import Graph, Node, spatial_pads
from onnxfix.sessions import make_session

#: Where a model is older than what its rules emit, a copy is upgraded to this opset.
TARGET_OPSET = 17

_UPGRADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _foldable_pad(graph: Graph, node: Node, keep: set[str]) -> tuple[list[int], Node] | None:
    """(spatial begin + end pads, the Conv) when ``node`` is a zero, constant-mode Pad of the spatial axes of an
    NCHW tensor whose only reader is a Conv with explicit pads; else ``None``."""
    pads = spatial_pads(node)
    if pads is None or node.outputs[0] in keep or any(q < 0 for q in pads) or node.attrs.get("value", 0.0) != 0.0:
        return None
    if len(node.inputs) > 2 and node.inputs[2] and node.inputs[2] not in graph.constants:  # a run-time pad value
        return None
    readers = graph.consumers(node.outputs[0])
    if len(readers) != 1 or readers[0].op_type != "Conv" or readers[0].inputs[0] != node.outputs[0]:
        return None
    conv = readers[0]
    if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        return None
    return pads, conv


def fold_pads(graph: Graph, keep: Sequence[str] = ()) -> Graph:
    """``graph`` with every zero Pad that only feeds a Conv folded into the Conv's own pads (same numbers).

    TF-style exports (EfficientNet's "static same padding") put an explicit Pad before many convs; differentiating
    through it costs a padded gradient map and a Slice per conv, the folded conv's backward gives the input's size
    directly. Tensors in ``keep`` (requested gradients/activations) are never folded away."""
    hit = _FOLDED.get(graph)
    if hit is not None and hit[0] == tuple(keep):
        return hit[1] or graph
    keep_set = set(keep)
    folds = {n.name: f for n in graph.nodes if (f := _foldable_pad(graph, n, keep_set)) is not None}
    if not folds:
        _FOLDED[graph] = (tuple(keep), None)  # never the graph itself: a weak key must not be held by its value
        return graph
    m = onnx.ModelProto()
    m.CopyFrom(graph.model)
    by_conv = {conv.name: (pads, n) for n, (pads, conv) in folds.items()}
    pad_nodes = {graph.node_by_name[n].outputs[0]: graph.node_by_name[n].inputs[0] for n in folds}
    keep_nodes = []
    for pn in m.graph.node:
        if pn.output and pn.output[0] in pad_nodes:
            continue
        if pn.op_type == "Conv" and pn.input and pn.input[0] in pad_nodes:
            conv = next(c for c in by_conv if graph.node_by_name[c].outputs[0] == pn.output[0])
            extra, _ = by_conv[conv]
            old = list(graph.node_by_name[conv].attrs.get("pads") or [0, 0, 0, 0])
            new = [old[i] + extra[i] for i in range(4)]
            attrs = [a for a in pn.attribute if a.name != "pads"]
            del pn.attribute[:]
            pn.attribute.extend(attrs + [helper.make_attribute("pads", new)])
            pn.input[0] = pad_nodes[pn.input[0]]
        keep_nodes.append(pn)
    return _rebuilt(_FOLDED, graph, keep, m, keep_nodes, set(pad_nodes))


def _rebuilt(cache: weakref.WeakKeyDictionary, graph: Graph, keep: Sequence[str], m: onnx.ModelProto,
             nodes: list[onnx.NodeProto], gone: set[str]) -> Graph:
    """``m`` (a rewritten copy of ``graph``'s model) with ``nodes`` as its nodes and no shape entries left for the
    tensors in ``gone``, analysed, and cached in ``cache`` under ``graph`` for ``keep`` (the folds' one ending)."""
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    vis = [vi for vi in m.graph.value_info if vi.name not in gone]
    del m.graph.value_info[:]
    m.graph.value_info.extend(vis)
    new_graph = Graph.from_model(m)
    cache[graph] = (tuple(keep), new_graph)
    return new_graph


def upgrade_graph(graph: Graph, target: int = TARGET_OPSET) -> Graph:
    """A copy of ``graph`` converted to opset ``target`` with onnx's version converter, checked against the
    original on ONNX Runtime; :class:`UnsupportedModel` with the reason when that fails."""
    hit = _UPGRADED.get(graph)
    if hit is not None and hit.opset >= target:
        return hit
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(copy.deepcopy(graph.model), target)
        new = Graph.from_model(converted)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UnsupportedModel(
            f"autodiff: the model's opset {graph.opset} is older than the gradient rules need ({target}) and "
            f"onnx's version converter cannot upgrade it: {first}") from None
    missing = [o for o in graph.outputs if o not in new.tensors]
    if missing:
        raise UnsupportedModel(f"autodiff: upgrading the model to opset {target} lost tensor(s) {missing[:4]}")
    _check_same_forward(graph, new, target)
    _UPGRADED[graph] = new
    return new


def _check_same_forward(old: Graph, new: Graph, target: int) -> None:
    """Run ``old`` and ``new`` on the same random feeds and compare. A graph with a non-float input (a Grad-CAM
    tail of paddle2onnx's OCR reads shape tensors computed by the trunk) has no feed we could make up — zeros
    break its Reshapes — so there only the upgraded model's session is built, not run."""
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in old.model.graph.input:
        if vi.name in old.constants:
            continue
        t = old.tensors[vi.name]
        shape = [d if d else 1 for d in (t.shape or ())]
        dt = t.dtype or np.dtype(np.float32)
        feeds[vi.name] = rng.standard_normal(shape).astype(dt) if dt.kind == "f" else None
    runnable = all(v is not None for v in feeds.values())
    try:
        outs = []
        for g in (old, new) if runnable else (new,):
            s = make_session(g.model)
            if runnable:
                outs.append(s.run(old.outputs, feeds))
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModel(f"autodiff: the model upgraded to opset {target} does not run: "
                               f"{str(exc).splitlines()[0][:300]}") from None
    if len(outs) != 2:
        return
    for name, a, b in zip(old.outputs, outs[0], outs[1], strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or (a.dtype.kind == "f" and not np.allclose(a, b, rtol=1e-4, atol=1e-5)):
            raise UnsupportedModel(f"autodiff: the model upgraded to opset {target} computes a different "
                                   f"{name!r} than the original")


# ---------------------------------------------------------------------------------------------------------------


def lower_composites(graph: Graph, nodes: Sequence[Node]) -> Graph:
    """``graph`` with every node of ``nodes`` that has a lowering replaced by its primitives."""
    todo = [n for n in nodes if lowering.has_lowering(n)]
    return lowering.lower(graph, todo) if todo else graph


# ---------------------------------------------------------------------------------------------------------------

_BN_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _foldable_bn(graph: Graph, node: Node, keep: set[str]) -> Node | None:
    """The Conv/Gemm whose output only ``node`` (an inference BatchNormalization with constant parameters) reads,
    with constant weight and bias; else ``None``."""
    if node.op_type != "BatchNormalization" or int(node.attrs.get("training_mode", 0) or 0):
        return None
    if any(o for o in node.outputs[1:]) or len(node.inputs) < 5 or any(i not in graph.constants
                                                                        for i in node.inputs[1:5]):
        return None
    p = graph.producer(node.inputs[0])
    if p is None or p.op_type not in ("Conv", "Gemm") or p.outputs[0] in keep or len(p.inputs) < 2:
        return None
    if len(graph.consumers(p.outputs[0])) != 1 or p.inputs[1] not in graph.constants:
        return None
    if len(p.inputs) > 2 and p.inputs[2] and p.inputs[2] not in graph.constants:
        return None
    if p.op_type == "Gemm" and (float(p.attrs.get("alpha", 1.0)) != 1.0 or float(p.attrs.get("beta", 1.0)) != 1.0):
        return None
    return p


def fold_batchnorm(graph: Graph, keep: Sequence[str] = ()) -> Graph:
    """``graph`` with every BatchNormalization that directly follows a Conv (or Gemm) folded into it — Zennit's
    ``SequentialMergeBatchNorm`` canonizer (LRP rules see one layer ``W·s, (b − μ)·s + β`` with
    ``s = γ / √(σ² + ε)``, not a layer followed by an affine map). The folded layer takes the BatchNormalization's
    output name, so the rest of the graph is unchanged; tensors in ``keep`` are never folded away. Exact in float64,
    stored in the weight's dtype (Zennit leaves an identity BatchNorm computing x/√(1 + ε) behind; see
    docs/decisions.md)."""
    hit = _BN_FOLDED.get(graph)
    if hit is not None and hit[0] == tuple(keep):
        return hit[1] or graph
    keep_set = set(keep)
    folds = {n.outputs[0]: (n, p) for n in graph.nodes if (p := _foldable_bn(graph, n, keep_set)) is not None}
    if not folds:
        _BN_FOLDED[graph] = (tuple(keep), None)
        return graph
    m = onnx.ModelProto()
    m.CopyFrom(graph.model)
    by_layer = {p.outputs[0]: (bn, p) for bn, p in folds.values()}
    new_inits = []
    nodes = []
    for pn in m.graph.node:
        if pn.op_type == "BatchNormalization" and pn.output and pn.output[0] in folds:
            continue
        if pn.output and pn.output[0] in by_layer:
            bn, p = by_layer[pn.output[0]]
            c = graph.constants
            gamma, beta, mean, var = (c[i].astype(np.float64) for i in bn.inputs[1:5])
            scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
            w = c[p.inputs[1]]
            m_out = scale.shape[0]
            bias = (c[p.inputs[2]].astype(np.float64) if len(p.inputs) > 2 and p.inputs[2] else np.zeros(1))
            bias = np.broadcast_to(bias.reshape(-1) if bias.size in (1, m_out) else bias, (m_out,))
            if p.op_type == "Conv":
                w2 = w.astype(np.float64) * scale.reshape([-1] + [1] * (w.ndim - 1))
            elif int(p.attrs.get("transB", 0)):
                w2 = w.astype(np.float64) * scale[:, None]
            else:
                w2 = w.astype(np.float64) * scale[None, :]
            b2 = (bias - mean) * scale + beta
            wn, bn_name = f"onnxfix/bnfold/{bn.name}/W", f"onnxfix/bnfold/{bn.name}/B"
            new_inits += [numpy_helper.from_array(w2.astype(w.dtype), wn),
                          numpy_helper.from_array(b2.astype(w.dtype), bn_name)]
            ins = list(pn.input)
            ins[1] = wn
            if len(ins) > 2:
                ins[2] = bn_name
            else:
                ins.append(bn_name)
            del pn.input[:]
            pn.input.extend(ins)
            pn.output[0] = bn.outputs[0]
        nodes.append(pn)
    m.graph.initializer.extend(new_inits)
    return _rebuilt(_BN_FOLDED, graph, keep, m, nodes, set(by_layer))
