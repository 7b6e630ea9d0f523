"""SmoothGrad (Smilkov et al. 2017, §3): the mean input gradient over ``samples`` noisy copies x + N(0, stdev²);
``smoothgrad-sq`` the mean of the squared gradients and ``vargrad`` their variance (Adebayo et al. 2018) — Captum
0.9's ``NoiseTunnel(Saliency(model, abs=False))`` with ``nt_type`` "smoothgrad", "smoothgrad_sq", "vargrad".

The noise is drawn in numpy, ``np.random.default_rng(seed).standard_normal((N·samples, …)) · stdev`` in float32, in
Captum's order (image-major, ``repeat_interleave``); :func:`noise` gives the same array to anyone (the parity tests
feed it to Captum). All N × samples copies run through ONNX Runtime in batches bounded by the memory budget.
Defaults: 25 samples, stdev 1.0 (Captum's default stdev, in the preprocessed input's units), seed 0; ``abs`` takes
|gradient| per sample first (Captum Saliency's default ``abs=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from onnxfix.methods.base import Attribution, register_method
from onnxfix.methods.gradients import InputGradient, saliency_map
from onnxfix.methods.sampling import input_gradients


def noise(shape: tuple[int, ...], samples: int, stdev: float, seed: int) -> np.ndarray:
    """(N·samples, …) float32 Gaussian noise for a batch of ``shape`` (N, …): each image's ``samples`` draws come
    from its own ``default_rng(seed)``, so an image gets the same noise alone or in a batch (batched = one by one)."""
    one = np.random.default_rng(seed).standard_normal((samples, *shape[1:]))
    return np.concatenate([(one * stdev).astype(np.float32)] * shape[0])


@dataclass
class NoiseOptions:
    samples: int = 25
    stdev: float = 1.0
    seed: int = 0
    abs: bool = False
    batch: int | None = None  # rows per ORT call (default: bounded by the memory budget)

    def check(self):
        if not 1 <= self.samples <= 4096:
            raise ValueError(f"samples must be in 1..4096, got {self.samples}")
        if self.stdev < 0:
            raise ValueError("stdev must be >= 0")
        if self.batch is not None and self.batch < 1:
            raise ValueError("batch must be >= 1")


class NoiseTunnel(InputGradient):
    """Base: gradients of noisy copies, reduced by :attr:`nt_type`."""
    needs_batch = True  # many rows per image: refused (applies) where no batch-dynamic form exists

    Options = NoiseOptions
    nt_type: ClassVar[str] = "smoothgrad"

    def one_pass(self, model, x, targets, opts):
        return None

    def attribute_resolved(self, model, x, values, targets, opts):
        n, k = x.shape[0], opts.samples
        rows = np.repeat(x, k, axis=0) + noise(x.shape, k, opts.stdev, opts.seed).astype(x.dtype)
        logits = values[model.head.logits]
        g = input_gradients(model, rows, [t for t in targets for _ in range(k)], logits, batch=opts.batch)
        if opts.abs:
            g = np.abs(g)
        g = g.reshape(n, k, *x.shape[1:]).astype(np.float64)
        mean = g.sum(axis=1) / k
        sq = (g * g).sum(axis=1) / k
        att = {"smoothgrad": mean, "smoothgrad_sq": sq, "vargrad": sq - mean * mean}[self.nt_type].astype(np.float32)
        maps = [saliency_map(att[i], model) for i in range(n)]
        extras = [{"samples": k, "stdev": opts.stdev, "seed": opts.seed} for _ in range(n)]
        return Attribution(self.name, "input", att, maps, targets, logits, extras)


@register_method
class SmoothGrad(NoiseTunnel):
    name = "smoothgrad"
    summary = "SmoothGrad: mean gradient over noisy copies (samples, stdev, seed; Captum NoiseTunnel)"


@register_method
class SmoothGradSq(NoiseTunnel):
    name = "smoothgrad-sq"
    summary = "SmoothGrad²: mean squared gradient over noisy copies (Captum NoiseTunnel smoothgrad_sq)"
    nt_type = "smoothgrad_sq"


@register_method
class VarGrad(NoiseTunnel):
    name = "vargrad"
    summary = "VarGrad: variance of the gradient over noisy copies (Captum NoiseTunnel vargrad)"
    nt_type = "vargrad"
