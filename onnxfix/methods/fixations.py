"""CNN Fixations (Mopuri, Garg, Babu): backtrack the explained score to input pixels, no gradients.

A batch is traced in one walk: each image's target locations (:func:`onnxfix.targets.locations` — one logit for a
class, every element of a region) carry their own batch index, so the points of image ``n`` are the input-plane
locations whose batch index is ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from onnxfix.errors import UnsupportedOp
from onnxfix.fixations import missing_rules, needed_tensors, trace
from onnxfix.fixations.rules_attention import AttentionPolicy, has_attention
from onnxfix.methods.base import Attribution, Method, NoOptions, Result, check_finite, input_points, register_method
from onnxfix.targets import locations


@register_method
class Fixations(Method):
    name = "fixations"
    summary = "CNN Fixations: backtrack the predicted label through the graph to the pixels (points + density)"
    engine = "fixations"
    kind = "points"

    @dataclass
    class Options:
        attention: Literal["positive", "argmax", "topk"] = "argmax"
        attention_k: int = 3

        def check(self) -> None:
            if self.attention_k < 1:
                raise ValueError(f"attention_k={self.attention_k} must be ≥ 1")

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.free_options and "Options" not in cls.__dict__:
            cls.Options = NoOptions  # a free-option subclass (discernible) validates its own options

    def applies(self, model):
        miss = missing_rules(model.graph, model.input, model.head.logits)
        if miss:
            kinds = sorted({n.op_type for n in miss})
            return f"no fixation rule for {', '.join(kinds)} (node {miss[0].name})"
        return None

    def forward_tensors(self, model, **options):
        return needed_tensors(model.graph, model.input, model.head.logits)

    def native_tensors(self, model, **options):
        """Every exposed tensor when the compiled pass will trace (it reads ONNX Runtime's blocked layout in place:
        no copy back to NCHW per tensor); none when a policy sends the walk through the per-op rules."""
        if self.policy(model, **options) is not None:
            return []
        return self.forward_tensors(model, **options)

    def start(self, model, targets) -> np.ndarray:
        """Start rows into the logits tensor for every image's target."""
        return np.concatenate([locations(t, model.head.batch_axis) for t in targets]).astype(np.int64)

    def trace_batch(self, model, x, values, targets, **kw):
        vals = dict(values)
        vals[model.input] = x
        return trace(model.graph, vals, model.input, model.head.logits, self.start(model, targets), **kw)

    @staticmethod
    def policy(model, attention: str = "positive", attention_k: int = 3) -> AttentionPolicy | None:
        """The tracer policy for the ``attention`` option (``None``: every rule as registered, the compiled plan)."""
        if attention == "positive" or not has_attention(model.graph):
            return None
        return AttentionPolicy(attention, attention_k)

    def attribute_resolved(self, model, x, values, targets, opts):
        policy = self.policy(model, opts.attention, opts.attention_k)
        if x.shape[0] > 1:
            try:
                return self._batch(model, x, values, targets, policy)
            except UnsupportedOp as exc:
                if "batch" not in str(exc):
                    raise
            return Method.attribute_resolved(self, model, x, values, targets, opts)  # image by image
        return self._batch(model, x, values, targets, policy)

    def explain(self, model, x, values, target, **options):
        return self._batch(model, x, values, [target], self.policy(model, **options)).item(0)

    def _batch(self, model, x, values, targets, policy=None):
        t = self.trace_batch(model, x, values, targets, policy=policy)
        coords = t.at(model.input)
        results = []
        for n in range(x.shape[0]):
            mine = coords[coords[:, 0] == n] if coords.size else coords
            pts = input_points(model, mine)
            results.append(Result(attribution=pts, points=pts, extras={"trace": t, "input_locations": mine}))
        return self.collect(model, values[model.head.logits], targets, results)

    def collect(self, model, logits, targets, results) -> Attribution:
        for r in results:
            check_finite(r.attribution, f"{self.name}'s points")
        return Attribution(self.name, "points", [r.attribution for r in results], [None] * len(results),
                           list(targets), logits, [r.extras for r in results], [r.points for r in results])
