"""Recipro-CAM (Byun & Lee 2022, §3): gradient-free, one tail pass. The feature map A (C, h, w) at a layer is copied
h·w times, copy (i, j) keeping only location (i, j) (a one-hot spatial mask, or with ``kernel="gaussian"`` the
3×3 kernel [1 2 1]ᵀ[1 2 1]/16 around it, the paper's §3.2 variant); the tail from the layer runs once on that batch
and the map at (i, j) is the target's softmax probability for copy (i, j). Cost: about one head forward per
location, no backward — for models whose backward pass is impossible (quantised, unsupported ops). As OpenVINO
XAI, the map is min-max normalised per image; the raw probabilities are in ``extras["scores"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from onnxfix.methods.base import Attribution, check_finite, register_method
from onnxfix.methods.eigencam import MaskedTailCAM
from onnxfix.methods.layers import layer_view, resolve_layer
from onnxfix.methods.sampling import tail_scores
from onnxfix.targets import softmax


def spatial_masks(h: int, w: int, kernel: str = "onehot") -> np.ndarray:
    """(h·w, h, w) float32 masks, one per location in row-major order."""
    m = np.zeros((h * w, h, w), np.float32)
    k = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32) / 16 if kernel == "gaussian" else np.ones((1, 1), np.float32)
    r = k.shape[0] // 2
    for i in range(h):
        for j in range(w):
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    y, x = i + di, j + dj
                    if 0 <= y < h and 0 <= x < w:
                        m[i * w + j, y, x] = k[di + r, dj + r] if kernel == "gaussian" else 1.0
    return m


@register_method
class ReciproCAM(MaskedTailCAM):
    name = "reciprocam"
    summary = "Recipro-CAM: the tail run once on spatially masked feature maps (gradient-free, one head pass)"

    @dataclass
    class Options:
        layer: str | None = None
        kernel: Literal["onehot", "gaussian"] = "onehot"
        batch: int | None = None

    def attribute_resolved(self, model, x, values, targets, opts):
        name = resolve_layer(model, opts.layer)
        a = layer_view(model, name)(values[name]).astype(np.float32)
        _, c, h, w = a.shape
        masks = spatial_masks(h, w, opts.kernel)
        cams, raw = [], []
        for n in range(x.shape[0]):
            maps = a[n][None] * masks[:, None]
            t = targets[n]
            s = tail_scores(model, name, values, n, maps, t, opts.batch) if t.weights is not None else \
                _tail_probs(model, name, values, n, maps, t, opts.batch)
            cam = s.reshape(h, w)
            raw.append(cam.astype(np.float32))
            lo, hi = cam.min(), cam.max()
            cams.append((cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam))
        arr = np.stack(cams).astype(np.float32)
        check_finite(arr, f"{self.name}'s map")
        return Attribution(self.name, "layer", arr, list(arr), targets, values[model.head.logits],
                           [{"layer": name, "scores": r} for r in raw])


def _tail_probs(model, layer, values, n, maps, target, batch):
    """The target class's softmax probability for each masked map (the tail's logits, softmax over classes)."""
    from onnxfix.methods import sampling

    rt, ins = sampling.tail_runtime(model, layer)
    lay = sampling.layer_layout(model, layer, values[layer][n:n + 1])
    b = sampling.internal_batch(model, len(maps), 1.0, batch)
    head = model.head
    out = np.empty(len(maps))
    for s in range(0, len(maps), b):
        chunk = maps[s:s + b]
        if lay == "nhwc":
            chunk = chunk.transpose(0, 2, 3, 1)
        feeds = {layer: np.ascontiguousarray(chunk, dtype=values[layer].dtype)}
        for other in ins[1:]:
            feeds[other] = np.repeat(values[other][n:n + 1], len(chunk), axis=0)
        lg = rt.run(feeds, [head.logits])[head.logits].astype(np.float64)
        bax = head.batch_axis if head.batch_axis is not None else 0
        for j in range(len(chunk)):
            c = list(target.at_batch(j, bax).coords)
            row = np.take(lg, [j], axis=bax)
            idx = [0] * row.ndim
            for ax in range(row.ndim):
                if ax != head.class_axis and ax != bax:
                    idx[ax] = c[ax]
            idx[head.class_axis] = slice(None)
            out[s + j] = softmax(row[tuple(idx)].reshape(-1))[target.index]
    return out
