"""CNN Fixations (Mopuri, Garg, Babu): backtrack the explained score to input pixels, no gradients."""

from __future__ import annotations

import numpy as np

from onnxfix.fixations import missing_rules, needed_tensors, trace
from onnxfix.methods.base import Method, Result, input_points, register_method


@register_method
class Fixations(Method):
    name = "fixations"
    summary = "CNN Fixations: backtrack the predicted label through the graph to the pixels (points + density)"
    engine = "fixations"

    def applies(self, model):
        miss = missing_rules(model.graph, model.input, model.head.logits)
        if miss:
            kinds = sorted({n.op_type for n in miss})
            return f"no fixation rule for {', '.join(kinds)} (node {miss[0].name})"
        return None

    def forward_tensors(self, model, **options):
        return needed_tensors(model.graph, model.input, model.head.logits)

    def explain(self, model, x, values, target, **options):
        vals = dict(values)
        vals[model.input] = x
        t = trace(model.graph, vals, model.input, model.head.logits, np.array([target.coords], np.int64))
        coords = t.at(model.input)
        return Result(attribution=input_points(model, coords), points=input_points(model, coords),
                      extras={"trace": t, "input_locations": coords})
