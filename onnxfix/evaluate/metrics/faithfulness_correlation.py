"""Faithfulness correlation (Bhatt, Weller, Moura, IJCAI 2020, §3.1): over random subsets S of the input's
features, the Pearson correlation between the attribution mass Σ_{i∈S} a_i and the score drop f(x) − f(x_S) when the
features in S are replaced by a baseline.

Computed as Quantus 0.6.0's ``FaithfulnessCorrelation`` with its defaults: ``nr_runs`` = 100 subsets of
``subset_size`` = 224 features drawn without replacement from all C·H·W input elements (the (H, W) map broadcast
over the channels, so a pixel's attribution counts once per channel it covers), baseline "black" = the input's
minimum, Pearson's r. Subsets come from ``np.random.RandomState(seed).choice`` in the order Quantus draws them, so
``np.random.seed(seed)`` before Quantus gives it the same subsets. Quantus' max-normalisation of the map does not
change a correlation. The score is whatever ``score_fn`` returns (``onnxfix evaluate``: the class probability,
Quantus' ``softmax=True``). Departure: on inputs with fewer than 2·224 elements the subset is half the elements
(Quantus refuses them). Higher is better.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ScoreFn = Callable[[np.ndarray], np.ndarray]

NR_RUNS = 100
SUBSET_SIZE = 224


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two equally sized vectors (scipy.stats.pearsonr's statistic); NaN when either is constant."""
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def broadcast_map(x: np.ndarray, heatmap: np.ndarray, layout: str = "nchw") -> np.ndarray:
    """The (H, W) map broadcast to the batch-of-one input's shape."""
    h = np.asarray(heatmap)
    h = h[None, None] if layout == "nchw" else h[None, :, :, None]
    return np.broadcast_to(h, x.shape)


def subsets(n_features: int, subset_size: int, nr_runs: int, seed: int) -> np.ndarray:
    """(nr_runs, subset_size) feature indices, as Quantus draws them after ``np.random.seed(seed)``."""
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(nr_runs):
        out.append(rs.choice(n_features, subset_size, replace=False))
        rs.uniform(size=1)  # Quantus' baseline table draws its "uniform" entry on every perturbation
    return np.stack(out)


def faithfulness_correlation(x: np.ndarray, heatmap: np.ndarray, score_fn: ScoreFn, nr_runs: int = NR_RUNS,
                             subset_size: int = SUBSET_SIZE, seed: int = 0, layout: str = "nchw",
                             index_sets: np.ndarray | None = None) -> float:
    """Pearson's r between attribution sums and score drops over ``nr_runs`` random feature subsets.

    Parameters
    ----------
    x : the batch-of-one input
    heatmap : (H, W) map at the input's resolution (or an attribution shaped like ``x``)
    score_fn : ``f(batch) -> scores``
    nr_runs, subset_size, seed : Quantus' parameters and the subset seed
    index_sets : (runs, size) flat indices into ``x[0]``, instead of drawing them
    """
    a = np.asarray(heatmap, np.float64)
    a = (a if a.shape == x.shape else broadcast_map(x, a, layout)).reshape(-1)
    n = a.size
    if index_sets is None:
        size = subset_size if n >= 2 * subset_size else max(1, n // 2)
        index_sets = subsets(n, size, nr_runs, seed)
    flat = np.asarray(x).reshape(1, -1)
    batch = np.repeat(flat, len(index_sets), axis=0)
    base = flat.min()
    for r, idx in enumerate(index_sets):
        batch[r, idx] = base
    s = np.asarray(score_fn(np.concatenate([np.asarray(x), batch.reshape(-1, *x.shape[1:])])), np.float64)
    s = s.reshape(-1)
    drops = s[0] - s[1:]
    sums = a[index_sets].sum(axis=1)
    return pearson(sums, drops)


def compute(ctx) -> dict[str, float | None]:
    """The ``faithfulness_corr`` family for one image (:class:`onnxfix.evaluate.metrics.context.MetricContext`)."""
    return {"faithfulness_corr": faithfulness_correlation(ctx.x, ctx.heatmap, ctx.score_fn, seed=ctx.seed,
                                                          layout=ctx.layout)}
