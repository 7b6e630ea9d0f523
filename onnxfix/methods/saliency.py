"""Saliency (Simonyan et al.): the gradient of the target logit with respect to the input pixels."""

from onnxfix.methods.base import register_method
from onnxfix.methods.gradients import InputGradient


@register_method
class Saliency(InputGradient):
    name = "saliency"
    summary = "Saliency: gradient of the class score w.r.t. the input (raw; the picture shows max |·| over channels)"
