"""Saliency (Simonyan et al.): the gradient of the target logit with respect to the input pixels."""

from onnxfix.methods.base import Result, register_method
from onnxfix.methods.gradients import InputGradient, saliency_map


@register_method
class Saliency(InputGradient):
    name = "saliency"
    summary = "Saliency: gradient of the class score w.r.t. the input (raw; the picture shows max |·| over channels)"

    def explain(self, model, x, values, target, **options):
        g = self.input_gradient(model, x, values, target)
        return Result(attribution=g, map=saliency_map(g, model))
