"""Grad-CAM++ (Chattopadhay et al.), with the closed-form weights pytorch-grad-cam uses:
a_ij = g² / (2g² + Σ_ab A_ab · g³) where g ≠ 0, w_k = Σ_ij a_ij · ReLU(g_ij)."""

import numpy as np

from onnxfix.methods.base import register_method
from onnxfix.methods.gradients import CAMOptions, LayerCAM


@register_method
class GradCAMPlusPlus(LayerCAM):
    name = "gradcam++"
    summary = "Grad-CAM++: pixel-weighted gradients, better for several instances of a class"
    Options = CAMOptions

    def weights(self, grads, acts):
        g2, g3 = grads**2, grads**3
        sum_a = acts.sum(axis=(1, 2))[:, None, None]
        aij = g2 / (2 * g2 + sum_a * g3 + 1e-6)  # eps as pytorch-grad-cam 1.5.7
        aij = np.where(grads != 0, aij, 0.0)
        return (np.maximum(grads, 0) * aij).sum(axis=(1, 2))
