"""Feature maps of a model, for layer methods (Grad-CAM and friends).

A tensor is an NCHW *feature map* when it is produced by Conv, MaxPool, AveragePool or BatchNormalization, or by an
elementwise op, Add/Sub/Mul/Div, Pad, or a channel Concat whose first data input is one. (ONNX convolutions are
NCHW, so this holds for TensorFlow exports too, whose Transposes sit around the convs.)

Layers that are not NCHW (issue "core contract" item 4): a token layer (N, T, C) — a transformer's — or an NHWC map
(N, H, W, C) — ConvNeXt's LayerNorm between permutes — is mapped to (N, C, h, w) by :func:`layer_view`, the
``reshape_transform`` pytorch-grad-cam asks users to write, inferred from the graph instead: the grid h×w is the patch
embedding's (the last NCHW feature map before the tokens, halved by each patch merging), and the leading T − h·w
tokens (class / distillation tokens) are dropped; an NHWC tensor is recognised by the Transpose(0, 2, 3, 1) it descends
from.

Decision: the default Grad-CAM layer is the last feature map, in topological order, with spatial extent > 1 that
lies on a data path from the image input to the explained logits — the activation after the last conv block,
as pytorch-grad-cam's examples pick for ResNets (``layer4[-1]``).

For a transformer (attention Softmax tensors after the last feature map, :func:`onnxfix.methods.attention.
attention_tensors`) the default is the output of the last block's first LayerNorm — pytorch-grad-cam's
``target_layers=[model.blocks[-1].norm1]``: after the last attention only the class token reaches the head, so the
patch tokens of the last block's output get zero gradient (pytorch-grad-cam #513). Found in the graph as the last
LayerNorm output (``LayerNormalization``, ORT's fused ``SkipLayerNormalization``, or the decomposed
ReduceMean/Sub/Pow/Sqrt/Div form) on a token grid that is an ancestor of the last attention Softmax.
"""

from __future__ import annotations

import numpy as np

from onnxfix.errors import InputError
from onnxfix.fixations.rules import PASS_THROUGH
from onnxfix.model import Model
from onnxfix.ops import FEATURE_SOURCES

_SOURCES = FEATURE_SOURCES  # onnxfix.ops: Conv, pools, BatchNormalization
_FOLLOW = set(PASS_THROUGH) | {"Add", "Sub", "Mul", "Div", "Pad", "Concat", "Max", "Sum"}


def feature_maps(model: Model) -> list[str]:
    """NCHW feature maps with spatial extent on the path from the image input to the logits, topological order."""
    return model.cache.get("feature_maps", lambda: _feature_maps(model))


def _feature_maps(model: Model) -> list[str]:
    g = model.graph
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
    return order


def auto_layer(model: Model) -> str:
    """The default layer: the last block's first LayerNorm for a transformer, else the last feature map."""
    if model.head.kind in ("detection", "nms"):  # a detector: the neck's finest map, never the DFL / box branch
        from onnxfix.heads import neck_layer

        neck = model.cache.get("neck_layer", lambda: neck_layer(model))
        if neck is not None:
            return neck
    token = model.cache.get("token_auto_layer", lambda: _token_auto_layer(model))
    if token is not None:
        return token
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
    if name not in {n for node in g.nodes_between([model.input], model.head.logits) for n in node.outputs}:
        raise InputError(f"layer {layer!r} does not lie between the input and the explained output")
    if shape is not None and len(shape) == 4 and name in set(feature_maps(model)):
        return name
    why = _view_reason(model, name)
    if why is not None:
        raise InputError(f"layer {layer!r} has shape {list(shape) if shape else 'unknown'}; layer methods need a "
                         f"4-D (N, C, H, W) feature map with spatial extent — or NHWC, or tokens (N, T, C) on a patch "
                         f"grid ({why})")
    return name


def _is_nhwc(model: Model, name: str) -> bool:
    """Whether 4-D ``name`` descends from a Transpose(0, 2, 3, 1) through ops that keep the last axis as channels."""
    g = model.graph
    cur, hops = name, 0
    while hops < 64:
        node = g.producer(cur)
        if node is None:
            return False
        if node.op_type == "Transpose":
            return list(node.attrs.get("perm") or []) == [0, 2, 3, 1]
        if node.op_type in ("Conv", "MaxPool", "AveragePool", "Reshape", "Flatten", "Concat"):
            return False
        data = [i for i in node.inputs if i and i not in g.constants]
        if not data:
            return False
        cur, hops = data[0], hops + 1
    return False


_LN_OPS = ("LayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
           "SimplifiedLayerNormalization")


def _is_layernorm(model: Model, name: str) -> bool:
    """Whether ``name`` is a LayerNorm output: a LayerNormalization (or ORT fused) node's first output, or the
    end of the decomposed form — (x − ReduceMean(x)) / Sqrt(…) then an optional · γ and + β."""
    g = model.graph
    node = g.producer(name)
    if node is None:
        return False
    if node.op_type in _LN_OPS:
        return node.outputs[0] == name
    for _ in range(3):  # + β, · γ, then the Div
        if node is None:
            return False
        if node.op_type == "Div":
            num = g.producer(node.inputs[0])
            if num is None or num.op_type != "Sub":
                return False
            mean = g.producer(num.inputs[1])
            return mean is not None and mean.op_type == "ReduceMean" and mean.inputs[0] == num.inputs[0]
        if node.op_type not in ("Add", "Mul"):
            return False
        data = [i for i in node.inputs if i and i not in g.constants]
        if len(data) != 1:
            return False
        node = g.producer(data[0])
    return False


def _token_auto_layer(model: Model) -> str | None:
    """The last block's first LayerNorm output of a transformer (see the module docstring), or None."""
    from onnxfix.methods.attention import attention_tensors

    attns = attention_tensors(model)
    if not attns:
        return None
    g = model.graph
    nodes = g.nodes_between([model.input], attns[-1])
    for node in reversed(nodes):
        out = node.outputs[0] if node.outputs else ""
        if out and _is_layernorm(model, out) and _token_grid(model, out) is not None:
            return out
    return None


def token_grid(model: Model, T: int) -> tuple[int, int, int] | None:
    """(extra leading tokens, h, w) for ``T`` tokens, from the patch embedding's grid (halved by each patch
    merging); None when no grid matches."""
    g = model.graph
    maps = [m for m in feature_maps(model) if isinstance((g.shape(m) or (0, 0, None))[2], int)]
    for m in reversed(maps):
        h0, w0 = g.shape(m)[2], g.shape(m)[3]  # type: ignore[index]
        for k in range(5):
            h, w = h0 >> k, w0 >> k
            if h < 1 or w < 1:
                break
            extra = T - h * w
            if 0 <= extra <= 2:
                return extra, h, w
    return None


def _token_grid(model: Model, name: str) -> tuple[int, int, int] | None:
    """(extra leading tokens, h, w) for a token tensor (N, T, C), from the patch embedding's grid."""
    shape = model.graph.shape(name)
    if shape is None or len(shape) != 3 or not isinstance(shape[1], int):
        return None
    return token_grid(model, shape[1])


def _view_reason(model: Model, name: str) -> str | None:
    shape = model.graph.shape(name)
    if shape is None:
        return "unknown shape"
    if len(shape) == 4:
        spatial = isinstance(shape[1], int) and isinstance(shape[2], int) and shape[1] * shape[2] > 1
        if spatial and _is_nhwc(model, name):
            return None
        if isinstance(shape[2], int) and isinstance(shape[3], int) and shape[2] * shape[3] <= 1:
            return "no spatial extent"
        return "not recognised as NCHW or NHWC"
    if len(shape) == 3:
        return None if _token_grid(model, name) is not None else "no patch grid matches its token count"
    return f"rank {len(shape)}"


def layer_view(model: Model, name: str):
    """A function mapping the layer's batch value to (N, C, h, w): identity for NCHW maps, a transpose for NHWC,
    drop-leading-tokens-and-reshape for token layers (pytorch-grad-cam's ``reshape_transform``, inferred)."""

    def build():
        g = model.graph
        shape = g.shape(name)
        if shape is not None and len(shape) == 3:
            grid = _token_grid(model, name)
            if grid is None:
                raise InputError(f"layer {name!r}: no patch grid matches its {shape[1]} tokens")
            extra, h, w = grid

            def tokens(v: np.ndarray) -> np.ndarray:
                v = v[:, extra:, :]
                return v.reshape(v.shape[0], h, w, v.shape[2]).transpose(0, 3, 1, 2)

            return tokens
        if shape is not None and len(shape) == 4 and name not in set(feature_maps(model)) and _is_nhwc(model, name):
            return lambda v: v.transpose(0, 3, 1, 2)
        return lambda v: v

    return model.cache.get(("layer_view", name), build)
