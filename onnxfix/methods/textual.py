"""Grad-CAM's textual explanation (Selvaraju et al., Grad-CAM §7): the channels that weigh most for and against the
explained class, each with where it fires.

Grad-CAM §7 names the top-5 neurons of the Grad-CAM layer by their weight α_k (α_k = mean_ij ∂y^c/∂A^k_ij, the same
α as the Grad-CAM map) with concept names from Network Dissection. onnxfix has no concept names, so each channel
is given by its index and the part of the image where its activation map fires — the *crop*.

Decisions (the paper and the issue leave them open):

* **Top / bottom.** ``top``: the 5 channels with the largest α, largest first; ``bottom``: the 5 with the smallest
  (most negative) α, smallest first. Ties go to the lower channel index (stable sort). A layer with fewer than 10
  channels gives overlapping lists.
* **Crop.** The channel's activation map A^k (at the layer's resolution) is resized bilinearly towards the model
  input (to at most 8× its own size — finer adds nothing to a bilinear map — then scaled), thresholded at 15% of
  its maximum, and the box is drawn around the largest 8-connected component — Grad-CAM's
  own localisation rule (§4, :func:`onnxfix.maps.heatmap_box`). A channel whose map has no positive value has no
  box (``None``); ``peak`` is the centre of the map's strongest cell, ``None`` for a constant map (a channel that
  is zero on this image can still have a large α: the ranking is by α alone, as in the paper).
* **Frame.** Methods work in model-input pixels; :meth:`onnxfix.api.Explainer.explain` maps ``box`` and ``peak``
  to the user's image pixels (the frame of ``Explanation.box``), so the Python API and the CLI's ``--json`` agree.
* **Where it is computed.** Only the ``gradcam`` method fills it (``Explanation.extras["textual"]``, and the
  channels' maps in ``extras["textual_maps"]``, shaped (len(top) + len(bottom), h, w)). When Grad-CAM is run on
  behalf of another method (guided Grad-CAM) without the layer in the forward values, it is skipped.

Each entry: ``{"channel", "alpha", "contribution" (α_k · mean A^k, the channel's share of the Grad-CAM sum before
the ReLU, averaged over the map), "activation_max", "activation_mean", "peak": [x, y] or None, "box": [x0, y0, x1,
y1] or None}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from onnxfix import maps

K = 5
THRESHOLD = 0.15


def top_bottom(alpha: np.ndarray, k: int = K) -> tuple[list[int], list[int]]:
    """Channel indices with the ``k`` largest α (largest first) and the ``k`` smallest (smallest first).

    Parameters
    ----------
    alpha : ndarray, shape (C,)
    k : int

    Returns
    -------
    (list of int, list of int)
    """
    a = np.asarray(alpha, np.float64).reshape(-1)
    k = max(0, min(int(k), a.size))
    top = np.argsort(-a, kind="stable")[:k]
    bottom = np.argsort(a, kind="stable")[:k]
    return [int(i) for i in top], [int(i) for i in bottom]


def channel_entry(channel: int, alpha: float, amap: np.ndarray, input_hw: tuple[int, int]) -> dict[str, Any]:
    """The JSON entry of one channel: α, activation statistics, peak and box in model-input pixels."""
    amap = np.asarray(amap, np.float64)
    h, w = amap.shape
    H, W = int(input_hw[0]), int(input_hw[1])
    py, px = np.unravel_index(int(np.argmax(amap)), amap.shape)
    # the centre of the peak cell, in input pixels (pixel centres are integers); none for a constant map
    peak = None
    if float(amap.max()) > float(amap.min()):
        peak = [round(float((px + 0.5) * W / w - 0.5), 2), round(float((py + 0.5) * H / h - 0.5), 2)]
    box = None
    if float(amap.max()) > 0:
        # thresholded on a grid of at most 8× the map's size (the bilinear map has no finer detail), then scaled
        gh, gw = min(H, 8 * h), min(W, 8 * w)
        up = maps.resize_map(amap.astype(np.float32), (gh, gw))
        b = maps.heatmap_box(np.maximum(up, 0.0), threshold=THRESHOLD)
        if b is not None:
            fx, fy = W / gw, H / gh
            box = [round(b[0] * fx, 2), round(b[1] * fy, 2),
                   round((b[2] + 1) * fx - 1, 2), round((b[3] + 1) * fy - 1, 2)]
    return {"channel": int(channel), "alpha": float(alpha), "contribution": float(alpha * amap.mean()),
            "activation_max": float(amap.max()), "activation_mean": float(amap.mean()), "peak": peak, "box": box}


def textual_explanation(alpha: np.ndarray, acts: np.ndarray, input_hw: tuple[int, int], layer: str = "",
                        k: int = K) -> tuple[dict[str, Any], np.ndarray]:
    """Top-``k`` and bottom-``k`` channels of a Grad-CAM layer by α.

    Parameters
    ----------
    alpha : ndarray, shape (C,)
        Grad-CAM's channel weights for the explained class.
    acts : ndarray, shape (C, h, w)
        The layer's activations on the image (batch dropped).
    input_hw : (int, int)
        The model input's height and width (boxes and peaks are in its pixels).
    layer : str
        The layer's tensor name (recorded in the result).
    k : int

    Returns
    -------
    (dict, ndarray)
        ``{"layer", "top": [entry…], "bottom": [entry…]}`` and the entries' activation maps, top then bottom,
        shaped (len(top) + len(bottom), h, w).
    """
    acts = np.asarray(acts)
    if acts.ndim != 3 or np.asarray(alpha).reshape(-1).size != acts.shape[0]:
        raise ValueError(f"need α (C,) and activations (C, h, w); got {np.shape(alpha)} and {acts.shape}")
    top, bottom = top_bottom(alpha, k)
    a = np.asarray(alpha, np.float64).reshape(-1)
    out = {"layer": layer,
           "top": [channel_entry(c, a[c], acts[c], input_hw) for c in top],
           "bottom": [channel_entry(c, a[c], acts[c], input_hw) for c in bottom]}
    return out, acts[top + bottom].astype(np.float32)


def input_hw(model: Any, x: np.ndarray) -> tuple[int, int]:
    """Height and width of the preprocessed input ``x`` (NCHW or NHWC, as the model's layout says)."""
    return (int(x.shape[1]), int(x.shape[2])) if model.layout == "nhwc" else (int(x.shape[2]), int(x.shape[3]))


def add_textual(result: Any, model: Any, x: np.ndarray, values: dict[str, np.ndarray], k: int = K) -> None:
    """Put ``textual`` and ``textual_maps`` into a Grad-CAM :class:`~onnxfix.methods.base.Result`'s extras (in
    place); nothing when the layer's activation is not among ``values``."""
    layer = result.extras.get("layer")
    w = result.extras.get("weights")
    if layer is None or w is None or layer not in values:
        return
    acts = np.asarray(values[layer])[0]
    text, amaps = textual_explanation(w, acts, input_hw(model, x), layer=layer, k=k)
    result.extras["textual"] = text
    result.extras["textual_maps"] = amaps


def to_image_frame(text: dict[str, Any], frame: Any) -> dict[str, Any]:
    """A copy of a textual explanation with ``box`` and ``peak`` mapped from model-input to image pixels."""
    sx, sy = frame.scale_xy

    def conv(e: dict[str, Any]) -> dict[str, Any]:
        e = dict(e)
        if e.get("peak") is not None:
            px, py = e["peak"]
            e["peak"] = [round(float((px + 0.5) * sx - 0.5), 2), round(float((py + 0.5) * sy - 0.5), 2)]
        if e.get("box") is not None:
            x0, y0, x1, y1 = e["box"]  # inclusive pixel extents: map the pixels' outer edges
            e["box"] = [round(x0 * sx, 2), round(y0 * sy, 2), round((x1 + 1) * sx - 1, 2), round((y1 + 1) * sy - 1, 2)]
        return e

    return {**text, "top": [conv(e) for e in text["top"]], "bottom": [conv(e) for e in text["bottom"]]}


# -------------------------------------------------------------------------------------------------------- picture
TILE = 112
LABEL_H = 12


def _crop_box(box: list[float] | None, hw: tuple[int, int], margin: float = 0.15) -> tuple[int, int, int, int]:
    """A square-ish crop around ``box`` (image pixels, inclusive), with a margin, inside the image."""
    H, W = hw
    if box is None:
        return 0, 0, W, H
    x0, y0, x1, y1 = box
    cw, ch = x1 - x0 + 1, y1 - y0 + 1
    side = max(cw, ch) * (1 + 2 * margin)
    side = max(side, 0.125 * min(H, W))
    cx, cy = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2
    left = int(np.clip(round(cx - side / 2), 0, W - 1))
    top = int(np.clip(round(cy - side / 2), 0, H - 1))
    right = int(np.clip(round(cx + side / 2), left + 1, W))
    bottom = int(np.clip(round(cy + side / 2), top + 1, H))
    return left, top, right, bottom


def textual_panel(explanation: Any, tile: int = TILE) -> Image.Image:
    """The textual explanation as a picture: a row of the top-5 channels (evidence for the class) over a row of
    the bottom-5 (evidence against), each tile the image crop around where the channel fires with its activation
    map overlaid, labelled with the channel and α.

    Parameters
    ----------
    explanation : onnxfix.api.Explanation
        A Grad-CAM explanation (``extras["textual"]`` present).
    tile : int
        Tile side in pixels.

    Returns
    -------
    PIL.Image.Image
    """
    from onnxfix.errors import InputError
    from onnxfix.render import overlay

    text = explanation.extras.get("textual")
    amaps = explanation.extras.get("textual_maps")
    if text is None or amaps is None:
        raise InputError(f"method {explanation.method!r} has no textual explanation; use --method gradcam")
    base = explanation.image
    hw = tuple(explanation.heatmap.shape)
    if base is None:
        base = Image.new("RGB", (hw[1], hw[0]), (128, 128, 128))
    base = base.convert("RGB")
    rows = [("top", f"top {len(text['top'])} channels by alpha: evidence for '{explanation.label}'"),
            ("bottom", f"bottom {len(text['bottom'])} channels by alpha: evidence against")]
    n = max(len(text["top"]), len(text["bottom"]), 1)
    title_h = 14
    sheet = Image.new("RGB", (n * (tile + 2) + 2, 2 * (title_h + LABEL_H + tile + 2) + title_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 1), f"Grad-CAM textual explanation at {text.get('layer', '')}"[:120], fill=(0, 0, 0))
    i_map = 0
    y = title_h
    for key, caption in rows:
        draw.text((4, y + 1), caption, fill=(0, 0, 0))
        y += title_h
        for j, e in enumerate(text[key]):
            m = maps.normalise(maps.resize_map(np.maximum(amaps[i_map], 0), hw))
            i_map += 1
            l, t, r, b = _crop_box(e.get("box"), hw)
            pic = overlay(base.crop((l, t, r, b)), m[t:b, l:r], None, None, alpha=0.55)
            x = 2 + j * (tile + 2)
            sheet.paste(pic.resize((tile, tile), Image.Resampling.BILINEAR), (x, y + LABEL_H))
            draw.text((x + 1, y), f"c{e['channel']} a={e['alpha']:.3g}"[: tile // 6], fill=(0, 0, 0))
        y += LABEL_H + tile + 2
    return sheet
