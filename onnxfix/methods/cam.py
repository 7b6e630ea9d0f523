"""CAM (Zhou et al.): for graphs that end GAP → (Flatten/Reshape) → Gemm/MatMul, the class map is Σ_k w_ck A_k from
the classifier weights — no gradient. Anything else is refused with the reason."""

from __future__ import annotations

import numpy as np

from onnxfix.errors import UnsupportedModel
from onnxfix.methods.base import Attribution, Method, register_method
from onnxfix.ops import VIEW

_VIEW = VIEW - {"Transpose", "Unsqueeze"}  # views that keep the pooled channel vector (onnxfix.ops)


def cam_head(model) -> tuple[str, np.ndarray] | str:
    """(feature map tensor, class weights (classes, C)) or the reason CAM does not apply; worked out once per
    model (``model.cache``)."""
    return model.cache.get("cam_head", lambda: _find_cam_head(model))


def _find_cam_head(model) -> tuple[str, np.ndarray] | str:
    g = model.graph
    node = g.producer(model.head.logits)
    if node is not None and node.op_type == "Add":  # MatMul + bias
        data = [i for i in node.inputs if i not in g.constants]
        node = g.producer(data[0]) if len(data) == 1 else None
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        return "the logits are not produced by a Gemm/MatMul classifier"
    a, b = node.inputs[0], node.inputs[1]
    if b not in g.constants or a in g.constants:
        return "the classifier weights are not constant"
    w = np.asarray(g.constants[b], np.float64)
    if node.op_type == "Gemm":
        w = w if node.attrs.get("transB", 0) else w.T
        if node.attrs.get("transA", 0):
            return "the classifier transposes its input"
        w = w * float(node.attrs.get("alpha", 1.0))
    else:
        if w.ndim != 2:
            return "the classifier weights are not a matrix"
        w = w.T
    src = g.producer(a)
    while src is not None and src.op_type in _VIEW:
        src = g.producer(src.inputs[0])
    if src is None or src.op_type not in ("GlobalAveragePool", "ReduceMean", "AveragePool"):
        return "the classifier does not read a global average pool"
    fmap = src.inputs[0]
    shape = g.shape(fmap)
    if shape is None or len(shape) != 4 or shape[1] != w.shape[1]:
        return "the pooled tensor is not an NCHW feature map matching the classifier"
    if src.op_type == "ReduceMean" and sorted(a % 4 for a in (src.attrs.get("axes") or [])) != [2, 3]:
        return "the ReduceMean does not pool the spatial axes"
    return fmap, w


@register_method
class CAM(Method):
    name = "cam"
    summary = "CAM: class activation map from the classifier weights (GAP → fc models only, no gradient)"
    kind = "layer"

    def applies(self, model):
        head = cam_head(model)
        return head if isinstance(head, str) else None

    def forward_tensors(self, model, **options):
        head = cam_head(model)
        return [model.head.logits] + ([head[0]] if not isinstance(head, str) else [])

    def attribute_resolved(self, model, x, values, targets, opts):
        head = cam_head(model)
        if isinstance(head, str):
            raise UnsupportedModel(f"cam: {head}")
        fmap, w = head
        a = np.asarray(values[fmap], np.float64)
        cams = np.stack([np.tensordot(w[t.index], a[n], axes=(0, 0)) for n, t in enumerate(targets)]).astype(
            np.float32)
        return Attribution(self.name, "layer", cams, [np.maximum(c, 0) for c in cams], targets,
                           values[model.head.logits], [{"layer": fmap} for _ in targets])
