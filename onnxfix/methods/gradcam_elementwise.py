"""Grad-CAM element-wise (pytorch-grad-cam 1.5.7's ``GradCAMElementWise``): Σ_k ReLU(∂y_c/∂A_k ⊙ A_k), then ReLU."""

import numpy as np

from onnxfix.methods.base import register_method
from onnxfix.methods.gradients import CAMOptions
from onnxfix.methods.gradients import LayerCAM as GradientCAM


@register_method
class GradCAMElementWise(GradientCAM):
    name = "gradcam-elementwise"
    summary = "Grad-CAM element-wise: positive parts of gradient x activation summed over channels"
    Options = CAMOptions

    def weighted(self, grads, acts):
        return np.maximum(grads * acts, 0.0)
