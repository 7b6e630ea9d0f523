"""Attention methods for vision transformers: the attention probabilities are plain graph values in ONNX.

:func:`attention_tensors` finds them: the outputs of ``Softmax`` nodes over the last axis, on the path from the image
input to the explained output, shaped (…, T, T) and read by a ``MatMul`` (or ``Einsum``) as the weights of
``softmax(QKᵀ)·V``. Fused attention ops (ORT's com.microsoft ``Attention`` / ``MultiHeadAttention``, ONNX
``Attention``) hide the probabilities; there the methods refuse, naming the op, and the gradient and perturbation
methods still work.

* ``attention-rollout`` — Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (ACL 2020, §3): per block
  the heads are fused (mean, max or min), the smallest ``discard_ratio`` of the fused weights are zeroed (as
  jacobgil/vit-explain does, never the class token's self-weight), the residual is accounted for as
  ``0.5·A + 0.5·I`` re-normalised per row, and the blocks are multiplied, first block rightmost. The map is the
  class token's row over the patch tokens (without a class token: the mean over all rows).
* ``attention-gradient`` — Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal
  and Encoder-Decoder Transformers" (ICCV 2021, eqs. 5–6): per block ``Ā = E_h[(∇A ⊙ A)⁺]`` with ``∇A`` the gradient
  of the target score (before softmax) at the attention probabilities, and ``R ← R + Ā·R`` from ``R = I``; the map
  is the class token's row of ``R`` over the patch tokens. The probabilities and their gradients come from one ORT
  call of the autodiff engine (forward + backward; for one image and a class target also the seed, in-graph).

Both give ``kind="map"``: (N, h, w) on the patch grid (:func:`onnxfix.methods.layers.token_grid`), which covers the
input plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from onnxfix.errors import InputError
from onnxfix.methods.base import Attribution, Method, check_finite, check_scores, register_method
from onnxfix.model import Model

_FUSED = ("Attention", "MultiHeadAttention", "PackedAttention", "PackedMultiHeadAttention", "GroupQueryAttention")


def attention_tensors(model: Model) -> list[str]:
    """Attention probabilities of ``model`` in topological order: outputs of last-axis ``Softmax`` nodes between the
    image input and the explained output, shaped (…, T, T), read by a ``MatMul``/``Einsum`` as its first operand
    (through Dropout/Identity/Cast at most). Cached per model."""
    return model.cache.get("attention_tensors", lambda: _attention_tensors(model))


def _attention_tensors(model: Model) -> list[str]:
    g = model.graph
    out: list[str] = []
    for node in g.nodes_between([model.input], model.head.logits):
        if node.op_type != "Softmax":
            continue
        name = node.outputs[0]
        shape = g.shape(name)
        if shape is None or len(shape) < 3:
            continue
        rank = len(shape)
        axis = node.attrs.get("axis", -1)
        if axis % rank != rank - 1:
            continue
        if not (isinstance(shape[-1], int) and shape[-1] == shape[-2]):
            continue
        if _feeds_matmul(model, name):
            out.append(name)
    return out


def _feeds_matmul(model: Model, name: str, hops: int = 0) -> bool:
    g = model.graph
    for c in g.consumers(name):
        if c.op_type in ("MatMul", "Einsum") and c.inputs[0] == name:
            return True
        if c.op_type in ("Dropout", "Identity", "Cast") and hops < 3 and _feeds_matmul(model, c.outputs[0], hops + 1):
            return True
    return False


def fused_attention_reason(model: Model) -> str:
    ops = sorted({n.op_type for n in model.graph.nodes if n.op_type in _FUSED})
    if ops:
        return (f"the attention probabilities are hidden inside fused {', '.join(ops)} nodes; gradient methods "
                "(gradcam, saliency), occlusion and rise still work")
    return ("no attention Softmax (…, T, T) read by a MatMul lies between the input and the output; "
            "this is not a transformer (gradcam, saliency, occlusion still work)")


def grid_of(model: Model, attns: list[str], values: dict[str, np.ndarray]) -> tuple[int, int, int]:
    """(extra leading tokens, h, w) of the attention's T tokens."""
    from onnxfix.methods.layers import token_grid

    T = int(values[attns[-1]].shape[-1])
    grid = token_grid(model, T)
    if grid is None:
        raise InputError(f"the attention has {T} tokens and no patch grid of the model matches them")
    return grid


def as_heads(a: np.ndarray, n_images: int) -> np.ndarray:
    """Attention probabilities as (N, heads, T, T) (a (N·heads, T, T) or (N, T, T) layout is regrouped)."""
    T = a.shape[-1]
    return a.reshape(n_images, -1, T, T).astype(np.float64)


def fuse_heads(a: np.ndarray, fusion: str) -> np.ndarray:
    """(N, heads, T, T) → (N, T, T) by mean, max or min over heads (Abnar & Zuidema's head fusion)."""
    return {"mean": a.mean, "max": a.max, "min": a.min}[fusion](axis=1)


def rollout(attns: list[np.ndarray], fusion: str = "mean", discard_ratio: float = 0.0) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020, §3) of per-block probabilities (N, heads, T, T), first block first:
    ``R = Â_L ··· Â_1`` with ``Â = rownorm(0.5·fused + 0.5·I)``; returns R (N, T, T) float64.

    ``discard_ratio``: per image and block, the ``int(T²·ratio)`` smallest fused weights (ties: the first in
    row-major order) are set to 0 before adding the identity — except entry (0, 0), as jacobgil/vit-explain."""
    N, _, T, _ = attns[0].shape
    eye = np.eye(T)
    result = np.broadcast_to(eye, (N, T, T)).copy()
    for a in attns:
        fused = fuse_heads(a, fusion)
        if discard_ratio > 0:
            flat = fused.reshape(N, -1).copy()
            k = int(flat.shape[1] * discard_ratio)
            if k:
                idx = np.argsort(flat, axis=1, kind="stable")[:, :k]
                for n in range(N):
                    i = idx[n][idx[n] != 0]
                    flat[n, i] = 0.0
            fused = flat.reshape(N, T, T)
        a_hat = 0.5 * fused + 0.5 * eye
        a_hat = a_hat / a_hat.sum(axis=-1, keepdims=True)
        result = a_hat @ result
    return result


def chefer(attns: list[np.ndarray], grads: list[np.ndarray]) -> np.ndarray:
    """Chefer et al. 2021 (eqs. 5–6): ``R ← R + E_h[(∇A ⊙ A)⁺]·R`` from ``R = I``; (N, T, T) float64."""
    N, _, T, _ = attns[0].shape
    R = np.broadcast_to(np.eye(T), (N, T, T)).copy()
    for a, g in zip(attns, grads, strict=True):
        cam = np.maximum(g * a, 0.0).mean(axis=1)
        R = R + cam @ R
    return R


def token_map(R: np.ndarray, extra: int, h: int, w: int) -> np.ndarray:
    """(N, h, w): the class token's row of R over the patch tokens (no class token: the mean of the rows)."""
    row = R[:, 0, :] if extra >= 1 else R.mean(axis=1)
    return row[:, extra:].reshape(R.shape[0], h, w)


class AttentionMethod(Method):
    """Shared: applicability, the attention tensors in the forward, the map on the patch grid."""

    kind = "map"

    def applies(self, model):
        if not attention_tensors(model):
            return fused_attention_reason(model)
        from onnxfix.methods.layers import token_grid, windowed_attention_reason

        windowed = windowed_attention_reason(model)
        if windowed is not None:
            return windowed

        shape = model.graph.shape(attention_tensors(model)[-1])
        if shape is not None and isinstance(shape[-1], int) and token_grid(model, shape[-1]) is None:
            return f"the attention has {shape[-1]} tokens and no patch grid of the model matches them"
        return None

    def _attns(self, model: Model) -> list[str]:
        attns = attention_tensors(model)
        if not attns:
            raise InputError(f"{self.name}: {fused_attention_reason(model)}")
        return attns

    def finish(self, model: Model, R: np.ndarray, grid: tuple[int, int, int], logits: np.ndarray, targets,
               attns: list[str]) -> Attribution:
        maps = token_map(R, *grid).astype(np.float32)
        check_finite(maps, f"{self.name}'s map")
        extras = [{"attention": list(attns), "grid": list(grid[1:]), "extra_tokens": grid[0]} for _ in targets]
        return Attribution(self.name, "map", maps, list(maps), list(targets), logits, extras)


@register_method
class AttentionRollout(AttentionMethod):
    name = "attention-rollout"
    summary = "Attention rollout (Abnar & Zuidema 2020): attention multiplied through the blocks (class-agnostic)"
    engine = "forward"

    @dataclass
    class Options:
        head_fusion: Literal["mean", "max", "min"] = "mean"
        discard_ratio: float = 0.0

        def check(self) -> None:
            if not 0.0 <= self.discard_ratio < 1.0:
                raise ValueError(f"discard_ratio={self.discard_ratio} must be in [0, 1)")

    def forward_tensors(self, model, **options):
        return [model.head.logits, *self._attns(model)]

    def attribute_resolved(self, model, x, values, targets, opts):
        attns = self._attns(model)
        N = x.shape[0]
        R = rollout([as_heads(values[a], N) for a in attns], opts.head_fusion, opts.discard_ratio)
        return self.finish(model, R, grid_of(model, attns, values), values[model.head.logits], targets, attns)


@register_method
class AttentionGradient(AttentionMethod):
    name = "attention-gradient"
    summary = "Chefer et al. 2021: gradient-weighted attention (∇A ⊙ A)⁺ rolled out through the blocks"
    engine = "autodiff"

    def applies(self, model):
        why = super().applies(model)
        if why is not None:
            return why
        from onnxfix.methods.gradients import missing_rules_reason

        return missing_rules_reason(model, attention_tensors(model)[0])

    def _run(self, model: Model, x: np.ndarray, seed: np.ndarray | None) -> dict[str, np.ndarray]:
        from onnxfix.autodiff import GradientProgram

        attns = self._attns(model)
        prog = GradientProgram(model.graph, of=model.head.logits, wrt=attns, activations=attns,
                               provider=model.provider, threads=model.runtime.threads,
                               seed="fed" if seed is not None else "argmax")
        out = prog.run({model.input: x}, seed) if seed is not None else prog.run({model.input: x})
        for a in attns:
            if not (np.isfinite(out[a]).all() and np.isfinite(out["grad:" + a]).all()):
                raise InputError(f"the attention or its gradient at {a!r} contains NaN or Inf; refusing to render it")
        return out

    def _from(self, model: Model, x: np.ndarray, out: dict[str, np.ndarray], logits: np.ndarray, targets
              ) -> Attribution:
        attns = self._attns(model)
        N = x.shape[0]
        R = chefer([as_heads(out[a], N) for a in attns], [as_heads(out["grad:" + a], N) for a in attns])
        return self.finish(model, R, grid_of(model, attns, out), logits, targets, attns)

    def attribute_resolved(self, model, x, values, targets, opts):
        from onnxfix.methods.gradients import seed_for

        logits = values[model.head.logits]
        out = self._run(model, x, seed_for(logits, targets, 1.0, model.head.batch_axis))
        return self._from(model, x, out, logits, targets)

    def one_pass(self, model, x, targets, opts):
        """One image, a class (or the top class): forward, seed (in-graph argmax or a fixed one-hot), backward
        and the attention probabilities in one ORT call."""
        from onnxfix.targets import Class

        shape = model.single_logits_shape()
        t = targets[0] if len(targets) == 1 else None
        if shape is None or x.shape[:1] != (1,) or not (t is None or isinstance(t, Class)) or not attention_tensors(
                model):
            return None
        if t is None:
            out = self._run(model, x, None)
        else:
            index = model.class_index(t.index_or_label, shape[model.head.class_axis])
            seed = np.zeros(shape, np.float32)
            seed.reshape(-1)[index] = 1.0
            out = self._run(model, x, seed)
        logits = out[model.head.logits]
        check_scores(logits)
        return self._from(model, x, out, logits, [model.resolve_target(logits, t)])


__all__ = ["AttentionGradient", "AttentionRollout", "as_heads", "attention_tensors", "chefer", "fuse_heads",
           "rollout", "token_map"]
