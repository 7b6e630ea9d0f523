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

Swin (docs/transformers.md, "Swin"): a layer that packs windows into its leading axis ([N·nW, ws², C]) or is a
cyclically shifted grid is mapped back by :func:`layout_index` — the layout ops between it and a mappable neighbour
run on an index tensor give the gather that undoes the partition and the shift; packed axes are found by shape
inference at batch 2 (:func:`static_shapes`, :func:`packing`). Windowed attention (:func:`windowed_attention`) has
no image-wide token grid: :func:`token_grid` returns None for its token count, so the attention methods refuse.

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
    if model.head.kind == "dense":
        return _before_dense_classifier(model, maps)
    return maps[-1]


#: ops a segmenter may put between its final 1×1 classifier conv and the output (upsampling, activations)
_AFTER_CLASSIFIER = ("Resize", "Upsample", "Sigmoid", "Softmax", "LogSoftmax", "Identity", "Cast", "Relu", "Clip")


def _before_dense_classifier(model: Model, maps: list[str]) -> str:
    """For a dense (segmentation) head, the feature map the final 1×1 classifier conv reads, not the class
    logits it writes: Grad-CAM of a class on its own logit map is that map (Grad-CAM++ on it is ~0). This is the
    layer pytorch-grad-cam's segmentation tutorial targets (the last decoder/backbone block). Falls back to the
    last map when the output is not a 1×1 conv's (behind upsampling or an activation)."""
    g = model.graph
    known = set(maps)
    cur = maps[-1]
    for _ in range(8):
        node = g.producer(cur)
        if node is None:
            break
        if node.op_type == "Conv":
            w = g.constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
            if w is not None and w.ndim == 4 and w.shape[2:] == (1, 1) and node.inputs[0] in known:
                return node.inputs[0]
            break
        if node.op_type not in _AFTER_CLASSIFIER:
            break
        data = [i for i in node.inputs if i and i not in g.constants]
        if len(data) != 1:
            break
        cur = data[0]
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
    """(extra leading tokens, h, w) for ``T`` tokens of the attention, from the patch embedding's grid (halved by
    each patch merging); None when no grid matches — and when ``T`` is the token count of a *windowed* attention
    (Swin: :func:`windowed_attention`), whose ``T`` tokens are one window, not the image."""
    if any(model.graph.shape(a)[-1] == T for a in windowed_attention(model)):  # type: ignore[index]
        return None
    return _grid_for(model, T)


def _grid_for(model: Model, T: int) -> tuple[int, int, int] | None:
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
    """(extra leading tokens, h, w) for a token tensor (N, T, C) with one row per image (a tensor that packs
    windows into its leading axis is not one), from the patch embedding's grid."""
    shape = model.graph.shape(name)
    if shape is None or len(shape) != 3 or not isinstance(shape[1], int):
        return None
    if (packing(model, name) or 1) != 1:
        return None
    return _grid_for(model, shape[1])


# ------------------------------------------------------------------------------------- packed and windowed layouts
_LAYOUT = frozenset({"Reshape", "Transpose", "Slice", "Concat", "Identity", "Squeeze", "Unsqueeze", "Flatten"})
_MAX_PROBE = 1 << 24  # float32 holds every index below 2**24 exactly


def _probe_batch(model: Model) -> int:
    d = (model.graph.shape(model.input) or (None,))[0]
    return d if isinstance(d, int) and d > 0 else 2


def static_shapes(model: Model) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape with the batch axis fixed (2 for a batch-dynamic model, else the model's batch): ONNX
    shape inference on a copy of the analysed graph. The graph's own shapes leave a symbolic leading axis as None
    for the batch *and* for a batch × windows axis alike; here the two differ. Cached per model."""

    def build() -> dict[str, tuple[int, ...]]:
        from onnx import helper, shape_inference

        n0 = _probe_batch(model)
        src = model.graph.model
        # weights travel as typed inputs (their shapes suffice); only small initializers (shapes, axes) as values
        small = [t for t in src.graph.initializer if int(np.prod(t.dims)) <= 64]
        big = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in src.graph.initializer
               if int(np.prod(t.dims)) > 64]
        inputs = []
        for vi in src.graph.input:
            vi2 = type(vi)()
            vi2.CopyFrom(vi)
            dims = vi2.type.tensor_type.shape.dim
            if len(dims) and not dims[0].HasField("dim_value"):
                dims[0].ClearField("dim_param")
                dims[0].dim_value = n0
            inputs.append(vi2)
        names = {vi.name for vi in inputs}
        graph = helper.make_graph(list(src.graph.node), "shapes", inputs + [b for b in big if b.name not in names],
                                  list(src.graph.output), initializer=small)
        m = helper.make_model(graph, opset_imports=list(src.opset_import), ir_version=max(src.ir_version, 4))
        try:
            m = shape_inference.infer_shapes(m, data_prop=True)
        except Exception:  # noqa: BLE001 - no static shapes: layouts are then taken as the graph declares them
            return {}
        out: dict[str, tuple[int, ...]] = {}
        for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                out[vi.name] = tuple(int(d.dim_value) for d in dims)
        return out

    return model.cache.get("static_shapes", build)


def packing(model: Model, name: str) -> int | None:
    """Rows of ``name``'s leading axis per image: 1 for a batch-leading tensor, k > 1 when the axis packs k items per
    image (Swin's windows: [batch·nW, ws², C]); None when unknown."""
    s = static_shapes(model).get(name)
    n0 = _probe_batch(model)
    if not s or s[0] % n0:
        return None
    return s[0] // n0


def windowed_attention(model: Model) -> list[str]:
    """The attention probabilities (:func:`~onnxfix.methods.attention.attention_tensors`) shaped
    [batch·windows, heads, T, T] with more than one window per image — Swin's window attention."""

    def build() -> list[str]:
        from onnxfix.methods.attention import attention_tensors

        return [a for a in attention_tensors(model)
                if len(model.graph.shape(a) or ()) == 4 and (packing(model, a) or 1) > 1]

    return model.cache.get("windowed_attention", build)


def windowed_attention_reason(model: Model) -> str | None:
    """Why attention-rollout / attention-gradient do not apply to a windowed-attention model (None otherwise)."""
    wins = windowed_attention(model)
    if not wins:
        return None
    a = wins[-1]
    k, s = packing(model, a), model.graph.shape(a)
    try:
        auto = f" (auto layer {auto_layer(model)!r})"
    except InputError:
        auto = ""
    return (f"the attention is windowed (Swin-style): {a!r} is [batch·{k} windows, {s[1]} heads, {s[2]}, {s[3]}], "  # type: ignore[index]
            f"a {s[2]}-token matrix per window with a cyclic shift between blocks and patch merging between stages, "  # type: ignore[index]
            f"not a token-to-token matrix of the image; gradcam, gradcam++, layercam{auto}, saliency, occlusion and "
            f"rise still work")


def _direct_view(model: Model, name: str):
    """The (N, C, h, w) view of a layer that needs no probe (NCHW map, batch-leading tokens, NHWC), or None."""
    g = model.graph
    shape = g.shape(name)
    if shape is not None and len(shape) == 3:
        grid = _token_grid(model, name)
        if grid is None:
            return None
        extra, h, w = grid

        def tokens(v: np.ndarray) -> np.ndarray:
            v = v[:, extra:, :]
            return v.reshape(v.shape[0], h, w, v.shape[2]).transpose(0, 3, 1, 2)

        return tokens
    if shape is not None and len(shape) == 4:
        if name in set(feature_maps(model)):
            return lambda v: v
        spatial = isinstance(shape[1], int) and isinstance(shape[2], int) and shape[1] * shape[2] > 1
        if spatial and (packing(model, name) or 1) == 1 and _is_nhwc(model, name):
            return lambda v: v.transpose(0, 3, 1, 2)
    return None


def _layout_step(model: Model, name: str, forward: bool) -> list[str]:
    """Tensors one layout op (Reshape/Transpose/Slice/Concat/…) away from ``name``: its producer's data inputs, or
    the outputs of the layout ops that read it as data."""
    g = model.graph
    if not forward:
        node = g.producer(name)
        if node is None or node.op_type not in _LAYOUT:
            return []
        ins = node.inputs if node.op_type == "Concat" else node.inputs[:1]
        return [i for i in ins if i and i not in g.constants]
    out = []
    for c in g.consumers(name):
        if c.op_type in _LAYOUT and (c.op_type == "Concat" or c.inputs[0] == name):
            out += [o for o in c.outputs[:1] if o]
    return out


def _layout_neighbours(model: Model, name: str, forward: bool, limit: int = 32) -> list[str]:
    """Tensors reachable from ``name`` through layout ops alone, nearest first."""
    seen, frontier, order = {name}, [name], []
    while frontier and len(order) < limit:
        nxt = []
        for t in frontier:
            for u in _layout_step(model, t, forward):
                if u not in seen:
                    seen.add(u)
                    order.append(u)
                    nxt.append(u)
        frontier = nxt
    return order


def _probe(model: Model, src: str, dst: str) -> np.ndarray | None:
    """``dst`` computed from ``src`` filled with its own flat indices (float32, exact below 2**24), at the probe
    batch; None when ``dst`` needs more than ``src`` or the shapes are unknown."""
    from onnxfix.sessions import make_session

    shapes = static_shapes(model)
    if src not in shapes or dst not in shapes or int(np.prod(shapes[src])) >= _MAX_PROBE:
        return None
    sub = model.graph.submodel([src], [dst], name="layout_probe")
    if [i.name for i in sub.graph.input] != [src] or model.graph.tensors[src].dtype != np.float32:
        return None
    try:
        sess = make_session(sub, threads=1)
        x = np.arange(int(np.prod(shapes[src])), dtype=np.float32).reshape(shapes[src])
        return np.asarray(sess.run([dst], {src: x})[0])
    except Exception:  # noqa: BLE001 - a probe that does not run maps nothing; the layer is then refused
        return None


def layout_index(model: Model, name: str) -> tuple[np.ndarray, str] | None:
    """For a layer that only moves the elements of a mappable layer around (Swin's window partition and cyclic
    shift, its window reverse, an [N, H, W, C] view of tokens): ``(index, anchor)`` with ``index`` (C, h, w) the
    flat per-image position in ``name`` of every element of the anchor's (N, C, h, w) view. Found by running the
    layout ops between ``name`` and the nearest mappable tensor (its ancestor or its descendant through Reshape/
    Transpose/Slice/Concat only) on a tensor holding its own indices — the partition and the shift are undone
    exactly as the exporter wrote them. None when no such tensor covers the grid. Cached per (model, layer)."""

    def build() -> tuple[np.ndarray, str] | None:
        shapes = static_shapes(model)
        n0 = _probe_batch(model)
        if len(shapes.get(name, ())) < 3:
            return None
        size = int(np.prod(shapes[name]))
        per = size // n0
        for forward in (False, True):
            for other in _layout_neighbours(model, name, forward):
                view = _direct_view(model, other)
                if view is None or other not in shapes:
                    continue
                if forward:  # name → other: other holds name's indices
                    out = _probe(model, name, other)
                    if out is None:
                        continue
                    index = view(out.astype(np.int64))
                else:  # other → name: name holds other's indices; invert
                    out = _probe(model, other, name)
                    if out is None:
                        continue
                    n_other = int(np.prod(shapes[other]))
                    inv = np.full(n_other, -1, np.int64)
                    inv[out.reshape(-1).astype(np.int64)] = np.arange(out.size)
                    index = inv[view(np.arange(n_other).reshape(shapes[other]))]
                if (index < 0).any() or index.shape[0] != n0:
                    continue
                if any(not np.array_equal(index[n], index[0] + n * per) for n in range(1, n0)):
                    continue  # images are not outermost in the packed axis
                return np.ascontiguousarray(index[0]), other
        return None

    return model.cache.get(("layout_index", name), build)


def mappable_windows(model: Model, limit: int = 2) -> list[str]:
    """Packed (windowed) layers next to the auto layer that map back to the grid (for messages)."""
    try:
        auto = auto_layer(model)
    except InputError:
        return []
    out = []
    for t in _layout_neighbours(model, auto, forward=True):
        if (packing(model, t) or 1) > 1 and layout_index(model, t) is not None:
            out.append(t)
    return out[-limit:]


def _view_reason(model: Model, name: str) -> str | None:
    shape = model.graph.shape(name)
    if shape is None:
        return "unknown shape"
    if _direct_view(model, name) is not None:
        return None
    if len(shape) >= 3 and layout_index(model, name) is not None:
        return None
    k = packing(model, name)
    if k is not None and k > 1:
        works = [auto_layer(model), *mappable_windows(model)]
        return (f"its leading axis packs {k} windows per image, and no token grid is reached from it through layout "
                f"ops alone (Reshape/Transpose/Slice/Concat: window partition, reverse and cyclic shift); layers "
                f"that work: {', '.join(repr(w) for w in works)}")
    if len(shape) == 4:
        if isinstance(shape[2], int) and isinstance(shape[3], int) and shape[2] * shape[3] <= 1:
            return "no spatial extent"
        return "not recognised as NCHW or NHWC"
    if len(shape) == 3:
        return "no patch grid matches its token count"
    return f"rank {len(shape)}"


def layer_view(model: Model, name: str):
    """A function mapping the layer's batch value to (N, C, h, w): identity for NCHW maps, a transpose for NHWC,
    drop-leading-tokens-and-reshape for token layers (pytorch-grad-cam's ``reshape_transform``, inferred), and for
    a layer in a moved layout (Swin's windows [N·nW, ws², C], a cyclically shifted grid) a gather that undoes the
    partition and the shift (:func:`layout_index`)."""

    def build():
        view = _direct_view(model, name)
        if view is not None:
            return view
        found = layout_index(model, name)
        if found is None:
            shape = model.graph.shape(name)
            if shape is not None and len(shape) == 3:
                raise InputError(f"layer {name!r}: no patch grid matches its {shape[1]} tokens")
            return lambda v: v
        index = found[0]
        per = int(np.prod(static_shapes(model)[name])) // _probe_batch(model)

        def gather(v: np.ndarray) -> np.ndarray:
            return v.reshape(v.size // per, per)[:, index]

        return gather

    return model.cache.get(("layer_view", name), build)
