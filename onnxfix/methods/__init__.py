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
