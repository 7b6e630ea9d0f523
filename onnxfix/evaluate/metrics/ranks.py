"""Rank statistics shared by the metrics: average ranks, Spearman's rho, ROC AUC (numpy only)."""

from __future__ import annotations

import numpy as np


def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the flattened ``a``, ties given their average rank (scipy.stats.rankdata 'average')."""
    a = np.asarray(a, np.float64).reshape(-1)
    n = a.size
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    new = np.concatenate([[True], s[1:] != s[:-1]]) if n else np.zeros(0, bool)
    dense = np.cumsum(new)  # 1-based group id in sorted order
    starts = np.flatnonzero(np.concatenate([new, [True]]))
    counts = np.diff(starts)
    avg = starts[:-1] + (counts + 1) / 2.0  # average of 1-based positions starts+1 .. starts+count
    ranks = np.empty(n, np.float64)
    ranks[order] = avg[dense - 1]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equally sized arrays; NaN when either is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.size != rb.size:
        raise ValueError(f"spearman: sizes differ ({ra.size} vs {rb.size})")
    ra -= ra.mean()
    rb -= rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` separating ``labels`` (bool); ties count one half (= sklearn's
    ``roc_curve`` + ``auc``). NaN when either class is empty."""
    y = np.asarray(labels, bool).reshape(-1)
    s = np.asarray(scores, np.float64).reshape(-1)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))
