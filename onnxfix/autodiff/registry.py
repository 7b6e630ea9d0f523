"""The VJP rule tables: the base rules (one small function per ONNX op type, Zennit's ``rules.py`` style) and the
override tables that make a *mode* (Zennit's composites: a table ``{op_type: rule}`` layered over the base rules).

A rule is called as ``rule(b, node, gy)``:

* ``b`` is the :class:`~onnxfix.autodiff.emitter.Builder` that emits the backward nodes (``b.op``), makes constants
  (``b.const``/``b.ints``), knows static shapes (``b.shape``/``b.sym``) and can hand the node to the rule below the
  current one in the layer stack (``b.defer(node, gy)``);
* ``node`` is the forward :class:`~onnxfix.graph.Node` with normalised attributes; its input and output names are
  forward tensors that the backward nodes may read directly (the backward pass is appended to the forward graph);
* ``gy`` holds the name of the gradient of each node output, ``None`` where nothing downstream needs it.

It returns one entry per node input: the name of that input's gradient, or ``None`` (constants, integer tensors,
shape inputs, inputs that ``b.needs`` says nobody asked for).

Modes. A build looks a node's rule up in a :class:`RuleStack`, top layer first: the *strided* table
(``"exact"``: empty; ``"nearest"``: Oramas et al.'s backward for strided ops), then the *mode* table
(``"gradient"``: empty; ``"guided"``, ``"deconvnet"``: the ReLU rules), then :data:`VJP_RULES`. A new mode (e.g. an
LRP composite: ZPlus on Conv, Epsilon on Gemm, ...) is one call, without touching the sweep::

    register_mode("lrp-epsilon", {"Conv": my_conv_rule, "Gemm": my_gemm_rule, "Relu": pass_through})
    GradientProgram(graph, of, wrt, mode="lrp-epsilon")

or rule by rule with ``@override("lrp-epsilon", "Conv")``. An override rule may call ``b.defer(node, gy)`` to get
the base (or next lower layer's) result, e.g. to modify it.

This module imports nothing from the rest of the engine (no import cycle): rule files import it, never the other
way round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from onnxfix.autodiff.emitter import Builder
    from onnxfix.graph import Node

Rule = Callable[["Builder", "Node", list], list]

#: op type → base rule function (the true vector-Jacobian product).
VJP_RULES: dict[str, Rule] = {}

#: mode name → override table ``{op_type: rule}``, layered over :data:`VJP_RULES`. "gradient" is the empty table.
MODE_TABLES: dict[str, dict[str, Rule]] = {"gradient": {}}

#: strided-backward variant → override table, layered over the mode's table ("exact" is the empty table).
STRIDED_TABLES: dict[str, dict[str, Rule]] = {"exact": {}}


def vjp(*op_types: str) -> Callable[[Rule], Rule]:
    """Function decorator: file the base rule under each of ``op_types`` (later registrations win)."""

    def deco(fn: Rule) -> Rule:
        for op in op_types:
            VJP_RULES[op] = fn
        fn.op_types = tuple(op_types)  # type: ignore[attr-defined]
        return fn

    return deco


def register_mode(name: str, table: Mapping[str, Rule] | None = None, *, strided: bool = False) -> dict[str, Rule]:
    """Create (or extend) the override table of mode ``name`` and return it.

    Parameters
    ----------
    name : str
        The mode name, as passed to ``build_backward(mode=...)`` / ``GradientProgram(mode=...)`` (or, with
        ``strided=True``, to ``strided=...``).
    table : mapping, optional
        ``{op_type: rule}`` entries to add; a rule has the base rules' signature ``rule(b, node, gy)``.
    strided : bool
        File the table among the strided variants (the top layer) instead of the modes.
    """
    tables = STRIDED_TABLES if strided else MODE_TABLES
    t = tables.setdefault(name, {})
    if table:
        t.update(table)
    return t


def override(mode: str, *op_types: str, strided: bool = False) -> Callable[[Rule], Rule]:
    """Function decorator: file ``fn`` as the rule of ``op_types`` in the override table of ``mode``."""

    def deco(fn: Rule) -> Rule:
        register_mode(mode, {op: fn for op in op_types}, strided=strided)
        return fn

    return deco


def modes() -> tuple[str, ...]:
    """Every registered mode name (built-in and registered later)."""
    return tuple(MODE_TABLES)


class RuleStack:
    """Rule tables searched top first; the last layer is the base table."""

    def __init__(self, layers: Iterable[Mapping[str, Rule]]):
        self.layers: list[Mapping[str, Rule]] = list(layers)

    def find(self, op_type: str, start: int = 0) -> tuple[Rule, int] | None:
        """``(rule, layer index)`` of the first layer at or below ``start`` that has ``op_type``."""
        for i in range(start, len(self.layers)):
            fn = self.layers[i].get(op_type)
            if fn is not None:
                return fn, i
        return None

    def __contains__(self, op_type: str) -> bool:
        return self.find(op_type) is not None


def rule_stack(mode: str = "gradient", strided: str = "exact") -> RuleStack:
    """The layers of one build: strided table, mode table, base rules."""
    return RuleStack([STRIDED_TABLES.get(strided, {}), MODE_TABLES.get(mode, {}), VJP_RULES])


def rule_for(op_type: str) -> Rule | None:
    return VJP_RULES.get(op_type)
