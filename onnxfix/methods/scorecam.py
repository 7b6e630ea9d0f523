"""Score-CAM (Wang et al., CVPRW 2020, §3): each channel of a layer, upsampled to the input and min-max normalised,
masks the input; the channel's weight is the softmax over channels of the target logit of the masked input; map
ReLU(Σ_k w_k A_k) — pytorch-grad-cam 1.5.7's ``ScoreCAM`` (bilinear upsampling with ``align_corners=True``,
``(u − min)/(max − min + 1e-8)``). Its masks live on the *input*, so the masked copies run through the whole
model (the only CAM here that cannot use the tail alone), C of them per image in batches bounded by the memory
budget."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfix.methods.base import Attribution, check_finite, register_method
from onnxfix.methods.eigencam import EigenCAM, combine
from onnxfix.methods.layers import layer_view, resolve_layer
from onnxfix.methods.sampling import bilinear_align_corners, forward_scores


def channel_masks(acts: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(C, H, W) float32 masks of one image's (C, h, w) activations, as pytorch-grad-cam builds them."""
    up = bilinear_align_corners(acts.astype(np.float32), hw)
    flat = up.reshape(up.shape[0], -1)
    mx, mn = flat.max(axis=1)[:, None, None], flat.min(axis=1)[:, None, None]
    return ((up - mn) / (mx - mn + np.float32(1e-8))).astype(np.float32)


def softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


@register_method
class ScoreCAM(EigenCAM):
    needs_batch = True  # many rows per image: refused (applies) where no batch-dynamic form exists
    name = "scorecam"
    summary = "Score-CAM: channels as input masks, weighted by the softmax of the masked scores (no gradient)"

    @dataclass
    class Options:
        layer: str | None = None
        eigen_smooth: bool = False
        batch: int | None = None

    def attribute_resolved(self, model, x, values, targets, opts):
        name = resolve_layer(model, opts.layer)
        if name not in values:
            values = {**values, **model.runtime.run({model.input: x}, [name])}
        a = layer_view(model, name)(values[name]).astype(np.float32)
        nhwc = model.layout == "nhwc"
        hw = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
        cams, extras = [], []
        for n in range(x.shape[0]):
            m = channel_masks(a[n], hw)
            rows = x[n:n + 1] * (m[:, :, :, None] if nhwc else m[:, None])
            s = forward_scores(model, rows.astype(x.dtype), [targets[n]] * len(m), batch=opts.batch)
            w = softmax(s.astype(np.float32).astype(np.float64))
            cams.append(np.maximum(combine(w[:, None, None] * a[n].astype(np.float64), opts.eigen_smooth), 0.0))
            extras.append({"layer": name, "weights": w.astype(np.float32)})
        arr = np.stack(cams).astype(np.float32)
        check_finite(arr, f"{self.name}'s map")
        return Attribution(self.name, "layer", arr, list(arr), targets, values[model.head.logits], extras)
