"""Average-patch interpretations of relevant filters (Oramas et al., ICLR 2019, "interpretation" views).

For a filter (layer tensor, channel) the top-``k`` (default 100) (image, position) pairs by activation over the data
set are found; each position's *receptive field* is cropped from the image as the model saw it (resized to the
input size) and the crops are averaged. A grid PNG shows one row per class and one tile per relevant filter.

Decisions:

* **Receptive field** is computed from the graph, forward from the image input to the layer: each tensor axis carries
  an affine map ``position i ↦ input rows [a·i + b0, a·i + b1]``; Conv/MaxPool/AveragePool/LpPool compose with their
  kernel, stride, dilation and begin pad (auto_pad resolved), Pad shifts it, Transpose permutes axes (NHWC models),
  elementwise ops, BatchNormalization, activations, channel Concat and Add take the union of their inputs' fields.
  An input that is broadcast over space (an SE gate of shape N×C×1×1) scales channels and carries no position, so
  it is not part of the field. Ops that mix all positions (global pools, Reshape, Resize…) before the layer make
  average patches meaningless and raise :class:`UnsupportedModel`.
* Every position of a layer has the same field size, so crops are taken at that size with the parts outside the
  image left out (NaN) and averaged per pixel over the crops that cover it (no padding colour biases the mean);
  the tile shows the part of the average that some crop covers (deep layers' fields exceed the image), resized.
* Top-k counts (image, position) pairs as the issue says — several positions of one image may enter;
  ``per_image`` caps that (default no cap). Ties keep the earlier image and position.
* Crops come from the image resized whole to the model input (what the model saw; gray models give gray tiles).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from onnxfix.errors import UnsupportedModel
from onnxfix.graph import Graph, window_span
from onnxfix.ops import MIXES as _MIX_ALL  # the one op table
from onnxfix.ops import WINDOWED as _WINDOW


@dataclass(frozen=True)
class Field:
    """Receptive field along one axis: position ``i`` of the layer sees input ``[a·i + b0, a·i + b1]`` (inclusive)."""

    a: int
    b0: int
    b1: int

    @property
    def size(self) -> int:
        return self.b1 - self.b0 + 1


def receptive_field(graph: Graph, source: str, tensor: str, layout: str = "nchw") -> tuple[Field, Field]:
    """The (rows, cols) receptive field of ``tensor`` (NCHW) in the input ``source`` (``layout`` nchw or nhwc).

    Parameters
    ----------
    graph : Graph
    source : str
        The image input tensor.
    tensor : str
        A 4-D NCHW feature map downstream of ``source``.
    layout : {"nchw", "nhwc"}
        The input's layout.

    Returns
    -------
    (Field, Field)
        Along H and along W.

    Raises
    ------
    UnsupportedModel
        When an op between the input and the layer mixes all positions or is not understood.
    """
    sp = (2, 3) if layout == "nchw" else (1, 2)
    # per tensor: {axis: Field}, or None when the tensor mixes all positions (with the node that did it in ``mixer``)
    state: dict[str, dict[int, Field] | None] = {source: {sp[0]: Field(1, 0, 0), sp[1]: Field(1, 0, 0)}}
    mixer: dict[str, str] = {}
    if tensor == source:
        return Field(1, 0, 0), Field(1, 0, 0)
    for node in graph.nodes_between([source], tensor):
        ins = [i for i in graph.data_inputs(node) if i in state]
        if not ins:
            continue
        out = node.outputs[0]
        op = node.op_type
        if op in _MIX_ALL:
            state[out], mixer[out] = None, f"{op} node {node.name}"
            continue
        if op in _WINDOW or op in ("Pad", "Transpose"):
            if state[ins[0]] is None:
                state[out], mixer[out] = None, mixer[ins[0]]
                continue
        if op in _WINDOW:
            st = state[ins[0]]
            if set(st) != {2, 3}:
                raise UnsupportedModel(f"receptive field: {op} node {node.name} does not read an NCHW map")
            shape = graph.shape(node.inputs[0])
            attrs = node.attrs
            known = shape is not None and all(isinstance(d, int) for d in shape[2:])
            if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "", None, "VALID") and not known:
                raise UnsupportedModel(f"receptive field: {node.name} uses auto_pad on an input of unknown size")
            span = window_span(attrs, list(shape[2:]) if known else [1, 1])  # type: ignore[index]
            state[out] = {ax: Field(st[ax].a * span[k][0], st[ax].b0 + span[k][1] * st[ax].a,
                                    st[ax].b1 + span[k][2] * st[ax].a) for k, ax in enumerate((2, 3))}
        elif op == "Pad":
            st = state[ins[0]]
            pads = list(node.attrs.get("pads") or [])
            rank = len(pads) // 2
            state[out] = {ax: Field(f.a, f.b0 - (pads[ax] if ax < rank else 0) * f.a,
                                    f.b1 - (pads[ax] if ax < rank else 0) * f.a) for ax, f in st.items()}
        elif op == "Transpose":
            perm = node.attrs.get("perm")
            st = state[ins[0]]
            if perm is None:
                shape = graph.shape(ins[0])
                perm = list(range(len(shape) - 1, -1, -1)) if shape else None
            if perm is None:
                raise UnsupportedModel(f"receptive field: Transpose {node.name} of unknown rank")
            state[out] = {k: st[src] for k, src in enumerate(perm) if src in st}
        else:  # elementwise, activations, BatchNormalization, Concat, Add, Mul...
            # an input broadcast over space (an SE gate, N×C×1×1) scales channels and carries no position
            spatial = [i for i in ins if not _spatially_broadcast(graph, i)] or ins[:1]
            mixed = [i for i in spatial if state[i] is None]
            if mixed:
                state[out], mixer[out] = None, mixer[mixed[0]]
                continue
            fields = [state[i] for i in spatial]
            merged = {}
            for ax in fields[0]:
                fs = [f[ax] for f in fields if ax in f]
                merged[ax] = Field(max(f.a for f in fs), min(f.b0 for f in fs), max(f.b1 for f in fs))
            state[out] = merged
    if tensor in state and state[tensor] is None:
        raise UnsupportedModel(f"receptive field: {mixer[tensor]} lies between the input and the layer {tensor!r} "
                               "and mixes all positions; average patches need a convolutional layer")
    final = state.get(tensor)
    if final is None or set(final) != {2, 3}:
        raise UnsupportedModel(f"receptive field: cannot follow the input to {tensor!r} along its spatial axes")
    return final[2], final[3]


def _spatially_broadcast(graph: Graph, name: str) -> bool:
    s = graph.shape(name)
    return s is not None and len(s) == 4 and s[2] == 1 and s[3] == 1


# --------------------------------------------------------------------------------------------------- top positions
class TopK:
    """Running top-``k`` (value, image, position) per filter over a stream of feature maps of one layer."""

    def __init__(self, channels: Sequence[int], k: int = 100, per_image: int | None = None):
        self.channels = list(channels)
        self.k = k
        self.per_image = per_image
        n = len(self.channels)
        self.values = np.full((n, 0), -np.inf)
        self.images = np.zeros((n, 0), np.int64)
        self.pos = np.zeros((n, 0), np.int64)

    def update(self, maps: np.ndarray, first_image: int) -> None:
        """Add a batch ``maps`` (B, C, H, W) whose first image has index ``first_image``."""
        b, _, h, w = maps.shape
        sel = maps[:, self.channels].reshape(b, len(self.channels), h * w).astype(np.float64)
        m = self.k if self.per_image is None else min(self.k, self.per_image)
        m = min(m, h * w)
        # per image and channel: the m largest positions (stable order on ties: lower position first)
        order = np.argsort(-sel, axis=2, kind="stable")[:, :, :m]  # (B, n, m)
        vals = np.take_along_axis(sel, order, axis=2)
        imgs = np.broadcast_to((first_image + np.arange(b))[:, None, None], order.shape)
        cand_v = np.concatenate([self.values, vals.transpose(1, 0, 2).reshape(len(self.channels), -1)], axis=1)
        cand_i = np.concatenate([self.images, imgs.transpose(1, 0, 2).reshape(len(self.channels), -1)], axis=1)
        cand_p = np.concatenate([self.pos, order.transpose(1, 0, 2).reshape(len(self.channels), -1)], axis=1)
        keep = np.argsort(-cand_v, axis=1, kind="stable")[:, : self.k]
        self.values = np.take_along_axis(cand_v, keep, axis=1)
        self.images = np.take_along_axis(cand_i, keep, axis=1)
        self.pos = np.take_along_axis(cand_p, keep, axis=1)


def crop_field(image: np.ndarray, field: tuple[Field, Field], y: int, x: int) -> np.ndarray:
    """The receptive field of layer position (y, x) cut from ``image`` (H, W, C): float64 of the field's size, NaN
    where the field leaves the image."""
    fy, fx = field
    H, W = image.shape[:2]
    y0, x0 = fy.a * y + fy.b0, fx.a * x + fx.b0
    out = np.full((fy.size, fx.size, image.shape[2]), np.nan)
    sy0, sy1 = max(0, y0), min(H, y0 + fy.size)
    sx0, sx1 = max(0, x0), min(W, x0 + fx.size)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1].astype(np.float64)
    return out


def average_patch(images: Sequence[np.ndarray], field: tuple[Field, Field],
                  picks: Iterable[tuple[int, int, int]]) -> np.ndarray:
    """Mean of the crops at ``picks`` = (image index, y, x); per pixel over the crops covering it.

    Returns
    -------
    numpy.ndarray
        float64 (field H, field W, C) in the images' value range; NaN where no crop covers the pixel (a field
        larger than the image).
    """
    fy, fx = field
    c = images[0].shape[2] if images else 3
    total = np.zeros((fy.size, fx.size, c))
    count = np.zeros((fy.size, fx.size, 1))
    for i, y, x in picks:  # add the part of the field inside the image (what crop_field returns without NaN)
        img = images[i]
        H, W = img.shape[:2]
        y0, x0 = fy.a * y + fy.b0, fx.a * x + fx.b0
        sy0, sy1 = max(0, y0), min(H, y0 + fy.size)
        sx0, sx1 = max(0, x0), min(W, x0 + fx.size)
        if sy1 > sy0 and sx1 > sx0:
            total[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] += img[sy0:sy1, sx0:sx1]
            count[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] += 1
    return np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)


def patch_grid(rows: list[tuple[str, list[tuple[str, np.ndarray]]]], tile: int = 64) -> Image.Image:
    """A PNG-ready sheet: one row per (title, [(caption, average patch H×W×C uint8-range)]) ."""
    cols = max((len(r[1]) for r in rows), default=1) or 1
    label_w, cap_h = 120, 12
    sheet = Image.new("RGB", (label_w + cols * (tile + 4), max(1, len(rows)) * (tile + cap_h + 6)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (title, tiles) in enumerate(rows):
        y = r * (tile + cap_h + 6) + 2
        draw.text((4, y + tile // 2 - 6), title[:18], fill=(0, 0, 0))
        if not tiles:
            draw.text((label_w, y + tile // 2 - 6), "no relevant filters", fill=(128, 128, 128))
        for k, (cap, patch) in enumerate(tiles):
            a = _tile_array(patch)
            im = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).convert("RGB")
            im = im.resize((tile, tile), Image.Resampling.BILINEAR)
            x = label_w + k * (tile + 4)
            sheet.paste(im, (x, y))
            draw.text((x, y + tile + 1), cap[:11], fill=(0, 0, 0))
    return sheet


def _tile_array(patch: np.ndarray) -> np.ndarray:
    """The covered part of an average patch (NaN-free bounding box), uint8; white where nothing covers."""
    ok = ~np.isnan(patch[:, :, 0])
    if ok.any():
        ys, xs = np.flatnonzero(ok.any(axis=1)), np.flatnonzero(ok.any(axis=0))
        patch = patch[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
    return np.clip(np.round(np.nan_to_num(patch, nan=255.0)), 0, 255).astype(np.uint8)


def average_patches(model: Any, inputs: Sequence[np.ndarray], images: Sequence[np.ndarray],
                    filters: Sequence[tuple[str, int]], k: int = 100, per_image: int | None = None,
                    ) -> dict[tuple[str, int], np.ndarray]:
    """Average patch of every (layer tensor, channel) in ``filters`` over the data set.

    Parameters
    ----------
    model : onnxfix.model.Model
    inputs : sequence of preprocessed (1, ...) input tensors
    images : sequence of (H, W, C) arrays
        The same images as the model saw them (resized to the input size), values 0..255.
    filters : sequence of (layer, channel)
    k : int
        Crops per filter (the paper: 100).
    per_image : int, optional
        At most this many crops from one image.

    Returns
    -------
    dict
        (layer, channel) → float64 (field H, field W, C) average patch (NaN where no crop reaches).
    """
    from onnxfix.interpret.relevant import batch_size, forward_batches

    if len(inputs) != len(images):
        raise ValueError("inputs and images differ in length")
    by_layer: dict[str, list[int]] = {}
    for layer, ch in filters:
        by_layer.setdefault(layer, [])
        if ch not in by_layer[layer]:
            by_layer[layer].append(ch)
    if not by_layer:
        return {}
    layout = getattr(model, "layout", "nchw")
    fields = {t: receptive_field(model.graph, model.input, t, layout) for t in by_layer}
    tops = {t: TopK(chs, k, per_image) for t, chs in by_layer.items()}
    widths: dict[str, int] = {}
    n = 0
    for values in forward_batches(model, list(by_layer), inputs, batch_size(model)):
        b = 0
        for t, top in tops.items():
            a = values[t]
            b = a.shape[0]
            widths[t] = a.shape[3]
            top.update(a, n)
        n += b
    out: dict[tuple[str, int], np.ndarray] = {}
    for t, top in tops.items():
        w = widths[t]
        for r, ch in enumerate(top.channels):
            ok = np.isfinite(top.values[r])
            picks = [(int(i), int(p) // w, int(p) % w) for i, p in zip(top.images[r][ok], top.pos[r][ok],
                                                                        strict=True)]
            out[(t, ch)] = average_patch(images, fields[t], picks)
    return out


def model_view(image_path: str | os.PathLike, spec: Any) -> np.ndarray:
    """The image as the model sees it before normalisation: resized whole to the input, (H, W, C) uint8."""
    from onnxfix.io.image import decode_image

    im = decode_image(image_path)
    im = im.convert("L") if spec.channels == "gray" else im
    im = im.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    a = np.asarray(im, np.uint8)
    return a[:, :, None] if a.ndim == 2 else a
