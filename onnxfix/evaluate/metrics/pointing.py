"""Pointing game (Zhang et al., used by Grad-CAM §4): a hit when the map's maximum lies inside the object.

Decisions: every pixel that attains the maximum counts (a hit if any of them is inside, as Quantus'
``PointingGame``), but a flat map (all pixels equal, e.g. all zero) is a miss, not a hit; ``tolerance`` (pixels,
default 0) accepts maxima that close to the object (Zhang et al. use 15 px); an empty object gives NaN.
Grad-CAM's top-5 variant scores the maps of the five top predicted classes: a class present in the image is a
hit when its map points inside the object; an absent class must be *rejected* — its map's raw strength (its
unnormalised peak, see :mod:`onnxfix.evaluate.runner`) below ``threshold`` × the strongest of the five — and
counts as a miss when it is not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pointing_hit(heatmap: np.ndarray, region: np.ndarray, tolerance: float = 0.0) -> float:
    """1.0 if a maximum of ``heatmap`` lies in ``region`` (bool, same shape) or within ``tolerance`` px of it,
    else 0.0; NaN for an empty region."""
    h = np.asarray(heatmap, np.float64)
    r = np.asarray(region, bool)
    if h.shape != r.shape:
        raise ValueError(f"pointing: map {h.shape} and region {r.shape} differ in shape")
    if not r.any():
        return float("nan")
    if h.size == 0 or float(h.max()) <= float(h.min()):
        return 0.0  # a flat map points nowhere (Quantus would count every pixel as a maximum)
    ys, xs = np.nonzero(h == h.max())
    if r[ys, xs].any():
        return 1.0
    if tolerance <= 0:
        return 0.0
    t = int(np.ceil(tolerance))
    ry, rx = np.nonzero(r)
    for y, x in zip(ys, xs, strict=True):
        near = (np.abs(ry - y) <= t) & (np.abs(rx - x) <= t)
        if near.any() and float(np.min((ry[near] - y) ** 2 + (rx[near] - x) ** 2)) <= tolerance ** 2:
            return 1.0
    return 0.0


def pointing_top5(classes: Sequence[int], hits: Sequence[float], strengths: Sequence[float],
                  present: Sequence[int], threshold: float = 0.5) -> float:
    """Grad-CAM's top-5 pointing accuracy for one image: (hits + correct rejections) / number of classes.

    Parameters
    ----------
    classes : the top predicted classes (usually five)
    hits : for each class, :func:`pointing_hit` of its map against the object (ignored for absent classes)
    strengths : for each class, the raw (unnormalised) strength of its map
    present : the classes that are in the image (the label and its accepted synonyms)
    threshold : a map is accepted when its strength is at least ``threshold`` × the largest strength
    """
    if not len(classes):
        return float("nan")
    top = max(float(s) for s in strengths)
    good = 0
    for c, hit, s in zip(classes, hits, strengths, strict=True):
        accepted = top > 0 and float(s) >= threshold * top
        if int(c) in set(int(p) for p in present):
            good += int(accepted and hit == 1.0)
        else:
            good += int(not accepted)
    return good / len(classes)
