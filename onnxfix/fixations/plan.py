"""Backtrack plans: the walk of :func:`onnxfix.fixations.trace` worked out once per model and input shape.

A :class:`Plan` holds, for one (graph, source, start, shapes) key, everything about the walk that does not depend
on the activations: the nodes on the path, the shape of every tensor it touches (exposed or not), which tensors the
rules read, and — when every node on the path has a compiled form — the steps of the one compiled pass
(:func:`onnxfix.kernels.plan.run_plan`): filters and fc matrices laid out once, index maps reduced to integers.
Plans live in an explicit :class:`PlanCache` (one per process by default, :data:`PLANS`), keyed weakly by the
:class:`~onnxfix.graph.Graph`, never on the graph itself.

What the forward must expose (:func:`value_reads`): only tensors whose *values* a rule reads — Conv/pool inputs,
both operands of an Add with two data inputs, fc operands, reduced tensors, LSTM inputs and ``Y``, run-time
parameters — plus tensors whose shape the graph does not know. A constant zero ``Pad`` feeding a Conv or pool is
read through its input (a virtual pad): exposing a Pad's output would stop ONNX Runtime from fusing it.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import numpy as np

from onnxfix.errors import UnsupportedModel
from onnxfix.fixations.registry import Context, rule_for
from onnxfix.fixations.rules import PASS_THROUGH, _param, reads_feature_map
from onnxfix.graph import Graph, Node, resolve_pads
from onnxfix.kernels.plan import ADD, CONV, FC, FLAT, GPOOL, MAP, POOL

#: op type → input positions whose values the rule reads (besides run-time parameters)
_VALUE_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (0, 1), "MaxPool": (0,), "AveragePool": (0,), "GlobalAveragePool": (0,), "GlobalMaxPool": (0,),
    "ReduceMean": (0,), "ReduceSum": (0,), "ReduceMax": (0,), "Gemm": (0, 1), "MatMul": (0, 1), "LSTM": (0, 5),
}
_ADD_LIKE = ("Add", "Sum", "Max", "Sub")
_PARAM_OPS = ("Slice", "Pad", "Gather", "ReduceMean", "ReduceSum", "ReduceMax", "Split")
_SHAPE_ONLY = set(PASS_THROUGH) | {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Mul", "Div",
                                   "Concat", "Split", "Slice", "Pad", "Gather"} | set(_ADD_LIKE) | set(_VALUE_INPUTS)
_WINDOW_OPS = ("Conv", "MaxPool", "AveragePool")


def path_nodes(graph: Graph, source: str, target: str) -> list[Node]:
    """Nodes on a path from ``source`` to ``target``, topological order."""
    return graph.nodes_between([source], target)


def virtual_pad(graph: Graph, name: str) -> tuple[str, list[int], float] | None:
    """When ``name`` is the output of a 4-D constant Pad of the two spatial axes only (non-negative pads, constant
    pad value): (its input, [top, left, bottom, right], the pad value); else ``None``."""
    node = graph.producer(name)
    if node is None or node.op_type != "Pad" or not node.inputs or node.inputs[0] in graph.constants:
        return None
    a = node.attrs
    if a.get("mode", "constant") != "constant" or "axes" in a or (len(node.inputs) > 3 and node.inputs[3]):
        return None
    if len(node.inputs) > 2 and node.inputs[2] and node.inputs[2] not in graph.constants:
        return None
    pads = a.get("pads")
    if pads is None or len(pads) != 8 or pads[0] or pads[1] or pads[4] or pads[5] or min(pads) < 0:
        return None
    return node.inputs[0], [int(pads[2]), int(pads[3]), int(pads[6]), int(pads[7])], float(a.get("value", 0.0))


def _pad_fed(graph: Graph, nodes: list[Node], name: str) -> tuple[str, list[int], float] | None:
    """A virtual pad for ``name`` when every consumer on the path reads it as a window input."""
    vp = virtual_pad(graph, name)
    if vp is None:
        return None
    on = {n.name for n in nodes}
    for c in graph.consumers(name):
        if c.name in on and (c.op_type not in _WINDOW_OPS or list(c.inputs).index(name) != 0):
            return None
    return vp


def value_reads(graph: Graph, node: Node, nodes: list[Node]) -> list[str]:
    """Non-constant tensors whose values the rule of ``node`` reads (a virtual pad names the Pad's input)."""
    op = node.op_type
    names: list[str] = []
    if op in _ADD_LIKE:
        data = [i for i in node.inputs if i and i not in graph.constants]
        if len(data) > 1:
            names += data
    for i in _VALUE_INPUTS.get(op, ()):
        if i < len(node.inputs) and node.inputs[i]:
            names.append(node.inputs[i])
    if op == "LSTM" and node.outputs and node.outputs[0]:
        names.append(node.outputs[0])
    if op in _PARAM_OPS:
        names += [i for i in node.inputs[1:] if i]
    if op not in _SHAPE_ONLY:  # a rule we know nothing about: everything it touches
        names += [t for t in list(node.inputs) + list(node.outputs) if t]
    out = []
    for t in names:
        if t in graph.constants:
            continue
        if op in _WINDOW_OPS and t == node.inputs[0]:
            vp = _pad_fed(graph, nodes, t)
            if vp is not None:
                t = vp[0]
        out.append(t)
    return out


def shape_known(graph: Graph, name: str, source: str) -> bool:
    """The graph knows the shape of ``name`` (its batch axis may be symbolic when the source's is)."""
    s, s0 = graph.shape(name), graph.shape(source)
    if s is None:
        return False
    free_batch = bool(s0) and s0[0] is None
    return all(isinstance(d, int) and d > 0 or (i == 0 and d is None and free_batch) for i, d in enumerate(s))


def relevant_names(graph: Graph, nodes: list[Node]) -> set[str]:
    """Every non-constant tensor a plan may read or whose shape it needs."""
    return {t for n in nodes for t in list(n.inputs) + list(n.outputs) if t and t not in graph.constants}


def resolve_shapes(graph: Graph, values: dict[str, np.ndarray], source: str, names: set[str]
                   ) -> dict[str, tuple[int, ...]]:
    """Shapes of ``names``: the exposed value's, else the graph's with the batch axis set to the source's batch."""
    x = values[source]
    n_batch = x.shape[0] if x.ndim else 1
    s0 = graph.shape(source)
    g_batch = s0[0] if s0 else None
    shapes: dict[str, tuple[int, ...]] = {}
    at_batch: dict[str, tuple[int, ...]] | None = None
    for name in names:
        if name in values:
            shapes[name] = tuple(values[name].shape)
            continue
        if not shape_known(graph, name, source):
            continue
        s = list(graph.shape(name))  # type: ignore[arg-type]
        if s and (s[0] is None or (g_batch is not None and s[0] == g_batch and n_batch != g_batch)):
            # axis 0 depends on the batch, but is not always the batch (Swin's [batch·windows, tokens, C]):
            # ask shape inference at this batch size, and only then fall back to "axis 0 is the batch"
            if at_batch is None:
                at_batch = graph.shapes_at(n_batch)
            if name in at_batch:
                shapes[name] = at_batch[name]
                continue
            s[0] = n_batch
        shapes[name] = tuple(int(d) for d in s)
    return shapes


@dataclass
class Plan:
    """One walk, worked out: see the module docstring."""

    source: str
    start: str
    nodes: list[Node]
    shapes: dict[str, tuple[int, ...]]
    on_path: set[str]
    compiled: bool = False
    start_t: int = 0
    why_not: str = ""
    tensors: list[str] = field(default_factory=list)
    slots: list[str] = field(default_factory=list)
    slot_shapes: list[tuple[int, ...]] = field(default_factory=list)
    steps: np.ndarray | None = None
    ip: np.ndarray | None = None
    fp: np.ndarray | None = None
    weights: np.ndarray | None = None


class _NotCompiled(Exception):
    pass


class _Builder:
    def __init__(self, graph: Graph, values: dict[str, np.ndarray], plan: Plan):
        self.g, self.values, self.plan = graph, values, plan
        self.ctx = Context(graph, values, plan.shapes)
        self.tid = {t: i for i, t in enumerate(plan.tensors)}
        self.steps: list[list[int]] = []
        self.ip: list[int] = []
        self.fp: list[float] = [0.0]
        self.w: list[np.ndarray] = []
        self.w_len = 0
        self.slot_of: dict[str, int] = {}

    # -- helpers --
    def shape(self, name: str) -> tuple[int, ...]:
        s = self.plan.shapes.get(name) if name not in self.g.constants else tuple(self.g.constants[name].shape)
        if s is None:
            raise _NotCompiled(f"shape of {name} unknown")
        return tuple(s)

    def t(self, name: str) -> int:
        """Tensor id of a traced input, -1 when the tracer would drop it (constant or off the path)."""
        if not name or name in self.g.constants or name not in self.plan.on_path:
            return -1
        return self.tid[name]

    def slot(self, name: str) -> int:
        if name not in self.values:
            raise _NotCompiled(f"{name} not exposed")
        v = self.values[name]
        if v.dtype != np.float32:
            raise _NotCompiled(f"{name} is {v.dtype}")
        if name not in self.slot_of:
            self.slot_of[name] = len(self.plan.slots)
            self.plan.slots.append(name)
            self.plan.slot_shapes.append(tuple(v.shape))
        return self.slot_of[name]

    def const(self, arr: np.ndarray) -> int:
        a = np.ascontiguousarray(arr, np.float32).reshape(-1)
        off = self.w_len
        self.w.append(a)
        self.w_len += a.size
        return off

    def f(self, v: float) -> int:
        self.fp.append(float(v))
        return len(self.fp) - 1

    def step(self, op: int, out: str, t_in: int, params: list[int], flag: int = 0) -> None:
        if op not in (ADD,) and t_in < 0:
            return
        self.steps.append([op, self.tid[out], t_in, len(self.ip), flag])
        self.ip.extend(int(v) for v in params)

    def map_step(self, out: str, name: str, axes: list[tuple[int, int, int, int]], flag: int = 0) -> None:
        """``axes``: per input axis (src, mult, off, mode)."""
        dout, din = self.shape(out), self.shape(name)
        params = [len(dout), *dout, len(din), *din]
        for a in axes:
            params += list(a)
        self.step(MAP, out, self.t(name), params, flag)

    def broadcast(self, out: str, name: str) -> None:
        dout, din = self.shape(out), self.shape(name)
        if dout == din:
            self.step(FLAT, out, self.t(name), [])
            return
        r_out, r_in = len(dout), len(din)
        self.map_step(out, name, [(-1, 0, 0, 0) if d == 1 else (r_out - r_in + a, 1, 0, 0)
                                  for a, d in enumerate(din)])

    def window_ref(self, name: str) -> list[int]:
        """[slot, stored H, stored W, pad top, pad left, pad value index] of a window input (maybe virtual)."""
        if name in self.values:
            s = self.shape(name)
            return [self.slot(name), s[2], s[3], 0, 0, 0] if len(s) == 4 else [self.slot(name), 1, s[2], 0, 0, 0]
        vp = virtual_pad(self.g, name)
        if vp is None or vp[0] not in self.values:
            raise _NotCompiled(f"{name} not exposed")
        s = self.shape(vp[0])
        return [self.slot(vp[0]), s[2], s[3], vp[1][0], vp[1][1], self.f(np.float32(vp[2]))]

    # -- ops --
    def node(self, node: Node) -> None:
        op = node.op_type
        outs = [o for o in node.outputs if o]
        out = outs[0] if outs else ""
        ins = list(node.inputs)
        if op in PASS_THROUGH:
            if ins and ins[0] not in self.g.constants:
                self.broadcast(out, ins[0])
        elif op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            self.step(FLAT, out, self.t(ins[0]), [])
        elif op == "Transpose":
            r = len(self.shape(out))
            perm = node.attrs.get("perm") or list(range(r))[::-1]
            src = [0] * r
            for i, p in enumerate(perm):
                src[p] = i
            self.map_step(out, ins[0], [(src[a], 1, 0, 0) for a in range(r)])
        elif op in _ADD_LIKE:
            self.add(node, out)
        elif op in ("Mul", "Div"):
            for name in (ins[:1] if op == "Div" else ins):
                if name and name not in self.g.constants:
                    self.broadcast(out, name)
        elif op == "Concat":
            r = len(self.shape(out))
            axis = node.attrs.get("axis", 0) % r
            off = 0
            for name in ins:
                if not name:
                    continue
                n = self.shape(name)[axis]
                if name not in self.g.constants:
                    self.map_step(out, name, [(a, 1, -off if a == axis else 0, 0) for a in range(r)], flag=1)
                off += n
        elif op == "Split":
            x = ins[0]
            r = len(self.shape(x))
            axis = node.attrs.get("axis", 0) % r
            off = 0
            for name in node.outputs:
                n = self.shape(name)[axis] if name else 0
                if name and self.t(x) >= 0:
                    self.steps.append([MAP, self.tid[name], self.t(x), len(self.ip), 0])
                    ds, dx = self.shape(name), self.shape(x)
                    self.ip += [r, *ds, r, *dx]
                    for a in range(r):
                        self.ip += [a, 1, off if a == axis else 0, 0]
                off += n
        elif op == "Slice":
            self.slice(node, out)
        elif op == "Pad":
            self.pad(node, out)
        elif op == "Gather":
            self.gather(node, out)
        elif op == "Conv":
            self.conv(node, out)
        elif op in ("MaxPool", "AveragePool"):
            self.pool(node, out)
        elif op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax"):
            self.reduce(node, out)
        elif op in ("Gemm", "MatMul"):
            self.fc(node, out)
        else:
            raise _NotCompiled(f"no compiled form for {op}")

    def add(self, node: Node, out: str) -> None:
        signs = (1.0, -1.0) if node.op_type == "Sub" else (1.0, 1.0)
        data = [(i, n) for i, n in enumerate(node.inputs) if n and n not in self.g.constants]
        if not data:
            return
        dout = self.shape(out)
        params = [len(data), len(dout), *dout]
        for i, name in data:
            din = self.shape(name)
            slot = self.slot(name) if len(data) > 1 else -1
            params += [self.t(name), slot, len(din), self.f(signs[min(i, 1)]), *din]
        self.steps.append([ADD, self.tid[out], -1, len(self.ip), 0])
        self.ip += params

    def slice(self, node: Node, out: str) -> None:
        x = node.inputs[0]
        xs = self.shape(x)
        starts, ends = _param(node, self.ctx, "starts", 1), _param(node, self.ctx, "ends", 2)
        if starts is None or ends is None:
            raise _NotCompiled("slice parameters")
        axes = _param(node, self.ctx, "axes", 3) or list(range(len(starts)))
        steps = _param(node, self.ctx, "steps", 4) or [1] * len(axes)
        spec = [(a, 1, 0, 0) for a in range(len(xs))]
        for st, en, ax, sp in zip(starts, ends, axes, steps, strict=False):
            ax %= len(xs)
            if sp < 0 and st < -xs[ax]:
                st = 0
            idx = np.arange(xs[ax])[slice(st, en, sp)]
            spec[ax] = (ax, int(sp), int(idx[0]) if len(idx) else 0, 0)
        self.map_step(out, x, spec)

    def pad(self, node: Node, out: str) -> None:
        x = node.inputs[0]
        xs = self.shape(x)
        pads = _param(node, self.ctx, "pads", 1)
        if pads is None:
            raise _NotCompiled("pads")
        rank = len(xs)
        axes_p = _param(node, self.ctx, "axes", 3)
        axes = [ax % rank for ax in axes_p] if axes_p else list(range(rank))
        begin = [0] * rank
        for j, ax in enumerate(axes):
            begin[ax] = pads[j]
        mode = {"constant": 0, "edge": 1, "reflect": 2, "wrap": 3}.get(node.attrs.get("mode", "constant"), 0)
        self.map_step(out, x, [(a, 1, -begin[a], mode) for a in range(rank)])

    def gather(self, node: Node, out: str) -> None:
        x, ind = node.inputs[0], node.inputs[1]
        if ind not in self.g.constants:
            raise _NotCompiled("gather indices")
        indices = np.asarray(self.g.constants[ind]).astype(np.int64)
        if indices.ndim:
            raise _NotCompiled("gather of an index array")
        xs = self.shape(x)
        axis = node.attrs.get("axis", 0) % len(xs)
        i = int(indices) + (xs[axis] if int(indices) < 0 else 0)
        spec = []
        for a in range(len(xs)):
            spec.append((a, 1, 0, 0) if a < axis else (-1, 0, i, 0) if a == axis else (a - 1, 1, 0, 0))
        self.map_step(out, x, spec)

    def _window(self, node: Node, xs: tuple[int, ...]) -> tuple[list[int], list[int], list[int], list[int]]:
        a = node.attrs
        nsp = len(xs) - 2
        if nsp not in (1, 2):
            raise _NotCompiled("spatial rank")
        pads = resolve_pads(a, xs[2:])
        ks, st, dl = list(a["kernel_shape"]), list(a["strides"]), list(a.get("dilations") or [1] * nsp)
        if nsp == 1:
            return [1, ks[0]], [1, st[0]], [0, pads[0]], [1, dl[0]]
        return ks, st, [pads[0], pads[1]], dl

    def conv(self, node: Node, out: str) -> None:
        xn, wn = node.inputs[0], node.inputs[1]
        if wn not in self.g.constants:
            raise _NotCompiled("filter computed at run time")
        xs, ys = self.shape(xn), self.shape(out)
        ks, st, pd, dl = self._window(node, xs)
        w = self.g.constants[wn]
        w4 = w if w.ndim == 4 else w[:, :, None, :]
        hv, wv = (xs[2], xs[3]) if len(xs) == 4 else (1, xs[2])
        oh, ow = (ys[2], ys[3]) if len(ys) == 4 else (1, ys[2])
        group = int(node.attrs.get("group", 1))
        ref = self.window_ref(xn)
        params = [xs[0], xs[1], hv, wv, ys[1], oh, ow, w4.shape[1], w4.shape[2], w4.shape[3], st[0], st[1], pd[0],
                  pd[1], dl[0], dl[1], group, self.const(w4), *ref]
        self.step(CONV, out, self.t(xn), params)

    def pool(self, node: Node, out: str) -> None:
        xn = node.inputs[0]
        xs, ys = self.shape(xn), self.shape(out)
        if node.op_type == "AveragePool":
            pads = resolve_pads(node.attrs, xs[2:])
            covers = all(k >= d + p0 + p1 for k, d, p0, p1 in zip(
                node.attrs["kernel_shape"], xs[2:], pads[: len(xs) - 2], pads[len(xs) - 2:], strict=True))
            if covers and all(d == 1 for d in ys[2:]):
                self.step(GPOOL, out, self.t(xn), [int(np.prod(xs[2:])), self.slot(xn)])
                return
        ks, st, pd, dl = self._window(node, xs)
        hv, wv = (xs[2], xs[3]) if len(xs) == 4 else (1, xs[2])
        oh, ow = (ys[2], ys[3]) if len(ys) == 4 else (1, ys[2])
        ref = self.window_ref(xn)
        params = [xs[0], xs[1], hv, wv, oh, ow, ks[0], ks[1], st[0], st[1], pd[0], pd[1], dl[0], dl[1], *ref]
        self.step(POOL, out, self.t(xn), params)

    def reduce(self, node: Node, out: str) -> None:
        xn = node.inputs[0]
        xs = self.shape(xn)
        if node.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
            axes = tuple(range(2, len(xs)))
        else:
            ax = _param(node, self.ctx, "axes", 1) if self.g.opset >= 18 or node.op_type == "ReduceSum" else \
                node.attrs.get("axes")
            if ax is None:
                axes = () if node.attrs.get("noop_with_empty_axes") else tuple(range(len(xs)))
            else:
                axes = tuple(sorted(a % len(xs) for a in ax))
            if not axes:
                self.step(FLAT, out, self.t(xn), [])
                return
        if not axes or axes != tuple(range(axes[0], len(xs))):
            raise _NotCompiled("reduction over inner axes")
        self.step(GPOOL, out, self.t(xn), [int(np.prod(xs[axes[0]:])), self.slot(xn)])

    def fc(self, node: Node, out: str) -> None:
        an, bn = node.inputs[0], node.inputs[1]
        if an in self.g.constants or bn not in self.g.constants:
            raise _NotCompiled("fc operands")
        b = self.g.constants[bn]
        a_shape = self.shape(an)
        if node.op_type == "Gemm":
            if node.attrs.get("transA", 0):
                raise _NotCompiled("transA")
            b2 = b.T if node.attrs.get("transB", 0) else b
            if node.attrs.get("alpha", 1.0) < 0:
                b2 = -b2
        else:
            if len(a_shape) != 2 or b.ndim != 2:
                raise _NotCompiled("batched MatMul")
            b2 = b
        spatial = reads_feature_map(self.ctx, an)
        m, k = a_shape
        self.step(FC, out, self.t(an), [m, k, b2.shape[1], 1 if spatial else 0, self.slot(an), self.const(b2)])


def build(graph: Graph, values: dict[str, np.ndarray], source: str, start: str, nodes: list[Node]) -> Plan:
    """Work out the walk for these values' shapes; compile it when every node on the path allows."""
    names = relevant_names(graph, nodes) | {source, start}
    shapes = resolve_shapes(graph, values, source, names)
    on_path = {t for n in nodes for t in n.outputs if t} | {source}
    plan = Plan(source, start, nodes, shapes, on_path)
    plan.tensors = sorted(on_path | {start})
    plan.start_t = plan.tensors.index(start)
    b = _Builder(graph, values, plan)
    try:
        if start not in values:
            raise _NotCompiled("start not exposed")
        for node in reversed(nodes):
            if rule_for(node.op_type) is None:
                raise _NotCompiled(f"no rule for {node.op_type}")
            b.node(node)
    except _NotCompiled as e:
        plan.why_not = str(e)
        plan.slots, plan.slot_shapes = [], []
        return plan
    plan.compiled = True
    plan.steps = np.array(b.steps, np.int64).reshape(-1, 5)
    plan.ip = np.array(b.ip or [0], np.int64)
    plan.fp = np.array(b.fp, np.float64)
    plan.weights = np.concatenate(b.w) if b.w else np.zeros(1, np.float32)
    return plan


class PlanCache:
    """Plans per graph (weakly keyed: a graph that goes away takes its plans along) and per walk key."""

    def __init__(self, per_graph: int = 16):
        self._plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._relevant: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.per_graph = per_graph

    def relevant(self, graph: Graph, source: str, start: str) -> tuple[list[Node], frozenset[str]]:
        """(path nodes, tensors whose presence among the values changes the plan), cached per graph."""
        per = self._relevant.get(graph)
        if per is None:
            per = self._relevant.setdefault(graph, {})
        hit = per.get((source, start))
        if hit is None:
            nodes = path_nodes(graph, source, start)
            names = relevant_names(graph, nodes)
            for n in nodes:
                names.update(value_reads(graph, n, nodes))
            hit = per[(source, start)] = (nodes, frozenset(names - {source}))
        return hit

    def get(self, graph: Graph, values: dict[str, np.ndarray], source: str, start: str) -> Plan:
        nodes, names = self.relevant(graph, source, start)
        present = frozenset(n for n in names if n in values)
        key = (source, start, tuple(values[source].shape), tuple(np.shape(values.get(start, ()))), present)
        per = self._plans.get(graph)
        plan = per.get(key) if per is not None else None
        if plan is None:
            with self._lock:
                per = self._plans.get(graph)
                if per is None:
                    per = {}
                    self._plans[graph] = per
                plan = per.get(key)
                if plan is None:
                    plan = build(graph, values, source, start, nodes)
                    if len(per) >= self.per_graph:
                        per.pop(next(iter(per)))
                    per[key] = plan
        return plan

    def clear(self) -> None:
        with self._lock:
            self._plans = weakref.WeakKeyDictionary()
            self._relevant = weakref.WeakKeyDictionary()


#: The process-wide plan cache :func:`onnxfix.fixations.trace` uses unless given another.
PLANS = PlanCache()


def check_shapes(plan: Plan, source: str) -> None:
    """Raise when a path tensor has no known shape (it must be exposed: :func:`needed_tensors` does that)."""
    for n in plan.nodes:
        for t in n.outputs:
            if t and t not in plan.shapes:
                raise UnsupportedModel(f"fixations: the shape of tensor {t!r} (node {n.name}) is unknown and it was "
                                       "not exposed by the forward pass; expose needed_tensors(...)")
