"""HiResCAM (Draelos & Carin 2020, §3.2): Σ_k ∂y_c/∂A_k ⊙ A_k element-wise (no spatial averaging of the gradient),
then ReLU — pytorch-grad-cam 1.5.7's ``HiResCAM`` (``eigen_smooth``: first-component projection instead of Σ_k)."""

from onnxfix.methods.base import register_method
from onnxfix.methods.gradients import CAMOptions
from onnxfix.methods.gradients import LayerCAM as GradientCAM


@register_method
class HiResCAM(GradientCAM):
    name = "hirescam"
    summary = "HiResCAM: element-wise gradient x activation summed over channels (faithful to the score)"
    Options = CAMOptions

    def weighted(self, grads, acts):
        return grads * acts
