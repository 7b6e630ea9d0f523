"""What the gradient methods share: the seed, one autodiff run, NaN checks, CAM arithmetic, upsampling.

Every gradient method seeds the explained logit (before softmax): a one-hot of the target's coordinates in the
logits tensor, so ``d(y_c)/d(tensor)`` is what comes back (Grad-CAM §3; Captum's ``target``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from onnxfix.errors import InputError
from onnxfix.methods.base import Method, Result
from onnxfix.methods.layers import resolve_layer
from onnxfix.model import Model, Target


def seed_for(logits: np.ndarray, target: Target, sign: float = 1.0) -> np.ndarray:
    seed = np.zeros(logits.shape, dtype=logits.dtype)
    seed[target.coords] = sign
    return seed


def program(model: Model, wrt: list[str], mode: str = "gradient", activations: tuple[str, ...] = ()):
    from onnxfix.autodiff import GradientProgram

    return GradientProgram(model.graph, of=model.head.logits, wrt=list(wrt), mode=mode,
                           activations=list(activations), provider=model.provider, threads=model.runtime.threads)


def run_gradients(model: Model, x: np.ndarray, logits: np.ndarray, target: Target, wrt: list[str],
                  mode: str = "gradient", activations: tuple[str, ...] = (),
                  sign: float = 1.0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({tensor: gradient of the target logit}, {tensor: activation}); NaN/Inf is an error, never a picture."""
    prog = program(model, wrt, mode, activations)
    out = prog.run({model.input: x}, seed_for(logits, target, sign))
    grads = {name: out["grad:" + name] for name in wrt}
    acts = {a: out[a] for a in activations}
    for kind, d in (("gradient", grads), ("activation", acts)):
        for name, v in d.items():
            if not np.isfinite(v).all():
                raise InputError(f"the {kind} at {name!r} contains NaN or Inf; refusing to render it")
    return grads, acts


def missing_rules_reason(model: Model, source: str) -> str | None:
    try:
        from onnxfix.autodiff import missing_vjp_rules
    except ImportError as exc:  # pragma: no cover - the engine ships with the package
        return f"autodiff engine unavailable ({exc})"
    miss = missing_vjp_rules(model.graph, [source], model.head.logits)
    if miss:
        kinds = sorted({n.op_type for n in miss})
        return f"no gradient rule for {', '.join(kinds)} (node {miss[0].name})"
    return None


def saliency_map(grad: np.ndarray, model: Model) -> np.ndarray:
    """(H, W) display map of an input-shaped gradient: max over channels of |g| (Simonyan et al.)."""
    g = np.abs(grad[0])
    nhwc = g.ndim == 3 and g.shape[-1] in (1, 3, 4) and g.shape[0] not in (1, 3, 4)
    return g.max(axis=-1) if nhwc else g.max(axis=0)


def nearest_upsample(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """torch.nn.functional.interpolate(mode="nearest") on a 2-D map: src index = floor(dst · in / out)."""
    h, w = m.shape
    iy = np.minimum((np.arange(hw[0]) * (h / hw[0])).astype(np.int64), h - 1)
    ix = np.minimum((np.arange(hw[1]) * (w / hw[1])).astype(np.int64), w - 1)
    return m[iy][:, ix]


class LayerCAM(Method):
    """Base of Grad-CAM-style methods: gradient of the target logit at a feature map → channel weights → map."""

    engine = "autodiff"
    sign: ClassVar[float] = 1.0

    def applies(self, model):
        try:
            layer = resolve_layer(model, None)
        except InputError as exc:
            return str(exc)
        return missing_rules_reason(model, layer)

    def weights(self, grads: np.ndarray, acts: np.ndarray) -> np.ndarray:
        """(C,) channel weights from gradients and activations shaped (C, h, w)."""
        return grads.mean(axis=(1, 2))

    def explain(self, model, x, values, target, layer=None, **options):
        name = resolve_layer(model, layer)
        grads, acts = run_gradients(model, x, values[model.head.logits], target, [name], activations=(name,),
                                    sign=self.sign)
        g, a = grads[name][0].astype(np.float64), acts[name][0].astype(np.float64)
        w = self.weights(g, a)
        cam = np.maximum(np.tensordot(w, a, axes=(0, 0)), 0.0).astype(np.float32)
        return Result(attribution=cam, map=cam, extras={"layer": name, "weights": w.astype(np.float32)})


class InputGradient(Method):
    """Base of input-gradient methods; ``mode`` picks the ReLU backward rule."""

    engine = "autodiff"
    mode: ClassVar[str] = "gradient"

    def applies(self, model):
        return missing_rules_reason(model, model.input)

    def input_gradient(self, model: Model, x: np.ndarray, values: dict, target: Target) -> np.ndarray:
        grads, _ = run_gradients(model, x, values[model.head.logits], target, [model.input], mode=self.mode)
        return grads[model.input].astype(np.float32)

    def explain(self, model, x, values, target, **options):
        g = self.input_gradient(model, x, values, target)
        return Result(attribution=g, map=saliency_map(g, model))
