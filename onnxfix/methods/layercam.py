"""LayerCAM (Jiang et al., IEEE TIP 2021, §3): Σ_k ReLU(∂y_c/∂A_k) ⊙ A_k, then ReLU — pytorch-grad-cam 1.5.7's
``LayerCAM``; works at shallow layers too (``--layer``)."""

import numpy as np

from onnxfix.methods.base import register_method
from onnxfix.methods.gradients import CAMOptions
from onnxfix.methods.gradients import LayerCAM as GradientCAM


@register_method
class LayerCAM(GradientCAM):
    name = "layercam"
    summary = "LayerCAM: positive gradients times activations, element-wise (good at shallow layers too)"
    Options = CAMOptions

    def weighted(self, grads, acts):
        return np.maximum(grads, 0.0) * acts
