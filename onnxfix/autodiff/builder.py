"""Build the backward pass of a request as ONNX nodes appended to the forward graph (DESIGN §1).

:func:`build_backward` returns one ``ModelProto`` that ONNX Runtime runs in a single call: the forward graph
(pruned to what the request needs), one extra input — the seed gradient, shaped like the tensor ``of`` — and the
backward nodes for exactly the nodes on a data path from the ``wrt`` tensors to ``of``. Its outputs are ``of``, the
requested ``activations`` and one ``grad:<name>`` per ``wrt`` tensor.

:class:`Builder` is what a VJP rule talks to: it emits nodes with unique ``grad/…`` names, makes constants in the
right dtype, answers static shape questions (falling back to ``Shape`` ops at run time where a dimension is
dynamic), and carries the ReLU mode of the whole build.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxfix.autodiff.registry import VJP_RULES
from onnxfix.errors import InputError, UnsupportedModel, UnsupportedOp
from onnxfix.graph import Graph, Node, spatial_pads

MODES = ("gradient", "guided", "deconvnet")
#: The backward nodes are written in the syntax of this opset and later (axes as inputs, Split sizes as input…).
MIN_OPSET = 13
#: Where a model is older than what its rules emit, a copy is upgraded to this opset.
TARGET_OPSET = 17
#: Op types that are lowered to primitives before the backward pass (see lowering.py).
LOWERED = ("LSTM",)
#: How the input gradient of a Conv is computed: "auto" picks per case (see docs/autodiff.md).
CONV_INPUT_GRAD = ("auto", "conv", "transpose")
#: Backward of strided Conv/MaxPool/AveragePool: "exact" (the adjoint) or "nearest" (Oramas et al. 2019: the
#: stride-1 op on the nearest-neighbour resampled signal, for visualisations without grid artifacts; rules.py).
STRIDED = ("exact", "nearest")

Dim = int | str | None
INT64_MAX = np.iinfo(np.int64).max


def _sym_dims(vi: onnx.ValueInfoProto) -> tuple[Dim, ...] | None:
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    out: list[Dim] = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(str(d.dim_param))
        else:
            out.append(None)
    return tuple(out)


def broadcast_sym(a: Sequence[Dim], b: Sequence[Dim]) -> tuple[Dim, ...]:
    """Numpy broadcasting of two symbolic shapes (``None`` where the result is unknown)."""
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out: list[Dim] = []
    for x, y in zip(a, b, strict=True):
        if x == 1:
            out.append(y)
        elif y == 1 or x == y:
            out.append(x)
        elif isinstance(x, int) and isinstance(y, int):
            out.append(max(x, y))
        elif isinstance(x, int):
            out.append(x)  # y must be x (or 1, then the result is x)
        elif isinstance(y, int):
            out.append(y)
        else:
            out.append(None)
    return tuple(out)


class Builder:
    """Emits the backward nodes of one request; what a VJP rule sees as ``b``."""

    def __init__(self, graph: Graph, mode: str, reach: set[str], conv_input_grad: str = "auto",
                 float_dtype: Any = np.float32, prefix: str = "grad/"):
        self.graph = graph
        self.mode = mode
        self.reach = reach
        self.conv_input_grad = conv_input_grad
        self.strided = "exact"  # set by build_backward(strided=...)
        self.prefix = prefix
        self._float = np.dtype(float_dtype)
        self.opset = graph.opset
        self.required_opset = MIN_OPSET
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = set(graph.tensors) | {n.name for n in graph.nodes}
        self._count = 0
        self._consts: dict[tuple, str] = {}
        self._shape_tensors: dict[str, str] = {}
        self._sym: dict[str, tuple[Dim, ...] | None] = {}
        g = graph.model.graph
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            self._sym[vi.name] = _sym_dims(vi)
        for name, arr in graph.constants.items():
            self._sym[name] = tuple(int(d) for d in arr.shape)
        self.seed = self.fresh("seed")  # the name of the seed input
        self.grads: dict[str, str] = {}  # wrt tensor → name of its gradient (filled by the build)

    # -- names and nodes --------------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        while True:
            self._count += 1
            name = f"{self.prefix}{hint}_{self._count}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def op(self, op_type: str, inputs: Sequence[str], n_outputs: int = 1, hint: str | None = None,
           **attrs: Any) -> Any:
        """Emit one node; return its output name (a list of names when ``n_outputs`` > 1)."""
        hint = hint or op_type.lower()
        outs = [self.fresh(hint) for _ in range(n_outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        node = helper.make_node(op_type, list(inputs), outs, name=self.fresh(f"node/{op_type}"), **attrs)
        self.nodes.append(node)
        if op_type in ("ScatterElements", "ScatterND") and attrs.get("reduction", "none") != "none":
            self.required_opset = max(self.required_opset, 16)
        return outs[0] if n_outputs == 1 else outs

    def const(self, value: Any, like: str | None = None, dtype: Any = None) -> str:
        """A constant initializer; floats take the dtype of tensor ``like`` (default: the build's float dtype)."""
        arr = np.asarray(value)
        if dtype is not None:
            arr = arr.astype(dtype)
        elif arr.dtype.kind == "f" or arr.dtype.kind in "iub" and like is not None:
            arr = arr.astype(self.float_dtype(like))
        small = arr.size <= 16
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if small else None
        if key is not None and key in self._consts:
            return self._consts[key]
        name = self.fresh("const")
        self.initializers.append(numpy_helper.from_array(np.array(arr, order="C", copy=True), name))
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values: Iterable[int]) -> str:
        return self.const(np.array([int(v) for v in values], np.int64))

    def scalar(self, value: float, like: str | None = None) -> str:
        return self.const(np.array(value), like=like)

    # -- tensors ----------------------------------------------------------------------------------------------------
    def dtype(self, name: str) -> np.dtype | None:
        if name in self.graph.constants:
            return self.graph.constants[name].dtype
        t = self.graph.tensors.get(name)
        return t.dtype if t is not None else None

    def float_dtype(self, like: str | None = None) -> np.dtype:
        """The dtype of tensor ``like`` if it is a float tensor, else the float dtype of the build (of ``of``)."""
        dt = self.dtype(like) if like else None
        if dt is None or dt.kind != "f":
            dt = self._float
        return np.dtype(dt)

    def is_float(self, name: str) -> bool:
        dt = self.dtype(name)
        return dt is None or dt.kind == "f"

    def needs(self, name: str) -> bool:
        """Whether the gradient of forward tensor ``name`` is wanted (downstream of a wrt tensor, float, data)."""
        return bool(name) and name in self.reach and name not in self.graph.constants and self.is_float(name)

    def is_const(self, name: str) -> bool:
        return bool(name) and name in self.graph.constants

    def value(self, name: str) -> np.ndarray:
        return self.graph.constants[name]

    def sym(self, name: str) -> tuple[Dim, ...] | None:
        """Shape with ints where static, ``dim_param`` strings where symbolic, ``None`` where unknown."""
        s = self._sym.get(name)
        if s is None:
            t = self.graph.tensors.get(name)
            s = t.shape if t is not None else None
        return s

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        """Static shape: ints, ``None`` per dimension that is not known at build time."""
        s = self.sym(name)
        if s is None:
            return None
        return tuple(d if isinstance(d, int) else None for d in s)

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        s = self.shape(name)
        if s is None or any(d is None for d in s):
            return None
        return tuple(int(d) for d in s)  # type: ignore[arg-type]

    def rank(self, name: str) -> int | None:
        s = self.sym(name)
        return len(s) if s is not None else None

    def shape_tensor(self, name: str) -> str:
        """An int64 tensor holding the shape of ``name``: a constant when static, else a ``Shape`` node."""
        s = self.static_shape(name)
        if s is not None:
            return self.ints(s)
        hit = self._shape_tensors.get(name)
        if hit is None:
            hit = self._shape_tensors[name] = self.op("Shape", [name], hint="shape")
        return hit

    def numel_tensor(self, name: str) -> str:
        """A 1-element int64 tensor with the number of elements of ``name``."""
        s = self.static_shape(name)
        if s is not None:
            return self.ints([int(np.prod(s))])
        return self.op("ReduceProd", [self.shape_tensor(name)], keepdims=1)

    def count(self, name: str, axes: Sequence[int], like: str) -> str:
        """A float scalar tensor: the product of the sizes of ``name`` along ``axes``."""
        s = self.shape(name)
        if s is not None and all(s[a] is not None for a in axes):
            return self.scalar(float(np.prod([s[a] for a in axes])) if axes else 1.0, like=like)
        dims = self.op("Gather", [self.shape_tensor(name), self.ints(axes)], axis=0)
        n = self.op("ReduceProd", [dims], keepdims=0)
        return self.op("Cast", [n], to=helper.np_dtype_to_tensor_dtype(self.float_dtype(like)))

    # -- helpers shared by rules ------------------------------------------------------------------------------------
    def zeros_like(self, name: str) -> str:
        dt = helper.np_dtype_to_tensor_dtype(self.float_dtype(name))
        value = helper.make_tensor("value", dt, [1], [0])
        return self.op("ConstantOfShape", [self.shape_tensor(name)], value=value, hint="zeros")

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", [a, b])

    def unbroadcast(self, g: str, x: str, gshape: Sequence[Dim] | str | None) -> str:
        """Sum gradient ``g`` (shaped ``gshape``, a shape or a forward tensor of that shape) to the shape of ``x``."""
        if isinstance(gshape, str):
            gshape = self.sym(gshape)
        xs = self.sym(x)
        if xs is None or gshape is None:
            return self._unbroadcast_dynamic(g, x, None if gshape is None else len(gshape))
        k = len(gshape) - len(xs)
        if k < 0:
            return self._unbroadcast_dynamic(g, x, len(gshape))
        axes = list(range(k))
        for i, dx in enumerate(xs):
            dg = gshape[k + i]
            if dx == 1:
                if dg != 1:
                    axes.append(k + i)  # summing over a size-1 axis is harmless when dg turns out to be 1
            elif isinstance(dx, int) or dg == 1 or (dx is not None and dx == dg):
                continue
            else:
                return self._unbroadcast_dynamic(g, x, len(gshape))
        if not axes:
            return g
        r = self.op("ReduceSum", [g, self.ints(axes)], keepdims=1, hint="unbroadcast")
        if k:
            r = self.op("Squeeze", [r, self.ints(range(k))])
        return r

    def _unbroadcast_dynamic(self, g: str, x: str, grank: int | None) -> str:
        xr = self.rank(x)
        if xr is None or grank is None:
            raise UnsupportedModel(f"autodiff: the rank of {x!r} or of its gradient is unknown; cannot unbroadcast")
        sx = self.op("Shape", [x])
        padded = self.op("Concat", [self.ints([1] * (grank - xr)), sx], axis=0) if grank > xr else sx
        is_one = self.op("Equal", [padded, self.ints([1])])
        axes = self.op("Reshape", [self.op("NonZero", [is_one]), self.ints([-1])])
        r = self.op("ReduceSum", [g, axes], keepdims=1, noop_with_empty_axes=1, hint="unbroadcast")
        return self.op("Reshape", [r, sx])

    def index_grid(self, x: str, offset: int = 0) -> str:
        """An int64 tensor shaped like ``x`` holding ``offset + flat index`` of every element."""
        n = self.op("Squeeze", [self.numel_tensor(x), self.ints([0])])
        start = self.const(np.array(offset, np.int64))
        stop = self.op("Add", [n, start]) if offset else n
        r = self.op("Range", [start, stop, self.const(np.array(1, np.int64))])
        return self.op("Reshape", [r, self.shape_tensor(x)], hint="grid")

    def scatter_back(self, x: str, mapped: str, g: str, offset: int = 0) -> str:
        """The gradient of an index-mapping op: add ``g`` at the flat positions ``mapped`` (shaped like ``g``)
        into zeros shaped like ``x``. ``offset`` > 0 reserves slots 0…offset−1 for positions outside ``x``."""
        flat_i = self.op("Reshape", [mapped, self.ints([-1])])
        flat_g = self.op("Reshape", [g, self.ints([-1])])
        n = self.numel_tensor(x)
        if offset:
            n = self.op("Add", [n, self.ints([offset])])
        dt = helper.np_dtype_to_tensor_dtype(self.float_dtype(x))
        zeros = self.op("ConstantOfShape", [n], value=helper.make_tensor("value", dt, [1], [0]))
        s = self.op("ScatterElements", [zeros, flat_i, flat_g], axis=0, reduction="add", hint="scatter")
        if offset:
            s = self.op("Slice", [s, self.ints([offset]), self.ints([INT64_MAX]), self.ints([0])])
        return self.op("Reshape", [s, self.shape_tensor(x)])

    def unsupported(self, node: Node, why: str) -> UnsupportedOp:
        err = UnsupportedOp("autodiff", [(node.op_type, node.name)])
        err.args = (f"{err.args[0]} ({why})",)
        return err


# ---------------------------------------------------------------------------------------------------------------
# Requests


def _check_request(graph: Graph, of: str, wrt: Sequence[str], mode: str, activations: Sequence[str]) -> None:
    if mode not in MODES:
        raise InputError(f"unknown ReLU mode {mode!r}; choose one of {', '.join(MODES)}")
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


def _needed_nodes(graph: Graph, of: str, wrt: Sequence[str]) -> list[Node]:
    return graph.nodes_between(list(dict.fromkeys(wrt)), of)


def missing_vjp_rules(graph: Graph, sources: Sequence[str], target: str) -> list[Node]:
    """Nodes on a data path from ``sources`` to ``target`` that the autodiff engine cannot differentiate."""
    from onnxfix.autodiff import lowering

    out = []
    for n in graph.nodes_between(list(sources), target):
        if n.domain not in ("", "ai.onnx") or n.op_type not in VJP_RULES:
            out.append(n)
        elif n.op_type in LOWERED and lowering.why_not_lowerable(graph, n) is not None:
            out.append(n)
    return out


def _raise_missing(graph: Graph, nodes: Sequence[Node]) -> None:
    from onnxfix.autodiff import lowering

    bad: list[tuple[str, str]] = []
    reasons: list[str] = []
    for n in nodes:
        if n.domain not in ("", "ai.onnx") or n.op_type not in VJP_RULES:
            bad.append((n.op_type, n.name))
        elif n.op_type in LOWERED:
            why = lowering.why_not_lowerable(graph, n)
            if why is not None:
                bad.append((n.op_type, n.name))
                reasons.append(f"{n.name}: {why}")
    if bad:
        err = UnsupportedOp("autodiff", bad)
        if reasons:
            err.args = (f"{err.args[0]} ({'; '.join(reasons)})",)
        raise err


_UPGRADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
FOLD_PADS = True  # fold zero Pads into the Convs they feed before differentiating (False: for benchmarks)


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
    del m.graph.node[:]
    m.graph.node.extend(keep_nodes)
    gone = set(pad_nodes)
    vis = [vi for vi in m.graph.value_info if vi.name not in gone]
    del m.graph.value_info[:]
    m.graph.value_info.extend(vis)
    new_graph = Graph.from_model(m)
    _FOLDED[graph] = (tuple(keep), new_graph)
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
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    feeds = {}
    for vi in old.model.graph.input:
        if vi.name in old.constants:
            continue
        t = old.tensors[vi.name]
        shape = [d if d else 1 for d in (t.shape or ())]
        dt = t.dtype or np.dtype(np.float32)
        feeds[vi.name] = (rng.standard_normal(shape).astype(dt) if dt.kind == "f"
                          else np.zeros(shape, dt))
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        outs = []
        for g in (old, new):
            s = ort.InferenceSession(g.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            outs.append(s.run(old.outputs, feeds))
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModel(f"autodiff: the model upgraded to opset {target} does not run: "
                               f"{str(exc).splitlines()[0][:300]}") from None
    for name, a, b in zip(old.outputs, outs[0], outs[1], strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or (a.dtype.kind == "f" and not np.allclose(a, b, rtol=1e-4, atol=1e-5)):
            raise UnsupportedModel(f"autodiff: the model upgraded to opset {target} computes a different "
                                   f"{name!r} than the original")


# ---------------------------------------------------------------------------------------------------------------
# The build


def build_backward(graph: Graph, of: str, wrt: Sequence[str], mode: str = "gradient",
                   activations: Sequence[str] = (), conv_input_grad: str = "auto", strided: str = "exact"
                   ) -> tuple[onnx.ModelProto, str, dict[str, str]]:
    """The forward graph plus the backward pass of ``d(of · seed)/d(wrt)``.

    Returns ``(model, seed_name, {wrt name: gradient output name})``. The model's inputs are the forward inputs
    and ``seed_name`` (shaped like ``of``); its outputs are ``of``, ``activations`` and the gradients
    (``grad:<wrt name>``). ``mode`` is the ReLU backward rule: ``gradient``, ``guided`` or ``deconvnet``.
    """
    from onnxfix.autodiff import lowering
    from onnxfix.autodiff import rules as _rules  # noqa: F401 - fills VJP_RULES

    wrt = list(dict.fromkeys(wrt))
    activations = list(dict.fromkeys(activations))
    _check_request(graph, of, wrt, mode, activations)
    if conv_input_grad not in CONV_INPUT_GRAD:
        raise InputError(f"conv_input_grad must be one of {CONV_INPUT_GRAD}")
    if strided not in STRIDED:
        raise InputError(f"strided must be one of {STRIDED}")
    work = graph
    if work.opset < MIN_OPSET:
        work = upgrade_graph(work, TARGET_OPSET)
    if FOLD_PADS:
        work = fold_pads(work, keep=[of, *wrt, *activations])
    nodes = _needed_nodes(work, of, wrt)
    _raise_missing(work, nodes)
    if any(n.op_type in LOWERED for n in nodes):
        work = lowering.lower(work, [n for n in nodes if n.op_type in LOWERED])
        nodes = _needed_nodes(work, of, wrt)
        _raise_missing(work, nodes)
    b = _backward(work, of, wrt, mode, nodes, conv_input_grad, strided)
    if b.required_opset > work.opset:
        work = upgrade_graph(work, max(TARGET_OPSET, b.required_opset))
        nodes = _needed_nodes(work, of, wrt)
        _raise_missing(work, nodes)
        if any(n.op_type in LOWERED for n in nodes):
            work = lowering.lower(work, [n for n in nodes if n.op_type in LOWERED])
            nodes = _needed_nodes(work, of, wrt)
        b = _backward(work, of, wrt, mode, nodes, conv_input_grad, strided)
    return _assemble(work, b, of, wrt, activations)


def _backward(graph: Graph, of: str, wrt: list[str], mode: str, nodes: list[Node], conv_input_grad: str,
              strided: str = "exact") -> Builder:
    reach = set(wrt) | {o for n in nodes for o in n.outputs if o}
    t = graph.tensors[of]
    b = Builder(graph, mode, reach, conv_input_grad,
                float_dtype=t.dtype if t.dtype is not None and t.dtype.kind == "f" else np.float32)
    b.strided = strided
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
        rule = VJP_RULES[node.op_type]
        gx = list(rule(b, node, gy) or [])
        gx += [None] * (len(node.inputs) - len(gx))
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


def _assemble(graph: Graph, b: Builder, of: str, wrt: list[str], activations: list[str]
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
