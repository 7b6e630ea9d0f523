"""Complexity of a map (Quantus 0.6.0's complexity family, its defaults ``abs=True, normalise=True``): the map is
divided by its largest magnitude and made non-negative first.

* ``sparseness`` — the Gini index of the map's values (Chalasani et al., ICML 2020, §5): with the n values sorted
  ascending (plus 1e-7 each, as Quantus), Σ_k (2k − n − 1) a_k / (n Σ_k a_k); 1 = all mass on one pixel, 0 = flat.
  Higher is better.
* ``complexity`` — the entropy of the map as a distribution (Bhatt et al., IJCAI 2020, §3.2): with p = a / Σ|a|,
  −Σ p log(p + 1e-12). Lower is better.
Both on the (H, W) map at the model input's resolution (``onnxfix evaluate``) or any array.
"""

from __future__ import annotations

import numpy as np


def _prepare(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).reshape(-1)
    top = float(np.abs(a).max()) if a.size else 0.0
    return np.abs(a / top) if top > 0 else np.abs(a)


def sparseness(a: np.ndarray) -> float:
    """Gini index of ``|a| / max|a|`` (Quantus ``Sparseness``)."""
    v = np.sort(_prepare(a) + 1e-7)
    n = v.size
    k = np.arange(1, n + 1)
    return float(((2 * k - n - 1) * v).sum() / (n * v.sum()))


def complexity(a: np.ndarray) -> float:
    """Entropy of ``|a| / Σ|a|`` (Quantus ``Complexity``); NaN for an all-zero map."""
    v = _prepare(a)
    total = v.sum()
    if total == 0:
        return float("nan")
    p = v / total
    return float(-(p * np.log(p + 1e-12)).sum())


def compute(ctx) -> dict[str, float | None]:
    """The ``complexity`` family for one image (:class:`onnxfix.evaluate.metrics.context.MetricContext`)."""
    return {"sparseness": sparseness(ctx.heatmap), "complexity": complexity(ctx.heatmap)}
