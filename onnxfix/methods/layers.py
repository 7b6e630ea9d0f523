"""Feature maps of a model, for layer methods (Grad-CAM and friends).

A tensor is an NCHW *feature map* when it is produced by Conv, MaxPool, AveragePool or BatchNormalization, or by an
elementwise op, Add/Sub/Mul/Div, Pad, or a channel Concat whose first data input is one. (ONNX convolutions are
NCHW, so this holds for TensorFlow exports too, whose Transposes sit around the convs.)

Decision: the default Grad-CAM layer is the last feature map, in topological order, with spatial extent > 1 that
lies on a data path from the image input to the explained logits — the activation after the last conv block,
as pytorch-grad-cam's examples pick for ResNets (``layer4[-1]``).
"""

from __future__ import annotations

from onnxfix.errors import InputError
from onnxfix.fixations.rules import PASS_THROUGH
from onnxfix.model import Model

_SOURCES = {"Conv", "MaxPool", "AveragePool", "BatchNormalization", "LpPool"}
_FOLLOW = set(PASS_THROUGH) | {"Add", "Sub", "Mul", "Div", "Pad", "Concat", "Max", "Sum"}


def feature_maps(model: Model) -> list[str]:
    """NCHW feature maps with spatial extent on the path from the image input to the logits, topological order."""
    g = model.graph
    cached = getattr(model, "_feature_maps", None)
    if cached is not None:
        return cached
    nchw: set[str] = set()
    order: list[str] = []
    for node in g.nodes_between([model.input], model.head.logits):
        data = [i for i in node.inputs if i and i not in g.constants]
        is_map = node.op_type in _SOURCES or (
            node.op_type in _FOLLOW and data and data[0] in nchw
            and (node.op_type != "Concat" or node.attrs.get("axis", 0) in (1, -3)))
        if not is_map:
            continue
        out = node.outputs[0]
        shape = g.shape(out)
        if shape is not None and len(shape) == 4:
            nchw.add(out)
            h, w = shape[2], shape[3]
            if (h is None or w is None) or h * w > 1:
                order.append(out)
    model._feature_maps = order  # type: ignore[attr-defined]
    return order


def auto_layer(model: Model) -> str:
    maps = feature_maps(model)
    if not maps:
        raise InputError("no 4-D feature map with spatial extent lies between the input and the output; "
                         "pass --layer explicitly")
    return maps[-1]


def resolve_layer(model: Model, layer: str | None) -> str:
    """A tensor name for ``layer`` (tensor or node name; None = auto); it must be a 4-D map with spatial extent."""
    if layer is None:
        return auto_layer(model)
    g = model.graph
    name = layer
    if name not in g.tensors and name in g.node_by_name:
        name = g.node_by_name[name].outputs[0]
    if name not in g.tensors:
        near = [t for t in feature_maps(model) if layer.lower() in t.lower()][:3]
        hint = f"; feature maps include {', '.join(near or feature_maps(model)[-3:])}"
        raise InputError(f"layer {layer!r} is neither a tensor nor a node of this model{hint}")
    shape = g.shape(name)
    if shape is None or len(shape) != 4 or (isinstance(shape[2], int) and isinstance(shape[3], int)
                                            and shape[2] * shape[3] <= 1):
        raise InputError(f"layer {layer!r} has shape {list(shape) if shape else 'unknown'}; Grad-CAM needs a 4-D "
                         "(N, C, H, W) feature map with spatial extent")
    if name not in {n for node in g.nodes_between([model.input], model.head.logits) for n in node.outputs}:
        raise InputError(f"layer {layer!r} does not lie between the input and the explained output")
    return name
