"""onnxfix — explain ONNX vision models with CNN Fixations and gradient methods, on ONNX Runtime alone.

>>> import onnxfix
>>> ex = onnxfix.Explainer("model.onnx")
>>> e = ex.explain("cat.jpg", method="fixations")
>>> e.points, e.box, e.heatmap.shape
"""

from onnxfix.api import Explainer, Explanation
from onnxfix.errors import InputError, OnnxfixError, UnsupportedModel, UnsupportedOp

__version__ = "0.1.0"
__all__ = ["Explainer", "Explanation", "InputError", "OnnxfixError", "UnsupportedModel", "UnsupportedOp"]
