"""Slow, obviously-correct references for the numba kernels in ``onnxfix.kernels``.

Every function mirrors the specification of its kernel literally (python loops over locations and
window offsets, numpy only where it cannot change the result) so the kernels can be compared
against them exactly, including tie-breaking and float64 accumulation order.
"""

from __future__ import annotations

import math

import numpy as np


def _window(oy: int, ox: int, kernel, strides, pads, dilations, h: int, w: int):
    """Row-major list of ``(ky, kx, iy, ix)`` for the valid positions of one window."""
    kh, kw = kernel
    out = []
    for ky in range(kh):
        for kx in range(kw):
            iy = oy * strides[0] - pads[0] + ky * dilations[0]
            ix = ox * strides[1] - pads[1] + kx * dilations[1]
            if 0 <= iy < h and 0 <= ix < w:
                out.append((ky, kx, iy, ix))
    return out


def conv_backtrack_ref(x, w, locs, strides, pads, dilations, group) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    w = np.asarray(w, dtype=np.float32)
    c_out, cin_g, kh, kw = w.shape
    cout_g = c_out // group
    _, h, wd = x.shape
    out = np.empty((len(locs), 3), dtype=np.int64)
    for i, (co, oy, ox) in enumerate(np.asarray(locs, dtype=np.int64).reshape(-1, 3)):
        g = co // cout_g
        chans = slice(g * cin_g, (g + 1) * cin_g)
        positions = _window(oy, ox, (kh, kw), strides, pads, dilations, h, wd)
        if not positions:
            out[i] = (-1, -1, -1)
            continue
        s = np.zeros(cin_g, dtype=np.float64)
        contrib = []  # one float64 vector over channels per valid position, row-major
        for ky, kx, iy, ix in positions:
            c = x[chans, iy, ix].astype(np.float64) * w[co, :, ky, kx].astype(np.float64)
            s = s + c
            contrib.append(c)
        cl = int(np.argmax(s))
        k = int(np.argmax(np.array([c[cl] for c in contrib])))
        _, _, iy, ix = positions[k]
        out[i] = (g * cin_g + cl, iy, ix)
    return out


def pool_argmax_ref(x, locs, kernel, strides, pads, dilations) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    _, h, wd = x.shape
    out = np.empty((len(locs), 3), dtype=np.int64)
    for i, (c, oy, ox) in enumerate(np.asarray(locs, dtype=np.int64).reshape(-1, 3)):
        positions = _window(oy, ox, kernel, strides, pads, dilations, h, wd)
        if not positions:
            out[i] = (-1, -1, -1)
            continue
        k = int(np.argmax(np.array([x[c, iy, ix] for _, _, iy, ix in positions])))
        _, _, iy, ix = positions[k]
        out[i] = (c, iy, ix)
    return out


def window_positive_ref(x, locs, kernel, strides, pads, dilations) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    _, h, wd = x.shape
    rows = []
    for c, oy, ox in np.asarray(locs, dtype=np.int64).reshape(-1, 3):
        for _, _, iy, ix in _window(oy, ox, kernel, strides, pads, dilations, h, wd):
            if x[c, iy, ix] > 0:
                rows.append((c, iy, ix))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def fc_positive_ref(a, b, locs) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    mask_a = np.zeros(a.shape, dtype=bool)
    mask_b = np.zeros(b.shape, dtype=bool)
    for m, n in np.asarray(locs, dtype=np.int64).reshape(-1, 2):
        for k in range(a.shape[1]):
            if float(a[m, k]) * float(b[k, n]) > 0:
                mask_a[m, k] = True
                mask_b[k, n] = True
    return mask_a, mask_b


def splat_ref(points, height, width) -> np.ndarray:
    out = np.zeros((height, width), dtype=np.float32)
    for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2):
        r = math.floor(y + 0.5) if math.isfinite(y) else -1
        c = math.floor(x + 0.5) if math.isfinite(x) else -1
        if 0 <= r < height and 0 <= c < width:
            out[r, c] += 1.0
    return out


def gaussian_blur_ref(img, sigma) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    if not sigma > 0:
        return img.astype(np.float32)
    radius = max(1, math.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    with np.errstate(over="ignore"):
        k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    h, w = img.shape
    # "full" convolution sliced to the input: zero padding, any kernel length
    rows = np.array([np.convolve(img[i], k, mode="full")[radius : radius + w] for i in range(h)])
    rows = rows.reshape(h, w)
    cols = np.array([np.convolve(rows[:, j], k, mode="full")[radius : radius + h] for j in range(w)])
    return cols.reshape(w, h).T.astype(np.float32)


def neighbour_counts_ref(points, radius) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    r2 = float(radius) * float(radius)
    with np.errstate(over="ignore", invalid="ignore"):
        dx = p[:, None, 0] - p[None, :, 0]
        dy = p[:, None, 1] - p[None, :, 1]
        d2 = dx * dx + dy * dy
    return (d2 <= r2).sum(axis=1).astype(np.int64)


def label_components_ref(mask: np.ndarray) -> np.ndarray:
    """8-connected components by breadth-first fill from each unlabelled pixel in row-major order."""
    from collections import deque

    h, w = mask.shape
    labels = np.zeros((h, w), np.int64)
    n = 0
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not labels[y, x]:
                n += 1
                labels[y, x] = n
                q = deque([(y, x)])
                while q:
                    cy, cx = q.popleft()
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            yy, xx = cy + dy, cx + dx
                            if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                                labels[yy, xx] = n
                                q.append((yy, xx))
    return labels
