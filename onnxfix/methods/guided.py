"""Guided Backprop (Springenberg et al.), Deconvnet (Zeiler & Fergus) and Guided Grad-CAM (Selvaraju et al.).

The ReLU backward modes live in the autodiff engine; they apply to Relu and to Clip with min 0 (ReLU6) —
EfficientNet's ReLU6 is a ReLU here, unlike Captum's hooks, which skip it. Guided Grad-CAM multiplies guided
backprop by Grad-CAM upsampled to the input with nearest-neighbour interpolation, as Captum's GuidedGradCam does.
"""


from onnxfix.methods.base import METHODS, Result, register_method
from onnxfix.methods.gradients import InputGradient, nearest_upsample, saliency_map


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

    def applies(self, model):
        return super().applies(model) or METHODS["gradcam"].applies(model)

    def explain_in_one_pass(self, model, x, target, step, **options):
        return None  # Grad-CAM's half reads the layer from the first forward

    def explain(self, model, x, values, target, layer=None, **options):
        g = self.input_gradient(model, x, values, target)
        cam = METHODS["gradcam"].explain(model, x, values, target, layer=layer).attribution
        nhwc = model.layout == "nhwc"
        hw = g.shape[1:3] if nhwc else g.shape[2:4]
        up = nearest_upsample(cam, hw).astype(g.dtype)
        att = g * (up[None, :, :, None] if nhwc else up[None, None])
        return Result(attribution=att, map=saliency_map(att, model), extras={"gradcam": cam})
