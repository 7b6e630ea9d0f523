"""The explain-time heatmap of "Visual Explanation by Interpretation" (Oramas, Wang & Tuytelaars, ICLR 2019).

Method ``interpretation``: the heatmap the paper evaluates on an8Flower (§4.3, Table 1, "Ours"):

1. **Relevant filters** of the explained class *j*: the μ-lasso weights ``w_j`` found once per model by
   ``onnxfix interpret`` (§3.1; ``<model stem>.interpret.json`` beside the model, or ``relevant=FILE``).
2. **Response** (§3.2): the image's filter-wise response vector ``x_i`` computed exactly as at training time —
   the L2 norm of every filter's map, L1-normalised within its layer (:func:`relevant.channel_responses`) —
   and ``r_j = w_j ∘ x_i``. The features "with strongest contribution in the prediction" are those with the
   largest ``r_j``: the ``k`` (default 4) largest positive entries.
3. **Visualisation** (§3.2, §3.3): each selected filter q of layer p is pushed back to the pixels with
   Deconvnet + guided backpropagation (Grün et al.: the backward starts from filter q's activations at layer p,
   every other activation of the layer zero), with every strided operation run backward at stride 1 on the
   signal resampled by nearest neighbour to ``A + 2·O − M + 1`` (§3.3 Eq. 3; the autodiff engine's
   ``strided="nearest"``). Its map is Σ_c |g_c|, scaled to a maximum of 1.
4. **One heatmap** per image (Table 1 scores one map per image; the paper shows one per feature): the
   ``r``-weighted mean of the selected filters' maps. This combination is ours — the paper does not state it.

``visual=`` picks the visualisation of step 3, the three "means" of Table 1: ``nearest`` (ours, the default),
``exact`` (Deconv+GB, Springenberg et al.: the true strided backward) and ``activation`` (the filter's activation
map upsampled bilinearly to the input: "Upsamp. Act.").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxfix.errors import InputError
from onnxfix.interpret.relevant import contributions, strongest
from onnxfix.methods.base import Method, Result, register_method
from onnxfix.model import Model

VISUALS = ("nearest", "exact", "activation")


def _relevant_path(model: Model, relevant: str | None) -> Path | None:
    from onnxfix.interpret.relevant import default_json_path

    if relevant:
        return Path(relevant)
    if model.path is None:
        return None
    p = default_json_path(model.path)
    return p if p.is_file() else None


def _load(model: Model, relevant: str | None) -> dict[str, Any]:
    from onnxfix.interpret.relevant import load_relevant

    path = _relevant_path(model, relevant)
    if path is None:
        raise InputError("no interpretation file beside the model: run 'onnxfix interpret MODEL DATASET' first, or "
                         "pass relevant=FILE; the other methods still work")
    return model.cache.get(("interpretation", str(path.resolve())), lambda: load_relevant(path))


def filter_map(model: Model, x: np.ndarray, layer: str, channel: int, act: np.ndarray, visual: str = "nearest",
               seed: str = "map") -> np.ndarray:
    """One filter's map on the input plane (H, W), maximum 1 (zeros stay zeros).

    ``nearest``/``exact``: Σ_c |g_c| of the guided backward from the filter (stride-1 fix or the true strided
    backward); ``activation``: the filter's activation map (ReLU) resized bilinearly to the input.
    """
    from onnxfix import maps
    from onnxfix.autodiff import GradientProgram
    from onnxfix.interpret.filters import filter_seed, magnitude

    if visual == "activation":
        hw = (int(x.shape[1]), int(x.shape[2])) if model.layout == "nhwc" else (int(x.shape[2]), int(x.shape[3]))
        a = np.maximum(np.asarray(act[0, channel], np.float32), 0)
        m = maps.resize_map(a, hw).astype(np.float64)
        m = np.maximum(m, 0)
        top = float(m.max()) if m.size else 0.0
        return m / top if top > 0 else m
    prog = GradientProgram(model.graph, of=layer, wrt=[model.input], mode="guided", provider=model.provider,
                           threads=model.runtime.threads, strided=visual)
    g = prog.run({model.input: x}, filter_seed(act, channel, seed))["grad:" + model.input][0]
    if model.layout == "nhwc":
        g = np.moveaxis(g, -1, 0)
    return magnitude(g)


@register_method
class Interpretation(Method):
    name = "interpretation"
    summary = ("Visual explanation by interpretation (Oramas et al.): the class's strongest relevant filters "
               "(onnxfix interpret), guided backprop with the stride-1 fix")
    engine = "autodiff"
    kind = "map"

    @dataclass
    class Options:
        relevant: str | None = None  # the interpretation JSON (default: <model stem>.interpret.json beside it)
        k: int = 4  # filters with the largest r = w ∘ x
        visual: str = "nearest"  # nearest (ours) | exact (Deconv+GB) | activation (upsampled activation maps)
        seed: str = "map"  # the filter's whole map, or its strongest activation ("max")

        def check(self) -> None:
            if self.k < 1:
                raise ValueError(f"k must be at least 1, got {self.k}")
            if self.visual not in VISUALS:
                raise ValueError(f"visual must be one of {', '.join(VISUALS)}, got {self.visual!r}")
            if self.seed not in ("map", "max"):
                raise ValueError(f"seed must be map or max, got {self.seed!r}")

    def applies(self, model: Model) -> str | None:
        if model.path is None or _relevant_path(model, None) is None:
            return ("needs the relevant filters of 'onnxfix interpret MODEL DATASET' (<model stem>.interpret.json "
                    "beside the model)")
        return None

    def forward_tensors(self, model: Model, relevant: str | None = None, **options: Any) -> list[str]:
        from onnxfix.interpret.filters import _resolve

        data = _load(model, relevant)
        layers = {_resolve(model, e["layer"]) for es in data["classes"].values() for e in es}
        return [model.head.logits, *sorted(layers)]

    def explain(self, model: Model, x: np.ndarray, values: dict[str, np.ndarray], target: Any,
                relevant: str | None = None, k: int = 4, visual: str = "nearest", seed: str = "map",
                **_: Any) -> Result:
        from onnxfix.interpret.filters import _resolve
        from onnxfix.interpret.relevant import relevant_filters

        data = _load(model, relevant)
        entries = [{**e, "layer": _resolve(model, e["layer"])} for e in relevant_filters(data, target.index)]
        hw = (int(x.shape[1]), int(x.shape[2])) if model.layout == "nhwc" else (int(x.shape[2]), int(x.shape[3]))
        for e in entries:
            C = values[e["layer"]].shape[1]
            if not 0 <= int(e["filter"]) < C:
                raise InputError(f"relevant filter {e['filter']} of layer {e['layer']!r} does not exist (it has {C})")
        top = strongest(entries, values, k) if entries else []
        heat = np.zeros(hw, np.float64)
        for e in top:
            heat += e["contribution"] * filter_map(model, x, e["layer"], int(e["filter"]), values[e["layer"]],
                                                   visual, seed)
        total = sum(e["contribution"] for e in top)
        if total > 0:
            heat /= total
        extras = {"filters": [{"layer": e["layer"], "filter": int(e["filter"]), "weight": float(e["weight"]),
                               "contribution": e["contribution"]} for e in top],
                  "visual": visual, "note": None if top else f"class {target.index} has no relevant filter "
                  "responding to this image (the map is empty)"}
        heat = heat.astype(np.float32)
        return Result(attribution=heat, map=heat, extras=extras)


__all__ = ["VISUALS", "Interpretation", "contributions", "filter_map", "strongest"]
