"""The reverse-topological tracer of CNN Fixations.

Walks the nodes between the image input and the explained tensor in reverse topological order. Each tensor holds
a *set of discriminative locations* (unique full-index rows); a tensor read by several nodes gets the union of
what each consumer sends back. A rule from :mod:`onnxfix.fixations.rules` maps a node's output locations to its
data inputs; only tensors on a path from the image input are followed, so side branches (shape computations the
graph could not fold, a bias, a constant step code) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxfix.errors import UnsupportedOp
from onnxfix.fixations import lstm as _lstm  # noqa: F401 - registers the LSTM rule
from onnxfix.fixations.registry import Context, SelectionPolicy, rule_for
from onnxfix.graph import Graph, Node


@dataclass
class Trace:
    """Discriminative locations per tensor after a backtrack (rows of full indices, batch axis included)."""

    start: str
    input: str
    locations: dict[str, np.ndarray] = field(default_factory=dict)

    def at(self, tensor: str) -> np.ndarray:
        return self.locations.get(tensor, np.zeros((0, 0), np.int64))


def path_nodes(graph: Graph, source: str, target: str) -> list[Node]:
    """Nodes on a path from ``source`` to ``target``, topological order."""
    return graph.nodes_between([source], target)


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
          policy: SelectionPolicy | None = None) -> Trace:
    """Backtrack ``start_locs`` (rows of indices into tensor ``start``) to tensor ``source`` (the image input).

    ``policy`` may replace the neuron choice of some rules (default: every rule decides, CNN Fixations).

    ``values`` must hold every non-constant tensor on the path (see :func:`needed_tensors`).

    Raises
    ------
    UnsupportedOp
        A node on the path has no rule (all such nodes are named).
    """
    nodes = path_nodes(graph, source, start)
    missing = [n for n in nodes if rule_for(n.op_type) is None]
    if missing:
        raise UnsupportedOp("fixations", [(n.op_type, n.name) for n in missing],
                            ["saliency", "gradcam (where the path avoids them)", "occlusion"])
    on_path = {t for n in nodes for t in n.outputs} | {source}
    ctx = Context(graph, values)
    result = Trace(start, source)
    shape0 = values[start].shape
    result.locations[start] = _unique(np.asarray(start_locs, np.int64).reshape(-1, len(shape0)), shape0)
    for node in reversed(nodes):
        outs = {o: result.locations[o] for o in node.outputs if o in result.locations and len(result.locations[o])}
        if not outs:
            continue
        sent = policy.backtrack(node, ctx, outs) if policy is not None else None
        if sent is None:
            sent = rule_for(node.op_type).backtrack(node, ctx, outs)  # type: ignore[union-attr]
        for name, coords in sent.items():
            if name not in on_path or name in graph.constants:
                continue
            shape = values[name].shape
            coords = np.asarray(coords, np.int64).reshape(-1, len(shape))
            if name in result.locations and len(result.locations[name]):
                coords = np.concatenate([result.locations[name], coords])
            result.locations[name] = _unique(coords, shape)
    return result


def needed_tensors(graph: Graph, source: str, start: str) -> list[str]:
    """Every non-constant tensor a trace from ``start`` back to ``source`` reads (to expose in the forward)."""
    names: list[str] = []
    for n in path_nodes(graph, source, start):
        names.extend(t for t in list(n.inputs) + list(n.outputs) if t and t not in graph.constants)
    return list(dict.fromkeys(names))
