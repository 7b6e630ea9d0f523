"""Deletion and insertion (RISE, Petsiuk et al. 2018): remove (or add) pixels in the order of the map and follow
the target's probability; the area under that curve, with the x axis the fraction of pixels in [0, 1].

Decisions: ``steps`` (default 16) equal steps of pixels at the model input's resolution; deleted pixels become
``baseline`` (0 in the preprocessed space) and insertion starts from an all-baseline input (RISE inserts into a
blurred copy; a constant canvas needs no blur parameter and keeps the numbers comparable across models). Ties in
the map are broken by position (stable sort). Lower deletion AUC and higher insertion AUC are better.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ScoreFn = Callable[[np.ndarray], np.ndarray]


def perturbation_inputs(x: np.ndarray, heatmap: np.ndarray, steps: int, mode: str, baseline: float = 0.0,
                        layout: str = "nchw") -> np.ndarray:
    """The ``steps + 1`` inputs of the deletion (or insertion) curve, batched along axis 0."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be deletion or insertion, got {mode!r}")
    h = np.asarray(heatmap, np.float64)
    H, W = h.shape
    order = np.argsort(-h.reshape(-1), kind="stable")
    n = H * W
    out = np.repeat(x, steps + 1, axis=0)
    base = np.asarray(baseline, x.dtype)
    for i in range(steps + 1):
        m = int(round(i * n / steps))
        sel = np.zeros(n, bool)
        sel[order[:m]] = True
        sel = sel.reshape(H, W)
        change = sel if mode == "deletion" else ~sel
        if layout == "nchw":
            out[i][:, change] = base
        else:
            out[i][change, :] = base
    return out


def curve_auc(scores: np.ndarray) -> float:
    """Trapezoidal area under scores sampled at equal steps of x over [0, 1]."""
    s = np.asarray(scores, np.float64).reshape(-1)
    if s.size < 2:
        return float("nan")
    return float((s[:-1] + s[1:]).sum() / (2.0 * (s.size - 1)))


def deletion_insertion(x: np.ndarray, heatmap: np.ndarray, score_fn: ScoreFn, steps: int = 16,
                       baseline: float = 0.0, layout: str = "nchw") -> tuple[float, float, np.ndarray, np.ndarray]:
    """(deletion AUC, insertion AUC, deletion curve, insertion curve) of ``heatmap`` (at the input's H×W)."""
    d = perturbation_inputs(x, heatmap, steps, "deletion", baseline, layout)
    i = perturbation_inputs(x, heatmap, steps, "insertion", baseline, layout)
    s = np.asarray(score_fn(np.concatenate([d, i])), np.float64).reshape(-1)
    dc, ic = s[:steps + 1], s[steps + 1:]
    return curve_auc(dc), curve_auc(ic), dc, ic
