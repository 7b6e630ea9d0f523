"""The reverse-topological tracer of CNN Fixations.

Walks the nodes between the image input and the explained tensor in reverse topological order. Each tensor holds
a *set of discriminative locations* (unique full-index rows, batch axis first); a tensor read by several nodes gets
the union of what each consumer sends back. A rule from :mod:`onnxfix.fixations.rules` maps a node's output
locations to its data inputs; only tensors on a path from the image input are followed, so side branches (shape
computations the graph could not fold, a bias, a constant step code) are ignored.

Two engines give the same sets: the per-op rules (the reference, and the path a :class:`SelectionPolicy` plugs
into), and — when every node on the path has a compiled form and no policy is given — one compiled pass over a
plan built once per model and input shape (:mod:`onnxfix.fixations.plan`, :mod:`onnxfix.kernels.plan`). A batch is
traced in one walk: start rows carry their batch index, and every image's locations keep it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field

import numpy as np

from onnxfix.errors import UnsupportedOp
from onnxfix.fixations import lstm as _lstm  # noqa: F401 - registers the LSTM rule
from onnxfix.fixations.plan import PLANS, Plan, PlanCache, check_shapes, path_nodes, shape_known, value_reads
from onnxfix.fixations.registry import Context, SelectionPolicy, rule_for
from onnxfix.graph import Graph, Node
from onnxfix.kernels import warm
from onnxfix.kernels.plan import run_plan, run_plan_numpy
from onnxfix.nchwc import Blocked, plain

__all__ = ["Trace", "missing_rules", "needed_tensors", "path_nodes", "trace"]


class LocationMap(MutableMapping):
    """Tensor name → (K, rank) int64 rows; rows of the compiled pass are unravelled on first access."""

    def __init__(self) -> None:
        self._rows: dict[str, np.ndarray] = {}
        self._flat: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {}

    def put_flat(self, name: str, flat: np.ndarray, shape: tuple[int, ...]) -> None:
        self._flat[name] = (flat, shape)

    def __getitem__(self, name: str) -> np.ndarray:
        rows = self._rows.get(name)
        if rows is None:
            flat, shape = self._flat.pop(name)  # KeyError when absent, like a dict
            if len(shape) == 0 or flat.size == 0:
                rows = np.zeros((0, len(shape)), np.int64)
            else:
                rows = np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)
            self._rows[name] = rows
        return rows

    def __setitem__(self, name: str, rows: np.ndarray) -> None:
        self._flat.pop(name, None)
        self._rows[name] = rows

    def __delitem__(self, name: str) -> None:
        if name in self._flat:
            del self._flat[name]
        else:
            del self._rows[name]

    def __contains__(self, name: object) -> bool:
        return name in self._rows or name in self._flat

    def __iter__(self) -> Iterator[str]:
        yield from list(self._rows)
        yield from [k for k in list(self._flat) if k not in self._rows]

    def __len__(self) -> int:
        return len(self._rows) + len(self._flat)


@dataclass
class Trace:
    """Discriminative locations per tensor after a backtrack (rows of full indices, batch axis included)."""

    start: str
    input: str
    locations: MutableMapping[str, np.ndarray] = field(default_factory=LocationMap)

    def at(self, tensor: str) -> np.ndarray:
        """Rows of index coordinates into ``tensor`` (first column: the batch index); empty when none."""
        if tensor in self.locations:
            return self.locations[tensor]
        return np.zeros((0, 0), np.int64)

    def flat(self, tensor: str) -> np.ndarray:
        """Sorted flat (row-major) indices into ``tensor``: what the compiled pass keeps, without unravelling."""
        loc = self.locations
        if isinstance(loc, LocationMap) and tensor in loc._flat:
            return loc._flat[tensor][0]
        raise KeyError(tensor)


def missing_rules(graph: Graph, source: str, target: str) -> list[Node]:
    """Nodes on the traced path that have no fixation rule."""
    return [n for n in path_nodes(graph, source, target) if rule_for(n.op_type) is None]


def _unique(coords: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if coords.size == 0:
        return np.zeros((0, len(shape)), np.int64)
    if len(shape) == 0:
        return np.zeros((1, 0), np.int64)
    flat = np.unique(np.ravel_multi_index(tuple(coords.T.astype(np.int64)), shape))
    return np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)


def trace(graph: Graph, values: dict[str, np.ndarray], source: str, start: str, start_locs: np.ndarray,
          policy: SelectionPolicy | None = None, plans: PlanCache | None = None) -> Trace:
    """Backtrack ``start_locs`` (rows of indices into tensor ``start``, batch index first) to tensor ``source``.

    ``policy`` may replace the neuron choice of some rules (default: every rule decides, CNN Fixations).
    ``values`` must hold the tensors :func:`needed_tensors` names (more do no harm) and ``source``; 4-D ones may
    be :class:`onnxfix.nchwc.Blocked` (ONNX Runtime's own layout, read in place by the compiled pass). Start rows of
    several batch images are traced in one walk; image ``n``'s locations are the rows whose first index is ``n``,
    the same as tracing it alone. ``plans``: the plan cache (default the process-wide one).

    Raises
    ------
    UnsupportedOp
        A node on the path has no rule (all such nodes are named).
    """
    plan = (plans or PLANS).get(graph, values, source, start)
    missing = [n for n in plan.nodes if rule_for(n.op_type) is None]
    if missing:
        raise UnsupportedOp("fixations", [(n.op_type, n.name) for n in missing],
                            ["saliency", "gradcam (where the path avoids them)", "occlusion"])
    shape0 = tuple(values[start].shape) if start in values else plan.shapes[start]
    locs = np.asarray(start_locs, np.int64).reshape(-1, len(shape0))
    if plan.compiled and policy is None:
        ptrs = _pointers(plan, values)
        if ptrs is not None:
            return _run_compiled(plan, ptrs, values, source, start, shape0, locs)
    if any(isinstance(v, Blocked) for v in values.values()):
        values = {k: plain(v) for k, v in values.items()}
    return _walk(graph, plan, values, source, start, shape0, locs, policy)


def _pointers(plan: Plan, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, list] | None:
    """(address per slot, six layout integers per slot — see :func:`onnxfix.kernels.plan.run_plan` —, the arrays
    to keep alive), or ``None`` when a value does not have the plan's shape or dtype."""
    keep: list = []
    n_slots = max(len(plan.slots), 1)
    ptr = np.empty(n_slots, np.int64)
    lay = np.zeros(6 * n_slots, np.int64)
    for i, (name, shape) in enumerate(zip(plan.slots, plan.slot_shapes, strict=True)):
        v = values[name]
        if v.shape != shape or v.dtype != np.float32:
            return None
        if isinstance(v, Blocked):
            keep.append(v)
            ptr[i] = v.raw.__array_interface__["data"][0]
            lay[6 * i:6 * i + 6] = (v.block.bit_length() - 1, v.block - 1, v.raw.shape[1], *v.shape[1:])
            continue
        if not v.flags.c_contiguous:
            v = np.ascontiguousarray(v)
        keep.append(v)
        ptr[i] = v.__array_interface__["data"][0]
        lay[6 * i + 2] = shape[1] if len(shape) > 1 else 1
    return ptr, lay, keep


def _run_compiled(plan: Plan, ptrs: tuple[np.ndarray, np.ndarray, list], values: dict[str, np.ndarray], source: str,
                  start: str, shape0: tuple[int, ...], locs: np.ndarray) -> Trace:
    if len(shape0) == 0 or locs.size == 0:
        start_flat = np.zeros(0, np.int64)
    else:
        start_flat = np.ravel_multi_index(tuple(locs.T), shape0).astype(np.int64)
    ptr, lay, keep = ptrs
    args = (plan.steps, plan.ip, plan.fp, plan.weights, ptr, lay, len(plan.tensors), plan.start_t, start_flat)
    if warm.ready(run_plan, *args):
        flat, offsets, sent = run_plan(*args)
    else:  # numba's cache is cold: the numpy twin (same sets) while a background process compiles
        flat, offsets, sent = run_plan_numpy(*args[:4], [plain(v).reshape(-1) for v in keep], *args[6:])
    del keep
    result = Trace(start, source)
    loc = result.locations
    for t in np.flatnonzero(sent):
        name = plan.tensors[t]
        shape = shape0 if name == start else plan.shapes[name]
        loc.put_flat(name, flat[offsets[t]:offsets[t + 1]], shape)  # type: ignore[attr-defined]
    return result


def _walk(graph: Graph, plan: Plan, values: dict[str, np.ndarray], source: str, start: str,
          shape0: tuple[int, ...], locs: np.ndarray, policy: SelectionPolicy | None) -> Trace:
    """The reference walk: one rule (or policy) call per node."""
    check_shapes(plan, source)
    nodes, on_path = plan.nodes, plan.on_path
    ctx = Context(graph, values, plan.shapes)
    result = Trace(start, source)
    found: dict[str, np.ndarray] = {start: _unique(locs, shape0)}
    for node in reversed(nodes):
        outs = {o: found[o] for o in node.outputs if o in found and len(found[o])}
        if not outs:
            continue
        sent = policy.backtrack(node, ctx, outs) if policy is not None else None
        if sent is None:
            sent = rule_for(node.op_type).backtrack(node, ctx, outs)  # type: ignore[union-attr]
        for name, coords in sent.items():
            if name not in on_path or name in graph.constants:
                continue
            shape = ctx.shape(name)
            coords = np.asarray(coords, np.int64).reshape(-1, len(shape))
            if name in found and len(found[name]):
                coords = np.concatenate([found[name], coords])
            found[name] = _unique(coords, shape)
    for name, rows in found.items():
        result.locations[name] = rows
    return result


def needed_tensors(graph: Graph, source: str, start: str, policy: SelectionPolicy | None = None) -> list[str]:
    """The non-constant tensors a trace from ``start`` back to ``source`` needs from the forward pass.

    Only tensors whose *values* a rule reads (window and fc inputs, both sides of a two-input Add, reduced
    tensors, run-time parameters, LSTM inputs and outputs) and tensors whose shape the graph does not know: the
    rest of the walk needs shapes only, and every exposed tensor costs ONNX Runtime a fusion or a layout change.
    ``start`` is included, ``source`` is not (the caller has it). A ``policy`` other than the default may read
    more: with one, every tensor on the path is named (as before).
    """
    every = policy is not None and type(policy) is not SelectionPolicy
    per = _NEEDED.get(graph)
    if per is None:
        per = _NEEDED.setdefault(graph, {})
    key = (source, start, every)
    if key not in per:  # the walk's needs depend on the graph only: worked out once per graph
        per[key] = _needed(graph, source, start, every)
    return list(per[key])


_NEEDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _needed(graph: Graph, source: str, start: str, every: bool) -> list[str]:
    nodes = path_nodes(graph, source, start)
    names: list[str] = []
    if every:
        for n in nodes:
            names.extend(t for t in list(n.inputs) + list(n.outputs) if t and t not in graph.constants)
    for n in nodes:
        names.extend(value_reads(graph, n, nodes))
        names.extend(t for t in list(n.inputs) + list(n.outputs)
                     if t and t not in graph.constants and not shape_known(graph, t, source))
    names.append(start)
    return [t for t in dict.fromkeys(names) if t != source]
