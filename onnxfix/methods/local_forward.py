"""Forward passes of locally perturbed inputs that recompute only what the perturbation reaches.

Occlusion's copies differ from the clean input inside one window. Through *local* ops (Conv, pools, constant Pad,
element-wise ops, channel Concat/Split) a change stays inside the window's cone of influence, so for a cut tensor
``T`` — one that every path from the input to the logits goes through, reached from the input by local ops only —
the perturbed value of ``T`` equals the clean one outside a small region. The plan then is, per window:

1. run the *front* (input → T) on a crop of the perturbed input around the window, aligned to T's total stride;
2. paste the crop's rows/columns of T that the window reaches into T's clean value (only positions whose receptive
   field lies inside the crop — or meets the crop's edge exactly where the image's own edge is — are exact, and the
   crop is sized so that every reached position is one of them);
3. run the *tail* (T → logits) on the whole map.

Geometry per spatial axis: a position ``o`` of tensor ``t`` reads input positions ``[S·o + lo, S·o + hi]``; Conv and
pools compose ``(S, lo, hi)`` with their kernel, stride, dilation and begin pad, Pad shifts by its begin pad, and
element-wise ops take the union. ``auto_pad`` is resolved for the full-size input, so a crop computes exactly the
full computation restricted to it.

The cut is chosen by a cost model — multiply-adds of the front scaled by the crop's area, plus the tail's — and used
only if it saves at least 15%. A plan is then checked once per (model, window, stride) against full recomputation
on a corner and a central window (relative error ≤ 1e-4); otherwise, and for anything the plan does not cover
(NHWC inputs, sequence outputs, a non-local op before every cut), callers recompute the whole model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfix.errors import OnnxfixError
from onnxfix.graph import Graph, Node, copy_batch_in_reshapes, resolve_pads, spatial_pads, window_span
from onnxfix.model import Model
from onnxfix.ops import BINARY, UNARY, WINDOWED  # noqa: E402 - the one op table
from onnxfix.runtime import Runtime

SAVING = 0.85  # use a plan only if its estimated cost is below this fraction of a full forward


@dataclass(frozen=True)
class Geo:
    """Per spatial axis (rows, columns): position o reads input positions [s·o + lo, s·o + hi]."""

    s: tuple[int, int]
    lo: tuple[int, int]
    hi: tuple[int, int]


IDENTITY = Geo((1, 1), (0, 0), (0, 0))


def _spatial_extent_one(graph: Graph, name: str) -> bool:
    """A constant operand that does not vary over space (a per-channel scale, a scalar)."""
    v = graph.constants.get(name)
    if v is None:
        return False
    shape = (1,) * (4 - v.ndim) + tuple(v.shape) if v.ndim <= 4 else None
    return shape is not None and shape[2] == 1 and shape[3] == 1


def _windowed(graph: Graph, node: Node, g: Geo) -> Geo | None:
    a = node.attrs
    ks = a.get("kernel_shape")
    if ks is None or len(ks) != 2:
        return None
    shape = graph.shape(node.inputs[0])
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        return None
    span = window_span(a, shape[2:])
    return Geo(tuple(g.s[i] * span[i][0] for i in range(2)),  # type: ignore[arg-type]
               tuple(g.lo[i] + g.s[i] * span[i][1] for i in range(2)),
               tuple(g.hi[i] + g.s[i] * span[i][2] for i in range(2)))


def geometry(graph: Graph, source: str, nodes: list[Node]) -> dict[str, Geo]:
    """Geometry of every tensor reached from ``source`` by local ops only (in ``nodes``' topological order)."""
    geo: dict[str, Geo] = {source: IDENTITY}
    for node in nodes:
        data = [i for i in node.inputs if i and i not in graph.constants]
        if not data or any(i not in geo for i in data):
            continue
        outs = [o for o in node.outputs if o]
        if any(len(graph.shape(o) or ()) != 4 for o in outs):
            continue
        op = node.op_type
        g0 = geo[data[0]]
        out: Geo | None = None
        if op in WINDOWED and data == [node.inputs[0]]:
            out = _windowed(graph, node, g0)
        elif op == "Pad" and data == [node.inputs[0]]:
            pb = spatial_pads(node)
            if pb is not None:
                out = Geo(g0.s, (g0.lo[0] - g0.s[0] * pb[0], g0.lo[1] - g0.s[1] * pb[1]),
                          (g0.hi[0] - g0.s[0] * pb[0], g0.hi[1] - g0.s[1] * pb[1]))
        elif op in UNARY and all(_spatial_extent_one(graph, i) for i in node.inputs[1:] if i):
            out = g0
        elif op in BINARY or (op == "Concat" and node.attrs.get("axis") in (1, -3)):
            consts = [i for i in node.inputs if i and i in graph.constants]
            gs = [geo[i] for i in data]
            same_shape = len({tuple(graph.shape(i) or ())[2:] for i in data}) == 1
            if all(_spatial_extent_one(graph, c) for c in consts) and same_shape and len({x.s for x in gs}) == 1:
                out = Geo(gs[0].s, tuple(min(x.lo[i] for x in gs) for i in range(2)),  # type: ignore[arg-type]
                          tuple(max(x.hi[i] for x in gs) for i in range(2)))  # type: ignore[arg-type]
        elif op == "Split" and node.attrs.get("axis") in (1, -3):
            out = g0
        if out is not None:
            for o in outs:
                geo[o] = out
    return geo


def _macs(graph: Graph, node: Node) -> float:
    out = graph.shape(node.outputs[0]) if node.outputs and node.outputs[0] else None
    n = float(np.prod([d for d in (out or ()) if isinstance(d, int) and d > 0])) if out else 0.0
    if node.op_type in ("Conv", "ConvTranspose"):
        w = graph.shape(node.inputs[1])
        if w and all(isinstance(d, int) for d in w[1:]):
            return n * float(np.prod(w[1:]))
    if node.op_type in ("Gemm", "MatMul"):
        a = graph.shape(node.inputs[0])
        if a and isinstance(a[-1], int):
            return n * a[-1]
    if node.op_type in ("MaxPool", "AveragePool"):
        return n * float(np.prod(node.attrs.get("kernel_shape") or [1]))
    return n


@dataclass
class AxisPlan:
    """One axis of one stage: for each window position, the crop of the stage's source and the reached range of
    its cut."""

    starts: list[int]  # crop start in the source, per window position
    size: int  # crop size
    reach: list[tuple[int, int]]  # reached positions of the cut, inclusive (a > b: none), per window position


def _axis_plan(n: int, nt: int, s: int, lo: int, hi: int, changed: list[tuple[int, int]]) -> AxisPlan | None:
    """Crops along an axis of ``n`` source positions (the cut has ``nt``) for the changed ranges ``changed``."""
    reach, need = [], []
    for p0, p1 in changed:
        a = max(0, -((hi - p0) // s))  # ceil((p0 - hi) / s)
        b = min(nt - 1, (p1 - lo) // s)
        reach.append((a, b))
        need.append((max(0, s * a + lo), min(n - 1, s * b + hi)) if a <= b else (p0, p0))
    size = max(-(-(nb + 1 - (na // s) * s) // s) * s for na, nb in need)
    if size >= n:
        return AxisPlan([0] * len(changed), n, reach)
    if n % s:
        return None
    return AxisPlan([min((na // s) * s, n - size) for na, _ in need], size, reach)


@dataclass
class Stage:
    source: str
    cut: str
    stride: tuple[int, int]
    rows: AxisPlan
    cols: AxisPlan
    runtime: Runtime | None = None


@dataclass
class Plan:
    stages: list[Stage]
    tail: Runtime
    cost: float  # estimated, as a fraction of a full forward

    @property
    def cuts(self) -> list[str]:
        return [st.cut for st in self.stages]


def _submodel(graph: Graph, nodes: list[Node], source: str, dims: list, output: str) -> onnx.ModelProto:
    """``nodes`` as a model reading ``source`` (shape ``dims``, batch symbolic); auto_pad resolved for the full
    size; Reshapes copy the batch (:func:`copy_batch_in_reshapes`)."""
    protos = {o: pn for pn in graph.model.graph.node for o in pn.output}
    pnodes = []
    inits = {t.name: t for t in graph.model.graph.initializer}
    extra: list[onnx.TensorProto] = []
    for n in nodes:
        pn = onnx.NodeProto()
        pn.CopyFrom(protos[n.outputs[0]])
        if n.op_type in WINDOWED and n.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            pads = resolve_pads(n.attrs, graph.shape(n.inputs[0])[2:])  # type: ignore[index]
            keep = [a for a in pn.attribute if a.name not in ("auto_pad", "pads")]
            del pn.attribute[:]
            pn.attribute.extend(keep + [helper.make_attribute("pads", pads)])
        pnodes.append(pn)
    used = {i for pn in pnodes for i in pn.input}
    for name in used:  # folded constants that are not initializers of the original model
        if name not in inits and name in graph.constants and not any(t.name == name for t in extra):
            extra.append(numpy_helper.from_array(np.asarray(graph.constants[name]), name))
    f = onnx.TensorProto.FLOAT
    g = helper.make_graph(pnodes, "local", [helper.make_tensor_value_info(source, f, dims)],
                          [helper.make_tensor_value_info(output, f, None)],
                          initializer=[inits[i] for i in used if i in inits] + extra)
    m = helper.make_model(g, opset_imports=list(graph.model.opset_import), ir_version=graph.model.ir_version)
    copy_batch_in_reshapes(m, graph.constants)
    return m


def _cuts(model: Model) -> tuple[list[str], dict[str, float], float]:
    """Cut tensors in topological order (every path from the input to the logits goes through each, and the input
    reaches each by local ops), the MACs of the nodes before each, and the total."""
    g = model.graph
    nodes = g.nodes_between([model.input], model.head.logits)
    geo = geometry(g, model.input, nodes)
    total, done = 0.0, {}
    cuts: list[str] = []
    for n in nodes:
        total += _macs(g, n)
        for o in n.outputs:
            if o not in geo or o == model.input or len(g.shape(o) or ()) != 4:
                continue
            tail_nodes = g.nodes_between([o], model.head.logits)
            produced = {t for tn in tail_nodes for t in tn.outputs}
            reads = {i for tn in tail_nodes for i in tn.inputs if i and i not in produced and i not in g.constants}
            if reads == {o}:
                cuts.append(o)
                done[o] = total
    return cuts, done, total or 1.0


STAGE_OVERHEAD = 0.01  # a stage's fixed cost (a session run, crops and pastes), as a fraction of a forward


def make_plan(model: Model, hw: tuple[int, int], k: tuple[int, int], ys: list[int], xs: list[int]) -> Plan | None:
    """The cheapest chain of cuts for windows ``k`` at rows ``ys`` × columns ``xs``, or ``None`` (no saving)."""
    if model.layout != "nchw" or model.head.time_axis is not None:
        return None
    g = model.graph
    cuts, done, total = _cuts(model)
    cuts = [c for c in cuts if all(isinstance(d, int) for d in (g.shape(c) or ())[2:])]
    if not cuts:
        return None
    in_geo = geometry(g, model.input, g.nodes_between([model.input], model.head.logits))
    # the changed ranges at each cut, from the window and the cut's geometry relative to the input
    win_rows = [(y, min(y + k[0], hw[0]) - 1) for y in ys]
    win_cols = [(x, min(x + k[1], hw[1]) - 1) for x in xs]
    changed: dict[str, tuple[list, list]] = {model.input: (win_rows, win_cols)}
    for c in cuts:
        gc, shape = in_geo[c], g.shape(c)
        r = _axis_plan(hw[0], shape[2], gc.s[0], gc.lo[0], gc.hi[0], win_rows)  # type: ignore[index]
        q = _axis_plan(hw[1], shape[3], gc.s[1], gc.lo[1], gc.hi[1], win_cols)  # type: ignore[index]
        if r is not None and q is not None:
            changed[c] = (r.reach, q.reach)
    sources = [model.input] + [c for c in cuts if c in changed]
    spatial = {t: tuple(g.shape(t)[2:]) for t in sources}  # type: ignore[index]
    spatial[model.input] = hw
    # best[t] = (cost of reaching the cut t's perturbed value, previous source, stage)
    best: dict[str, tuple[float, str | None, Stage | None]] = {model.input: (0.0, None, None)}
    for i, src in enumerate(sources):
        if src not in best:
            continue
        nodes = g.nodes_between([src], model.head.logits)
        geo = geometry(g, src, nodes)
        rows_in, cols_in = changed[src]
        n = spatial[src]
        for dst in sources[i + 1:]:
            if dst not in geo:
                continue
            gd, shape = geo[dst], g.shape(dst)
            r = _axis_plan(n[0], shape[2], gd.s[0], gd.lo[0], gd.hi[0], rows_in)  # type: ignore[index]
            q = _axis_plan(n[1], shape[3], gd.s[1], gd.lo[1], gd.hi[1], cols_in)  # type: ignore[index]
            if r is None or q is None:
                continue
            area = r.size * q.size / (n[0] * n[1])
            cost = best[src][0] + (done[dst] - done.get(src, 0.0)) / total * area + STAGE_OVERHEAD
            if dst not in best or cost < best[dst][0]:
                best[dst] = (cost, src, Stage(src, dst, gd.s, r, q))
    options = [(c + (total - done[t]) / total, t) for t, (c, _, _) in best.items() if t != model.input]
    if not options:
        return None
    cost, last = min(options)
    if cost > SAVING:
        return None
    stages: list[Stage] = []
    t: str | None = last
    while t is not None and t != model.input:
        _, prev, stage = best[t]
        stages.append(stage)  # type: ignore[arg-type]
        t = prev
    stages.reverse()
    c = model.input_shape[1]
    for st in stages:
        dims = ["batch", c if st.source == model.input else g.shape(st.source)[1], st.rows.size, st.cols.size]
        sub = _submodel(g, g.nodes_between([st.source], st.cut), st.source, dims, st.cut)
        st.runtime = Runtime(Graph(sub), provider=model.provider, threads=model.runtime.threads)
    tail = _submodel(g, g.nodes_between([last], model.head.logits), last, ["batch", *g.shape(last)[1:]],
                     model.head.logits)
    return Plan(stages, Runtime(Graph(tail), provider=model.provider, threads=model.runtime.threads), cost)


def run_windows(plan: Plan, model: Model, x: np.ndarray, clean: dict[str, np.ndarray],
                windows: list[tuple[int, int]], k: tuple[int, int], ys: list[int], xs: list[int],
                baseline: float) -> np.ndarray:
    """Logits for copies of ``x`` with the window at (``ys[iy]``, ``xs[ix]``) set to ``baseline``, one row per
    entry (iy, ix) of ``windows``; ``clean`` holds the clean value of every cut."""
    B = len(windows)
    part: np.ndarray | None = None
    prev: Stage | None = None
    for st in plan.stages:
        r, c = st.rows, st.cols
        src = x if prev is None else clean[st.source]
        crops = np.empty((B, src.shape[1], r.size, c.size), src.dtype)
        for j, (iy, ix) in enumerate(windows):
            y0, x0 = r.starts[iy], c.starts[ix]
            crops[j] = src[0, :, y0:y0 + r.size, x0:x0 + c.size]
            if prev is None:  # the window itself, clipped to the crop
                wy, wx = ys[iy] - y0, xs[ix] - x0
                crops[j, :, max(0, wy):max(0, wy + k[0]), max(0, wx):max(0, wx + k[1])] = baseline
            else:  # the previous stage's reached range, pasted into the clean source
                _paste(crops[j], part[j], prev, iy, ix, y0, x0)  # type: ignore[index]
        part = st.runtime.run({st.source: crops}, [st.cut])[st.cut]  # type: ignore[union-attr]
        prev = st
    last = plan.stages[-1]
    full = np.repeat(clean[last.cut], B, axis=0)
    for j, (iy, ix) in enumerate(windows):
        _paste(full[j], part[j], last, iy, ix, 0, 0)  # type: ignore[index]
    return plan.tail.run({last.cut: full}, [model.head.logits])[model.head.logits]


def _paste(dst: np.ndarray, part: np.ndarray, st: Stage, iy: int, ix: int, y0: int, x0: int) -> None:
    """Copy the reached range of ``st``'s cut from its crop output ``part`` into ``dst``, a map of the cut whose
    origin lies at (y0, x0) of the cut's full map."""
    (a, b), (p, q) = st.rows.reach[iy], st.cols.reach[ix]
    if a > b or p > q:
        return
    oy, ox = st.rows.starts[iy] // st.stride[0], st.cols.starts[ix] // st.stride[1]
    dst[:, a - y0:b + 1 - y0, p - x0:q + 1 - x0] = part[:, a - oy:b + 1 - oy, p - ox:q + 1 - ox]


def local_plan(model: Model, x: np.ndarray, k: tuple[int, int], ys: list[int], xs: list[int], baseline: float,
               full: Callable[[list[tuple[int, int]]], np.ndarray]) -> Plan | None:
    """A plan for these windows, checked once against full recomputation (``full(windows) -> logits``) on three
    windows and cached on the model; ``None`` when there is none or the check fails."""
    cache = model.cache.get("local_plans", dict)
    key = (tuple(x.shape), k, tuple(ys), tuple(xs))
    if key in cache:
        return cache[key]
    plan = None
    try:
        plan = make_plan(model, (x.shape[2], x.shape[3]), k, ys, xs)
        if plan is not None:
            probe = [(0, 0), (len(ys) // 2, len(xs) // 2), (len(ys) - 1, len(xs) - 1)]
            clean = model.runtime.run({model.input: x}, plan.cuts)
            ours = run_windows(plan, model, x, clean, probe, k, ys, xs, baseline)
            ref = full(probe)
            tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
            if ours.shape != ref.shape or not np.allclose(ours, ref, rtol=1e-4, atol=tol):
                plan = None
    except (OnnxfixError, ValueError, IndexError, KeyError, TypeError):
        plan = None
    cache[key] = plan
    return plan
