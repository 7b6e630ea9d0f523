"""CNN Fixations: backtrack rules per op type and the reverse-topological tracer."""

from onnxfix.fixations import rules as _rules  # noqa: F401 - fills the rule table
from onnxfix.fixations.plan import PLANS, PlanCache
from onnxfix.fixations.registry import RULES, Context, Rule, SelectionPolicy, register, rule_for
from onnxfix.fixations.tracer import Trace, missing_rules, needed_tensors, trace

__all__ = ["PLANS", "RULES", "Context", "PlanCache", "Rule", "SelectionPolicy", "Trace", "missing_rules",
           "needed_tensors", "register", "rule_for", "trace"]
