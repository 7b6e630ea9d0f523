"""``onnxfix export``: one ONNX file that returns the prediction *and* its explanation, for any runtime.

The exported model is the source model (its inputs and outputs unchanged, the original outputs bit-identical) plus
two outputs:

* ``explanation`` — float32 (N, H, W): the method's display map (what ``Explanation.heatmap`` is made from:
  Grad-CAM's ReLU(Σ_k α_k A^k), CAM's ReLU(Σ_k w_ck A^k), an input gradient's max_c |g|), upsampled in the graph
  with a bilinear ``Resize`` (half-pixel centres, as ``Explainer.explain``) to the input's H×W (``map="input"``,
  the default) or left at the method's own resolution (``map="layer"``: the layer for Grad-CAM-style methods and
  CAM; input-gradient methods are at the input already). Raw values by default; with ``normalise=True`` each map
  is scaled to [0, 1] (min → 0, max → 1, a constant map → 0) exactly as ``Explanation.heatmap`` is.
* ``target`` — int64 (N,): the explained class per batch item; the top class (``ArgMax`` of the logits per item,
  one-hot in the graph as the seed of the backward pass) or a fixed class (a constant).

The backward pass is the autodiff engine's (:func:`onnxfix.autodiff.build_backward`), grafted onto the forward
graph so that the forward runs once. Contract and examples: docs/export.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxfix.errors import InputError, OnnxfixError, UnsupportedModel
from onnxfix.sessions import make_session

#: method → (what it differentiates: "layer", "input", "both" or None for CAM, ReLU mode of the input gradient,
#: seed sign)
EXPORTABLE: dict[str, tuple[str | None, str, float]] = {
    "gradcam": ("layer", "gradient", 1.0),
    "gradcam++": ("layer", "gradient", 1.0),
    "counterfactual": ("layer", "gradient", -1.0),
    "saliency": ("input", "gradient", 1.0),
    "guided-backprop": ("input", "guided", 1.0),
    "deconvnet": ("input", "deconvnet", 1.0),
    "guided-gradcam": ("both", "guided", 1.0),
    "cam": (None, "gradient", 1.0),
    # one forward + backward too (pytorch-grad-cam 1.5.7's variants; Captum's InputXGradient)
    "hirescam": ("layer", "gradient", 1.0),
    "gradcam-elementwise": ("layer", "gradient", 1.0),
    "xgradcam": ("layer", "gradient", 1.0),
    "layercam": ("layer", "gradient", 1.0),
    "input-x-gradient": ("input", "gradient", 1.0),
}
#: Grad-CAM-style methods: their map is at the layer
LAYER_MAPS = ("gradcam", "gradcam++", "counterfactual", "cam", "hirescam", "gradcam-elementwise", "xgradcam",
              "layercam")
MAPS = ("input", "layer")
EXPLANATION, TARGET = "explanation", "target"
PREFIX = "onnxfix_export/"


@dataclass
class ExportInfo:
    """What :func:`export_model` built: the model, where it went, and the facts recorded in its metadata."""

    model: onnx.ModelProto
    path: Path | None
    method: str
    opset: int
    source_opset: int
    dynamic_batch: bool
    layer: str | None
    metadata: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Small graph-writing helper


class _Emitter:
    """Appends nodes/initializers with unique names, in the syntax of ``opset``."""

    def __init__(self, opset: int, taken: set[str]):
        self.opset = opset
        self.taken = taken
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def fresh(self, hint: str) -> str:
        while True:
            self._n += 1
            name = f"{PREFIX}{hint}_{self._n}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def const(self, value: Any, dtype: Any, hint: str = "c") -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.fresh("node/" + op_type), **attrs))
        return out

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int) -> str:
        # ReduceSum takes axes as an input from opset 13, the other reductions from opset 18
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.const(axes, np.int64, "axes")], keepdims=keepdims)
        return self.op(op_type, [x], axes=axes, keepdims=keepdims)

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        return self.op("Unsqueeze", [x, self.const(axes, np.int64, "axes")])

    def squeeze(self, x: str, axes: list[int]) -> str:
        return self.op("Squeeze", [x, self.const(axes, np.int64, "axes")])


# ---------------------------------------------------------------------------------------------------------------
# Grafting a backward model onto the forward


def _attr_bytes(node: onnx.NodeProto) -> bytes:
    return b"".join(a.SerializeToString() for a in sorted(node.attribute, key=lambda a: a.name))


def _graft(base: onnx.ModelProto, bwd: onnx.ModelProto, seed_name: str, seed_value: str, prefix: str,
           taken: set[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], dict[str, str]]:
    """The nodes and initializers of ``bwd`` that ``base`` lacks, renamed into ``prefix``; its seed input reads
    ``seed_value``. Forward nodes of ``bwd`` identical to ``base``'s (same op, inputs and attributes) are dropped:
    the forward runs once. Returns (nodes, initializers, {bwd tensor name: name in the export})."""
    g = base.graph
    produced: dict[str, tuple] = {}
    for n in g.node:
        sig = (n.op_type, n.domain, tuple(n.input), _attr_bytes(n))
        for o in n.output:
            produced[o] = sig
    base_inits = {t.name: t for t in g.initializer}
    base_names = set(produced) | set(base_inits) | {i.name for i in g.input}
    rename: dict[str, str] = {seed_name: seed_value}

    def fresh(name: str) -> str:
        new = prefix + name
        k = 2
        while new in taken or new in base_names:
            new = f"{prefix}{name}_{k}"
            k += 1
        taken.add(new)
        return new

    inits: list[onnx.TensorProto] = []
    for t in bwd.graph.initializer:
        if t.name in base_inits and base_inits[t.name].SerializeToString() == t.SerializeToString():
            continue
        if t.name in base_names or t.name in taken:
            rename[t.name] = fresh(t.name)
        c = onnx.TensorProto()
        c.CopyFrom(t)
        c.name = rename.get(t.name, t.name)
        taken.add(c.name)
        inits.append(c)
    nodes: list[onnx.NodeProto] = []
    for n in bwd.graph.node:
        ins = [rename.get(i, i) for i in n.input]
        sig = (n.op_type, n.domain, tuple(ins), _attr_bytes(n))
        if n.output and all(o in produced and produced[o] == sig for o in n.output if o):
            continue  # the same forward node: reuse base's tensor
        c = onnx.NodeProto()
        c.CopyFrom(n)
        del c.input[:]
        c.input.extend(ins)
        outs = []
        for o in n.output:
            if o and (o in base_names or o in taken):
                rename[o] = fresh(o)
            elif o:
                taken.add(o)
            outs.append(rename.get(o, o))
        del c.output[:]
        c.output.extend(outs)
        c.name = fresh("node/" + (n.name or n.op_type))
        nodes.append(c)
    return nodes, inits, rename


# ---------------------------------------------------------------------------------------------------------------
# The pipeline


def _explainer(source: Any, explainer_kwargs: dict) -> Any:
    from onnxfix.api import Explainer

    if isinstance(source, Explainer):
        return source
    return Explainer(source, **explainer_kwargs)


def _dynamic_copy(model: Any) -> onnx.ModelProto:
    """The folded forward with a symbolic batch axis (Reshapes to constant shapes copy the batch), as occlusion's
    batch-dynamic copy; validated by :func:`_verify` on the final export."""
    from onnxfix.methods.local_forward import copy_batch_in_reshapes

    m = onnx.ModelProto()
    m.CopyFrom(model.graph.model)
    g = m.graph
    for vi in list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.name in (model.input, *model.graph.outputs) and len(dims) and dims[0].dim_value == 1:
            dims[0].dim_param = "batch"
    del g.value_info[:]
    shapes = {n.input[1] for n in g.node if n.op_type == "Reshape" and len(n.input) > 1}
    copy_batch_in_reshapes(m, {t.name: numpy_helper.to_array(t) for t in g.initializer if t.name in shapes})
    return m


def _probe_inputs(model: Any, batch: int) -> np.ndarray:
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in model.input_shape]
    shape[0] = batch
    dt = model.graph.tensors[model.input].dtype or np.dtype(np.float32)
    rng = np.random.default_rng(1234)
    if np.dtype(dt).kind == "f":
        return rng.standard_normal(shape).astype(dt)
    return rng.integers(0, 256, size=shape).astype(dt)


def _verify(source: onnx.ModelProto, exported: onnx.ModelProto, model: Any, dynamic: bool) -> str | None:
    """``None`` when the export's original outputs equal the source's bit for bit on probe inputs (batch 1, and
    batch 2 against two batch-1 runs when the batch is dynamic), else what differs."""

    try:
        src = make_session(source)
        exp = make_session(exported)
    except Exception as exc:  # noqa: BLE001 - ORT raises many types
        return f"ONNX Runtime cannot load it: {(str(exc).strip().splitlines() or ['?'])[0][:300]}"
    names = [o.name for o in source.graph.output]
    x2 = _probe_inputs(model, 2)
    try:
        for k in range(2 if dynamic else 1):
            want = src.run(names, {model.input: x2[k:k + 1]})
            got = exp.run(names + [EXPLANATION, TARGET], {model.input: x2[k:k + 1]})
            for n, a, b in zip(names, want, got, strict=False):
                if not np.array_equal(a, b):
                    return f"output {n!r} differs from the source model's"
        if dynamic:
            got = exp.run(names + [EXPLANATION, TARGET], {model.input: x2})
            for i, n in enumerate(names):
                want = np.concatenate([src.run([n], {model.input: x2[k:k + 1]})[0] for k in range(2)])
                if not np.array_equal(want, got[i]):
                    return f"output {n!r} of a batch of 2 differs from two batches of 1"
            if got[-2].shape[0] != 2 or got[-1].shape != (2,):
                return "the explanation of a batch of 2 does not have 2 items"
    except Exception as exc:  # noqa: BLE001
        return f"ONNX Runtime fails on it: {(str(exc).strip().splitlines() or ['?'])[0][:300]}"
    return None


def export_model(source: Any, out: str | os.PathLike | None = None, method: str = "gradcam",
                 target: int | str | None = None, layer: str | None = None, map: str = "input",
                 normalise: bool = False, dynamic_batch: bool = True, overwrite: bool = False,
                 **explainer_kwargs: Any) -> ExportInfo:
    """Build (and optionally write) the model + explanation ONNX file (docs/export.md).

    Parameters
    ----------
    source : path, onnx.ModelProto or Explainer
        The model; an :class:`~onnxfix.api.Explainer` is used as it is (its preprocessing layout and labels).
    out : path, optional
        Where to write the ``.onnx`` file (atomically; an existing file only with ``overwrite``, never the source).
    method : str
        One of :data:`EXPORTABLE`: gradcam, gradcam++, counterfactual, saliency, guided-backprop, deconvnet,
        guided-gradcam, cam.
    target : int or str, optional
        A fixed class (index or label); default: the top class of each batch item, chosen in the graph.
    layer : str, optional
        Layer of Grad-CAM-style methods (default: the one ``explain`` picks).
    map : {"input", "layer"}
        ``explanation`` at the input's H×W (bilinear ``Resize`` in the graph) or at the method's own resolution.
    normalise : bool
        Scale each item's map to [0, 1] as ``Explanation.heatmap`` does.
    dynamic_batch : bool
        Give a fixed-batch-1 model a symbolic batch axis when a batch of 2 reproduces it exactly.
    **explainer_kwargs
        Passed to :class:`~onnxfix.api.Explainer` when ``source`` is not one (provider, labels, output, preprocess).

    Returns
    -------
    ExportInfo
    """
    import onnxfix
    from onnxfix.autodiff import build_backward
    from onnxfix.graph import Graph
    from onnxfix.methods import METHODS

    if method not in EXPORTABLE:
        hint = f"; {method} is not a single forward+backward" if method in METHODS else ""
        raise InputError(f"export: unknown or non-exportable method {method!r}{hint}; exportable: "
                         f"{', '.join(EXPORTABLE)}")
    if map not in MAPS:
        raise InputError(f"export: --map must be one of {', '.join(MAPS)}, got {map!r}")
    ex = _explainer(source, explainer_kwargs)
    mdl = ex.model
    layout = ex.spec.layout
    mdl.layout = layout
    why = METHODS[method].applies(mdl)
    if why:
        ok = [n for n in EXPORTABLE if n in METHODS and METHODS[n].applies(mdl) is None]
        raise UnsupportedModel(f"export: {method} cannot explain this model: {why}; exportable methods that work: "
                               f"{', '.join(ok) or 'none'}")
    head = mdl.head
    lshape = mdl.graph.shape(head.logits)
    if head.time_axis is not None or lshape is None or head.batch_axis not in (0, None) or head.class_axis == 0:
        raise UnsupportedModel(f"export: the explained output {head.output!r} (logits shape "
                               f"{list(lshape) if lshape else '?'}) is not one score vector per batch item; export "
                               "covers classifiers (N, classes); sequence outputs are explained with 'onnxfix MODEL "
                               "IMAGE --step T'")
    n_classes = lshape[head.class_axis]
    if not isinstance(n_classes, int):
        raise UnsupportedModel(f"export: the number of classes of {head.logits!r} is not static")
    fixed = None if target is None else mdl.class_index(target, n_classes)
    kind, mode, sign = EXPORTABLE[method]
    src_proto = mdl.graph.original
    source_opset = mdl.graph.opset
    in_shape = mdl.input_shape
    need_copy = dynamic_batch and len(in_shape) > 0 and in_shape[0] == 1

    from onnxfix.methods.layers import resolve_layer

    lay = resolve_layer(mdl, layer) if kind in ("layer", "both") else None
    if method == "cam":
        from onnxfix.methods.cam import cam_head

        lay, cam_w = cam_head(mdl)  # type: ignore[misc]
    options = {"target": "top" if fixed is None else fixed, "map": map, "normalise": bool(normalise),
               "layer": lay, "relu_mode": mode if kind in ("input", "both") else None, "seed_sign": sign}

    def build(dynamic: bool) -> tuple[onnx.ModelProto, int]:
        g = Graph.from_model(_dynamic_copy(mdl)) if dynamic else mdl.graph
        keep = [head.logits, mdl.input, *([lay] if lay else []), *g.outputs]
        try:
            from onnxfix.autodiff.builder import MIN_OPSET, TARGET_OPSET, fold_pads, upgrade_graph
        except ImportError:  # the engine's internals moved: build_backward still upgrades and folds on its own
            MIN_OPSET = TARGET_OPSET = 0  # noqa: N806
            fold_pads = upgrade_graph = None
        if upgrade_graph is not None and g.opset < MIN_OPSET:
            g = upgrade_graph(g, TARGET_OPSET)
        if fold_pads is not None:  # fold as build_backward does, so its forward nodes are ours and run once
            g = fold_pads(g, keep=keep)
        for _ in range(2):
            bwds = []
            if kind in ("input", "both"):
                bwds.append(("in", build_backward(g, head.logits, [mdl.input], mode=mode)))
            if kind in ("layer", "both"):
                bwds.append(("lay", build_backward(g, head.logits, [lay], mode="gradient")))
            need = max([g.opset] + [_opset_of(b[1][0]) for b in bwds])
            if need <= g.opset or upgrade_graph is None:
                break
            g = upgrade_graph(g, need)
        return _assemble(g, bwds, mdl, lay, fixed, n_classes, sign, method, map, normalise, layout,
                         cam_w if method == "cam" else None, dynamic or not (in_shape and in_shape[0] == 1)), g.opset

    dynamic = need_copy
    exported, opset = build(dynamic)
    problem = _verify(src_proto, exported, mdl, dynamic or not (in_shape and in_shape[0] == 1))
    if problem and dynamic:
        dynamic = False
        exported, opset = build(False)
        problem = _verify(src_proto, exported, mdl, False)
    if problem:
        raise UnsupportedModel(f"export: the exported model does not reproduce the source model: {problem}")
    meta = {
        "onnxfix.version": onnxfix.__version__,
        "onnxfix.export.method": method,
        "onnxfix.export.options": json.dumps(options, sort_keys=True),
        "onnxfix.export.opset": str(opset),
        "onnxfix.export.source_opset": str(source_opset),
        "onnxfix.export.outputs": json.dumps({EXPLANATION: "float32 (N, H, W)", TARGET: "int64 (N,)"}),
        "onnxfix.export.batch": "dynamic" if (dynamic or not (in_shape and in_shape[0] == 1)) else "fixed",
    }
    if opset != source_opset:
        meta["onnxfix.export.opset_note"] = (f"upgraded from opset {source_opset}: the gradient rules are written "
                                             f"for opset {opset}")
    props = {p.key: p.value for p in exported.metadata_props}
    props.update(meta)
    del exported.metadata_props[:]
    helper.set_model_props(exported, props)
    try:
        onnx.checker.check_model(exported, full_check=True)
    except Exception as exc:  # noqa: BLE001 - the checker raises several types
        raise UnsupportedModel(f"export: the exported model fails onnx.checker: "
                               f"{(str(exc).strip().splitlines() or ['?'])[0][:300]}") from None
    path = None
    if out is not None:
        path = write_model(exported, out, overwrite=overwrite, protect=[mdl.path] if mdl.path else [])
    return ExportInfo(exported, path, method, opset, source_opset,
                      meta["onnxfix.export.batch"] == "dynamic", lay, meta)


def _opset_of(m: onnx.ModelProto) -> int:
    return next((int(o.version) for o in m.opset_import if o.domain in ("", "ai.onnx")), 1)


def _assemble(g: Any, bwds: list, mdl: Any, lay: str | None, fixed: int | None, n_classes: int, sign: float,
              method: str, map_at: str, normalise: bool, layout: str, cam_w: np.ndarray | None,
              dynamic: bool) -> onnx.ModelProto:
    """The forward of ``g`` + the grafted backward passes + the seed and map nodes, as one model."""
    base = onnx.ModelProto()
    base.CopyFrom(g.model)
    taken = {n for node in base.graph.node for n in node.output} | {t.name for t in base.graph.initializer} | {
        i.name for i in base.graph.input}
    for name in (EXPLANATION, TARGET):
        if name in taken:
            raise UnsupportedModel(f"export: the model already has a tensor named {name!r}")
    e = _Emitter(g.opset, taken)
    head = mdl.head
    lt = g.tensors[head.logits].dtype or np.dtype(np.float32)
    # target (N,) and the seed: one-hot per batch item, shaped like the logits
    flat = e.op("Reshape", [head.logits, e.const([-1, n_classes], np.int64, "shape")])
    if fixed is None:
        e.op("ArgMax", [flat], out=TARGET, axis=1, keepdims=0)
    else:
        n = e.op("Slice", [e.op("Shape", [flat]), e.const([0], np.int64), e.const([1], np.int64)])
        e.op("Expand", [e.const([fixed], np.int64, "class"), n], out=TARGET)
    seed = None
    if bwds:
        onehot = e.op("OneHot", [TARGET, e.const(n_classes, np.int64, "depth"), e.const([0, sign], lt, "values")],
                      axis=-1)
        seed = e.op("Reshape", [onehot, e.op("Shape", [head.logits])])
    grads: dict[str, str] = {}
    for k, (which, (bm, seed_name, grad_names)) in enumerate(bwds):
        nodes, inits, rename = _graft(base, bm, seed_name, seed, f"{PREFIX}{which}{k}/", taken)
        e.nodes.extend(nodes)
        e.inits.extend(inits)
        for gname in grad_names.values():
            grads[which] = rename.get(gname, gname)
    # the map
    chan_axis = 3 if layout == "nhwc" else 1

    def layer_cam() -> str:
        G, A = grads["lay"], lay
        if method == "gradcam++":  # closed form as pytorch-grad-cam (methods/gradcam_pp.py)
            g2 = e.op("Mul", [G, G])
            g3 = e.op("Mul", [g2, G])
            sum_a = e.reduce("ReduceSum", A, [2, 3], 1)
            den = e.op("Add", [e.op("Add", [e.op("Mul", [e.const(2.0, lt), g2]), e.op("Mul", [sum_a, g3])]),
                               e.const(1e-6, lt)])
            aij = e.op("Where", [e.op("Equal", [G, e.const(0.0, lt)]), e.const(0.0, lt), e.op("Div", [g2, den])])
            w = e.reduce("ReduceSum", e.op("Mul", [e.op("Relu", [G]), aij]), [2, 3], 1)
        elif method in ("hirescam", "gradcam-elementwise", "layercam"):  # element-wise, summed over channels
            ga = e.op("Mul", [e.op("Relu", [G]) if method == "layercam" else G, A])
            ga = e.op("Relu", [ga]) if method == "gradcam-elementwise" else ga
            return e.op("Relu", [e.reduce("ReduceSum", ga, [1], 0)])
        elif method == "xgradcam":  # Σ_ij g·A / (Σ_ij A + eps)
            den = e.op("Add", [e.reduce("ReduceSum", A, [2, 3], 1), e.const(1e-7, lt)])
            w = e.reduce("ReduceSum", e.op("Div", [e.op("Mul", [G, A]), den]), [2, 3], 1)
        else:
            w = e.reduce("ReduceMean", G, [2, 3], 1)
        return e.op("Relu", [e.reduce("ReduceSum", e.op("Mul", [w, A]), [1], 0)])

    if method == "cam":
        wc = e.const(cam_w.astype(g.tensors[lay].dtype or np.float32), g.tensors[lay].dtype or np.float32, "cam_w")
        wt = e.unsqueeze(e.op("Gather", [wc, TARGET], axis=0), [2, 3])
        m = e.op("Relu", [e.reduce("ReduceSum", e.op("Mul", [wt, lay]), [1], 0)])
    elif method in LAYER_MAPS:
        m = layer_cam()
    else:
        gin = grads["in"]
        if method == "guided-gradcam":  # × Grad-CAM upsampled nearest (floor(dst·in/out)), as Captum
            cam = layer_cam()
            ishape = mdl.input_shape
            H, W = (ishape[1], ishape[2]) if layout == "nhwc" else (ishape[2], ishape[3])
            h, w = g.tensors[lay].shape[2], g.tensors[lay].shape[3]
            if not all(isinstance(v, int) for v in (H, W, h, w)):
                raise UnsupportedModel("export: guided-gradcam needs static input and layer sizes")
            iy = np.minimum((np.arange(H) * (h / H)).astype(np.int64), h - 1)
            ix = np.minimum((np.arange(W) * (w / W)).astype(np.int64), w - 1)
            up = e.op("Gather", [e.op("Gather", [cam, e.const(iy, np.int64, "iy")], axis=1),
                                 e.const(ix, np.int64, "ix")], axis=2)
            gin = e.op("Mul", [gin, e.unsqueeze(up, [chan_axis])])
        elif method == "input-x-gradient":
            gin = e.op("Mul", [gin, mdl.input])
        m = e.reduce("ReduceMax", e.op("Abs", [gin]), [chan_axis], 0)
    # to the input's resolution, normalised
    ishape = mdl.input_shape
    H, W = (ishape[1], ishape[2]) if layout == "nhwc" else (ishape[2], ishape[3])
    mshape = g.tensors[lay].shape if (lay and method in LAYER_MAPS) else None
    if map_at == "input" and mshape is not None and (mshape[2], mshape[3]) != (H, W):
        x4 = e.unsqueeze(m, [1])
        sizes = e.op("Concat", [e.op("Slice", [e.op("Shape", [x4]), e.const([0], np.int64), e.const([2], np.int64)]),
                                e.const([H, W], np.int64, "hw")], axis=0)
        x4 = e.op("Resize", [x4, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel")
        m = e.squeeze(x4, [1])
    if lt != np.float32:
        m = e.op("Cast", [m], to=TensorProto.FLOAT)
    if normalise:  # maps.normalise per item
        lo = e.reduce("ReduceMin", m, [1, 2], 1)
        hi = e.reduce("ReduceMax", m, [1, 2], 1)
        d = e.op("Sub", [hi, lo])
        pos = e.op("Greater", [d, e.const(0.0, np.float32)])
        q = e.op("Div", [e.op("Sub", [m, lo]), e.op("Where", [pos, d, e.const(1.0, np.float32)])])
        m = e.op("Where", [pos, q, e.const(0.0, np.float32)])
    e.op("Identity", [m], out=EXPLANATION)
    # assemble, drop what no output reads
    gr = base.graph
    all_nodes = list(gr.node) + e.nodes
    in_vi = next(i for i in gr.input if i.name == mdl.input)
    d0 = in_vi.type.tensor_type.shape.dim
    batch = (d0[0].dim_param or "batch") if dynamic and len(d0) else 1
    outputs = list(gr.output) + [
        helper.make_tensor_value_info(EXPLANATION, TensorProto.FLOAT, [batch, None, None]),
        helper.make_tensor_value_info(TARGET, TensorProto.INT64, [batch])]
    wanted = {o.name for o in outputs}
    keep: list[onnx.NodeProto] = []
    for nd in reversed(all_nodes):
        if any(o in wanted for o in nd.output if o):
            keep.append(nd)
            wanted.update(i for i in nd.input if i)
            for a in nd.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    for sn in sub.node:
                        wanted.update(i for i in sn.input if i)
    keep.reverse()
    inits = [t for t in list(gr.initializer) + e.inits if t.name in wanted]
    graph = helper.make_graph(keep, gr.name or "onnxfix_export", list(gr.input), outputs, initializer=inits,
                              doc_string=gr.doc_string)
    model = helper.make_model(graph, opset_imports=list(base.opset_import), producer_name=base.producer_name,
                              producer_version=base.producer_version, doc_string=base.doc_string)
    model.ir_version = max(base.ir_version, helper.find_min_ir_version_for(list(base.opset_import)))
    model.model_version = base.model_version
    model.domain = base.domain
    for p in base.metadata_props:
        model.metadata_props.add(key=p.key, value=p.value)
    # explanation shape where it is static (the checker's shape inference fills the rest)
    mh, mw = (H, W) if (map_at == "input" or mshape is None) else (mshape[2], mshape[3])
    dims = model.graph.output[-2].type.tensor_type.shape.dim
    for d, v in zip(dims[1:], (mh, mw), strict=True):
        if isinstance(v, int):
            d.ClearField("dim_param")
            d.dim_value = v
    return model


def write_model(model: onnx.ModelProto, out: str | os.PathLike, overwrite: bool = False,
                protect: list[str | os.PathLike] = ()) -> Path:
    """Write ``model`` to ``out`` atomically; an existing file only with ``overwrite``, never a ``protect`` file."""
    from onnxfix.io.atomic import write_atomic

    dest = Path(out)
    for p in protect:
        try:
            if dest.exists() and Path(p).exists() and dest.resolve() == Path(p).resolve():
                raise InputError(f"{dest}: refusing to overwrite the input model")
        except OSError:
            continue
    if dest.exists() and not overwrite:
        raise InputError(f"{dest} exists; pass --overwrite to replace it")
    if dest.exists() and dest.is_dir():
        raise InputError(f"{dest} is a folder; give the .onnx file to write")
    try:
        data = model.SerializeToString()
    except ValueError as exc:  # protobuf's 2 GB limit
        raise UnsupportedModel(f"export: the exported model cannot be serialised in one file ({exc})") from None
    return write_atomic(dest, lambda fh: fh.write(data), protect=protect)


# ---------------------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    from onnxfix.cli import add_model_options

    p = argparse.ArgumentParser(
        prog="onnxfix export",
        description="Write one ONNX file that returns the model's outputs plus 'explanation' (N, H, W) and "
                    "'target' (N,) — for any ONNX runtime (docs/export.md).")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--method", required=True, help=f"one of {', '.join(EXPORTABLE)}")
    p.add_argument("--target", default="top", help="'top' (per item, in the graph; default), a class index or label")
    p.add_argument("--layer", default=None, help="layer of Grad-CAM-style methods (default: as explain picks)")
    p.add_argument("--map", default="input", choices=list(MAPS),
                   help="explanation at the input's resolution (default) or at the method's own (the layer's)")
    p.add_argument("--normalise", "--normalize", action="store_true",
                   help="scale each map to [0, 1] as Explanation.heatmap (default: raw values)")
    p.add_argument("--static-batch", action="store_true",
                   help="keep a fixed batch of 1 (default: a symbolic batch axis where the model allows it)")
    p.add_argument("-o", "--out", required=True, help="the .onnx file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_model_options(p)
    return p


def cmd_export(argv: list[str]) -> int:
    """``onnxfix export MODEL --method M [--target top|INDEX|LABEL] [--map input|layer] [--normalise] -o OUT``."""
    from onnxfix.cli import _overrides

    a = _parser().parse_args(argv)
    target: int | str | None = None
    if a.target not in (None, "top"):
        target = int(a.target) if a.target.lstrip("-").isdigit() else a.target
    out = Path(a.out)
    if out.exists() and Path(a.model).exists() and out.resolve() == Path(a.model).resolve():
        raise InputError(f"{out}: refusing to overwrite the input model")
    if out.exists() and not a.overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it")
    info = export_model(a.model, out, method=a.method, target=target, layer=a.layer, map=a.map,
                        normalise=a.normalise, dynamic_batch=not a.static_batch, overwrite=a.overwrite,
                        provider=a.provider, labels=a.labels, output=a.output, preprocess=_overrides(a))
    batch = "dynamic batch" if info.dynamic_batch else "batch 1"
    opset = f"opset {info.opset}" + (f" (upgraded from {info.source_opset})" if info.opset != info.source_opset
                                     else "")
    layer = f", layer {info.layer}" if info.layer else ""
    print(f"{info.path}: {a.method}{layer}; outputs {', '.join(o.name for o in info.model.graph.output)}; "
          f"{opset}; {batch}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    try:
        sys.exit(cmd_export(sys.argv[1:]))
    except OnnxfixError as exc:
        print(f"onnxfix: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
