"""Explanation methods, one small file each, filed by name in :data:`METHODS`."""

from onnxfix.methods import (  # noqa: F401 - each module registers its methods
    cam,
    counterfactual,
    discernible,
    fixations,
    gradcam,
    gradcam_pp,
    guided,
    muting,
    occlusion,
    saliency,
)
from onnxfix.methods.base import METHODS, Method, Result, register_method

__all__ = ["METHODS", "Method", "Result", "register_method"]

# issue #15, the peers' methods (Captum, pytorch-grad-cam, Recipro-CAM, RISE), registered after the ones above
for _module in ("input_x_gradient", "integrated_gradients", "noise_tunnel", "gradient_shap", "hirescam",
                "gradcam_elementwise", "xgradcam", "layercam", "eigencam", "eigen_gradcam", "scorecam", "ablation_cam",
                "reciprocam", "rise"):
    __import__(f"onnxfix.methods.{_module}")

# issue #12, transformers: attention rollout and attention-gradient (Chefer)
__import__("onnxfix.methods.attention")

# issue #11, detectors: D-RISE (black-box; works on models with NMS inside)
__import__("onnxfix.methods.drise")

# issue #16, visual explanation by interpretation (Oramas et al.): applies where `onnxfix interpret` left its JSON
__import__("onnxfix.interpret.explanation")

# issue #15 item 2: FullGrad (input-gradient + every bias-gradient map)
__import__("onnxfix.methods.fullgrad")

# issue #15 item 5: LRP with Zennit's composites (a modified backward of the autodiff engine)
__import__("onnxfix.methods.lrp")
