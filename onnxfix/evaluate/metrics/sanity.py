"""Sanity checks (Adebayo et al. 2018): a map must change when the class or the weights change.

* ``class_sensitivity`` — Spearman's rho between the map for the explained class and the map for another class
  drawn at random (seeded per image); near 1 means the method ignores the class.
* cascading parameter randomisation — the weights (and biases) of the parameterised layers (Conv, ConvTranspose,
  Gemm, MatMul with a constant weight) are re-drawn from the top (the logits) down, cumulatively, from a normal
  distribution with the original tensor's standard deviation (seed 0 and the tensor's name, so a layer
  keeps its new weights at every step); the randomised weights are written into a
  copy of the ONNX model in memory. The runner reports the Spearman's rho of the map with the original map after
  the first layer (``cascade_first``), half of the layers (``cascade_half``) and all of them (``cascade_all``).
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
from onnx import numpy_helper

from onnxfix.evaluate.metrics.ranks import spearman

PARAM_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def class_sensitivity(map_target: np.ndarray, map_other: np.ndarray) -> float:
    """Spearman's rho between two maps of the same shape (lower = more class-sensitive)."""
    return spearman(map_target, map_other)


def random_other_class(n_classes: int, exclude: int, seed: int) -> int:
    """A class index ≠ ``exclude`` drawn with ``seed``."""
    if n_classes < 2:
        raise ValueError("class sensitivity needs a model with at least two classes")
    c = int(np.random.default_rng(seed).integers(n_classes - 1))
    return c + 1 if c >= exclude else c


def parameter_layers(model: onnx.ModelProto) -> list[tuple[str, list[str]]]:
    """(node name, its float initializer inputs) of the parameterised layers, top (output side) first."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for i, node in enumerate(model.graph.node):
        if node.op_type not in PARAM_OPS:
            continue
        names = [n for n in node.input[1:] if n in inits and inits[n].data_type in (onnx.TensorProto.FLOAT,
                                                                                   onnx.TensorProto.DOUBLE)]
        if names:
            out.append((node.name or f"{node.op_type}_{i}", names))
    return out[::-1]


def cascade_steps(n_layers: int) -> dict[str, int]:
    """How many top layers are randomised for each reported step."""
    if n_layers <= 0:
        return {}
    return {"cascade_first": 1, "cascade_half": max(1, (n_layers + 1) // 2), "cascade_all": n_layers}


def randomised_copy(model: onnx.ModelProto, n_top: int, seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` with the initializers of its top ``n_top`` parameterised layers re-drawn."""
    layers = parameter_layers(model)[:n_top]
    names = {n for _, ns in layers for n in ns}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.name not in names:
            continue
        # one stream per tensor: a layer gets the same new weights at every step of the cascade
        rng = np.random.default_rng([seed, zlib.crc32(t.name.encode())])
        a = numpy_helper.to_array(t)
        std = float(a.std()) or 1e-2
        new = rng.normal(0.0, std, size=a.shape).astype(a.dtype)
        t.CopyFrom(numpy_helper.from_array(new, t.name))
    return m
