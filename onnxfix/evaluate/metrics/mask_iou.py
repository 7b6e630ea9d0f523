"""Mask metrics (an8Flower protocol, Oramas et al. ICLR 2019; Quantus' localisation family).

* ``mask_iou`` — IoU of ``map >= 0.5·max`` with the ground-truth mask;
* ``mask_iou_auc`` — the an8Flower curve: IoU at thresholds t = 1/n, 2/n, …, 1 of the max (n = 20), averaged
  (area under the IoU-vs-threshold curve over (0, 1]); a perfect map (1 on the mask, 0 elsewhere) scores 1;
* ``relevance_mass`` — the map's mass inside the mask over its total (Quantus ``RelevanceMassAccuracy``);
* ``roc_auc`` — ROC AUC of the map's values separating mask from background (Quantus ``AUC``).
Maps are taken as given (the runner passes the [0, 1] heatmap); an empty mask gives NaN.
"""

from __future__ import annotations

import numpy as np

from onnxfix.evaluate.metrics.ranks import roc_auc

N_THRESHOLDS = 20


def _check(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(heatmap, np.float64)
    m = np.asarray(mask, bool)
    if h.shape != m.shape:
        raise ValueError(f"mask metric: map {h.shape} and mask {m.shape} differ in shape")
    return h, m


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 0.0


def mask_iou(heatmap: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of ``heatmap >= threshold·max(heatmap)`` with ``mask``; NaN for an empty mask, 0 for a map ≤ 0."""
    h, m = _check(heatmap, mask)
    if not m.any():
        return float("nan")
    top = float(h.max())
    if top <= 0:
        return 0.0
    return _iou(h >= threshold * top, m)


def mask_iou_curve(heatmap: np.ndarray, mask: np.ndarray, n: int = N_THRESHOLDS) -> np.ndarray:
    """IoU at thresholds 1/n … 1 of the map's maximum."""
    return np.array([mask_iou(heatmap, mask, t) for t in np.arange(1, n + 1) / n])


def mask_iou_auc(heatmap: np.ndarray, mask: np.ndarray, n: int = N_THRESHOLDS) -> float:
    """Mean of :func:`mask_iou_curve` (area under the IoU–threshold curve on (0, 1])."""
    return float(np.mean(mask_iou_curve(heatmap, mask, n)))


def relevance_mass(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Σ map inside the mask / Σ map (Quantus RelevanceMassAccuracy); NaN for an empty mask or a zero map."""
    h, m = _check(heatmap, mask)
    total = float(h.sum())
    if not m.any() or total == 0:
        return float("nan")
    return float(h[m].sum() / total)


def region_auc(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """ROC AUC of the map's values as a detector of mask pixels (Quantus AUC; ties count one half)."""
    h, m = _check(heatmap, mask)
    return roc_auc(m, h)
