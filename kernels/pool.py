"""Window kernels for pooling-like layers (no channel mixing): argmax and positive positions."""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from .conv import _better, _check_channels, _locs, _pair, _threads_for, _valid_range

__all__ = ["pool_argmax", "window_positive"]


@numba.njit(cache=True, parallel=True)
def _pool_argmax_kernel(x, locs, kh, kw, sh, sw, pt, pl, dh, dw):  # pragma: no cover - jitted
    _, h, wd = x.shape
    n_loc = locs.shape[0]
    out = np.empty((n_loc, 3), dtype=np.int64)
    for i in numba.prange(n_loc):
        c = locs[i, 0]
        by = locs[i, 1] * sh - pt
        bx = locs[i, 2] * sw - pl
        ky0, ky1 = _valid_range(by, kh, dh, h)
        kx0, kx1 = _valid_range(bx, kw, dw, wd)
        if ky0 >= ky1 or kx0 >= kx1:
            out[i, 0] = -1
            out[i, 1] = -1
            out[i, 2] = -1
            continue
        best_v = np.float32(0.0)
        best_y = -1
        best_x = -1
        found = False
        for ky in range(ky0, ky1):
            iy = by + ky * dh
            for kx in range(kx0, kx1):
                ix = bx + kx * dw
                v = x[c, iy, ix]
                if _better(v, best_v, found):
                    best_v = v
                    best_y = iy
                    best_x = ix
                    found = True
        out[i, 0] = c
        out[i, 1] = best_y
        out[i, 2] = best_x
    return out


@numba.njit(cache=True, parallel=True)
def _window_positive_kernel(x, locs, kh, kw, sh, sw, pt, pl, dh, dw):  # pragma: no cover - jitted
    # mask[i, ky*kw + kx]: window position (ky, kx) of location i is valid and positive
    _, h, wd = x.shape
    n_loc = locs.shape[0]
    mask = np.zeros((n_loc, kh * kw), dtype=np.bool_)
    for i in numba.prange(n_loc):
        c = locs[i, 0]
        by = locs[i, 1] * sh - pt
        bx = locs[i, 2] * sw - pl
        ky0, ky1 = _valid_range(by, kh, dh, h)
        kx0, kx1 = _valid_range(bx, kw, dw, wd)
        for ky in range(ky0, ky1):
            iy = by + ky * dh
            for kx in range(kx0, kx1):
                if x[c, iy, bx + kx * dw] > 0:
                    mask[i, ky * kw + kx] = True
    return mask


_MASK_BUDGET = 1 << 24  # window positions per block of locations


def _prepare(x, locs, kernel, strides, pads, dilations):
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (C, H, W), got {x.shape}")
    kh, kw = _pair("kernel", kernel, 1)
    sh, sw = _pair("strides", strides, 1)
    pt, pl = _pair("pads", pads)
    dh, dw = _pair("dilations", dilations, 1)
    locs = _locs(locs, 3)
    _check_channels(locs, x.shape[0], "channel")
    return x, locs, (kh, kw, sh, sw, pt, pl, dh, dw)


def pool_argmax(
    x: np.ndarray,
    locs: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
) -> np.ndarray:
    """Backtrack max-pooling outputs to the input position holding the window maximum.

    The window of output ``(c, oy, ox)`` covers ``iy = oy*sh - pad_top + ky*dh`` and
    ``ix = ox*sw - pad_left + kx*dw`` for ``ky < kh``, ``kx < kw``; positions outside the input never
    win.  Ties go to the first position in row-major ``(ky, kx)`` order (NaN as in ``np.argmax``).

    Parameters
    ----------
    x : np.ndarray
        Input activation ``(C, H, W)``; converted to float32.
    locs : np.ndarray
        Integer array ``(K, 3)`` of output locations ``(c, oy, ox)``.
    kernel : sequence of int
        Window size ``(kh, kw)``, each >= 1.
    strides : sequence of int
        ``(sh, sw)``, each >= 1.
    pads : sequence of int
        Begin pads ``(pad_top, pad_left)``.
    dilations : sequence of int
        ``(dh, dw)``, each >= 1.

    Returns
    -------
    np.ndarray
        int64 array ``(K, 3)`` of rows ``(c, iy, ix)``; ``(-1, -1, -1)`` where no window position is
        inside the input.
    """
    x, locs, params = _prepare(x, locs, kernel, strides, pads, dilations)
    with _threads_for(locs.shape[0] * params[0] * params[1]):
        return _pool_argmax_kernel(x, locs, *params)


def window_positive(
    x: np.ndarray,
    locs: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
) -> np.ndarray:
    """List every valid window position with a positive activation, for each output location.

    Windows are defined as in :func:`pool_argmax`.  Rows come in location order, and within a
    location in row-major ``(ky, kx)`` window order; overlapping windows produce duplicate rows.

    Parameters
    ----------
    x : np.ndarray
        Input activation ``(C, H, W)``; converted to float32.
    locs : np.ndarray
        Integer array ``(K, 3)`` of output locations ``(c, oy, ox)``.
    kernel : sequence of int
        Window size ``(kh, kw)``, each >= 1.
    strides : sequence of int
        ``(sh, sw)``, each >= 1.
    pads : sequence of int
        Begin pads ``(pad_top, pad_left)``.
    dilations : sequence of int
        ``(dh, dw)``, each >= 1.

    Returns
    -------
    np.ndarray
        int64 array ``(M, 3)`` of rows ``(c, iy, ix)`` with ``x[c, iy, ix] > 0``.
    """
    x, locs, params = _prepare(x, locs, kernel, strides, pads, dilations)
    kh, kw, sh, sw, pt, pl, dh, dw = params
    block = max(1, _MASK_BUDGET // (kh * kw))
    parts = []
    for start in range(0, locs.shape[0], block):
        sub = locs[start : start + block]
        with _threads_for(sub.shape[0] * kh * kw):
            mask = _window_positive_kernel(x, sub, *params)
        rows, q = np.nonzero(mask)  # row-major order: location, then window position
        out = np.empty((rows.shape[0], 3), dtype=np.int64)
        out[:, 0] = sub[rows, 0]
        out[:, 1] = sub[rows, 1] * sh - pt + (q // kw) * dh
        out[:, 2] = sub[rows, 2] * sw - pl + (q % kw) * dw
        parts.append(out)
    if not parts:
        return np.zeros((0, 3), dtype=np.int64)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
