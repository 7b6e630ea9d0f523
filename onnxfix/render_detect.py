"""Pictures for detectors and segmenters: the explained map overlaid, every detection drawn with its label and
score (the explained one highlighted, the others thin), segmentation masks outlined."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from onnxfix.render import overlay


def _to_image(box, frame) -> list[float]:
    """A model-input-pixel box → image pixels (the Explanation's frame maps points)."""
    pts = frame.to_image(np.array([[box[0], box[1]], [box[2], box[3]]], np.float64))
    return [float(pts[0, 0]), float(pts[0, 1]), float(pts[1, 0]), float(pts[1, 1])]


def render_detections(explanation: Any, labels: list[str] | None = None) -> Image.Image:
    """The explanation's overlay with every detection of its image (``explanation.resolved.detections``) boxed
    and labelled; the explained detection in a thick yellow box, the others thin white."""
    from onnxfix.io.labels import label_of

    e = explanation
    img = overlay(e.image, e.heatmap, e.points).convert("RGB")
    draw = ImageDraw.Draw(img)
    r = e.resolved
    for d in getattr(r, "detections", ()) or ():
        me = r.box is not None and tuple(d.box) == tuple(r.box)
        xyxy = _to_image(d.box, e.frame)
        draw.rectangle(xyxy, outline=(255, 220, 0) if me else (255, 255, 255), width=3 if me else 1)
        draw.text((xyxy[0] + 2, max(xyxy[1] - 11, 0)), f"{label_of(labels, d.cls)} {d.score:.2f}",
                  fill=(255, 220, 0) if me else (255, 255, 255))
    return img


def outline_mask(image: Image.Image, mask: np.ndarray, color: tuple[int, int, int] = (255, 220, 0)) -> Image.Image:
    """``image`` with the boundary of boolean ``mask`` (any resolution; resized nearest) drawn in ``color``."""
    m = np.asarray(Image.fromarray(np.asarray(mask, np.uint8) * 255).resize(image.size, Image.NEAREST)) > 0
    edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
    out = np.asarray(image.convert("RGB")).copy()
    out[edge] = color
    return Image.fromarray(out)
