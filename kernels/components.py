"""Connected components of a boolean mask (8-connectivity), for boxes around thresholded heatmaps.

Flood fill with an explicit stack; labels are 1, 2, … in row-major order of each component's first pixel, 0 is
background — the same numbering a row-major scan with a breadth-first or depth-first fill gives.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["label_components"]


@numba.njit(cache=True)
def _label_kernel(mask):  # pragma: no cover - jitted
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int64)
    stack = np.empty((h * w, 2), dtype=np.int64)
    current = 0
    for y0 in range(h):
        for x0 in range(w):
            if not mask[y0, x0] or labels[y0, x0] != 0:
                continue
            current += 1
            labels[y0, x0] = current
            top = 0
            stack[0, 0] = y0
            stack[0, 1] = x0
            top = 1
            while top > 0:
                top -= 1
                y = stack[top, 0]
                x = stack[top, 1]
                for dy in range(-1, 2):
                    yy = y + dy
                    if yy < 0 or yy >= h:
                        continue
                    for dx in range(-1, 2):
                        xx = x + dx
                        if xx < 0 or xx >= w or (dy == 0 and dx == 0):
                            continue
                        if mask[yy, xx] and labels[yy, xx] == 0:
                            labels[yy, xx] = current
                            stack[top, 0] = yy
                            stack[top, 1] = xx
                            top += 1
    return labels


def label_components(mask: np.ndarray) -> np.ndarray:
    """Label the 8-connected components of a 2-D boolean ``mask``.

    Parameters
    ----------
    mask : np.ndarray
        2-D boolean array.

    Returns
    -------
    np.ndarray
        int64 labels of the same shape: 0 for background, 1..n per component, numbered in row-major order of each
        component's first pixel.
    """
    m = np.ascontiguousarray(np.asarray(mask, dtype=np.bool_))
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    return _label_kernel(m)
