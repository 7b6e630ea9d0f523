"""Integrated Gradients (Sundararajan, Taly, Yan, ICML 2017, §3): (x − x') · ∫₀¹ ∂F(x' + α(x − x'))/∂x dα, the
integral by a quadrature rule — Captum 0.9's ``IntegratedGradients`` numbers without options: 50 steps,
Gauss–Legendre (Captum's default ``method="gausslegendre"``), baseline 0; ``rule="riemann_left" | "riemann_right" |
"riemann_middle" | "riemann_trapezoid"`` as Captum's ``method`` (renamed: ``method`` names the explanation method).
All N × steps scaled inputs run through ONNX Runtime in internal batches bounded by the memory budget (``batch``).
``extras["delta"]``: the completeness gap Σ attributions − (F(x) − F(x')) (§3 Prop. 1; Captum's
``return_convergence_delta``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from onnxfix.methods.base import Attribution, register_method
from onnxfix.methods.gradients import InputGradient, saliency_map
from onnxfix.methods.sampling import forward_scores, input_gradients

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def quadrature(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, step sizes) of Captum's ``approximation_parameters``."""
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (1 + x), 0.5 * w
    if steps < 2:
        raise ValueError("the Riemann rules need at least 2 steps")
    sizes = np.full(steps, 1.0 / steps)
    if method == "riemann_trapezoid":
        sizes[0] /= 2
        sizes[-1] /= 2
        a = np.linspace(0, 1, steps, dtype=np.float32)
    elif method == "riemann_left":
        a = np.linspace(0, 1 - 1 / steps, steps, dtype=np.float32)
    elif method == "riemann_middle":
        a = np.linspace(1 / (2 * steps), 1 - 1 / (2 * steps), steps, dtype=np.float32)
    elif method == "riemann_right":
        a = np.linspace(1 / steps, 1, steps, dtype=np.float32)
    else:
        raise ValueError(f"unknown rule {method!r}; choose from {', '.join(RULES)}")
    return a.astype(np.float64), sizes


def baseline_batch(x: np.ndarray, baseline) -> np.ndarray:
    """The baseline as an array shaped like ``x``: a number, one image, or one per image."""
    b = np.asarray(baseline, x.dtype)
    if b.ndim == 0 or b.shape == x.shape:
        return np.broadcast_to(b, x.shape).astype(x.dtype)
    if b.shape == x.shape[1:] or b.shape == (1, *x.shape[1:]):
        return np.broadcast_to(b.reshape(1, *x.shape[1:]), x.shape).astype(x.dtype)
    raise ValueError(f"baseline shape {list(b.shape)} fits neither one image {list(x.shape[1:])} nor the batch")


@register_method
class IntegratedGradients(InputGradient):
    needs_batch = True  # many rows per image: refused (applies) where no batch-dynamic form exists
    name = "integrated-gradients"
    summary = "Integrated Gradients (Captum defaults: 50 Gauss-Legendre steps from a zero baseline), batched"

    @dataclass
    class Options:
        steps: int = 50
        rule: Literal["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                        "riemann_trapezoid"] = "gausslegendre"
        baseline: float | np.ndarray = 0.0
        batch: int | None = None  # rows per ORT call (default: bounded by the memory budget)

        def check(self):
            if not 1 <= self.steps <= 4096:
                raise ValueError(f"steps must be in 1..4096, got {self.steps}")
            if self.rule != "gausslegendre" and self.steps < 2:
                raise ValueError("the Riemann rules need steps >= 2")
            if self.batch is not None and self.batch < 1:
                raise ValueError("batch must be >= 1")

    def one_pass(self, model, x, targets, opts):
        return None

    def attribute_resolved(self, model, x, values, targets, opts):
        from onnxfix.errors import InputError

        try:
            base = baseline_batch(x, opts.baseline)
        except ValueError as exc:
            raise InputError(f"{self.name}: {exc}") from None
        alphas, sizes = quadrature(opts.steps, opts.rule)
        n, k = x.shape[0], len(alphas)
        a32 = alphas.astype(np.float32).reshape(1, k, *([1] * (x.ndim - 1)))
        diff = (x - base)[:, None]
        rows = (base[:, None] + a32 * diff).reshape(n * k, *x.shape[1:])  # Captum: baseline + α (x − baseline)
        logits = values[model.head.logits]
        g = input_gradients(model, rows, [t for t in targets for _ in range(k)], logits, batch=opts.batch)
        g = g.reshape(n, k, *x.shape[1:]).astype(np.float64)
        total = np.tensordot(sizes, g, axes=(0, 1)) if n == 1 else np.einsum("k,nk...->n...", sizes, g)
        att = (total.reshape(x.shape) * (x - base)).astype(np.float32)
        f_x = forward_scores(model, x, targets, batch=opts.batch)
        f_b = forward_scores(model, base, targets, batch=opts.batch)
        extras = [{"delta": float(att[i].astype(np.float64).sum() - (f_x[i] - f_b[i])), "steps": k,
                   "rule": opts.rule} for i in range(n)]
        maps = [saliency_map(att[i], model) for i in range(n)]
        return Attribution(self.name, "input", att, maps, targets, logits, extras)
