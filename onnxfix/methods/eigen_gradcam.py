"""Eigen-Grad-CAM (pytorch-grad-cam 1.5.7's ``EigenGradCAM``): the first-principal-component projection of
gradient ⊙ activation at a layer (Eigen-CAM §3 applied to the class-specific product), then ReLU."""

from onnxfix.methods.base import register_method
from onnxfix.methods.eigencam import SmoothableCAM, projection_2d


@register_method
class EigenGradCAM(SmoothableCAM):
    name = "eigen-gradcam"
    summary = "Eigen-Grad-CAM: first principal component of gradient x activation at a layer"

    def cam(self, grads, acts, eigen_smooth=False):
        import numpy as np

        return np.maximum(projection_2d(grads * acts), 0.0), {}
