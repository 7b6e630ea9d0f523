"""Layer-wise discernible neurons: the fixations tracer with the Ω = α_suc·Z_suc·(α_cur·Z_cur + α_pre·Z_pre)
top-``k`` neuron selection in fc and conv layers (:mod:`onnxfix.fixations.discernible`).

Options (keyword arguments of ``Explainer.explain``): ``alpha_cur``, ``alpha_pre``, ``alpha_suc``, ``k``; defaults
in :data:`onnxfix.fixations.discernible.DEFAULTS` (measured, docs/discernible.md). The result has the same form as
fixations: input-plane points, a density heatmap and a box.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxfix.errors import InputError
from onnxfix.fixations import trace
from onnxfix.fixations.discernible import DEFAULTS, DiscerniblePolicy
from onnxfix.methods.base import Result, input_points, register_method
from onnxfix.methods.fixations import Fixations


def make_policy(options: dict[str, Any]) -> DiscerniblePolicy:
    """The policy for ``options`` (missing keys take the defaults); bad values raise :class:`InputError`."""
    vals: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        v = options.get(key, default)
        try:
            if key == "k":
                if isinstance(v, bool) or float(v) != int(float(v)):
                    raise ValueError
                v = int(float(v))
            else:
                v = float(v)
        except (TypeError, ValueError):
            raise InputError(f"discernible: {key} must be a number, got {v!r}") from None
        vals[key] = v
    try:
        return DiscerniblePolicy(**vals)
    except ValueError as e:
        raise InputError(f"discernible: {e}") from None


@register_method
class Discernible(Fixations):
    name = "discernible"
    summary = ("Discernible neurons: fixations with top-k neurons per layer by current, preceding and "
               "succeeding support")
    engine = "fixations"

    def explain_in_one_pass(self, model, x, target, step, **options):
        return None  # the trace needs the forward's activations (never a one-pass shortcut of fixations)

    def explain(self, model, x, values, target, **options):
        policy = make_policy(options)
        vals = dict(values)
        vals[model.input] = x
        t = trace(model.graph, vals, model.input, model.head.logits, np.array([target.coords], np.int64),
                  policy=policy)
        coords = t.at(model.input)
        pts = input_points(model, coords)
        return Result(attribution=pts, points=pts,
                      extras={"trace": t, "input_locations": coords, "policy": policy})
