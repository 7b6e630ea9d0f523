"""CNN Fixations: backtrack rules per op type and the reverse-topological tracer."""

from onnxfix.fixations import rules as _rules  # noqa: F401 - fills the rule table
from onnxfix.fixations import rules_attention as _rules_attention  # noqa: F401, I001 - transformer rules (#12)
from onnxfix.fixations import rules_more as _rules_more  # noqa: F401 - Resize, ConvTranspose, ... (issue 11)
from onnxfix.fixations.plan import PLANS, PlanCache
from onnxfix.fixations.registry import RULES, Context, Rule, SelectionPolicy, register, rule_for
from onnxfix.fixations.tracer import Trace, missing_rules, needed_tensors, trace

__all__ = ["PLANS", "RULES", "Context", "PlanCache", "Rule", "SelectionPolicy", "Trace", "missing_rules",
           "needed_tensors", "register", "rule_for", "trace"]
