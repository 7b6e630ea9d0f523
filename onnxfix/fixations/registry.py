"""The fixation rule table: one small class per ONNX op type, registered by decorator (Zennit's ``rules.py``).

A rule maps *discriminative locations* of a node's outputs to locations of its data inputs. Locations are
``(K, rank)`` int64 arrays of full indices into the tensor, batch axis included; the tracer dedupes and unions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from onnxfix.graph import Graph, Node

Locations = np.ndarray  # (K, rank) int64


@dataclass
class Context:
    """What a rule may read: the graph (weights, attributes) and the forward activations."""

    graph: Graph
    values: dict[str, np.ndarray]

    def value(self, name: str) -> np.ndarray:
        if name in self.values:
            return self.values[name]
        return self.graph.constants[name]

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
