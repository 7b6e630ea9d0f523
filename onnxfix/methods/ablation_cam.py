"""Ablation-CAM (Desai & Ramaswamy, WACV 2020, §3): the weight of channel k is the relative drop of the target
logit when channel k of the layer is ablated, w_k = (y − y_k) / y; map ReLU(Σ_k w_k A_k). The ablated feature maps
run through the *tail* from the layer only (:func:`onnxfix.methods.sampling.tail_scores`), C per image, batched.

As pytorch-grad-cam 1.5.7's ``AblationCAM`` with ``AblationLayer``: a channel is set to 0 when the layer's minimum is
0, else to a value far below it — there ``torch.min`` is taken again after each row of the ablation batch is
written, so row i of a batch of ``batch_order`` (32) rows gets min − (i + 1)·1e7; we reproduce that order-dependent
value (``batch_order``) to give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfix.methods.base import Attribution, check_finite, register_method
from onnxfix.methods.eigencam import MaskedTailCAM, combine
from onnxfix.methods.layers import layer_view, resolve_layer
from onnxfix.methods.sampling import tail_scores
from onnxfix.targets import score_in


def ablated_maps(acts: np.ndarray, batch_order: int = 32) -> np.ndarray:
    """(C, C, h, w): copy k of one image's activations (C, h, w) with channel k ablated (pytorch-grad-cam's value)."""
    c = acts.shape[0]
    out = np.repeat(acts[None].astype(np.float32), c, axis=0)
    for s in range(0, c, batch_order):
        cur = np.float32(acts.min())
        for i in range(min(batch_order, c - s)):
            if cur == 0:
                out[s + i, s + i] = 0
            else:
                cur = np.float32(cur - np.float32(1e7))
                out[s + i, s + i] = cur
    return out


@register_method
class AblationCAM(MaskedTailCAM):
    name = "ablation-cam"
    summary = "Ablation-CAM: channel weights from the score drop when each channel is ablated (tail only)"

    @dataclass
    class Options:
        layer: str | None = None
        eigen_smooth: bool = False
        batch_order: int = 32  # pytorch-grad-cam's batch_size (it shapes the ablation value)
        batch: int | None = None

        def check(self):
            if self.batch_order < 1:
                raise ValueError("batch_order must be >= 1")

    def attribute_resolved(self, model, x, values, targets, opts):
        name = resolve_layer(model, opts.layer)
        view = layer_view(model, name)
        a = view(values[name]).astype(np.float32)
        logits = values[model.head.logits]
        bax = model.head.batch_axis
        cams, extras = [], []
        for n in range(x.shape[0]):
            y = np.float32(score_in(logits, targets[n], n, bax))
            s = tail_scores(model, name, values, n, ablated_maps(a[n], opts.batch_order), targets[n], opts.batch)
            w = ((y - s.astype(np.float32)) / y).astype(np.float64)
            cams.append(np.maximum(combine(w[:, None, None] * a[n].astype(np.float64), opts.eigen_smooth), 0.0))
            extras.append({"layer": name, "weights": w.astype(np.float32)})
        arr = np.stack(cams).astype(np.float32)
        check_finite(arr, f"{self.name}'s map")
        return Attribution(self.name, "layer", arr, list(arr), targets, logits, extras)
