"""XGrad-CAM (Fu et al., BMVC 2020, §3.2): α_k = Σ_ij A_k,ij ∂y_c/∂A_k,ij / (Σ_ij A_k,ij + 1e-7) — pytorch-grad-cam
1.5.7's ``XGradCAM`` (same eps), map ReLU(Σ_k α_k A_k)."""

from onnxfix.methods.base import register_method
from onnxfix.methods.gradients import CAMOptions
from onnxfix.methods.gradients import LayerCAM as GradientCAM


@register_method
class XGradCAM(GradientCAM):
    name = "xgradcam"
    summary = "XGrad-CAM: activation-normalised gradient weights (axiom-based Grad-CAM)"
    Options = CAMOptions

    def weights(self, grads, acts):
        return (grads * acts / (acts.sum(axis=(1, 2))[:, None, None] + 1e-7)).sum(axis=(1, 2))
