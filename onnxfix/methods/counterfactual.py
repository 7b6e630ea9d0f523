"""Counterfactual Grad-CAM (Grad-CAM §5): the negated gradient — regions whose removal would raise the score."""

from onnxfix.methods.base import register_method
from onnxfix.methods.gradients import LayerCAM


@register_method
class CounterfactualCAM(LayerCAM):
    name = "counterfactual"
    summary = "Counterfactual Grad-CAM: Grad-CAM with negated gradients (evidence against the class)"
    sign = -1.0
