"""onnxfix — explain ONNX vision models with CNN Fixations and gradient methods, on ONNX Runtime alone.

>>> import onnxfix
>>> ex = onnxfix.Explainer("model.onnx")
>>> e = ex.explain("cat.jpg", method="fixations")
>>> e.points, e.box, e.heatmap.shape
>>> es = ex.explain(["a.jpg", "b.jpg"], method="gradcam", target=onnxfix.Class("espresso"), batch_size=8)
"""

from onnxfix.api import Explainer, Explanation
from onnxfix.batch.table import read_results  # pyarrow loads only when it is called
from onnxfix.errors import InputError, OnnxfixError, UnsupportedModel, UnsupportedOp
from onnxfix.targets import Box, Class, Output, Region, Step, Target, parse_target

__version__ = "0.2.0"




__all__ = ["Box", "Class", "Explainer", "Explanation", "InputError", "OnnxfixError", "Output", "Region", "Step",
           "Target", "UnsupportedModel", "UnsupportedOp", "parse_target", "read_results"]
