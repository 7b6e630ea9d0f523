"""Layer-wise discernible neurons: the fixations tracer with the paper's neuron selection in fc and conv layers
(:mod:`onnxfix.fixations.discernible`, §3.1 Eq. 1–5 and Alg. 1).

Options (keyword arguments of ``Explainer.explain``; defaults in :data:`onnxfix.fixations.discernible.DEFAULTS`,
measured in docs/paper_fidelity.md):

* ``alpha_cur``, ``alpha_pre``, ``alpha_suc`` — the weights of Eq. 1 for every layer; ``alphas`` — a JSON file
  ``{"layers": {node name: [α_cur, α_pre, α_suc]}}`` of per-layer weights (§3.2; written by
  ``tools/tune_discernible.py``), layers it does not name use the three options;
* ``k`` — neurons kept per selected neuron (Eq. 4); ``top_n`` — the starting set: the explained class and the
  next most probable classes of the softmax, ``top_n`` in all (§3.1, "neurons with top n-probabilities");
* ``location`` — ``argmax`` (a conv neuron sits at its channel's largest contribution in the window, CNN
  Fixations' alternative) or ``centre`` (the paper's "(x, y) unchanged").

The result has the same form as fixations: input-plane points, a density heatmap and a box.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from onnxfix.errors import InputError
from onnxfix.fixations import needed_tensors, trace
from onnxfix.fixations.discernible import DEFAULTS, DiscerniblePolicy
from onnxfix.methods.base import Method, Result, input_points, register_method
from onnxfix.methods.fixations import Fixations

#: options besides the policy's own fields
EXTRA: dict[str, Any] = {"top_n": 1, "alphas": ""}
OPTIONS = list(DEFAULTS) + list(EXTRA)


def _number(key: str, v: Any, integer: bool = False) -> float | int:
    try:
        if isinstance(v, bool):
            raise ValueError
        f = float(v)
        if integer:
            if f != int(f):
                raise ValueError
            return int(f)
        return f
    except (TypeError, ValueError):
        kind = "an integer" if integer else "a number"
        raise InputError(f"discernible: {key} must be {kind}, got {v!r}") from None


def load_layer_alphas(path: str | Path) -> dict[str, tuple[float, float, float]]:
    """Per-layer (α_cur, α_pre, α_suc) from a JSON file ``{"layers": {node: [c, p, s]}}``."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
        layers = raw["layers"] if isinstance(raw, dict) and "layers" in raw else raw
        return {str(n): (float(a[0]), float(a[1]), float(a[2])) for n, a in layers.items()}
    except OSError as e:
        raise InputError(f"discernible: alphas file {str(p)!r} cannot be read ({e.strerror or e}); leave "
                         "alphas out to use alpha_cur/alpha_pre/alpha_suc for every layer") from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise InputError(f"discernible: alphas file {str(p)!r} is not {{\"layers\": {{node: [alpha_cur, "
                         "alpha_pre, alpha_suc]}}}}") from None


def make_policy(options: dict[str, Any]) -> DiscerniblePolicy:
    """The policy for ``options`` (missing keys take the defaults); bad values raise :class:`InputError`."""
    vals: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        v = options.get(key, default)
        if key == "location":
            vals[key] = str(v)
        else:
            vals[key] = _number(key, v, integer=key == "k")
    alphas = options.get("alphas") or ""
    if isinstance(alphas, dict):  # the Python API may pass the mapping itself
        layers = {str(n): tuple(float(v) for v in a) for n, a in (alphas.get("layers", alphas)).items()}
    else:
        layers = load_layer_alphas(alphas) if alphas else {}
    try:
        return DiscerniblePolicy.with_layers(layers, **vals)
    except ValueError as e:
        raise InputError(f"discernible: {e}") from None


def start_set(logits: np.ndarray, coords: tuple[int, ...], top_n: int) -> np.ndarray:
    """The starting neurons: the explained class ``coords`` and the next most probable classes of the same
    logits row, ``top_n`` in all (ties: the lower class index first)."""
    coords = tuple(int(c) for c in coords)
    if top_n <= 1:
        return np.array([coords], np.int64)
    row = np.asarray(logits[coords[:-1]], np.float64)
    order = [int(i) for i in np.argsort(-row, kind="stable") if int(i) != coords[-1]]
    picked = [coords[-1]] + order[: top_n - 1]
    return np.array([coords[:-1] + (c,) for c in picked], np.int64)


@register_method
class Discernible(Fixations):
    name = "discernible"
    summary = ("Discernible neurons (layer-wise): fixations with the top-k neurons per layer by current, "
               "preceding and succeeding support")
    engine = "fixations"
    free_options = True  # validated by make_policy

    def parse_options(self, options):
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise InputError(f"discernible has no option {unknown[0]!r}; its options: {', '.join(OPTIONS)}")
        make_policy(options)
        top_n = _number("top_n", options.get("top_n", 1), integer=True)
        if top_n < 1:
            raise InputError(f"discernible: top_n must be an integer >= 1, got {top_n!r}")
        return dict(options)

    def attribute_resolved(self, model, x, values, targets, opts):
        return Method.attribute_resolved(self, model, x, values, targets, opts)

    def native_tensors(self, model, **options):
        return []  # the policy walk reads NCHW arrays

    def explain_in_one_pass(self, model, x, target, step, **options):
        return None  # the trace needs the forward's activations (never a one-pass shortcut of fixations)

    def explain(self, model, x, values, target, **options):
        policy = make_policy(options)
        top_n = int(_number("top_n", options.get("top_n", 1), integer=True))
        vals = dict(values)
        vals[model.input] = x
        need = needed_tensors(model.graph, model.input, model.head.logits)
        missing = [n for n in need if n not in vals]
        if missing:  # Z_pre reads the inputs of the layer below: every tensor on the path
            vals.update(model.runtime.run({model.input: x}, missing))
        start = start_set(vals[model.head.logits], target.coords, top_n)
        t = trace(model.graph, vals, model.input, model.head.logits, start, policy=policy)
        coords = t.at(model.input)
        pts = input_points(model, coords)
        return Result(attribution=pts, points=pts,
                      extras={"trace": t, "input_locations": coords, "policy": policy, "start": start})
