"""Average drop and increase in confidence (Grad-CAM++ §5.1): keep only the explained region, re-run the model.

Decisions: the kept region is the top ``fraction`` (default 20%) of the map's pixels, or the map's own box;
everything else is set to ``baseline`` in the preprocessed space (0 = the dataset mean for mean/std models, as
occlusion does). Scores are the target's softmax probability. Per image: ``avg_drop`` = 100·max(0, Y − O)/Y,
``conf_increase`` = 1 if O > Y; ``*_box`` the same when keeping the box. Averaged over images by the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ScoreFn = Callable[[np.ndarray], np.ndarray]


def top_fraction_mask(heatmap: np.ndarray, fraction: float) -> np.ndarray:
    """Bool mask of the ``fraction`` of pixels with the largest values (ties broken by position, stable)."""
    h = np.asarray(heatmap, np.float64).reshape(-1)
    k = int(round(fraction * h.size))
    keep = np.zeros(h.size, bool)
    if k > 0:
        keep[np.argsort(-h, kind="stable")[:k]] = True
    return keep.reshape(np.shape(heatmap))


def box_mask(hw: tuple[int, int], box: Sequence[float] | None) -> np.ndarray:
    """Bool mask of the pixels whose centres lie in the exclusive box ``[x0, y0, x1, y1]`` (empty for None)."""
    m = np.zeros(hw, bool)
    if box is None:
        return m
    x0, y0 = max(0, int(np.ceil(box[0] - 0.5))), max(0, int(np.ceil(box[1] - 0.5)))
    x1, y1 = min(hw[1], int(np.ceil(box[2] - 0.5))), min(hw[0], int(np.ceil(box[3] - 0.5)))
    m[y0:y1, x0:x1] = True
    return m


def apply_keep(x: np.ndarray, keep: np.ndarray, baseline: float = 0.0, layout: str = "nchw") -> np.ndarray:
    """A copy of the batch-of-one input ``x`` with pixels outside ``keep`` (H, W) set to ``baseline``."""
    k = np.asarray(keep, bool)
    k = k[None, None] if layout == "nchw" else k[None, :, :, None]
    return np.where(k, x, np.asarray(baseline, x.dtype)).astype(x.dtype)


def average_drop(y: float, o: float) -> float:
    """100 · max(0, y − o) / y (NaN when y ≤ 0)."""
    return float(100.0 * max(0.0, y - o) / y) if y > 0 else float("nan")


def confidence_increase(y: float, o: float) -> float:
    """1.0 when keeping the region raised the score, else 0.0."""
    return 1.0 if o > y else 0.0


def keep_region_scores(x: np.ndarray, keeps: Sequence[np.ndarray], score_fn: ScoreFn, baseline: float = 0.0,
                       layout: str = "nchw") -> np.ndarray:
    """Scores of ``x`` with only each mask in ``keeps`` kept (one batch through ``score_fn``)."""
    batch = np.concatenate([apply_keep(x, k, baseline, layout) for k in keeps])
    return np.asarray(score_fn(batch), np.float64).reshape(-1)
