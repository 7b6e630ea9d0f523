"""The fixation rule table: one small class per ONNX op type, registered by decorator (Zennit's ``rules.py``).

A rule maps *discriminative locations* of a node's outputs to locations of its data inputs. Locations are
``(K, rank)`` int64 arrays of full indices into the tensor, batch axis included; the tracer dedupes and unions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from onnxfix.graph import Graph, Node

Locations = np.ndarray  # (K, rank) int64


class Unexposed:
    """Stands in for an activation the forward pass did not expose (only its shape is known): rules that need
    nothing but the shape (elementwise ops, reshapes, index maps) work; reading a value raises a ``KeyError`` that
    names the tensor (see :func:`onnxfix.fixations.needed_tensors`)."""

    dtype = np.dtype(np.float32)

    def __init__(self, name: str, shape: tuple[int, ...]):
        self.name, self.shape = name, tuple(shape)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))

    def _refuse(self, *args, **kwargs):
        raise KeyError(f"tensor {self.name!r} was not exposed by the forward pass; ask "
                       "onnxfix.fixations.needed_tensors(..., policy=your_policy) for the tensors a trace reads")

    __getitem__ = __array__ = astype = _refuse


@dataclass
class Context:
    """What a rule may read: the graph (weights, attributes) and the forward activations.

    ``shapes`` gives the shape of path tensors the forward did not expose (:func:`onnxfix.fixations.needed_tensors`
    exposes only the tensors whose values a rule reads); the output of a constant ``Pad`` that was not exposed is
    rebuilt exactly from its exposed input on first use."""

    graph: Graph
    values: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    derived: dict[str, np.ndarray] = field(default_factory=dict)

    def value(self, name: str) -> np.ndarray:
        if name in self.values:
            return self.values[name]
        if name in self.graph.constants:
            return self.graph.constants[name]
        if name in self.derived:
            return self.derived[name]
        padded = self._padded(name)
        if padded is not None:
            self.derived[name] = padded
            return padded
        shape = self.shape(name)
        if shape is None:
            raise KeyError(f"tensor {name!r} is neither exposed nor of known shape")
        return Unexposed(name, shape)  # type: ignore[return-value]

    def shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of tensor ``name`` (exposed, constant, planned, or fully static in the graph)."""
        if name in self.values:
            return tuple(self.values[name].shape)
        if name in self.graph.constants:
            return tuple(self.graph.constants[name].shape)
        if name in self.shapes:
            return tuple(self.shapes[name])
        s = self.graph.shape(name)
        if s is not None and all(isinstance(d, int) and d > 0 for d in s):
            return tuple(s)
        return None

    def _padded(self, name: str) -> np.ndarray | None:
        node = self.graph.producer(name)
        if node is None or node.op_type != "Pad" or node.inputs[0] not in self.values:
            return None
        pads = node.attrs.get("pads")
        ok_value = len(node.inputs) < 3 or not node.inputs[2] or node.inputs[2] in self.graph.constants
        if node.attrs.get("mode", "constant") != "constant" or pads is None or "axes" in node.attrs or not ok_value \
                or (len(node.inputs) > 3 and node.inputs[3]) or min(pads) < 0:
            return None
        x = self.values[node.inputs[0]]
        r = x.ndim
        if len(pads) != 2 * r:
            return None
        width = [(int(pads[i]), int(pads[i + r])) for i in range(r)]
        return np.pad(x, width, constant_values=np.asarray(node.attrs.get("value", 0.0), x.dtype))

    def is_data(self, name: str) -> bool:
        return bool(name) and name not in self.graph.constants


class Rule:
    """Base class: ``backtrack`` returns {input tensor name: locations} for the node's data inputs."""

    op_types: ClassVar[tuple[str, ...]] = ()

    def backtrack(self, node: Node, ctx: Context, out: dict[str, Locations]) -> dict[str, Locations]:
        raise NotImplementedError


class SelectionPolicy:
    """How the tracer picks input neurons. This default defers every node to its op's rule (CNN Fixations);
    a subclass (:mod:`onnxfix.fixations.discernible`) returns ``{input: locations}`` for the nodes whose neuron
    choice it replaces, and ``None`` for the rest."""

    name: ClassVar[str] = "fixations"

    def backtrack(self, node: Node, ctx: Context, out: dict[str, Locations]) -> dict[str, Locations] | None:
        return None


RULES: dict[str, Rule] = {}


def register(*op_types: str):
    """Class decorator: instantiate the rule and file it under each of ``op_types``."""

    def deco(cls: type[Rule]) -> type[Rule]:
        cls.op_types = tuple(op_types)
        inst = cls()
        for op in op_types:
            RULES[op] = inst
        return cls

    return deco


def rule_for(op_type: str) -> Rule | None:
    return RULES.get(op_type)
