"""Weakly-supervised localisation (Grad-CAM §4, CNN Fixations §5.1, ILSVRC).

A box from the map — heatmaps: threshold at 15% of the max, box around the largest 8-connected component
(:func:`onnxfix.maps.heatmap_box`); fixations: outlier removal + tightest box (:func:`onnxfix.maps.fixation_box`)
— is correct at IoU ≥ 0.5 with any ground-truth box. Boxes here are ``[x0, y0, x1, y1]`` with x1/y1 *exclusive*
(the dataset format, PIL's getbbox); the inclusive boxes from :mod:`onnxfix.maps` get +1 on x1/y1.

* ``box_iou`` — best IoU of the box from the ground-truth class's map with a ground-truth box;
* ``loc_gt_known`` — that IoU ≥ 0.5;
* ``loc_top1_error`` — ILSVRC: 1 unless the top-1 class is correct *and* its map's box is correct;
* ``loc_top5_error`` — 1 unless one of the top-5 (class, box-from-its-map) guesses is correct in both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxfix import maps

IOU_CORRECT = 0.5


def exclusive(box: Sequence[float] | None) -> list[float] | None:
    """An inclusive pixel box (maps.py) as an exclusive one."""
    if box is None:
        return None
    return [float(box[0]), float(box[1]), float(box[2]) + 1.0, float(box[3]) + 1.0]


def box_from_heatmap(heatmap: np.ndarray, threshold: float = 0.15) -> list[float] | None:
    """Grad-CAM's box: largest connected component of ``heatmap >= threshold·max`` (exclusive corners)."""
    return exclusive(maps.heatmap_box(heatmap, threshold=threshold))


def box_from_points(points: np.ndarray, hw: tuple[int, int]) -> list[float] | None:
    """CNN Fixations' box: outlier removal + tightest box around the (x, y) points (exclusive corners)."""
    return exclusive(maps.fixation_box(points, hw))


def iou(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    """Intersection over union of two exclusive boxes; 0 when either is missing or empty."""
    if a is None or b is None:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def best_iou(box: Sequence[float] | None, gt_boxes: Sequence[Sequence[float]]) -> float:
    """The largest IoU of ``box`` with any ground-truth box (0 without boxes)."""
    return max((iou(box, g) for g in gt_boxes), default=0.0)


def localisation_error(guesses: Sequence[tuple[int, Sequence[float] | None]], gt_boxes: Sequence[Sequence[float]],
                       correct: Sequence[int], k: int) -> float:
    """ILSVRC top-``k`` localisation error: 0.0 if one of the first ``k`` (class, box) guesses names a correct
    class and overlaps a ground-truth box at IoU ≥ 0.5, else 1.0."""
    ok = set(int(c) for c in correct)
    for cls, box in list(guesses)[:k]:
        if int(cls) in ok and best_iou(box, gt_boxes) >= IOU_CORRECT:
            return 0.0
    return 1.0
