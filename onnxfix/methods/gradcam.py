"""Grad-CAM (Selvaraju et al.): α_k = mean_ij ∂y^c/∂A^k_ij, map = ReLU(Σ_k α_k A^k) at a feature map."""

from onnxfix.methods.base import register_method
from onnxfix.methods.gradients import LayerCAM


@register_method
class GradCAM(LayerCAM):
    name = "gradcam"
    summary = "Grad-CAM: gradient-weighted activation map at a layer (auto: the last conv block)"

    def explain(self, model, x, values, target, layer=None, textual=False, **options):
        """Grad-CAM; with ``textual=True`` also its textual explanation (Grad-CAM §7) in ``extras["textual"]``
        (onnxfix.methods.textual) — asked for, as it costs about as much again as the map on EfficientNet-Lite0."""
        res = super().explain(model, x, values, target, layer=layer, **options)
        if textual:
            from onnxfix.methods.textual import add_textual

            add_textual(res, model, x, values)
        return res
