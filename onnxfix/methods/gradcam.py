"""Grad-CAM (Selvaraju et al.): α_k = mean_ij ∂y^c/∂A^k_ij, map = ReLU(Σ_k α_k A^k) at a feature map."""

from dataclasses import dataclass

import numpy as np

from onnxfix.methods.base import register_method
from onnxfix.methods.gradients import LayerCAM


@register_method
class GradCAM(LayerCAM):
    name = "gradcam"
    summary = "Grad-CAM: gradient-weighted activation map at a layer (auto: the last conv block)"

    @dataclass
    class Options:
        layer: str | None = None
        #: Grad-CAM §7's textual explanation in ``extras["textual"]`` (onnxfix.methods.textual) — asked for, as it
        #: costs about as much again as the map on EfficientNet-Lite0
        textual: bool = False

    def attribute_resolved(self, model, x, values, targets, opts):
        att = super().attribute_resolved(model, x, values, targets, opts)
        if opts.textual:
            from onnxfix.methods.textual import add_textual

            for n in range(x.shape[0]):
                item = att.item(n)
                vals = {k: np.take(v, [n], axis=0) for k, v in values.items() if k == item.extras.get("layer")}
                add_textual(item, model, x[n:n + 1], vals)
        return att
