"""Small random ONNX graphs built with onnx.helper (opset 17) and their ONNX Runtime activations.

A graph is described by a list of nodes, the data inputs ``{name: array}`` and the constants ``{name: array}``;
:func:`build` makes the ModelProto (every node output is a graph output, so ORT computes everything and
nothing is optimised away) and :func:`run` analyses it with :class:`onnxfix.graph.Graph` and returns the
activations of every tensor.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxfix.graph import Graph
from onnxfix.runtime import Runtime

OPSET = 17


def values(rng: np.random.Generator, shape, mode: int | None = None) -> np.ndarray:
    """A random float32 array; modes 0–2 are integer-valued (many exact ties), 3 is Gaussian, 4 sparse integers
    (about 70% zeros, so that few terms contribute and rules cannot all agree by saturating)."""
    if mode is None:
        mode = int(rng.integers(0, 5))
    shape = tuple(int(s) for s in shape)
    if mode == 0:
        v = rng.integers(-2, 3, size=shape)
    elif mode == 1:
        v = rng.integers(0, 2, size=shape)
    elif mode == 2:
        v = rng.integers(-3, 2, size=shape)
    elif mode == 4:
        v = rng.integers(-2, 3, size=shape) * (rng.random(shape) < 0.3)
    else:
        v = rng.standard_normal(shape)
    return np.asarray(v, dtype=np.float32)


def _const(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def build(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray] | None = None,
          outputs: list[str] | None = None) -> onnx.ModelProto:
    """A model of ``nodes``; graph inputs from ``inputs`` (float32), initializers from ``consts``."""
    consts = consts or {}
    for i, n in enumerate(nodes):
        if not n.name:
            n.name = f"{n.op_type.lower()}_{i}"
    if outputs is None:
        outputs = [o for n in nodes for o in n.output if o]
    g = helper.make_graph(
        nodes,
        "test",
        inputs=[helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in inputs.items()],
        outputs=[helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=[_const(k, v) for k, v in consts.items()],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[Graph, dict[str, np.ndarray]]:
    """Analyse ``model`` and run it on ONNX Runtime: (graph, every tensor's value by name)."""
    graph = Graph.from_model(model)
    acts = Runtime(graph, threads=1).activations(feeds)
    return graph, {k: np.asarray(v) for k, v in acts.items()}


def node_of(graph: Graph, output: str):
    """The onnxfix node that produces tensor ``output``."""
    return graph.producer(output)


def random_locs(rng: np.random.Generator, shape, k: int | None = None) -> np.ndarray:
    """1 to ``k`` random distinct full-index rows into a tensor of ``shape`` (sorted, unique)."""
    shape = tuple(int(s) for s in shape)
    size = int(np.prod(shape)) if shape else 1
    if size == 0:
        return np.zeros((0, len(shape)), np.int64)
    if k is None:
        k = int(rng.integers(1, 6))
    flat = np.unique(rng.choice(size, size=min(k, size), replace=False))
    if not shape:
        return np.zeros((1, 0), np.int64)
    return np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)
