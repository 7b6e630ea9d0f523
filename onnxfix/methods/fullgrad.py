"""FullGrad (Srinivas & Fleuret, NeurIPS 2019, §3–4): the input-gradient term |∇ₓy · x| plus, for every bias in the
net, the bias-gradient term |∇_b y ⊙ b| — pytorch-grad-cam 1.5.7's ``FullGrad`` (its post-processing ψ of §4: each
channel map made absolute, min-max scaled, resized bilinearly to the input and summed; the sum min-max scaled).

The biases are those of every ``Conv`` (a constant bias input) and ``BatchNormalization`` (b = B − mean·scale /
√(var + ε), as ``FullGrad.get_bias_data``) between the input and the explained output; the bias-gradient of a layer is
the gradient at its output times the bias broadcast over the map. All of them and the input gradient come from one
backward (one ORT call per internal batch). pytorch-grad-cam ignores ``target_layers`` here and uses every
``Conv2d``/``BatchNorm2d`` with a bias; an exporter that folds BatchNorm into the preceding conv leaves one bias
where torch had two when that conv had a bias of its own — the torch model then equals this with BatchNorm folded
(docs/methods.md). Linear/Gemm biases are not counted (pytorch-grad-cam does not either). The per-channel scaling and
resize is linear after the scaling, so the channels of a layer are summed at the layer's resolution and resized once.
``aug_smooth``: pytorch-grad-cam's mean over 6 test-time augmentations (``onnxfix.methods.gradients.AUGMENTATIONS``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfix.methods.base import Attribution, Method, check_finite, register_method
from onnxfix.methods.gradients import (
    AUGMENTATIONS,
    augment,
    batch_gradients,
    input_hw,
    missing_rules_reason,
    resize_bilinear,
    scale_cam,
)
from onnxfix.model import Model


def bias_layers(model: Model) -> list[tuple[str, np.ndarray]]:
    """(output tensor, bias (C,) float64) of every Conv with a constant bias and every BatchNormalization with
    constant parameters between the input and the explained output, in graph order (cached per model)."""

    def build() -> list[tuple[str, np.ndarray]]:
        g = model.graph
        out = []
        for node in g.nodes_between([model.input], model.head.logits):
            c = g.constants
            if node.op_type == "Conv" and len(node.inputs) > 2 and node.inputs[2] in c:
                out.append((node.outputs[0], np.asarray(c[node.inputs[2]], np.float64).reshape(-1)))
            elif node.op_type == "BatchNormalization" and all(i in c for i in node.inputs[1:5]):
                scale, b, mean, var = (np.asarray(c[i], np.float64).reshape(-1) for i in node.inputs[1:5])
                eps = float(node.attrs.get("epsilon", 1e-5))
                out.append((node.outputs[0], b - mean * scale / np.sqrt(var + eps)))
        return out

    return model.cache.get("fullgrad_bias_layers", build)


def fullgrad_maps(x: np.ndarray, gx: np.ndarray, terms: list[tuple[np.ndarray, np.ndarray]], nhwc: bool
                  ) -> np.ndarray:
    """(N, H, W) FullGrad maps from the input ``x``, its gradient ``gx`` and (bias (C,), gradient (N, C, h, w)) per
    bias layer: pytorch-grad-cam's ``compute_cam_per_layer`` + ``aggregate_multi_layers``."""
    a = np.abs(gx.astype(np.float64) * x)
    if nhwc:
        a = a.transpose(0, 3, 1, 2)
    hw = a.shape[2:]
    total = scale_cam(a).sum(axis=1)  # the input term: each channel scaled (already at the input's size)
    by_size: dict[tuple[int, int], np.ndarray] = {}
    for bias, g in terms:
        t = scale_cam(np.abs(g.astype(np.float64) * bias[None, :, None, None])).sum(axis=1)
        key = t.shape[1:]
        by_size[key] = by_size[key] + t if key in by_size else t
    for s in by_size.values():
        total = total + resize_bilinear(s, hw)
    return scale_cam(total).astype(np.float32)


@register_method
class FullGrad(Method):
    name = "fullgrad"
    summary = "FullGrad: |input gradient x input| plus every conv/BN bias-gradient term (pytorch-grad-cam FullGrad)"
    engine = "autodiff"
    kind = "map"

    @dataclass
    class Options:
        aug_smooth: bool = False  # pytorch-grad-cam's mean over 6 test-time augmentations

    def applies(self, model):
        return missing_rules_reason(model, model.input)

    def attribute_resolved(self, model, x, values, targets, opts):
        logits = values[model.head.logits]
        layers = bias_layers(model)
        augs = AUGMENTATIONS if opts.aug_smooth else ((False, 1.0),)
        rows = np.concatenate([augment(model, x, f, m) for f, m in augs]) if opts.aug_smooth else x
        wrt = [model.input] + [name for name, _ in layers]
        grads, _ = batch_gradients(model, rows, [t for _ in augs for t in targets], logits, wrt)
        maps = fullgrad_maps(rows, grads[model.input], [(b, grads[name]) for name, b in layers],
                             model.layout == "nhwc")
        if opts.aug_smooth:
            hw = input_hw(model, x)
            maps = maps.reshape(len(augs), x.shape[0], *hw)
            maps = np.stack([m[..., ::-1] if f else m for m, (f, _) in zip(maps, augs, strict=True)])
            maps = maps.mean(axis=0, dtype=np.float32)
        check_finite(maps, f"{self.name}'s map")
        extras = [{"bias_layers": len(layers), "aug_smooth": opts.aug_smooth} for _ in targets]
        return Attribution(self.name, "map", maps, list(maps), targets, logits, extras)
