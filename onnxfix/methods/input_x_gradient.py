"""Input × Gradient (Shrikumar et al. 2016; Captum's ``InputXGradient``): x ⊙ ∂y_c/∂x, one backward pass."""

from __future__ import annotations

from onnxfix.methods.base import Attribution, register_method
from onnxfix.methods.gradients import InputGradient, saliency_map


@register_method
class InputXGradient(InputGradient):
    name = "input-x-gradient"
    summary = "Input x Gradient: the input times the gradient of the class score (Captum InputXGradient)"

    def finish(self, model, x, values, targets, g, opts):
        att = (g * x).astype(g.dtype)
        maps = [saliency_map(att[n], model) for n in range(att.shape[0])]
        return Attribution(self.name, "input", att, maps, targets, values[model.head.logits], [{} for _ in targets])
