"""The autodiff engine: VJP rules per op type and a builder that emits the backward pass as ONNX (DESIGN §1).

>>> prog = GradientProgram.get(graph, of="logits", wrt=["input"], mode="gradient")
>>> out = prog.run({"input": x}, seed)          # {"grad:input": …, "logits": …}

The build is a pipeline of passes — canonizers (canonize.py), the reverse sweep (sweep.py) over the emitter
(emitter.py) — and a mode is an override table layered over the base rules (registry.py, modes.py).
"""

from onnxfix.autodiff import modes as _modes  # noqa: F401 - fills the mode tables
from onnxfix.autodiff import rules as _rules  # noqa: F401 - fills VJP_RULES
from onnxfix.autodiff.builder import MODES, Builder, build_backward, missing_vjp_rules
from onnxfix.autodiff.program import GradientProgram
from onnxfix.autodiff.registry import VJP_RULES, modes, override, register_mode, vjp
from onnxfix.autodiff.seeds import ArgmaxSeed, seed_in_graph

__all__ = ["MODES", "VJP_RULES", "ArgmaxSeed", "Builder", "GradientProgram", "build_backward", "missing_vjp_rules",
           "modes", "override", "register_mode", "seed_in_graph", "vjp"]
