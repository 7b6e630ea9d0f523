"""What a self-computing metric family gets for one image × method (:attr:`MetricSpec.compute`).

The runner builds one :class:`MetricContext` per image × method and calls ``spec.compute(ctx)`` for every requested
family that has one; the function returns ``{value name: number or None}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class MetricContext:
    """Inputs of a metric family for one image × method.

    Attributes
    ----------
    x : the preprocessed batch-of-one model input
    heatmap : the method's map for the explained class at the model input's resolution (H, W)
    label : the explained class
    score_fn : ``f(batch of inputs) -> that class's score per input`` (batched through ONNX Runtime)
    explain_fn : ``g(batch of inputs) -> (N, H, W)`` the same method's maps for the same class on other inputs
    layout : "nchw" or "nhwc"
    seed : a per-image seed (the run's seed and the image's name)
    """

    x: np.ndarray
    heatmap: np.ndarray
    label: int
    score_fn: Callable[[np.ndarray], np.ndarray]
    explain_fn: Callable[[np.ndarray], np.ndarray] | None
    layout: str = "nchw"
    seed: int = 0


def computed_values(metrics: list[str], make_context: Callable[[], MetricContext]) -> dict[str, float | None]:
    """Values of every requested family that computes itself; ``make_context`` is called once, only if needed."""
    from onnxfix.evaluate.metrics import METRICS

    specs = [METRICS[m] for m in metrics if m in METRICS and METRICS[m].compute is not None]
    if not specs:
        return {}
    ctx = make_context()
    out: dict[str, float | None] = {}
    for spec in specs:
        out.update(spec.compute(ctx))  # type: ignore[misc]
    return out


def map_explainer(explainer, method: str, label: int, hw: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """``g(batch of preprocessed inputs) -> (N, H, W)``: ``explainer``'s heatmaps of ``method`` for ``label``, each
    on the model input's pixels, resized to ``hw``."""
    from onnxfix import maps

    def g(xb: np.ndarray) -> np.ndarray:
        out = [explainer.explain(np.ascontiguousarray(xb[i:i + 1]), method=method, target=label).heatmap
               for i in range(len(xb))]
        return np.stack([maps.resize_map(np.asarray(h, np.float32), hw) for h in out])

    return g
