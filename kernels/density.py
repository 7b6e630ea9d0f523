"""Density kernels for turning fixation points into maps: splatting, Gaussian blur, neighbour counts."""

from __future__ import annotations

import math

import numba
import numpy as np

from . import warm
from .conv import _threads_for

__all__ = ["splat", "gaussian_blur", "neighbour_counts"]


@numba.njit(cache=True)
def _splat_kernel(points, height, width):  # pragma: no cover - jitted
    out = np.zeros((height, width), dtype=np.float32)
    for i in range(points.shape[0]):
        r = math.floor(points[i, 1] + 0.5)
        c = math.floor(points[i, 0] + 0.5)
        # comparisons in float64 first: NaN / inf / huge coordinates are dropped safely
        if r >= 0 and r < height and c >= 0 and c < width:
            out[np.int64(r), np.int64(c)] += np.float32(1.0)
    return out


def splat(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Accumulate points into a count image.

    Parameters
    ----------
    points : np.ndarray
        ``(P, 2)`` rows ``(x, y)`` in pixel coordinates (pixel centres at integers); converted to
        float64.
    height : int
        Output height ``H``.
    width : int
        Output width ``W``.

    Returns
    -------
    np.ndarray
        float32 ``(H, W)``; each point adds 1 at ``(floor(y + 0.5), floor(x + 0.5))``, points falling
        outside the image (or non-finite) are dropped.
    """
    height, width = int(height), int(width)
    if height < 0 or width < 0:
        raise ValueError(f"negative image size {(height, width)}")
    pts = np.ascontiguousarray(points, dtype=np.float64)
    if pts.size == 0:
        pts = np.zeros((0, 2), dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (P, 2), got {pts.shape}")
    if not warm.ready(_splat_kernel, pts, height, width):
        return _splat_numpy(pts, height, width)
    return _splat_kernel(pts, height, width)


def _splat_numpy(pts: np.ndarray, height: int, width: int) -> np.ndarray:
    """``_splat_kernel`` in numpy (numba's cache cold): the same rounding, bounds and float32 counts."""
    out = np.zeros((height, width), dtype=np.float32)
    r = np.floor(pts[:, 1] + 0.5)
    c = np.floor(pts[:, 0] + 0.5)
    with np.errstate(invalid="ignore"):
        ok = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    np.add.at(out, (r[ok].astype(np.int64), c[ok].astype(np.int64)), np.float32(1.0))
    return out


@numba.njit(cache=True, parallel=True)
def _blur_rows(img, weights, radius):  # pragma: no cover - jitted
    """Correlate every row of ``img`` with ``weights`` (centre ``radius``), zero padding, float64."""
    h, w = img.shape
    out = np.zeros((h, w), dtype=np.float64)
    rx = min(radius, w - 1)
    for i in numba.prange(h):
        for t in range(-rx, rx + 1):
            wt = weights[t + radius]
            j0 = max(0, -t)
            n = min(w, w - t) - j0
            # views + a loop from 0 let LLVM drop the negative-index checks and vectorise
            dst = out[i, j0 : j0 + n]
            src = img[i, j0 + t : j0 + t + n]
            for j in range(n):
                dst[j] += wt * src[j]
    return out


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with zero padding.

    The kernel has radius ``max(1, ceil(3 * sigma))``, weights ``exp(-t**2 / (2 * sigma**2))``
    normalised to sum 1; rows are filtered first, then columns, accumulating in float64.

    Parameters
    ----------
    img : np.ndarray
        2-D image ``(H, W)``.
    sigma : float
        Standard deviation in pixels; ``sigma <= 0`` returns a float32 copy of ``img``.

    Returns
    -------
    np.ndarray
        float32 ``(H, W)`` blurred image.
    """
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise ValueError(f"img must be 2-D, got shape {arr.shape}")
    sigma = float(sigma)
    if math.isnan(sigma) or sigma <= 0:
        return np.array(arr, dtype=np.float32, copy=True)
    if not math.isfinite(sigma):
        raise ValueError("sigma must be finite")
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.float32)
    radius = max(1, math.ceil(3.0 * sigma))
    # taps beyond the image never touch a pixel, but they still count in the normalisation
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    with np.errstate(over="ignore"):  # tiny sigma: outer taps underflow to exactly 0
        weights = np.exp(-0.5 * (t / sigma) ** 2)
    weights /= weights.sum()
    img64 = np.ascontiguousarray(arr, dtype=np.float64)
    blur = _blur_rows if warm.ready(_blur_rows, img64, weights, radius) else _blur_rows_numpy
    with _threads_for(arr.size * (2 * min(radius, max(arr.shape)) + 1)):
        rows = blur(img64, weights, radius)
        cols = blur(np.ascontiguousarray(rows.T), weights, radius)
    return cols.T.astype(np.float32, order="C")


def _blur_rows_numpy(img: np.ndarray, weights: np.ndarray, radius: int) -> np.ndarray:
    """``_blur_rows`` in numpy (numba's cache cold): the same float64 products added tap after tap."""
    h, w = img.shape
    out = np.zeros((h, w), dtype=np.float64)
    rx = min(radius, w - 1)
    for t in range(-rx, rx + 1):
        j0 = max(0, -t)
        n = min(w, w - t) - j0
        out[:, j0:j0 + n] += weights[t + radius] * img[:, j0 + t:j0 + t + n]
    return out


@numba.njit(cache=True, inline="always")
def _bsearch(a, v, right):  # pragma: no cover - jitted
    """First index with ``a[i] >= v`` (``right=False``) or ``a[i] > v`` (``right=True``)."""
    lo = 0
    hi = a.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < v or (right and a[mid] == v):
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, parallel=True)
def _neighbour_kernel(keys, skeys, sx, sy, xs, ys, stride, r2):  # pragma: no cover - jitted
    n = keys.shape[0]
    counts = np.empty(n, dtype=np.int64)
    for i in numba.prange(n):
        px = xs[i]
        py = ys[i]
        cnt = 0
        for dc in range(-1, 2):
            k = keys[i] + dc * stride
            lo = _bsearch(skeys, k - 1, False)
            hi = _bsearch(skeys, k + 1, True)
            cx = sx[lo:hi]
            cy = sy[lo:hi]
            for j in range(hi - lo):
                dx = px - cx[j]
                dy = py - cy[j]
                if dx * dx + dy * dy <= r2:
                    cnt += 1
        counts[i] = cnt
    return counts


def neighbour_counts(points: np.ndarray, radius: float) -> np.ndarray:
    """Count, for every point, the points within ``radius`` of it (itself included).

    Distances are compared squared in float64: point ``j`` counts for point ``i`` iff
    ``(xi - xj)**2 + (yi - yj)**2 <= radius**2``.  A uniform grid with cells of about ``radius``
    restricts the comparisons to the 3x3 neighbouring cells.

    Parameters
    ----------
    points : np.ndarray
        ``(P, 2)`` finite coordinates; converted to float64.
    radius : float
        Neighbourhood radius (finite).

    Returns
    -------
    np.ndarray
        int64 ``(P,)`` neighbour counts.
    """
    pts = np.ascontiguousarray(points, dtype=np.float64)
    if pts.size == 0:
        return np.zeros(pts.shape[0] if pts.ndim == 2 else 0, dtype=np.int64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (P, 2), got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points must be finite")
    radius = float(radius)
    if not math.isfinite(radius):
        raise ValueError("radius must be finite")
    xs = np.ascontiguousarray(pts[:, 0])
    ys = np.ascontiguousarray(pts[:, 1])
    x0, y0 = xs.min(), ys.min()
    with np.errstate(over="ignore"):
        span = max(xs.max() - x0, ys.max() - y0)
        r2 = radius * radius
    # Any cell size >= radius is correct (neighbours lie in the 3x3 adjacent cells).  The small margin
    # absorbs the rounding of the cell-index division, the span cap keeps cell indices below 2**30 and
    # an overflowing span puts every point into one cell.
    cell = max(abs(radius) * (1.0 + 1e-5), span / 2.0**30) if math.isfinite(span) else math.inf
    if cell == 0.0:  # radius 0 and all points identical
        cell = 1.0
    if math.isfinite(cell):
        cx = np.floor((xs - x0) / cell).astype(np.int64)
        cy = np.floor((ys - y0) / cell).astype(np.int64)
    else:
        cx = cy = np.zeros(xs.shape[0], dtype=np.int64)
    stride = int(cy.max()) + 3
    keys = (cx + 1) * stride + (cy + 1)
    order = np.argsort(keys, kind="stable")
    args = (keys, keys[order], xs[order], ys[order], xs, ys, stride, r2)
    if not warm.ready(_neighbour_kernel, *args):
        return _neighbour_numpy(*args)
    with _threads_for(64 * xs.shape[0]):
        return _neighbour_kernel(*args)


def _neighbour_numpy(keys, skeys, sx, sy, xs, ys, stride, r2) -> np.ndarray:
    """``_neighbour_kernel`` in numpy (numba's cache cold): the same cells and the same float64 comparisons."""
    counts = np.zeros(keys.shape[0], dtype=np.int64)
    for dc in range(-1, 2):
        k = keys + dc * stride
        lo = np.searchsorted(skeys, k - 1, side="left")
        hi = np.searchsorted(skeys, k + 1, side="right")
        for a in range(0, keys.shape[0], 256):  # blocks of rows: a bounded (rows x widest cell run) matrix
            b = min(a + 256, keys.shape[0])
            width = int((hi[a:b] - lo[a:b]).max()) if b > a else 0
            for c in range(0, width, 4096):
                j = lo[a:b, None] + c + np.arange(min(4096, width - c))
                inside = j < hi[a:b, None]
                j = np.minimum(j, len(skeys) - 1)
                with np.errstate(over="ignore", invalid="ignore"):
                    dx = xs[a:b, None] - sx[j]
                    dy = ys[a:b, None] - sy[j]
                    counts[a:b] += (inside & (dx * dx + dy * dy <= r2)).sum(axis=1)
    return counts
