"""Guided Backprop (Springenberg et al.), Deconvnet (Zeiler & Fergus) and Guided Grad-CAM (Selvaraju et al.).

The ReLU backward modes live in the autodiff engine; they apply to Relu and to Clip with min 0 (ReLU6) —
EfficientNet's ReLU6 is a ReLU here, unlike Captum's hooks, which skip it. Guided Grad-CAM multiplies guided
backprop by Grad-CAM upsampled to the input with nearest-neighbour interpolation, as Captum's GuidedGradCam does.
"""

import numpy as np

from onnxfix.methods.base import METHODS, Attribution, register_method
from onnxfix.methods.gradients import InputGradient, LayerOptions, nearest_upsample, saliency_map


@register_method
class GuidedBackprop(InputGradient):
    name = "guided-backprop"
    summary = "Guided Backprop: input gradient passing only positive signals through ReLUs"
    mode = "guided"


@register_method
class Deconvnet(InputGradient):
    name = "deconvnet"
    summary = "Deconvnet: input gradient with ReLUs applied to the backward signal only"
    mode = "deconvnet"


@register_method
class GuidedGradCAM(InputGradient):
    name = "guided-gradcam"
    summary = "Guided Grad-CAM: guided backprop × Grad-CAM upsampled to the input"
    mode = "guided"
    Options = LayerOptions

    def applies(self, model):
        return super().applies(model) or METHODS["gradcam"].applies(model)

    def one_pass(self, model, x, targets, opts):
        return None  # Grad-CAM's half reads the layer from the first forward

    def forward_tensors(self, model, layer=None, **options):
        return METHODS["gradcam"].forward_tensors(model, layer=layer)

    def attribute_resolved(self, model, x, values, targets, opts):
        g = self.input_gradient(model, x, values, targets)
        gc = METHODS["gradcam"]
        cams = gc.attribute_resolved(model, x, values, targets, gc.parse_options({"layer": opts.layer})).values
        nhwc = model.layout == "nhwc"
        hw = g.shape[1:3] if nhwc else g.shape[2:4]
        up = np.stack([nearest_upsample(c, hw) for c in cams]).astype(g.dtype)
        att = g * (up[:, :, :, None] if nhwc else up[:, None])
        maps = [saliency_map(att[n], model) for n in range(att.shape[0])]
        return Attribution(self.name, "input", att, maps, targets, values[model.head.logits],
                           [{"gradcam": cams[n]} for n in range(att.shape[0])])
