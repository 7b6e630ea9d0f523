"""Layer-wise Relevance Propagation (Bach et al. 2015; Montavon et al. 2019) with Zennit's composites, as one ONNX
Runtime call: a modified backward pass of the autodiff engine (autodiff/rules_lrp.py has the rules).

* ``composite``: ``epsilon-plus`` (ZPlus on convolutions, Epsilon on fully connected layers — Zennit's
  ``EpsilonPlus``), ``epsilon-gamma-box`` (ZBox on the first convolution, Gamma(``gamma``) on the others, Epsilon on
  fully connected layers — ``EpsilonGammaBox``), ``epsilon-alpha2-beta1`` (AlphaBeta(2, 1) on convolutions —
  ``EpsilonAlpha2Beta1``); everywhere Zennit's base map: Pass on activations (ReLU, ReLU6, HardSwish…), Norm on
  Add and average pooling, gradient (winner takes all) on max pooling.
* BatchNormalization directly after a Conv/Gemm is folded into it first (Zennit's ``SequentialMergeBatchNorm``,
  autodiff/canonize.py ``fold_batchnorm``).
* ``epsilon`` (Zennit's default 1e-6) is the Epsilon rule's ε; ``stabilizer`` (1e-6) every other rule's.
* ``low``/``high``: ZBox's input bounds. By default the normalised values of pixels 0 and 255, per channel, when
  the model declares its preprocessing (``onnxfix.mean``/``std``/``scale`` metadata); otherwise they are required.
* The relevance at the output is the one-hot of the target times the output (Zennit's ``attr_output`` set to
  ``output * one_hot``): the target's logit is what gets distributed. ``values`` is the relevance at the input
  (shaped like it); ``maps`` its sum over the channels (``relevance.sum(1)``, as Zennit users plot it);
  ``extras``: ``relevance`` (Σ of the input relevance) and ``logit`` (the relevance put in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from onnxfix.errors import InputError
from onnxfix.methods.base import Attribution, check_finite, register_method
from onnxfix.methods.gradients import InputGradient, seed_for
from onnxfix.model import Model


def default_bounds(model: Model) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(low, high) per channel: pixels 0 and 255 through the preprocessing the model declares in its metadata
    (``x = (pixel·scale − mean) / std``); ``None`` when the model declares none."""
    meta = model.metadata or {}
    if not any(f"onnxfix.{k}" in meta for k in ("mean", "std", "scale")):
        return None
    spec = model.preprocess()
    mean = np.asarray(spec.mean, np.float64)
    std = np.asarray(spec.std, np.float64)
    lo = (0.0 * spec.scale - mean) / std
    hi = (255.0 * spec.scale - mean) / std
    return tuple(float(v) for v in np.minimum(lo, hi)), tuple(float(v) for v in np.maximum(lo, hi))


@register_method
class LRP(InputGradient):
    name = "lrp"
    summary = "Layer-wise Relevance Propagation with Zennit's composites (epsilon-plus, epsilon-gamma-box, ...)"

    @dataclass
    class Options:
        composite: Literal["epsilon-plus", "epsilon-gamma-box", "epsilon-alpha2-beta1"] = "epsilon-plus"
        epsilon: float = 1e-6
        stabilizer: float = 1e-6
        gamma: float = 0.25
        low: float | None = None
        high: float | None = None

        def check(self):
            for k in ("epsilon", "stabilizer", "gamma"):
                if getattr(self, k) < 0:
                    raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")
            if (self.low is None) != (self.high is None):
                raise ValueError("give both low and high (the ZBox input bounds), or neither")
            if self.low is not None and not self.low < self.high:
                raise ValueError(f"low ({self.low}) must be below high ({self.high})")

    def one_pass(self, model, x, targets, opts):
        return None  # the seed is the target's logit: it needs the forward first

    def params(self, model: Model, opts):
        """The :class:`~onnxfix.autodiff.rules_lrp.LRPParams` of these options on ``model``."""
        from onnxfix.autodiff.rules_lrp import LRPParams

        low = high = None
        if opts.composite == "epsilon-gamma-box":
            if opts.low is not None:
                low, high = (float(opts.low),), (float(opts.high),)
            else:
                bounds = default_bounds(model)
                if bounds is None:
                    raise InputError("lrp composite=epsilon-gamma-box needs the input bounds: the model declares no "
                                     "preprocessing, so give --option low=... --option high=... (the smallest and "
                                     "largest preprocessed input value); epsilon-plus and epsilon-alpha2-beta1 need "
                                     "none")
                low, high = bounds
        return LRPParams(opts.composite, float(opts.epsilon), float(opts.stabilizer), float(opts.gamma), low, high)

    def graph(self, model: Model):
        """The model's graph with BatchNormalization folded into the preceding layers (cached with the model)."""
        from onnxfix.autodiff.canonize import fold_batchnorm

        return model.cache.get(("lrp-graph",), lambda: fold_batchnorm(model.graph,
                                                                        keep=[model.input, model.head.logits]))

    def attribute_resolved(self, model, x, values, targets, opts):
        from onnxfix.autodiff import GradientProgram
        from onnxfix.autodiff.rules_lrp import lrp_mode

        mode = lrp_mode(self.params(model, opts))
        logits = values[model.head.logits]
        seed = seed_for(logits, targets, 1.0, model.head.batch_axis) * logits
        prog = GradientProgram(self.graph(model), of=model.head.logits, wrt=[model.input], mode=mode,
                               provider=model.provider, threads=model.runtime.threads)
        out = prog.run({model.input: x}, seed.astype(logits.dtype))
        rel = out["grad:" + model.input]
        check_finite(rel, "the LRP relevance")
        axis = -1 if model.layout == "nhwc" else 1
        maps = [m for m in rel.sum(axis=axis)]
        ba = model.head.batch_axis
        extras = []
        for n in range(rel.shape[0]):
            put = float(np.take(seed, [n], axis=ba).astype(np.float64).sum()) if ba is not None else float(seed.sum())
            extras.append({"relevance": float(rel[n].astype(np.float64).sum()), "logit": put,
                           "composite": opts.composite})
        return Attribution(self.name, "input", rel.astype(np.float32), maps, targets, logits, extras)
