"""Pictures: the user's image with a heatmap overlay, fixation points and a box; panels; atomic PNG writes.

Pillow only. Files are written to a temporary name in the destination folder and renamed into place, so a
crash or Ctrl-C never leaves a half-written PNG, and an output path that is one of the inputs is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

from onnxfix.io.atomic import write_atomic, write_new

# A compact "turbo"-like colormap: anchors interpolated to 256 entries.
_ANCHORS = np.array([
    [48, 18, 59], [70, 107, 227], [40, 188, 235], [50, 241, 152],
    [164, 252, 60], [239, 205, 58], [251, 128, 34], [209, 54, 7], [122, 4, 3]], np.float64)


def _lut() -> np.ndarray:
    x = np.linspace(0, len(_ANCHORS) - 1, 256)
    lo = np.floor(x).astype(int).clip(0, len(_ANCHORS) - 2)
    t = (x - lo)[:, None]
    return ((1 - t) * _ANCHORS[lo] + t * _ANCHORS[lo + 1]).astype(np.uint8)


LUT = _lut()


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) map in [0, 1] → (H, W, 3) uint8 colours."""
    idx = (np.clip(np.nan_to_num(heatmap), 0, 1) * 255).astype(np.uint8)
    return LUT[idx]


def overlay(image: Image.Image, heatmap: np.ndarray | None, points: np.ndarray | None = None,
            box: list[float] | None = None, alpha: float = 0.5, title: str | None = None) -> Image.Image:
    """Blend ``heatmap`` (H, W in [0, 1], on the image's pixels) over ``image``; draw points and box."""
    base = np.asarray(image.convert("RGB"), np.float32)
    if heatmap is not None:
        hm = np.asarray(heatmap, np.float32)
        if hm.shape != base.shape[:2]:
            from onnxfix.maps import resize_map

            hm = resize_map(hm, base.shape[:2])
        a = alpha * np.clip(hm, 0, 1)[..., None] ** 0.5
        base = (1 - a) * base + a * colorize(hm).astype(np.float32)
    out = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    w, h = out.size
    if points is not None and len(points):
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        if len(pts) > 4000:
            pts = pts[np.random.default_rng(0).choice(len(pts), 4000, replace=False)]
        r = max(1.0, min(w, h) / 250)
        for x, y in pts:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255), outline=(0, 0, 0))
    if box is not None:
        lw = max(2, round(min(w, h) / 150))
        draw.rectangle([box[0], box[1], box[2], box[3]], outline=(0, 255, 0), width=lw)
    if title:
        draw.rectangle([0, 0, min(w, 8 + 7 * len(title)), 14], fill=(0, 0, 0))
        draw.text((4, 1), title, fill=(255, 255, 255))
    return out


def panel(images: list[Image.Image], titles: list[str] | None = None, cols: int = 4) -> Image.Image:
    """Tile pictures of equal size into one image (``--method all``)."""
    if not images:
        raise ValueError("no images to tile")
    w, h = images[0].size
    cols = min(cols, len(images))
    rows = -(-len(images) // cols)
    sheet = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        sheet.paste(im.resize((w, h)), ((i % cols) * w, (i // cols) * h))
    return sheet


def png_writer(image: Image.Image, text: dict[str, str] | None = None) -> Callable[[IO[Any]], None]:
    """``write(file)`` for :mod:`onnxfix.io.atomic`: ``image`` as PNG, with optional tEXt entries."""
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for k, v in text.items():
            info.add_text(k, v)

    def write(fh: IO[Any]) -> None:
        image.save(fh, format="PNG", pnginfo=info)

    return write


def save_png(image: Image.Image, path: str | os.PathLike, protect: Iterable[str | os.PathLike] = (),
             overwrite: bool = True) -> Path:
    """Write ``image`` atomically to ``path``; refuse to replace any file listed in ``protect`` (the inputs), and
    with ``overwrite=False`` any existing file."""
    return write_atomic(path, png_writer(image), protect=protect, overwrite=overwrite)


def save_png_new(image: Image.Image, candidates: Iterable[str | os.PathLike],
                 protect: Iterable[str | os.PathLike] = (), overwrite: bool = False,
                 used: set[Path] | None = None, text: dict[str, str] | None = None) -> Path:
    """Write ``image`` under the first free name of ``candidates`` (:func:`onnxfix.io.atomic.write_new`)."""
    return write_new(candidates, png_writer(image, text), protect=protect, overwrite=overwrite, used=used)
