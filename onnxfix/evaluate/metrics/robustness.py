"""Max-sensitivity (Yeh et al., NeurIPS 2019, §3): the largest relative change of the explanation under small
input noise, max_k ‖Φ(x + ε_k) − Φ(x)‖_F / ‖Φ(x)‖_F with ε_k uniform in [−r, r] on every input element.

Computed as Quantus 0.6.0's ``MaxSensitivity`` with its defaults (``lower_bound`` r = 0.2 in the preprocessed
input's units, Frobenius norms, no normalisation, NaN-ignoring max) except ``nr_samples``: 10 in
``onnxfix evaluate`` (Quantus' 200 re-explains every image 200 times). The noise is
``np.random.RandomState(seed).uniform(−r, r, size=(1, x.size))`` per sample, in Quantus' order, so
``np.random.seed(seed)`` before Quantus gives it the same perturbed inputs; perturbed inputs keep ``x``'s dtype
(float32), as Quantus writes them. Lower is better.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ExplainFn = Callable[[np.ndarray], np.ndarray]

NR_SAMPLES = 10
LOWER_BOUND = 0.2


def perturbed_inputs(x: np.ndarray, nr_samples: int, lower_bound: float = LOWER_BOUND, seed: int = 0) -> np.ndarray:
    """(nr_samples, …) copies of the batch-of-one ``x`` with uniform noise, as Quantus' ``batch_uniform_noise``."""
    rs = np.random.RandomState(seed)
    flat = np.asarray(x).reshape(1, -1)
    out = np.empty((nr_samples, flat.shape[1]), flat.dtype)
    for k in range(nr_samples):
        noise = rs.uniform(low=-lower_bound, high=lower_bound, size=flat.shape)
        out[k] = (flat + noise)[0]
    return out.reshape(nr_samples, *np.shape(x)[1:])


def max_sensitivity(a: np.ndarray, explain_fn: ExplainFn, x: np.ndarray, nr_samples: int = NR_SAMPLES,
                    lower_bound: float = LOWER_BOUND, seed: int = 0, inputs: np.ndarray | None = None) -> float:
    """max over noisy copies of ‖explain(x') − a‖_F / ‖a‖_F.

    Parameters
    ----------
    a : the explanation of ``x`` (any shape; compared flattened)
    explain_fn : ``g(batch of inputs) -> batch of explanations`` shaped like ``a`` each
    x : the batch-of-one input
    nr_samples, lower_bound, seed : Quantus' parameters and the noise seed
    inputs : the perturbed inputs, instead of drawing them
    """
    xs = perturbed_inputs(x, nr_samples, lower_bound, seed) if inputs is None else np.asarray(inputs)
    ref = np.asarray(a, np.float64).reshape(-1)
    den = float(np.linalg.norm(ref))
    got = np.asarray(explain_fn(xs), np.float64).reshape(len(xs), -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = np.linalg.norm(got - ref[None], axis=1) / den
    if np.isnan(sens).all():
        return float("nan")
    return float(np.nanmax(sens))


def compute(ctx) -> dict[str, float | None]:
    """The ``robustness`` family for one image (:class:`onnxfix.evaluate.metrics.context.MetricContext`)."""
    if ctx.explain_fn is None:
        return {"max_sensitivity": None}
    return {"max_sensitivity": max_sensitivity(ctx.heatmap, ctx.explain_fn, ctx.x, seed=ctx.seed)}
