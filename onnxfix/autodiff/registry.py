"""The VJP rule table: one small function per ONNX op type, filed by decorator (Zennit's ``rules.py`` style).

A rule is called as ``rule(b, node, gy)``:

* ``b`` is the :class:`~onnxfix.autodiff.builder.Builder` that emits the backward nodes (``b.op``), makes constants
  (``b.const``/``b.ints``), knows static shapes (``b.shape``/``b.sym``) and the ReLU mode (``b.mode``);
* ``node`` is the forward :class:`~onnxfix.graph.Node` with normalised attributes; its input and output names are
  forward tensors that the backward nodes may read directly (the backward pass is appended to the forward graph);
* ``gy`` holds the name of the gradient of each node output, ``None`` where nothing downstream needs it.

It returns one entry per node input: the name of that input's gradient, or ``None`` (constants, integer tensors,
shape inputs, inputs that ``b.needs`` says nobody asked for).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from onnxfix.autodiff.builder import Builder
    from onnxfix.graph import Node

Rule = Callable[["Builder", "Node", list], list]

#: op type → rule function.
VJP_RULES: dict[str, Rule] = {}


def vjp(*op_types: str) -> Callable[[Rule], Rule]:
    """Function decorator: file the rule under each of ``op_types`` (later registrations win)."""

    def deco(fn: Rule) -> Rule:
        for op in op_types:
            VJP_RULES[op] = fn
        fn.op_types = tuple(op_types)  # type: ignore[attr-defined]
        return fn

    return deco


def rule_for(op_type: str) -> Rule | None:
    return VJP_RULES.get(op_type)
