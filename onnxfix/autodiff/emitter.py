"""The emitter: :class:`Builder`, what a VJP rule talks to while the reverse sweep runs.

It emits nodes with unique ``grad/…`` names, makes constants in the right dtype, answers static shape questions
(falling back to ``Shape`` ops at run time where a dimension is dynamic), and dispatches a forward node to its rule
through the build's :class:`~onnxfix.autodiff.registry.RuleStack` (``apply``; ``defer`` hands a node to the layer
below the current one: an override rule that only modifies the base result calls it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfix.autodiff.registry import RuleStack, rule_stack
from onnxfix.errors import UnsupportedModel, UnsupportedOp
from onnxfix.graph import Graph, Node

#: The backward nodes are written in the syntax of this opset and later (axes as inputs, Split sizes as input…).
MIN_OPSET = 13
INT64_MAX = np.iinfo(np.int64).max

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
                 float_dtype: Any = np.float32, prefix: str = "grad/", strided: str = "exact",
                 rules: RuleStack | None = None):
        self.graph = graph
        self.mode = mode  # for information: rules never read it, the mode is the rule table
        self.reach = reach
        self.conv_input_grad = conv_input_grad
        self.strided = strided  # for information, as ``mode``
        self.rules = rules if rules is not None else rule_stack(mode, strided)
        self._depth: list[int] = []  # layer index of the rule being applied (innermost last)
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

    # -- rules ------------------------------------------------------------------------------------------------------
    def has_rule(self, node: Node) -> bool:
        return node.domain in ("", "ai.onnx") and node.op_type in self.rules

    def apply(self, node: Node, gy: list) -> list:
        """The input gradients of ``node``: its rule from the top of the layer stack."""
        return self._call(node, gy, 0)

    def defer(self, node: Node, gy: list) -> list:
        """The input gradients of ``node`` from the layer *below* the rule now running (an override rule asks the
        base rule this way). ``node`` may be a modified copy of the forward node (e.g. a stride-1 twin)."""
        start = self._depth[-1] + 1 if self._depth else 0
        return self._call(node, gy, start)

    def _call(self, node: Node, gy: list, start: int) -> list:
        hit = self.rules.find(node.op_type, start)
        if hit is None:
            raise self.unsupported(node, "no rule below this mode's override")
        fn, depth = hit
        self._depth.append(depth)
        try:
            out = list(fn(self, node, gy) or [])
        finally:
            self._depth.pop()
        return out + [None] * (len(node.inputs) - len(out))

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

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        """``op_type`` (ReduceMean/Max/Min/Prod/Sum…) over ``axes`` in the syntax of the build's opset (axes as an
        input from opset 18, as ReduceSum from 13; an attribute before)."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.ints(axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=[int(a) for a in axes], keepdims=keepdims)

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


