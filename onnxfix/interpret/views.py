"""Survey views of what a network computes: activation maps of a layer and the first layer's filters (issue #6).

Decisions (the issue leaves them open):

* **Activation grid.** Default layer: Grad-CAM's auto layer (:func:`onnxfix.methods.layers.auto_layer`, the last
  spatial feature map on the data path); ``layer`` takes any 4-D tensor or node name that
  :func:`~onnxfix.methods.layers.resolve_layer` accepts. At most ``max_channels`` channels are shown: by default
  the *strongest* ones (highest mean activation over the map, ties to the lower index), in that order —
  ``order="index"`` shows the first ones instead. Every tile is min-max normalised on its own (a constant channel is
  all dark), coloured with onnxfix's turbo map, enlarged nearest-neighbour to at least 64 px (larger maps are shown
  at their size up to 160 px, then box-downsampled) and labelled ``c<channel> <max>``; the title names the layer,
  its shape and how the channels were chosen.
* **First-layer filters.** The first Conv (topological order) on the data path from the image input to the logits;
  its kernel must be a constant. A kernel over three input channels is drawn as one RGB tile per filter (channels
  reversed for BGR models, so colours are as a person sees them); any other input depth gives one grey tile per
  (filter, input channel). Each filter is min-max normalised over all its weights (so its colour balance is kept)
  and enlarged nearest-neighbour to at least 48 px.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.render import colorize

TITLE_H = 14
LABEL_H = 11
PAD = 2


def _minmax(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(np.asarray(a, np.float64))
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.float64)
    return (a - lo) / (hi - lo)


def _fit(tile: np.ndarray, low: int, high: int) -> Image.Image:
    """(h, w, 3) uint8 → a PIL tile whose longer side is within [low, high] (nearest up, box down)."""
    im = Image.fromarray(np.ascontiguousarray(tile))
    h, w = tile.shape[:2]
    side = max(h, w)
    if side < low:
        z = math.ceil(low / side)
        return im.resize((w * z, h * z), Image.Resampling.NEAREST)
    if side > high:
        f = high / side
        return im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX)
    return im


def _cut(draw: ImageDraw.ImageDraw, text: str, width: float) -> str:
    """``text`` shortened until it fits ``width`` pixels."""
    while len(text) > 1 and draw.textlength(text) > width:
        text = text[:-1]
    return text


def tile_grid(tiles: list[Image.Image], labels: list[str], title: str, cols: int | None = None) -> Image.Image:
    """Lay equally sized tiles out in a grid, each with a label strip above it, under a one-line title.

    Parameters
    ----------
    tiles : list of PIL images of the same size
    labels : list of str, one per tile (cut to the tile's width)
    title : str
        Drawn on a black bar at the top (cut to the sheet's width).
    cols : int, optional
        Columns (default: ceil(sqrt(n))).

    Returns
    -------
    PIL.Image.Image
        The RGB sheet.
    """
    if not tiles:
        raise ValueError("no tiles to lay out")
    n = len(tiles)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    tw, th = tiles[0].size
    cw, ch = tw + PAD, th + LABEL_H + PAD
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(cols * cw + PAD, min(int(measure.textlength(title)) + 8, 1200))
    sheet = Image.new("RGB", (width, TITLE_H + rows * ch + PAD), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    draw.rectangle([0, 0, width, TITLE_H - 1], fill=(0, 0, 0))
    draw.text((4, 1), _cut(draw, title, width - 8), fill=(255, 255, 255))
    for i, (t, lab) in enumerate(zip(tiles, labels, strict=True)):
        x0 = PAD + (i % cols) * cw
        y0 = TITLE_H + PAD + (i // cols) * ch
        draw.text((x0 + 1, y0 - 1), _cut(draw, lab, tw - 1), fill=(220, 220, 220))
        sheet.paste(t, (x0, y0 + LABEL_H))
    return sheet


# ----------------------------------------------------------------------------------------------- activation grid
def layer_channels(explainer: Any, image: Any, layer: str | None = None, max_channels: int = 64,
                   order: str = "activation") -> tuple[str, np.ndarray, np.ndarray]:
    """The channels an activation grid shows.

    Parameters
    ----------
    explainer : onnxfix.Explainer
    image : anything :meth:`onnxfix.Explainer.explain` accepts
    layer : str, optional
        Tensor or node name of a 4-D feature map (default: Grad-CAM's auto layer).
    max_channels : int
        How many channels at most.
    order : {"activation", "index"}
        The strongest channels by mean activation (default), or the first ones.

    Returns
    -------
    (name, channels, maps)
        The layer's tensor name, the chosen channel indices, and their maps (k, h, w) float32.
    """
    from onnxfix.methods.layers import resolve_layer

    if max_channels < 1:
        raise InputError(f"max_channels must be at least 1, got {max_channels}")
    if order not in ("activation", "index"):
        raise InputError(f"order must be 'activation' or 'index', got {order!r}")
    mdl = explainer.model
    name = resolve_layer(mdl, layer)
    x, _, _ = explainer.prepare(image)
    act = mdl.runtime.run({mdl.input: x}, [name])[name]
    if act.ndim != 4:
        raise InputError(f"layer {name!r} gave shape {list(act.shape)}; a 4-D feature map is needed")
    a = np.asarray(act[0], np.float32)
    if not np.isfinite(a).all():
        raise InputError(f"the activations at {name!r} contain NaN or Inf; refusing to render them")
    if order == "index":
        idx = np.arange(min(max_channels, a.shape[0]))
    else:
        idx = np.argsort(-a.mean(axis=(1, 2)), kind="stable")[:max_channels]
    return name, idx, a[idx]


def activation_grid(explainer: Any, image: Any, layer: str | None = None, max_channels: int = 64,
                    order: str = "activation") -> Image.Image:
    """A grid PNG of a layer's channels, each tile normalised on its own and labelled with its channel index.

    Parameters
    ----------
    explainer : onnxfix.Explainer
    image : anything :meth:`onnxfix.Explainer.explain` accepts
    layer : str, optional
        Tensor or node name of a 4-D feature map (default: Grad-CAM's auto layer).
    max_channels : int
        At most this many channels (default 64).
    order : {"activation", "index"}
        Show the strongest channels by mean activation (default), or the first ones.

    Returns
    -------
    PIL.Image.Image
    """
    name, idx, maps_ = layer_channels(explainer, image, layer, max_channels, order)
    total = explainer.model.graph.shape(name)
    c_all = total[1] if total and isinstance(total[1], int) else len(idx)
    tiles = [_fit(colorize(_minmax(m).astype(np.float32)), 64, 160) for m in maps_]
    labels = [f"c{int(c)} {float(m.max()):.2g}" for c, m in zip(idx, maps_, strict=True)]
    how = "strongest by mean" if order == "activation" else "first"
    title = f"{name} {maps_.shape[1]}x{maps_.shape[2]}: {len(idx)} of {c_all} channels ({how}), each min-max"
    return tile_grid(tiles, labels, title)


# ------------------------------------------------------------------------------------------- first-layer filters
def first_conv(explainer: Any) -> tuple[str, np.ndarray]:
    """(node name, kernel (O, I, kh, kw) float32) of the first Conv on the data path from the input to the logits.

    Raises
    ------
    UnsupportedModel
        No Conv on the data path, or its kernel is computed at run time.
    """
    mdl = explainer.model
    g = mdl.graph
    for node in g.nodes_between([mdl.input], mdl.head.logits):
        if node.op_type != "Conv":
            continue
        w = g.constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
        if w is None:
            raise UnsupportedModel(f"the first Conv ({node.name}) has a kernel computed at run time; "
                                   "there are no fixed filters to show")
        w = np.asarray(w, np.float32)
        if w.ndim != 4:
            raise UnsupportedModel(f"the first Conv ({node.name}) is not 2-D (kernel shape {list(w.shape)})")
        return node.name, w
    raise UnsupportedModel("no Conv lies between the image input and the explained output; no filters to show")


def first_layer_filters(explainer: Any, max_filters: int = 256) -> Image.Image:
    """The first Conv's kernels as tiles: RGB for 3 input channels, else grey per (filter, input channel).

    Parameters
    ----------
    explainer : onnxfix.Explainer
    max_filters : int
        At most this many tiles (default 256).

    Returns
    -------
    PIL.Image.Image
    """
    node, w = first_conv(explainer)
    if not np.isfinite(w).all():
        raise InputError(f"the kernel of {node} contains NaN or Inf; refusing to render it")
    O, I, kh, kw = w.shape
    tiles: list[Image.Image] = []
    labels: list[str] = []
    if I == 3:
        rgb = w[:, ::-1] if explainer.spec.channels == "bgr" else w
        for o in range(min(O, max_filters)):
            t = (_minmax(rgb[o]).transpose(1, 2, 0) * 255).round().astype(np.uint8)
            tiles.append(_fit(t, 48, 10**9))
            labels.append(f"f{o}")
    else:
        for o in range(O):
            norm = _minmax(w[o])
            for i in range(I):
                if len(tiles) >= max_filters:
                    break
                t = np.repeat((norm[i] * 255).round().astype(np.uint8)[..., None], 3, axis=2)
                tiles.append(_fit(t, 48, 10**9))
                labels.append(f"f{o}" if I == 1 else f"f{o}.{i}")
    kind = "RGB" if I == 3 else "grey"
    title = f"{node}: {len(tiles)} tiles of {O} filters {kh}x{kw}x{I} ({kind}, each filter min-max)"
    return tile_grid(tiles, labels, title)
