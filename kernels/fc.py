"""Positive-contribution masks for a matrix product ``Y = a @ b`` (fully connected / MatMul / Gemm)."""

from __future__ import annotations

import numba
import numpy as np

from .conv import _locs, _threads_for

__all__ = ["fc_positive"]


@numba.njit(cache=True, parallel=True)
def _fc_positive_kernel(a_t, b, locs):  # pragma: no cover - jitted
    k_dim, m_dim = a_t.shape
    n_dim = b.shape[1]
    n_loc = locs.shape[0]
    mask_a_t = np.zeros((k_dim, m_dim), dtype=np.bool_)
    mask_b = np.zeros((k_dim, n_dim), dtype=np.bool_)
    # every k owns row k of both (transposed) masks, so threads never write the same row
    for k in numba.prange(k_dim):
        for i in range(n_loc):
            m = locs[i, 0]
            n = locs[i, 1]
            if np.float64(a_t[k, m]) * np.float64(b[k, n]) > 0.0:
                mask_a_t[k, m] = True
                mask_b[k, n] = True
    return mask_a_t, mask_b


def fc_positive(a: np.ndarray, b: np.ndarray, locs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mark the operand entries that contribute positively to selected outputs of ``a @ b``.

    Parameters
    ----------
    a : np.ndarray
        Left operand ``(M, K)``; converted to float32.
    b : np.ndarray
        Right operand ``(K, N)``; converted to float32.
    locs : np.ndarray
        Integer array ``(L, 2)`` of output locations ``(m, n)``.

    Returns
    -------
    mask_a : np.ndarray
        bool ``(M, K)``; True at ``(m, k)`` iff some location ``(m, n)`` has
        ``float64(a[m, k]) * float64(b[k, n]) > 0``.
    mask_b : np.ndarray
        bool ``(K, N)``; True at ``(k, n)`` iff some location ``(m, n)`` has that product ``> 0``.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"need a (M, K) and b (K, N), got {a.shape} and {b.shape}")
    locs = _locs(locs, 2)
    m_dim, n_dim = a.shape[0], b.shape[1]
    if locs.shape[0] and (
        locs[:, 0].min() < 0 or locs[:, 0].max() >= m_dim or locs[:, 1].min() < 0 or locs[:, 1].max() >= n_dim
    ):
        raise ValueError(f"location out of range for output shape ({m_dim}, {n_dim})")
    with _threads_for(a.shape[1] * locs.shape[0]):
        mask_a_t, mask_b = _fc_positive_kernel(np.ascontiguousarray(a.T), b, locs)
    return np.ascontiguousarray(mask_a_t.T), mask_b
