"""Grad-CAM (Selvaraju et al.): α_k = mean_ij ∂y^c/∂A^k_ij, map = ReLU(Σ_k α_k A^k) at a feature map."""

from onnxfix.methods.base import register_method
from onnxfix.methods.gradients import LayerCAM


@register_method
class GradCAM(LayerCAM):
    name = "gradcam"
    summary = "Grad-CAM: gradient-weighted activation map at a layer (auto: the last conv block)"

    def explain(self, model, x, values, target, layer=None, **options):
        """Grad-CAM, plus its textual explanation (Grad-CAM §7) in ``extras["textual"]`` (onnxfix.methods.textual)."""
        from onnxfix.methods.textual import add_textual

        res = super().explain(model, x, values, target, layer=layer, **options)
        add_textual(res, model, x, values)
        return res
