"""Seeds built as ONNX nodes inside the gradient model, so that forward, seed and backward are one ORT call.

A *seed builder* is any object with

* ``key``: a hashable value that identifies what it builds (programs are cached by it), and
* ``build(model: onnx.ModelProto, seed_name: str, of: str) -> None``: append nodes (and initializers) to
  ``model.graph`` that compute the tensor ``seed_name``, shaped like ``of``, from the forward tensors. The seed
  input of that name is removed from the graph's inputs before ``build`` is called.

``GradientProgram(..., seed=builder)`` uses it; ``seed="argmax"`` is :class:`ArgmaxSeed` () (the one-hot of the
argmax over the whole of ``of``) and ``seed="fed"`` feeds the seed at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import onnx
from onnx import helper, numpy_helper


@runtime_checkable
class SeedBuilder(Protocol):
    """What ``GradientProgram(seed=...)`` accepts besides ``"fed"`` and ``"argmax"``."""

    key: object

    def build(self, model: onnx.ModelProto, seed_name: str, of: str) -> None: ...  # pragma: no cover


def _out_dtype(model: onnx.ModelProto, name: str) -> np.dtype:
    for vi in list(model.graph.output) + list(model.graph.value_info) + list(model.graph.input):
        if vi.name == name and vi.type.tensor_type.elem_type:
            return np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    return np.dtype(np.float32)


def drop_input(model: onnx.ModelProto, name: str) -> None:
    """Remove graph input ``name`` (the seed, now computed in the graph)."""
    g = model.graph
    keep = [i for i in g.input if i.name != name]
    del g.input[:]
    g.input.extend(keep)


@dataclass(frozen=True)
class ArgmaxSeed:
    """The one-hot of the argmax of ``of``, built in the graph (ties go to the first index, as numpy's argmax).

    Parameters
    ----------
    axis : int, optional
        Take the argmax along this axis, independently at every position of the other axes (for (N, K) logits,
        ``axis=1`` is the top class of every batch item).
    batch_axis : int, optional
        With ``axis=None``: one argmax per index of this axis over all the other axes flattened (per batch item).
        With both ``None`` (the default): one argmax over every element of ``of`` — for a batch-1 classifier, the
        top class.
    """

    axis: int | None = None
    batch_axis: int | None = None

    @property
    def key(self) -> tuple:
        return ("argmax", self.axis, self.batch_axis)

    def build(self, model: onnx.ModelProto, seed_name: str, of: str, dtype: np.dtype | None = None) -> None:
        dtype = np.dtype(dtype or _out_dtype(model, of))
        drop_input(model, seed_name)
        g = model.graph
        p = f"{seed_name}/argmax"
        values = p + "/values"
        g.initializer.append(numpy_helper.from_array(np.array([0, 1], dtype), values))
        if self.axis is not None:
            g.node.extend([
                helper.make_node("ArgMax", [of], [p + "/index"], axis=self.axis, keepdims=0, name=p + "/argmax"),
                helper.make_node("Shape", [of], [p + "/shape"], name=p + "/shape"),
                helper.make_node("Gather", [p + "/shape", p + "/axis"], [p + "/depth"], axis=0, name=p + "/depth"),
                helper.make_node("OneHot", [p + "/index", p + "/depth", values], [seed_name], axis=self.axis,
                                 name=p + "/seed"),
            ])
            g.initializer.append(numpy_helper.from_array(np.array(self.axis, np.int64), p + "/axis"))
            return
        if self.batch_axis is not None:
            # Move the batch axis first, flatten the rest, one argmax per row, then back.
            b = self.batch_axis
            rank = _rank(model, of)
            if rank is None and b != 0:
                raise ValueError(f"ArgmaxSeed(batch_axis={b}) needs the rank of {of!r}")
            rank = rank or 1
            b = b % rank
            perm = [b] + [i for i in range(rank) if i != b]
            inv = [perm.index(i) for i in range(rank)]
            g.initializer.append(numpy_helper.from_array(np.array([0, -1], np.int64), p + "/rows"))
            g.node.extend([
                helper.make_node("Transpose", [of], [p + "/t"], perm=perm, name=p + "/t") if b else
                helper.make_node("Identity", [of], [p + "/t"], name=p + "/t"),
                helper.make_node("Reshape", [p + "/t", p + "/rows"], [p + "/flat"], name=p + "/flat"),
                helper.make_node("ArgMax", [p + "/flat"], [p + "/index"], axis=1, keepdims=0, name=p + "/argmax"),
                helper.make_node("Shape", [p + "/flat"], [p + "/fshape"], name=p + "/fshape"),
                helper.make_node("Gather", [p + "/fshape", p + "/one"], [p + "/depth"], axis=0, name=p + "/depth"),
                helper.make_node("OneHot", [p + "/index", p + "/depth", values], [p + "/onehot"], axis=-1,
                                 name=p + "/onehot"),
                helper.make_node("Shape", [p + "/t"], [p + "/tshape"], name=p + "/tshape"),
                helper.make_node("Reshape", [p + "/onehot", p + "/tshape"], [p + "/back"], name=p + "/back"),
                helper.make_node("Transpose", [p + "/back"], [seed_name], perm=inv, name=p + "/seed") if b else
                helper.make_node("Identity", [p + "/back"], [seed_name], name=p + "/seed"),
            ])
            g.initializer.append(numpy_helper.from_array(np.array(1, np.int64), p + "/one"))
            return
        g.initializer.append(numpy_helper.from_array(np.array([1, -1], np.int64), p + "/flat_shape"))
        g.node.extend([
            helper.make_node("Reshape", [of, p + "/flat_shape"], [p + "/flat"], name=p + "/reshape"),
            helper.make_node("ArgMax", [p + "/flat"], [p + "/index"], axis=1, keepdims=0, name=p + "/argmax"),
            helper.make_node("Size", [of], [p + "/depth"], name=p + "/size"),
            helper.make_node("OneHot", [p + "/index", p + "/depth", values], [p + "/onehot"], axis=-1,
                             name=p + "/onehot"),
            helper.make_node("Shape", [of], [p + "/shape"], name=p + "/shape"),
            helper.make_node("Reshape", [p + "/onehot", p + "/shape"], [seed_name], name=p + "/seed"),
        ])


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    for vi in list(model.graph.output) + list(model.graph.value_info) + list(model.graph.input):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def seed_in_graph(model: onnx.ModelProto, seed_name: str, of: str, dtype: np.dtype | None = None) -> None:
    """Replace the seed input by the one-hot of ``argmax(of)`` computed in the graph (over all of ``of``'s elements:
    for a batch-1 classifier output, the top class; ties go to the first index, as numpy's argmax).

    One ``InferenceSession.run`` then does forward, seed and backward: no separate forward to find the top class."""
    ArgmaxSeed().build(model, seed_name, of, dtype)
