"""The single source of truth about a model: ONNX → a networkx DiGraph of tensors and nodes.

What :class:`Graph` guarantees to the engines above it:

* every node has a unique name, its op type, its inputs/outputs, and **normalised attributes**: defaults filled in
  and attributes that newer opsets moved into inputs (Slice starts, Pad pads, Squeeze axes, Clip bounds, Split
  sizes, ReduceMean axes…) read from constants into ``attrs`` so that every rule sees one form;
* every constant (initializers, ``Constant`` nodes, ``Identity`` of a weight, and every shape-only subgraph —
  Shape/Gather/ConstantOfShape/Concat/Cast/Slice… feeding Pad or Reshape as in PyTorch's legacy exports) is
  **folded once**, by ONNX Runtime itself, into a read-only numpy array in ``constants``; the folded model is what
  the runtime executes, so both engines and the forward pass agree;
* every tensor has a shape where onnx shape inference can give one (``None`` per unknown dimension);
* nodes are in topological order; a cycle, a dangling input or a duplicated output name is an ``InputError``.

Decision: ``Shape`` is folded only when its input's shape is fully static after inference, so models with a
dynamic batch keep working for any batch size.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from onnxfix.canonize_ms import decompose_fused
from onnxfix.errors import InputError

# SHAPE_ONLY: ops that read only a shape; DISCRETE: ops whose output is an index chosen by the input's values —
# piecewise constant (zero gradient) and carrying no location of the input (CNN Fixations §III-D traces a captioner's
# words through m_{t−1}, not through the fed-back predicted word): data paths go through neither (onnxfix.ops)
from onnxfix.ops import DISCRETE, SHAPE_ONLY

#: Ops never folded even when their inputs are constant (random, or with side effects on shapes we keep).
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}

#: Largest constant (elements) that folding may create; bigger subgraphs stay as they are.
_MAX_FOLD_ELEMENTS = 50_000_000


@dataclass
class Node:
    """One ONNX node with normalised attributes."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""

    def __repr__(self) -> str:  # short, for messages
        return f"{self.op_type}({self.name})"


@dataclass
class Tensor:
    """A tensor of the graph: shape (ints, ``None`` where unknown), numpy dtype, producer and consumers."""

    name: str
    shape: tuple[int | None, ...] | None
    dtype: np.dtype | None
    producer: str | None = None
    consumers: list[str] = field(default_factory=list)


def _attr_value(a: onnx.AttributeProto) -> Any:
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, list):
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v]
    return v


def _dims(vi: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim)


def _dtype(vi: onnx.ValueInfoProto) -> np.dtype | None:
    t = vi.type
    if not t.HasField("tensor_type") or t.tensor_type.elem_type == 0:
        return None
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type))
    except (KeyError, TypeError, ValueError):
        return None


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def _opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; ORT is the judge of validity
        try:
            return shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001
            return model


def _static(shape: tuple[int | None, ...] | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def fold_constants(model: onnx.ModelProto, max_rounds: int = 6) -> onnx.ModelProto:
    """Fold every constant-only subgraph into initializers, using ONNX Runtime to evaluate it.

    Constant nodes, nodes whose inputs are all constant, and ``Shape``/``Size`` of statically shaped tensors are
    folded; the loop repeats because a fold can make more shapes static.
    """
    model = copy.deepcopy(model)
    for _ in range(max_rounds):
        model = _infer(model)
        g = model.graph
        const: dict[str, np.ndarray] = {i.name: None for i in g.initializer}  # type: ignore[misc]
        shapes = {vi.name: _dims(vi) for vi in list(g.value_info) + list(g.input) + list(g.output)}
        folded_nodes: list[onnx.NodeProto] = []
        direct: dict[str, np.ndarray] = {}  # values computed here without ORT
        for node in g.node:
            if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLD or not node.output:
                continue
            ins = [i for i in node.input if i]
            if node.op_type == "Constant":
                v = _constant_node_value(node)
                if v is None:
                    continue
                direct[node.output[0]] = v
            elif node.op_type in ("Shape", "Size") and ins and _static(shapes.get(ins[0])):
                shp = np.array(shapes[ins[0]], dtype=np.int64)
                if node.op_type == "Size":
                    direct[node.output[0]] = np.array(int(np.prod(shp)), dtype=np.int64)
                else:
                    attrs = {a.name: a.i for a in node.attribute}
                    start, end = attrs.get("start", 0), attrs.get("end", len(shp))
                    direct[node.output[0]] = shp[start:end]
            elif ins and all(i in const for i in ins):
                pass
            else:
                continue
            folded_nodes.append(node)
            for o in node.output:
                const[o] = None  # type: ignore[assignment]
        if not folded_nodes:
            return model
        values = _evaluate(model, folded_nodes, direct)
        if values is None:
            return model
        folded_ids = {id(n) for n in folded_nodes}
        # Keep only what unfolded nodes or graph outputs still read.
        remaining = [n for n in g.node if id(n) not in folded_ids]
        needed = {i for n in remaining for i in n.input} | {o.name for o in g.output}
        init_names = {i.name for i in g.initializer}
        new_inits = [numpy_helper.from_array(np.asarray(values[k]), k) for k in values if k in needed]
        del g.node[:]
        g.node.extend(remaining)
        keep = [i for i in g.initializer if i.name in needed]
        del g.initializer[:]
        g.initializer.extend(keep + [t for t in new_inits if t.name not in init_names])
        # Inputs that are really constants (old exporters list initializers as inputs) stay listed.
        value_info = [vi for vi in g.value_info if vi.name not in values]
        del g.value_info[:]
        g.value_info.extend(value_info)
    return model


def _evaluate(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], direct: dict[str, np.ndarray]
) -> dict[str, np.ndarray] | None:
    """Run the constant-only ``nodes`` with ONNX Runtime in one session; return every output's value."""

    g = model.graph
    outputs = [o for n in nodes for o in n.output if o and o not in direct]
    values = dict(direct)
    if not outputs:
        return values
    run_nodes = [n for n in nodes if any(o in outputs for o in n.output)]
    produced = {o for n in run_nodes for o in n.output}
    sub = helper.make_graph(
        run_nodes,
        "fold",
        inputs=[],
        outputs=[helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outputs],
        initializer=[i for i in g.initializer if i.name not in produced]
        + [numpy_helper.from_array(np.asarray(v), k) for k, v in direct.items()],
    )
    m = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=min(model.ir_version or 8, 10))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.output)}
    try:
        inferred = shape_inference.infer_shapes(m)
        types.update({vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info})
        types.update({vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.output})
    except Exception:  # noqa: BLE001
        pass
    if any(not types.get(o) for o in outputs):
        return None
    for vi in m.graph.output:
        vi.type.tensor_type.elem_type = types[vi.name]
    try:
        from onnxfix.sessions import make_session

        sess = make_session(m)
        res = sess.run(outputs, {})
    except Exception:  # noqa: BLE001 - leave the graph as it is; ORT will run it at forward time
        return None
    for k, v in zip(outputs, res, strict=True):
        if np.asarray(v).size > _MAX_FOLD_ELEMENTS:
            return None
        values[k] = np.asarray(v)
    return values


# ---------------------------------------------------------------------------------------------------------------
# Attribute normalisation


def _ints(v: Any) -> list[int] | None:
    if v is None:
        return None
    return [int(x) for x in np.asarray(v).reshape(-1)]


class Graph:
    """An analysed ONNX model. Build one with :meth:`Graph.from_model`."""

    def __init__(self, model: onnx.ModelProto, original: onnx.ModelProto | None = None):
        self.model = model
        self.original = original if original is not None else model
        self.opset = _opset(model)
        g = model.graph
        self.constants: dict[str, np.ndarray] = {}
        for init in g.initializer:
            arr = numpy_helper.to_array(init).copy()
            arr.setflags(write=False)
            self.constants[init.name] = arr
        self.inputs: list[str] = [i.name for i in g.input if i.name not in self.constants]
        self.outputs: list[str] = [o.name for o in g.output]
        infos = {vi.name: vi for vi in list(g.input) + list(g.value_info) + list(g.output)}
        self.tensors: dict[str, Tensor] = {}
        for name, vi in infos.items():
            self.tensors[name] = Tensor(name, _dims(vi), _dtype(vi))
        for name, arr in self.constants.items():
            self.tensors[name] = Tensor(name, tuple(arr.shape), arr.dtype)
        self.nodes: list[Node] = []
        self.node_by_name: dict[str, Node] = {}
        seen_names: Counter[str] = Counter()
        produced: dict[str, str] = {}
        for i, pn in enumerate(g.node):
            base = pn.name or f"{pn.op_type}_{i}"
            seen_names[base] += 1
            name = base if seen_names[base] == 1 else f"{base}__{seen_names[base] - 1}"
            node = Node(name, pn.op_type, tuple(pn.input), tuple(pn.output),
                        {a.name: _attr_value(a) for a in pn.attribute}, pn.domain)
            for o in node.outputs:
                if not o:
                    continue
                if o in produced or o in self.constants or o in self.inputs:
                    raise InputError(f"tensor {o!r} is produced twice (by {produced.get(o, 'an input')} and {name})")
                produced[o] = name
                self.tensors.setdefault(o, Tensor(o, None, None)).producer = name
            self.nodes.append(node)
            self.node_by_name[name] = node
        for node in self.nodes:
            for i in node.inputs:
                if not i:
                    continue
                if i not in produced and i not in self.constants and i not in self.inputs:
                    raise InputError(f"node {node.name} ({node.op_type}) reads tensor {i!r}, which nothing produces")
                self.tensors.setdefault(i, Tensor(i, None, None)).consumers.append(node.name)
        for o in self.outputs:
            if o not in produced and o not in self.inputs and o not in self.constants:
                raise InputError(f"graph output {o!r} is produced by no node")
        self._between_cache: dict[tuple, tuple[Node, ...]] = {}
        self._shapes_at_cache: dict[int, dict[str, tuple[int, ...]]] = {}
        self.nx = self._build_nx()
        try:
            order = [n for n in nx.topological_sort(self.nx) if n[0] == "op"]
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(self.nx)
            names = [n[1] for edge in cycle for n in edge[:1] if n[0] == "op"]
            raise InputError(f"the graph has a cycle through nodes {', '.join(names[:6])}") from None
        self.nodes = [self.node_by_name[n[1]] for n in order]
        for node in self.nodes:
            node.attrs = self._normalise(node)

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> Graph:
        """Analyse ``model``: fold constants, infer shapes, normalise attributes."""
        folded = fold_constants(decompose_fused(model))
        folded = _infer(folded)
        return cls(folded, original=model)

    def _build_nx(self) -> nx.DiGraph:
        d = nx.DiGraph()
        for name, t in self.tensors.items():
            d.add_node(("tensor", name), kind="tensor", constant=name in self.constants, shape=t.shape)
        for node in self.nodes:
            d.add_node(("op", node.name), kind="op", op_type=node.op_type)
            for i in node.inputs:
                if i:
                    d.add_edge(("tensor", i), ("op", node.name))
            for o in node.outputs:
                if o:
                    d.add_edge(("op", node.name), ("tensor", o))
        return d

    # -- sub-models -------------------------------------------------------------------------------------------
    def submodel(self, inputs: list[str], outputs: list[str], name: str = "sub",
                 nodes: list[Node] | None = None, batch_dynamic: bool = False) -> onnx.ModelProto:
        """The nodes between ``inputs`` and ``outputs`` (or the given ``nodes``) as a model of their own: its inputs
        are ``inputs`` plus every other non-constant tensor those nodes read (a skip connection), its initializers
        the constants they use (folded ones included). The one sub-model extractor: Grad-CAM's tail, occlusion's
        local stages and the batch-dynamic copy all come from here. With ``batch_dynamic`` the batch axis of the
        inputs/outputs is symbolic and constant Reshapes copy the batch (:func:`copy_batch_in_reshapes`)."""
        if nodes is None:
            seen: dict[str, Node] = {}
            for out in outputs:
                for n in self.nodes_between(list(inputs), out):
                    seen[n.name] = n
            order = {n.name: i for i, n in enumerate(self.nodes)}
            nodes = sorted(seen.values(), key=lambda n: order[n.name])
        produced = {o for n in nodes for o in n.outputs if o}
        ins = list(dict.fromkeys(inputs)) + sorted({i for n in nodes for i in n.inputs
                                                    if i and i not in produced and i not in self.constants
                                                    and i not in inputs})
        protos = {o: pn for pn in self.model.graph.node for o in pn.output}
        pnodes = list({id(protos[n.outputs[0]]): protos[n.outputs[0]] for n in nodes}.values())
        used = {i for pn in pnodes for i in pn.input}
        inits = {t.name: t for t in self.model.graph.initializer}
        extra = [numpy_helper.from_array(np.asarray(self.constants[u]), u) for u in sorted(used)
                 if u not in inits and u in self.constants]

        def info(tname: str, batch: bool) -> onnx.ValueInfoProto:
            t = self.tensors[tname]
            elem = helper.np_dtype_to_tensor_dtype(t.dtype) if t.dtype is not None else onnx.TensorProto.FLOAT
            dims = None if t.shape is None else [d if isinstance(d, int) and d > 0 else None for d in t.shape]
            if batch and dims:
                dims[0] = "batch"
            return helper.make_tensor_value_info(tname, elem, dims)

        sub = helper.make_graph(pnodes, name, [info(i, batch_dynamic) for i in ins],
                                [info(o, batch_dynamic) for o in outputs],
                                initializer=[inits[u] for u in sorted(used) if u in inits] + extra)
        # IR ≥ 4: initializers need not be graph inputs (IR 3 requires it; the version converter then fails)
        m = helper.make_model(sub, opset_imports=list(self.model.opset_import),
                              ir_version=max(self.model.ir_version, 4))
        if batch_dynamic:
            copy_batch_in_reshapes(m, self.constants)
        return m

    # -- queries ------------------------------------------------------------------------------------------------
    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def producer(self, tensor: str) -> Node | None:
        t = self.tensors.get(tensor)
        return self.node_by_name[t.producer] if t is not None and t.producer else None

    def consumers(self, tensor: str) -> list[Node]:
        t = self.tensors.get(tensor)
        return [self.node_by_name[c] for c in t.consumers] if t is not None else []

    def shape(self, tensor: str) -> tuple[int | None, ...] | None:
        t = self.tensors.get(tensor)
        return t.shape if t is not None else None

    def shapes_at(self, n_batch: int) -> dict[str, tuple[int, ...]]:
        """Static shapes of the tensors when the graph runs on a batch of ``n_batch``: shape inference (with data
        propagation) on a copy whose inputs have that batch. Unlike setting axis 0 of :meth:`shape`, this is right
        for tensors whose leading axis is not the batch (a Swin window tensor is ``[batch·windows, tokens, C]``).
        Tensors inference cannot pin down are absent. Cached per batch size."""
        hit = self._shapes_at_cache.get(n_batch)
        if hit is not None:
            return hit
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        del m.graph.value_info[:]
        for vi in m.graph.input:
            if vi.name in self.constants or not vi.type.tensor_type.HasField("shape"):
                continue
            dims = vi.type.tensor_type.shape.dim
            if len(dims):
                dims[0].Clear()
                dims[0].dim_value = n_batch
        for vi in m.graph.output:
            vi.type.tensor_type.ClearField("shape")
        inferred = _infer(m)
        out: dict[str, tuple[int, ...]] = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
            dims = _dims(vi)
            if _static(dims):
                out[vi.name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
        for name, arr in self.constants.items():
            out[name] = tuple(arr.shape)
        self._shapes_at_cache[n_batch] = out
        return out

    def data_inputs(self, node: Node) -> list[str]:
        """Inputs of ``node`` that carry data (not constants, not empty optional slots)."""
        return [i for i in node.inputs if i and i not in self.constants]

    def op_inventory(self) -> Counter[str]:
        """Op type → count over the (folded) graph."""
        return Counter(n.op_type for n in self.nodes)

    def nodes_between(self, sources: list[str], target: str, through_shape: bool = False) -> list[Node]:
        """Nodes on some data path from any of ``sources`` (tensors) to ``target`` (tensor), topological order.

        Paths through ``Shape``/``Size`` carry no values of the sources, only their shapes, so they are not
        followed unless ``through_shape``; paths through ``ArgMax``/``ArgMin`` (:data:`DISCRETE`) carry an index,
        no value or location, and are not followed either. Results are cached (the graph never changes)."""
        key = (tuple(sources), target, through_shape)
        hit = self._between_cache.get(key)
        if hit is not None:
            return list(hit)
        down: set = set()
        stack = [("tensor", s) for s in sources if ("tensor", s) in self.nx]
        while stack:
            v = stack.pop()
            for w in self.nx.successors(v):
                if w in down:
                    continue
                if w[0] == "op" and (self.node_by_name[w[1]].op_type in DISCRETE or (
                        not through_shape and self.node_by_name[w[1]].op_type in SHAPE_ONLY)):
                    continue
                down.add(w)
                stack.append(w)
        up = nx.ancestors(self.nx, ("tensor", target)) if ("tensor", target) in self.nx else set()
        keep = {n[1] for n in down & up if n[0] == "op"}
        result = [n for n in self.nodes if n.name in keep]
        self._between_cache[key] = tuple(result)
        return list(result)

    # -- attribute normalisation --------------------------------------------------------------------------------
    def _const(self, node: Node, idx: int) -> np.ndarray | None:
        if idx < len(node.inputs) and node.inputs[idx] and node.inputs[idx] in self.constants:
            return self.constants[node.inputs[idx]]
        return None

    def _normalise(self, node: Node) -> dict[str, Any]:
        a = dict(node.attrs)
        op = node.op_type
        if op in ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"):
            w = self._const(node, 1) if op in ("Conv", "ConvTranspose") else None
            ks = a.get("kernel_shape")
            if ks is None and w is not None:
                ks = list(w.shape[2:])
            if ks is None:
                wshape = self.shape(node.inputs[1]) if len(node.inputs) > 1 else None
                ks = list(wshape[2:]) if wshape else None
            a["kernel_shape"] = [int(k) for k in ks] if ks is not None else None
            n = len(a["kernel_shape"]) if a["kernel_shape"] is not None else 2
            a.setdefault("strides", [1] * n)
            a.setdefault("dilations", [1] * n)
            a.setdefault("pads", [0] * (2 * n))
            a.setdefault("auto_pad", "NOTSET")
            a["strides"], a["dilations"], a["pads"] = list(a["strides"]), list(a["dilations"]), list(a["pads"])
            if op in ("Conv", "ConvTranspose"):
                a.setdefault("group", 1)
            else:
                a.setdefault("ceil_mode", 0)
                a.setdefault("count_include_pad", 0)
                a.setdefault("storage_order", 0)
        elif op == "Gemm":
            a.setdefault("alpha", 1.0)
            a.setdefault("beta", 1.0)
            a.setdefault("transA", 0)
            a.setdefault("transB", 0)
        elif op in ("Flatten",):
            a.setdefault("axis", 1)
        elif op in ("Softmax", "LogSoftmax", "Hardmax"):
            a.setdefault("axis", -1 if self.opset >= 13 else 1)
        elif op in ("Concat", "Gather"):
            a.setdefault("axis", 0)
        elif op == "Split":
            a.setdefault("axis", 0)
            s = self._const(node, 1)
            if s is not None:
                a["split"] = _ints(s)
        elif op in ("Squeeze", "Unsqueeze"):
            s = self._const(node, 1)
            if s is not None:
                a["axes"] = _ints(s)
        elif op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceProd"):
            a.setdefault("keepdims", 1)
            a.setdefault("noop_with_empty_axes", 0)
            s = self._const(node, 1)
            if s is not None:
                a["axes"] = _ints(s)
        elif op == "Slice":
            if self.opset >= 10:
                for k, idx in (("starts", 1), ("ends", 2), ("axes", 3), ("steps", 4)):
                    v = self._const(node, idx)
                    if v is not None:
                        a[k] = _ints(v)
        elif op == "Pad":
            a.setdefault("mode", "constant")
            if self.opset >= 11:
                p = self._const(node, 1)
                if p is not None:
                    a["pads"] = _ints(p)
                v = self._const(node, 2)
                a["value"] = float(v.reshape(-1)[0]) if v is not None and v.size else 0.0
                ax = self._const(node, 3)
                if ax is not None:
                    a["axes"] = _ints(ax)
            else:
                a.setdefault("value", 0.0)
        elif op == "Clip":
            if self.opset >= 11:
                lo, hi = self._const(node, 1), self._const(node, 2)
                a["min"] = float(lo) if lo is not None else -np.inf
                a["max"] = float(hi) if hi is not None else np.inf
            else:
                a.setdefault("min", -3.4028234663852886e38)
                a.setdefault("max", 3.4028234663852886e38)
        elif op == "Reshape":
            s = self._const(node, 1)
            if s is not None:
                a["shape"] = _ints(s)
            a.setdefault("allowzero", 0)
        elif op == "Transpose":
            if "perm" not in a:
                shp = self.shape(node.inputs[0])
                if shp is not None:
                    a["perm"] = list(range(len(shp)))[::-1]
        elif op == "LeakyRelu":
            a.setdefault("alpha", 0.01)
        elif op == "HardSigmoid":
            a.setdefault("alpha", 0.2)
            a.setdefault("beta", 0.5)
        elif op == "BatchNormalization":
            a.setdefault("epsilon", 1e-5)
        elif op == "LSTM":
            a.setdefault("direction", "forward")
            a.setdefault("layout", 0)
            a.setdefault("input_forget", 0)
            a.setdefault("activations", ["Sigmoid", "Tanh", "Tanh"] * (2 if a["direction"] == "bidirectional" else 1))
        return a


def resolve_pads(
    attrs: dict[str, Any], in_spatial: tuple[int, ...] | list[int]
) -> list[int]:
    """Explicit begin/end pads of a Conv/Pool for an input of spatial size ``in_spatial`` (auto_pad resolved)."""
    auto = attrs.get("auto_pad", "NOTSET")
    ks, st, dl = attrs["kernel_shape"], attrs["strides"], attrs.get("dilations", [1] * len(in_spatial))
    n = len(in_spatial)
    if auto in ("NOTSET", "", None):
        return list(attrs["pads"])
    if auto == "VALID":
        return [0] * (2 * n)
    begins, ends = [], []
    for i in range(n):
        out = -(-in_spatial[i] // st[i])
        total = max(0, (out - 1) * st[i] + (ks[i] - 1) * dl[i] + 1 - in_spatial[i])
        small, big = total // 2, total - total // 2
        if auto == "SAME_UPPER":
            begins.append(small)
            ends.append(big)
        else:
            begins.append(big)
            ends.append(small)
    return begins + ends


def window_span(attrs: dict[str, Any], in_spatial: tuple[int, ...] | list[int]) -> list[tuple[int, int, int]]:
    """Per spatial axis of a Conv/Pool, ``(stride, begin, end)``: output position ``o`` reads input positions
    ``stride·o + begin … stride·o + end`` (pads and dilation included; auto_pad resolved for ``in_spatial``)."""
    pads = resolve_pads(attrs, in_spatial)
    ks, st = attrs["kernel_shape"], attrs["strides"]
    dl = attrs.get("dilations") or [1] * len(ks)
    return [(int(st[i]), -int(pads[i]), int((ks[i] - 1) * dl[i] - pads[i])) for i in range(len(ks))]


def spatial_pads(node: Node) -> list[int] | None:
    """``[top, left, bottom, right]`` of a constant-mode Pad that pads only H and W of an NCHW tensor by constant
    amounts (normalised into ``node.attrs``), else ``None`` (other modes, an ``axes`` input, batch or channel pads,
    amounts computed at run time)."""
    a = node.attrs
    if node.op_type != "Pad" or a.get("mode", "constant") != "constant" or "axes" in a or (
            len(node.inputs) > 3 and node.inputs[3]):
        return None
    pads = a.get("pads")
    if pads is None or len(pads) != 8 or pads[0] or pads[1] or pads[4] or pads[5]:
        return None
    return [int(pads[2]), int(pads[3]), int(pads[6]), int(pads[7])]


def load_graph(path: str) -> Graph:
    """Load a model file safely and analyse it (convenience for tests and tools)."""
    from onnxfix.io.model import load_model

    return Graph.from_model(load_model(path))


def copy_batch_in_reshapes(model: onnx.ModelProto, constants: dict[str, np.ndarray]) -> None:
    """In place: a Reshape to a constant shape that starts with a batch of one copies the batch instead (0), so
    that a model exported with a fixed batch of one runs batches (``allowzero`` Reshapes are left alone)."""
    g = model.graph
    have = {t.name for t in g.initializer}
    for node in g.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        shape = np.asarray(constants[node.input[1]]).astype(np.int64).copy()
        if not shape.size or shape[0] != 1:
            continue
        shape[0] = 0
        name = node.input[1] + "/batch"
        if name not in have:
            g.initializer.append(numpy_helper.from_array(shape, name))
            have.add(name)
        node.input[1] = name


def batch_dynamic_copy(graph: Graph, image_input: str) -> onnx.ModelProto:
    """The whole model with a symbolic batch axis on ``image_input`` and the graph outputs (those of batch 1), and
    constant Reshapes copying the batch; callers validate it against the batch-one model before use."""
    m = onnx.ModelProto()
    m.CopyFrom(graph.model)
    g = m.graph
    for vi in list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.name in (image_input, *graph.outputs) and len(dims) and dims[0].dim_value == 1:
            dims[0].dim_param = "batch"
    del g.value_info[:]
    copy_batch_in_reshapes(m, graph.constants)
    return m
