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
        #: a tensor or node name, or a comma list of them (their maps fused as pytorch-grad-cam's)
        layer: str | None = None
        eigen_smooth: bool = False  # pytorch-grad-cam's first-component projection instead of Σ_k
        aug_smooth: bool = False  # pytorch-grad-cam's mean over 6 test-time augmentations
        #: Grad-CAM §7's textual explanation in ``extras["textual"]`` (onnxfix.methods.textual) — asked for, as it
        #: costs about as much again as the map on EfficientNet-Lite0
        textual: bool = False

    def attribute_resolved(self, model, x, values, targets, opts):
        if opts.textual and self.fused(opts):
            from onnxfix.errors import InputError

            raise InputError("gradcam: textual explains one layer's map; drop aug_smooth and the comma list of layers")
        att = super().attribute_resolved(model, x, values, targets, opts)
        if opts.textual:
            from onnxfix.methods.textual import add_textual

            for n in range(x.shape[0]):
                item = att.item(n)
                layer = item.extras.get("layer")
                add_textual(item, model, x[n:n + 1], {layer: values[layer][n:n + 1]} if layer in values else {})
        return att
