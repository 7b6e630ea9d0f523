"""The autodiff engine: VJP rules per op type and a builder that emits the backward pass as ONNX (DESIGN §1).

>>> prog = GradientProgram.get(graph, of="logits", wrt=["input"], mode="gradient")
>>> out = prog.run({"input": x}, seed)          # {"grad:input": …, "logits": …}
"""

from onnxfix.autodiff import rules as _rules  # noqa: F401 - fills VJP_RULES
from onnxfix.autodiff.builder import MODES, Builder, build_backward, missing_vjp_rules
from onnxfix.autodiff.program import GradientProgram
from onnxfix.autodiff.registry import VJP_RULES, vjp

__all__ = ["MODES", "VJP_RULES", "Builder", "GradientProgram", "build_backward", "missing_vjp_rules", "vjp"]
