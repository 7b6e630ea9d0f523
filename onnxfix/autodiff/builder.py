"""Build the backward pass of a request as ONNX nodes appended to the forward graph (DESIGN §1).

:func:`build_backward` returns one ``ModelProto`` that ONNX Runtime runs in a single call: the forward graph
(pruned to what the request needs), one extra input — the seed gradient, shaped like the tensor ``of`` — and the
backward nodes for exactly the nodes on a data path from the ``wrt`` tensors to ``of``. Its outputs are ``of``, the
requested ``activations`` and one ``grad:<name>`` per ``wrt`` tensor.

The build is a pipeline of passes (docs/autodiff.md):

* canonizers (canonize.py): opset upgrade, zero-Pad folding, lowering of composite ops;
* the reverse sweep (sweep.py), which asks the emitter (:class:`~onnxfix.autodiff.emitter.Builder`) to apply each
  node's rule from the build's rule stack — strided table over mode table over the base rules (registry.py);
* assembly and dead-code elimination (sweep.py).

This module is the public face of the build and re-exports what older callers imported from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from onnxfix.autodiff import canonize, sweep
from onnxfix.autodiff import rules as _rules  # noqa: F401 - fills VJP_RULES and the mode tables
from onnxfix.autodiff.canonize import TARGET_OPSET, fold_pads, upgrade_graph  # noqa: F401 - re-exported
from onnxfix.autodiff.emitter import INT64_MAX, MIN_OPSET, Builder, Dim, broadcast_sym  # noqa: F401 - re-exported
from onnxfix.autodiff.registry import STRIDED_TABLES, rule_stack
from onnxfix.autodiff.sweep import missing_vjp_rules  # noqa: F401 - re-exported
from onnxfix.errors import InputError
from onnxfix.graph import Graph

#: The built-in modes (``registry.register_mode`` adds more; ``registry.modes()`` lists them all).
MODES = ("gradient", "guided", "deconvnet")
#: Op types that are lowered to primitives before the backward pass (see lowering.py).
LOWERED = ("LSTM", "GRU", "RNN")
#: How the input gradient of a Conv is computed: "auto" picks per case (see docs/autodiff.md).
CONV_INPUT_GRAD = ("auto", "conv", "transpose")
#: Backward of strided Conv/MaxPool/AveragePool: "exact" (the adjoint) or "nearest" (Oramas et al. 2019: the
#: stride-1 op on the nearest-neighbour resampled signal, for visualisations without grid artifacts; modes.py).
STRIDED = ("exact", "nearest")
FOLD_PADS = True  # fold zero Pads into the Convs they feed before differentiating (False: for benchmarks)


def build_backward(graph: Graph, of: str, wrt: Sequence[str], mode: str = "gradient",
                   activations: Sequence[str] = (), conv_input_grad: str = "auto", strided: str = "exact"
                   ) -> tuple[onnx.ModelProto, str, dict[str, str]]:
    """The forward graph plus the backward pass of ``d(of · seed)/d(wrt)``.

    Parameters
    ----------
    graph : Graph
        The analysed forward model.
    of : str
        The tensor to differentiate (its gradient is the seed input, shaped like it).
    wrt : sequence of str
        Tensors to differentiate with respect to.
    mode : str
        The override table layered over the base rules: ``gradient`` (none), ``guided``, ``deconvnet``, or any
        mode filed with :func:`~onnxfix.autodiff.registry.register_mode`.
    activations : sequence of str
        Forward tensors to return as well.
    conv_input_grad : str
        ``auto``, ``conv`` or ``transpose``: how a Conv's input gradient is computed.
    strided : str
        ``exact`` or ``nearest`` (the strided override table).

    Returns
    -------
    (model, seed_name, {wrt name: gradient output name})
        The model's inputs are the forward inputs and ``seed_name``; its outputs are ``of``, ``activations`` and
        the gradients (``grad:<wrt name>``).
    """
    wrt = list(dict.fromkeys(wrt))
    activations = list(dict.fromkeys(activations))
    sweep.check_request(graph, of, wrt, mode, activations)
    if conv_input_grad not in CONV_INPUT_GRAD:
        raise InputError(f"conv_input_grad must be one of {CONV_INPUT_GRAD}")
    if strided not in STRIDED_TABLES:
        raise InputError(f"strided must be one of {tuple(STRIDED_TABLES)}")
    rules = rule_stack(mode, strided)
    work = graph
    if work.opset < MIN_OPSET:
        work = upgrade_graph(work, TARGET_OPSET)
    if FOLD_PADS:
        work = fold_pads(work, keep=[of, *wrt, *activations])
    work, nodes = _canonical(work, of, wrt, rules)
    b = sweep.reverse_sweep(work, of, wrt, mode, nodes, conv_input_grad, strided, rules)
    if b.required_opset > work.opset:
        work = upgrade_graph(work, max(TARGET_OPSET, b.required_opset))
        work, nodes = _canonical(work, of, wrt, rules)
        b = sweep.reverse_sweep(work, of, wrt, mode, nodes, conv_input_grad, strided, rules)
    return sweep.assemble(work, b, of, wrt, activations)


def _canonical(work: Graph, of: str, wrt: list[str], rules) -> tuple[Graph, list]:
    nodes = sweep.needed_nodes(work, of, wrt)
    sweep.raise_missing(work, nodes, rules)
    lowered = canonize.lower_composites(work, nodes)
    if lowered is not work:
        work = lowered
        nodes = sweep.needed_nodes(work, of, wrt)
        sweep.raise_missing(work, nodes, rules)
    return work, nodes


__all__ = ["CONV_INPUT_GRAD", "FOLD_PADS", "INT64_MAX", "LOWERED", "MIN_OPSET", "MODES", "STRIDED",
           "TARGET_OPSET", "Builder", "Dim", "broadcast_sym", "build_backward", "fold_pads", "missing_vjp_rules",
           "upgrade_graph"]
