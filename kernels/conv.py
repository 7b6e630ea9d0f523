"""Backtracking through a convolution: pick the input position that contributes most to an output.

The kernel follows CNN Fixations (Mopuri et al.): for an output location ``(co, oy, ox)`` the input
channel whose (float64) contribution sum is largest wins, then the single window position of that
channel with the largest contribution is chosen.  Ties are broken by the first index (channels in
increasing order, window positions in row-major ``(ky, kx)`` order), NaN behaves as in ``np.argmax``
(the first NaN wins).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numba
import numpy as np

__all__ = ["conv_backtrack"]


# Below this many inner-loop iterations a kernel runs on the calling thread only: waking the worker
# threads costs far more than the work itself (milliseconds when the cores are busy).
_PARALLEL_MIN_WORK = 1 << 17


@contextmanager
def _threads_for(work: int) -> Iterator[None]:
    """Run the enclosed kernel call single-threaded when ``work`` is small."""
    if work >= _PARALLEL_MIN_WORK:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


@numba.njit(cache=True, inline="always")
def _valid_range(base: int, k: int, d: int, n: int) -> tuple[int, int]:
    """Half-open range ``[lo, hi)`` of kernel offsets ``t`` with ``0 <= base + t*d < n`` (``d >= 1``)."""
    if base >= 0:
        lo = 0
    else:
        lo = (-base + d - 1) // d
    rem = n - base
    if rem <= 0:
        hi = 0
    else:
        hi = (rem + d - 1) // d
    if hi > k:
        hi = k
    if lo > hi:
        lo = hi
    return lo, hi


@numba.njit(cache=True, inline="always")
def _better(v: float, best: float, found: bool) -> bool:
    """``np.argmax`` semantics for a streamed maximum: first maximum wins, the first NaN beats all."""
    if not found:
        return True
    if best != best:  # best is NaN: nothing can replace the first NaN
        return False
    return v > best or v != v


_CHUNK = 64


@numba.njit(cache=True, parallel=True)
def _conv_backtrack_kernel(xt, wt, locs, sh, sw, pt, pl, dh, dw, group):  # pragma: no cover - jitted
    # channel-last layouts: xt (H, W, C_in), wt (C_out, kh, kw, cin_g), so that the per-channel
    # accumulation below runs over contiguous memory (and vectorises) while every channel still sums
    # its contributions in row-major (ky, kx) order
    h, wd, _ = xt.shape
    c_out, kh, kw, cin_g = wt.shape
    cout_g = c_out // group
    n_loc = locs.shape[0]
    out = np.empty((n_loc, 3), dtype=np.int64)
    n_chunks = (n_loc + _CHUNK - 1) // _CHUNK
    for chunk in numba.prange(n_chunks):
        s = np.empty(cin_g, dtype=np.float64)
        start = np.int64(chunk) * _CHUNK
        for i in range(start, min(n_loc, start + _CHUNK)):
            co = locs[i, 0]
            g = co // cout_g
            by = locs[i, 1] * sh - pt
            bx = locs[i, 2] * sw - pl
            ky0, ky1 = _valid_range(by, kh, dh, h)
            kx0, kx1 = _valid_range(bx, kw, dw, wd)
            if ky0 >= ky1 or kx0 >= kx1:
                out[i, 0] = -1
                out[i, 1] = -1
                out[i, 2] = -1
                continue
            c0 = g * cin_g
            # pass 1: channel scores
            s[:] = 0.0
            for ky in range(ky0, ky1):
                iy = by + ky * dh
                for kx in range(kx0, kx1):
                    xv = xt[iy, bx + kx * dw, c0 : c0 + cin_g]
                    wv = wt[co, ky, kx]
                    for cl in range(cin_g):
                        s[cl] += np.float64(xv[cl]) * np.float64(wv[cl])
            best_s = s[0]
            best_c = 0
            for cl in range(1, cin_g):
                if _better(s[cl], best_s, True):
                    best_s = s[cl]
                    best_c = cl
            # pass 2: first row-major argmax of the winning channel's contributions
            best_v = 0.0
            best_y = -1
            best_x = -1
            found = False
            for ky in range(ky0, ky1):
                iy = by + ky * dh
                for kx in range(kx0, kx1):
                    ix = bx + kx * dw
                    v = np.float64(xt[iy, ix, c0 + best_c]) * np.float64(wt[co, ky, kx, best_c])
                    if _better(v, best_v, found):
                        best_v = v
                        best_y = iy
                        best_x = ix
                        found = True
            out[i, 0] = c0 + best_c
            out[i, 1] = best_y
            out[i, 2] = best_x
    return out


_W_CACHE: dict[int, tuple[weakref.ref, np.ndarray]] = {}


def _weights_ohwi(w: np.ndarray) -> np.ndarray:
    """``w`` transposed to (C_out, kh, kw, cin_g), cached for read-only arrays (a model's weights never change)."""
    if w.flags.writeable:
        return np.ascontiguousarray(w.transpose(0, 2, 3, 1))
    key = id(w)
    hit = _W_CACHE.get(key)
    if hit is not None and hit[0]() is w:
        return hit[1]
    wt = np.ascontiguousarray(w.transpose(0, 2, 3, 1))
    if len(_W_CACHE) > 4096:
        _W_CACHE.clear()
    _W_CACHE[key] = (weakref.ref(w), wt)
    return wt


@numba.njit(cache=True, parallel=True)
def _conv_backtrack_chw_kernel(x, w, locs, sh, sw, pt, pl, dh, dw, group):  # pragma: no cover - jitted
    # channel-first layouts, for calls whose work is small next to the tensor (no transpose of x); channel
    # sums are accumulated in the same row-major (ky, kx) order as the channel-last kernel: identical results
    _, h, wd = x.shape
    c_out, cin_g, kh, kw = w.shape
    cout_g = c_out // group
    n_loc = locs.shape[0]
    out = np.empty((n_loc, 3), dtype=np.int64)
    for i in numba.prange(n_loc):
        co = locs[i, 0]
        g = co // cout_g
        by = locs[i, 1] * sh - pt
        bx = locs[i, 2] * sw - pl
        ky0, ky1 = _valid_range(by, kh, dh, h)
        kx0, kx1 = _valid_range(bx, kw, dw, wd)
        if ky0 >= ky1 or kx0 >= kx1:
            out[i, 0] = -1
            out[i, 1] = -1
            out[i, 2] = -1
            continue
        c0 = g * cin_g
        best_s = 0.0
        best_c = 0
        for cl in range(cin_g):
            s = 0.0
            for ky in range(ky0, ky1):
                iy = by + ky * dh
                for kx in range(kx0, kx1):
                    s += np.float64(x[c0 + cl, iy, bx + kx * dw]) * np.float64(w[co, cl, ky, kx])
            if _better(s, best_s, cl > 0):
                best_s = s
                best_c = cl
        best_v = 0.0
        best_y = -1
        best_x = -1
        found = False
        for ky in range(ky0, ky1):
            iy = by + ky * dh
            for kx in range(kx0, kx1):
                ix = bx + kx * dw
                v = np.float64(x[c0 + best_c, iy, ix]) * np.float64(w[co, best_c, ky, kx])
                if _better(v, best_v, found):
                    best_v = v
                    best_y = iy
                    best_x = ix
                    found = True
        out[i, 0] = c0 + best_c
        out[i, 1] = best_y
        out[i, 2] = best_x
    return out


def _pair(name: str, value: Sequence[int] | np.ndarray, minimum: int | None = None) -> tuple[int, int]:
    vals = [int(v) for v in np.asarray(value).reshape(-1)]
    if len(vals) != 2:
        raise ValueError(f"{name} must have exactly 2 entries, got {vals}")
    if minimum is not None and min(vals) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {vals}")
    return vals[0], vals[1]


def _locs(locs: np.ndarray, ncols: int) -> np.ndarray:
    arr = np.asarray(locs)
    if arr.size == 0:
        return np.zeros((0, ncols), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != ncols:
        raise ValueError(f"locs must have shape (K, {ncols}), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"locs must be integer, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_channels(locs: np.ndarray, n: int, what: str) -> None:
    if locs.shape[0] and (locs[:, 0].min() < 0 or locs[:, 0].max() >= n):
        raise ValueError(f"location {what} index out of range [0, {n})")


def conv_backtrack(
    x: np.ndarray,
    w: np.ndarray,
    locs: np.ndarray,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    group: int,
    _layout: str | None = None,
) -> np.ndarray:
    """Backtrack output locations of a 2-D convolution to their most contributing input positions.

    For every location ``(co, oy, ox)`` with ``g = co // (C_out // group)`` the contribution of input
    position ``(cl, ky, kx)`` is ``float64(x[g*cin_g + cl, iy, ix]) * float64(w[co, cl, ky, kx])`` with
    ``iy = oy*sh - pad_top + ky*dh`` and ``ix = ox*sw - pad_left + kx*dw`` (only positions inside the
    input are valid).  The channel with the largest contribution sum (float64, accumulated in row-major
    ``(ky, kx)`` order) wins, first index on ties; within that channel the first row-major argmax of
    the contributions over valid positions is returned.

    Parameters
    ----------
    x : np.ndarray
        Input activation of one sample, shape ``(C_in, H, W)``; converted to float32.
    w : np.ndarray
        Convolution weights, shape ``(C_out, C_in // group, kh, kw)``; converted to float32.
    locs : np.ndarray
        Integer array ``(K, 3)`` of output locations ``(co, oy, ox)``.
    strides : sequence of int
        ``(sh, sw)``, each >= 1.
    pads : sequence of int
        Begin pads ``(pad_top, pad_left)``.
    dilations : sequence of int
        ``(dh, dw)``, each >= 1.
    group : int
        Number of convolution groups; must divide ``C_in`` and ``C_out``.

    Returns
    -------
    np.ndarray
        int64 array ``(K, 3)`` of input positions ``(ci, iy, ix)``; ``(-1, -1, -1)`` for a location
        whose window lies completely outside the input.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (C, H, W), got {x.shape}")
    if w.ndim != 4:
        raise ValueError(f"w must have shape (C_out, C_in/group, kh, kw), got {w.shape}")
    group = int(group)
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    c_in, c_out = x.shape[0], w.shape[0]
    if c_in % group or c_out % group or w.shape[1] * group != c_in:
        raise ValueError(f"incompatible shapes x {x.shape}, w {w.shape} for group={group}")
    if w.shape[1] == 0 or w.shape[2] == 0 or w.shape[3] == 0:
        raise ValueError(f"empty kernel {w.shape}")
    sh, sw = _pair("strides", strides, 1)
    pt, pl = _pair("pads", pads)
    dh, dw = _pair("dilations", dilations, 1)
    locs = _locs(locs, 3)
    _check_channels(locs, c_out, "output channel")
    work = locs.shape[0] * w[0].size
    if _layout == "chw" or (_layout is None and 4 * work < x.size):
        with _threads_for(work):
            return _conv_backtrack_chw_kernel(x, w, locs, sh, sw, pt, pl, dh, dw, group)
    xt = np.ascontiguousarray(x.transpose(1, 2, 0))
    wt = _weights_ohwi(w)
    with _threads_for(work):
        return _conv_backtrack_kernel(xt, wt, locs, sh, sw, pt, pl, dh, dw, group)
