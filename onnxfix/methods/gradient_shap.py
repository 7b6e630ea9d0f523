"""GradientSHAP (Lundberg & Lee 2017's expected gradients; Captum 0.9's ``GradientShap``): for ``samples`` draws per
image of a baseline b from ``baselines``, a point α ~ U(0, 1) on the path and Gaussian input noise ε, the mean of
(x − b) ⊙ ∂F(b + α(x + ε − b))/∂x … exactly Captum's arithmetic: the noisy input x̃ = x + ε, the scaled input
α x̃ + (1 − α) b, attribution (x̃ − b) ⊙ gradient, averaged.

Random numbers as Captum draws them: the noise ``np.random.default_rng(seed)`` (:func:`onnxfix.methods.noise_tunnel.
noise`; Captum's comes from torch, the parity tests feed it ours), then from ``np.random.RandomState(seed)`` the
baseline indices (``choice(len(baselines), N·samples)``) and the α's (``uniform(0, 1, N·samples)``) — Captum's
``np.random`` calls in that order, so ``np.random.seed(seed)`` gives Captum the same draws. Defaults: 5 samples
(Captum's), stdev 0, one all-zero baseline; ``extras["delta"]`` is Captum's convergence delta, averaged per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfix.errors import InputError
from onnxfix.methods.base import Attribution, register_method
from onnxfix.methods.gradients import InputGradient, saliency_map
from onnxfix.methods.noise_tunnel import noise
from onnxfix.methods.sampling import forward_scores, input_gradients


def draws(n_rows: int, n_baselines: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(baseline index per row, α per row) as Captum draws them after ``np.random.seed(seed)``."""
    rs = np.random.RandomState(seed)
    idx = rs.choice(n_baselines, n_rows)
    alpha = rs.uniform(0.0, 1.0, n_rows)
    return idx, alpha


@register_method
class GradientShap(InputGradient):
    needs_batch = True  # many rows per image: refused (applies) where no batch-dynamic form exists
    name = "gradient-shap"
    summary = "GradientSHAP: expected gradients from random baselines and path points (Captum GradientShap)"

    @dataclass
    class Options:
        samples: int = 5
        stdev: float = 0.0
        seed: int = 0
        baselines: float | np.ndarray = 0.0  # a number, or (K, …) baselines shaped like images
        batch: int | None = None

        def check(self):
            if not 1 <= self.samples <= 4096:
                raise ValueError(f"samples must be in 1..4096, got {self.samples}")
            if self.stdev < 0:
                raise ValueError("stdev must be >= 0")

    def one_pass(self, model, x, targets, opts):
        return None

    def attribute_resolved(self, model, x, values, targets, opts):
        n, k = x.shape[0], opts.samples
        b = np.asarray(opts.baselines, x.dtype)
        if b.ndim == 0:
            b = np.full((1, *x.shape[1:]), b, x.dtype)
        if b.shape[1:] != x.shape[1:]:
            raise InputError(f"{self.name}: baselines shaped {list(b.shape)} do not stack images {list(x.shape[1:])}")
        noisy = np.repeat(x, k, axis=0) + noise(x.shape, k, opts.stdev, opts.seed).astype(x.dtype)
        idx, alpha = (np.concatenate(v) for v in zip(*[draws(k, len(b), opts.seed) for _ in range(n)], strict=True))
        # each image's draws from its own seed: the same alone or in a batch
        base = b[idx]
        a = alpha.astype(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        rows = a * noisy + (1 - a) * base
        logits = values[model.head.logits]
        rt = [t for t in targets for _ in range(k)]
        g = input_gradients(model, rows, rt, logits, batch=opts.batch)
        per = (noisy - base).astype(np.float64) * g
        att = per.reshape(n, k, *x.shape[1:]).mean(axis=1).astype(np.float32)
        f_in = forward_scores(model, noisy, rt, batch=opts.batch)
        f_b = forward_scores(model, base, rt, batch=opts.batch)
        delta = per.reshape(n * k, -1).sum(axis=1) - (f_in - f_b)
        extras = [{"delta": float(delta[i * k:(i + 1) * k].mean()), "samples": k} for i in range(n)]
        maps = [saliency_map(att[i], model) for i in range(n)]
        return Attribution(self.name, "input", att, maps, targets, logits, extras)
