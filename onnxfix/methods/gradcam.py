"""Grad-CAM (Selvaraju et al.): α_k = mean_ij ∂y^c/∂A^k_ij, map = ReLU(Σ_k α_k A^k) at a feature map."""

from dataclasses import dataclass

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
                layer = item.extras.get("layer")
                add_textual(item, model, x[n:n + 1], {layer: values[layer][n:n + 1]} if layer in values else {})
        return att
