"""Recurrent ops: ``LSTM``, ``GRU`` and ``RNN`` are lowered to primitives before the sweep (lowering.py), so their
rules here only guard against a node that escaped the lowering."""

from __future__ import annotations

from onnxfix.autodiff.emitter import Builder
from onnxfix.autodiff.registry import vjp
from onnxfix.graph import Node


@vjp("LSTM", "GRU", "RNN")
def recurrent(b: Builder, node: Node, gy):  # pragma: no cover - recurrent ops are lowered before the backward pass
    raise b.unsupported(node, f"{node.op_type} should have been lowered to primitives first")
