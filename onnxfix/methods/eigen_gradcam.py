"""Eigen-Grad-CAM (pytorch-grad-cam 1.5.7's ``EigenGradCAM``): the first-principal-component projection of
gradient ⊙ activation at a layer (Eigen-CAM §3 applied to the class-specific product), then ReLU. On the CAM base
(:class:`~onnxfix.methods.gradients.LayerCAM`), so ``aug_smooth`` and several layers work as for Grad-CAM."""

import numpy as np

from onnxfix.methods.base import register_method
from onnxfix.methods.eigencam import projection_2d
from onnxfix.methods.gradients import CAMOptions, LayerCAM


@register_method
class EigenGradCAM(LayerCAM):
    name = "eigen-gradcam"
    summary = "Eigen-Grad-CAM: first principal component of gradient x activation at a layer"
    Options = CAMOptions

    def cam(self, grads, acts, eigen_smooth=False):
        """The projection whatever ``eigen_smooth`` says (pytorch-grad-cam ignores it for this method)."""
        return np.maximum(projection_2d(grads * acts), 0.0), {}
