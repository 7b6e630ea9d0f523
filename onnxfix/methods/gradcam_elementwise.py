"""Grad-CAM element-wise (pytorch-grad-cam 1.5.7's ``GradCAMElementWise``): Σ_k ReLU(∂y_c/∂A_k ⊙ A_k), then ReLU."""

import numpy as np

from onnxfix.methods.base import register_method
from onnxfix.methods.eigencam import SmoothableCAM


@register_method
class GradCAMElementWise(SmoothableCAM):
    name = "gradcam-elementwise"
    summary = "Grad-CAM element-wise: positive parts of gradient x activation summed over channels"

    def weighted(self, grads, acts):
        return np.maximum(grads * acts, 0.0)
