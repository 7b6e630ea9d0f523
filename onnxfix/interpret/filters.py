"""Filter visualisation with the stride-1 fix, and the explain-time relevant-filter view (issue #6 item 2b).

Oramas, Wang & Tuytelaars, "Visual Explanation by Interpretation" (ICLR 2019) explain a prediction with the
*relevant filters* of the predicted class (found once per model by ``onnxfix interpret``, μ-lasso): at test time the
relevant filters that respond most to the image are each visualised back to the pixels with a deconvnet-style
backward pass (Deconvnet, Zeiler & Fergus; Guided Backprop, Springenberg et al.). Strided convolutions and pools
leave a grid of the stride's period in those pictures; the paper removes it by running the backward pass of every
strided op with its stride set to 1 on the signal resampled by nearest neighbour. That is the autodiff engine's
``strided="nearest"`` option (``onnxfix/autodiff/rules.py``, :func:`~onnxfix.autodiff.rules.strided_nearest`;
equations in ``docs/views.md``); the default backward (``"exact"``) is the true gradient.

Decisions (the paper and the issue leave them open):

* **Seed.** A filter j of layer L is visualised from its whole activation map on this image: the backward pass
  starts from ``seed = A_Lj`` on channel j and zero elsewhere (Zeiler & Fergus project a feature map with "all
  other activations in the layer set to zero"; the whole map shows everything the filter saw in this image, which
  is what an explanation needs). ``seed="max"`` starts from the single strongest activation instead (a one-hot at
  the argmax of A_Lj, with its value) — Zeiler & Fergus's per-activation view.
* **Top-responding relevant filters** (§3.2). Among the explained class's relevant filters (the
  ``<model stem>.interpret.json`` beside the model, or ``relevant=``: a path or the loaded dict), the ``k`` (default
  4) with the largest ``r_j = w_j ∘ x_i``: the lasso weight times the image's response computed as at training time
  (``‖A_Lj‖₂`` L1-normalised over layer L, :func:`onnxfix.interpret.relevant.contributions`); ties keep the file's
  order (weight, descending). ``layer=`` keeps only that layer's filters. The class is the top class unless
  ``target`` is given. (Before issue 16 the ranking used ``‖A_Lj‖₂`` alone, which ignores the weights.)
* **Without an interpretation file** (or when the class has no relevant filters) the view falls back to the
  channels of ``layer`` (default: Grad-CAM's layer) with the largest ``α_j · ‖A_j‖₂`` — Grad-CAM's weight for the
  class times the response — and says so in its title and in :attr:`FilterViews.source`.
* **Variants.** Each filter is shown four ways: Guided Backprop with the stride-1 fix (the paper's "ours"), plain
  Guided Backprop, Deconvnet with the fix, and plain Deconvnet (the exact strided backward), then the difference
  ``|M(guided, fix) − M(deconvnet, plain)|`` where ``M`` is Σ_c |g_c| scaled to a maximum of 1.
* **Pictures.** A variant is drawn as an RGB image ``0.5 + g / (2·q)``, clipped to [0, 1], with q the 99.5th
  percentile of |g| over the image (channels as a person sees them: BGR inputs are flipped, a grey input is grey);
  the response tile is the image with the filter's activation map overlaid.
* **Grid measure.** :func:`grid_energy`: the share of the spectral energy of ``M − mean(M)`` that falls on the
  frequencies of the stride lattice — (a·H/P, b·W/P), (a, b) ≠ (0, 0) — with P the layer's total stride (input side ÷
  layer side). Tiles are labelled with it; a grid of period P puts its energy there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from onnxfix.errors import InputError

#: (ReLU mode, strided backward) of the four pictures of a filter, in display order.
VARIANTS: tuple[tuple[str, str], ...] = (("guided", "nearest"), ("guided", "exact"), ("deconvnet", "nearest"),
                                         ("deconvnet", "exact"))
#: Tile labels: GB guided backprop, DC deconvnet, +NN with the stride-1 + nearest-neighbour fix.
NAMES = {("guided", "nearest"): "GB+NN", ("guided", "exact"): "GB", ("deconvnet", "nearest"): "DC+NN",
         ("deconvnet", "exact"): "DC"}
LEGEND = ("GB: guided backprop, DC: deconvnet, +NN: with the stride-1 + nearest-neighbour fix (Oramas et al.); "
          "number: grid energy at the layer's stride")
SEEDS = ("map", "max")
K = 4


def key(mode: str, strided: str) -> str:
    return f"{mode}/{strided}"


# ----------------------------------------------------------------------------------------------------------- numbers
def filter_seed(act: np.ndarray, channel: int, how: str = "map") -> np.ndarray:
    """The backward seed that visualises ``channel`` of a layer's activation ``act`` (N, C, h, w).

    Parameters
    ----------
    act : ndarray
        The layer's activation on the image (batch 1).
    channel : int
    how : {"map", "max"}
        The channel's whole map, or a one-hot at its strongest activation (with that value).

    Returns
    -------
    ndarray
        Shaped like ``act``, zero outside ``channel``.
    """
    if how not in SEEDS:
        raise InputError(f"seed must be one of {SEEDS}, got {how!r}")
    act = np.asarray(act)
    seed = np.zeros(act.shape, np.float32)
    m = act[0, channel]
    if how == "map":
        seed[0, channel] = m
    else:
        i = np.unravel_index(int(np.argmax(m)), m.shape)
        seed[(0, channel, *i)] = m[i]
    return seed


def magnitude(g: np.ndarray) -> np.ndarray:
    """Σ_c |g_c| of a (C, H, W) gradient, scaled to a maximum of 1 (zeros stay zeros)."""
    m = np.abs(np.asarray(g, np.float64)).sum(axis=0)
    top = float(m.max()) if m.size else 0.0
    return m / top if top > 0 else m


def grid_energy(m: np.ndarray, period: int) -> float:
    """Share of the spectral energy of ``m − mean(m)`` on the frequencies of a period-``period`` grid.

    Parameters
    ----------
    m : ndarray, shape (H, W)
    period : int
        The grid's period in pixels (≥ 2; 1 returns 0).

    Returns
    -------
    float
        Σ |F(a·H/P, b·W/P)|² over (a, b) ≠ (0, 0), a, b = 0 … P−1, divided by Σ |F|² (0 for a constant map).
    """
    m = np.asarray(m, np.float64)
    p = int(period)
    if p < 2 or m.size == 0:
        return 0.0
    f = np.abs(np.fft.fft2(m - m.mean())) ** 2
    total = float(f.sum())
    if total <= 0:
        return 0.0
    H, W = m.shape
    ky = sorted({int(round(a * H / p)) % H for a in range(p)})
    kx = sorted({int(round(b * W / p)) % W for b in range(p)})
    lattice = float(f[np.ix_(ky, kx)].sum()) - float(f[0, 0])
    return lattice / total


def layer_period(input_hw: tuple[int, int], layer_hw: tuple[int, int]) -> int:
    """The total stride of a layer: input side ÷ layer side (rounded; at least 1)."""
    return max(1, int(round(max(input_hw[0] / max(layer_hw[0], 1), input_hw[1] / max(layer_hw[1], 1)))))


# --------------------------------------------------------------------------------------------------------- results
@dataclass
class FilterView:
    """One filter visualised: its response on the image and one input-shaped picture per variant."""

    layer: str
    filter: int
    weight: float | None
    response: float
    activation: np.ndarray  # (h, w): the filter's map on the image
    grads: dict[str, np.ndarray] = field(default_factory=dict)  # "mode/strided" → (C, H, W), channels as the model
    grid: dict[str, float] = field(default_factory=dict)  # "mode/strided" → grid_energy of its magnitude
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "filter": self.filter, "weight": self.weight, "response": self.response,
                "grid_energy": {k: round(v, 6) for k, v in self.grid.items()}, "seconds": round(self.seconds, 4)}


@dataclass
class FilterViews:
    """The relevant-filter view of one image: the class, where the filters came from, and the filters."""

    target: int
    label: str
    source: str  # the interpretation file, or the fallback's description
    period: dict[str, int]  # layer → total stride
    views: list[FilterView]
    image: Image.Image | None
    input_hw: tuple[int, int]
    channels: str = "rgb"
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "label": self.label, "source": self.source, "period": self.period,
                "filters": [v.to_json() for v in self.views], "seconds": round(self.seconds, 4)}


# ------------------------------------------------------------------------------------------------------- selection
def _resolve(model: Any, layer: str) -> str:
    from onnxfix.methods.layers import resolve_layer

    return resolve_layer(model, layer)


def _load(relevant: str | Path | dict | None, model: Any) -> tuple[dict | None, str]:
    from onnxfix.interpret.relevant import default_json_path, load_relevant

    if isinstance(relevant, dict):
        return relevant, "relevant filters (given)"
    if relevant is not None:
        return load_relevant(relevant), str(relevant)
    if model.path is not None:
        p = default_json_path(model.path)
        if p.is_file():
            return load_relevant(p), str(p)
    return None, ""


def top_responding(candidates: list[dict], acts: dict[str, np.ndarray], k: int = K) -> list[dict]:
    """The ``k`` candidates (``{"layer", "filter", …}``) with the largest ‖A_layer,filter‖₂, largest first; ties
    keep the candidates' order. Each returned dict gains ``response``."""
    scored = []
    for i, c in enumerate(candidates):
        a = acts[c["layer"]]
        scored.append((-float(np.linalg.norm(np.asarray(a[0, c["filter"]], np.float64))), i, c))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [{**c, "response": -s} for s, _, c in scored[: max(0, int(k))]]


# ---------------------------------------------------------------------------------------------------------- engine
def visualise_filter(explainer: Any, x: np.ndarray, layer: str, channel: int, act: np.ndarray,
                     variants: tuple[tuple[str, str], ...] = VARIANTS, seed: str = "map"
                     ) -> dict[str, np.ndarray]:
    """Backward passes from filter ``channel`` of ``layer`` to the input, one per (mode, strided) variant.

    Parameters
    ----------
    explainer : onnxfix.Explainer
    x : ndarray
        The preprocessed input (``explainer.prepare(image)[0]``).
    layer : str
        Tensor name of the layer (N, C, h, w).
    channel : int
    act : ndarray
        The layer's activation for ``x``.
    variants : tuple of (mode, strided)
    seed : {"map", "max"}

    Returns
    -------
    dict
        ``"mode/strided"`` → the input gradient as (C, H, W) (NHWC models transposed), float32.
    """
    from onnxfix.autodiff import GradientProgram

    mdl = explainer.model
    s = filter_seed(act, channel, seed)
    out: dict[str, np.ndarray] = {}
    for mode, strided in variants:
        prog = GradientProgram(mdl.graph, of=layer, wrt=[mdl.input], mode=mode, provider=mdl.provider,
                               threads=mdl.runtime.threads, strided=strided)
        g = prog.run({mdl.input: x}, s)["grad:" + mdl.input][0]
        if mdl.layout == "nhwc":
            g = np.moveaxis(g, -1, 0)
        if not np.isfinite(g).all():
            raise InputError(f"the visualisation of {layer!r} filter {channel} contains NaN or Inf")
        out[key(mode, strided)] = np.asarray(g, np.float32)
    return out


def relevant_filter_views(explainer: Any, image: Any, target: int | str | None = None,
                          relevant: str | Path | dict | None = None, k: int = K, layer: str | None = None,
                          seed: str = "map", variants: tuple[tuple[str, str], ...] = VARIANTS) -> FilterViews:
    """The top-responding relevant filters of the explained class on ``image``, each visualised.

    Parameters
    ----------
    explainer : onnxfix.Explainer
    image : anything ``Explainer.explain`` accepts
    target : int or str, optional
        Class index or label (default: the top class).
    relevant : path or dict, optional
        An ``onnxfix interpret`` result; default ``<model stem>.interpret.json`` beside the model, if present.
    k : int
        How many filters (default 4).
    layer : str, optional
        Only this layer's relevant filters; the fallback's layer (default: Grad-CAM's layer).
    seed : {"map", "max"}
        See the module docstring.
    variants : tuple of (mode, strided)

    Returns
    -------
    FilterViews
    """
    t0 = time.perf_counter()
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if seed not in SEEDS:
        raise InputError(f"seed must be one of {SEEDS}, got {seed!r}")
    mdl = explainer.model
    x, frame, img = explainer.prepare(image)
    data, source = _load(relevant, mdl)
    want = _resolve(mdl, layer) if layer is not None else None
    fallback_layer = want or _resolve(mdl, None)
    first = mdl.runtime.run({mdl.input: x}, [mdl.head.logits, fallback_layer])
    logits = first[mdl.head.logits]
    tgt = mdl.resolve_target(logits, target)
    candidates: list[dict] = []
    if data is not None:
        from onnxfix.interpret.relevant import relevant_filters

        for e in relevant_filters(data, tgt.index):
            name = _resolve(mdl, e["layer"])
            if want is None or name == want:
                candidates.append({"layer": name, "filter": int(e["filter"]), "weight": float(e["weight"])})
        if not candidates:
            where = f" in layer {layer!r}" if want is not None else ""
            source = f"{source} has no relevant filters for class {tgt.index}{where}; fallback: "
    from_file = bool(candidates)
    if not candidates:  # Grad-CAM's α at the layer, from the tail of the model (as the gradcam method does)
        from onnxfix.methods.gradients import run_gradients, tail

        name = fallback_layer
        sub, ins = tail(mdl, name)
        feeds = {**first, **mdl.runtime.run({mdl.input: x}, [i for i in ins if i not in first])}
        g = run_gradients(mdl, x, logits, tgt, [name], graph=sub, feeds={i: feeds[i] for i in ins})[0][name]
        a = first[name]
        alpha = np.asarray(g[0], np.float64).mean(axis=(1, 2))
        score = alpha * np.linalg.norm(np.asarray(a[0], np.float64).reshape(a.shape[1], -1), axis=1)
        order = np.argsort(-score, kind="stable")[:k]
        candidates = [{"layer": name, "filter": int(j), "weight": float(alpha[j])} for j in order]
        source = (source or "no interpretation file: ") + f"channels of {name} by Grad-CAM alpha x response"
    layers = list(dict.fromkeys(c["layer"] for c in candidates))
    missing = [n for n in layers if n not in first]
    acts = {**first, **(mdl.runtime.run({mdl.input: x}, missing) if missing else {})}
    for c in candidates:
        C = acts[c["layer"]].shape[1]
        if not 0 <= c["filter"] < C:
            raise InputError(f"relevant filter {c['filter']} of layer {c['layer']!r} does not exist (it has {C})")
    hw = (int(x.shape[1]), int(x.shape[2])) if mdl.layout == "nhwc" else (int(x.shape[2]), int(x.shape[3]))
    period = {n: layer_period(hw, tuple(acts[n].shape[2:4])) for n in layers}
    views = []
    if from_file:  # §3.2: r = w ∘ x
        from onnxfix.interpret.relevant import contributions

        r = contributions(candidates, acts)
        order = np.argsort(-r, kind="stable")[:k]
        chosen = [{**candidates[i], "contribution": float(r[i]),
                   "response": float(np.linalg.norm(np.asarray(acts[candidates[i]["layer"]][0, candidates[i]["filter"]],
                                                               np.float64)))} for i in order]
    else:
        chosen = top_responding(candidates, acts, k)
    for c in chosen:
        t1 = time.perf_counter()
        grads = visualise_filter(explainer, x, c["layer"], c["filter"], acts[c["layer"]], variants, seed)
        grid = {kk: grid_energy(magnitude(g), period[c["layer"]]) for kk, g in grads.items()}
        views.append(FilterView(layer=c["layer"], filter=c["filter"], weight=c.get("weight"),
                                response=c["response"], activation=np.asarray(acts[c["layer"]][0, c["filter"]]),
                                grads=grads, grid=grid, seconds=time.perf_counter() - t1))
    return FilterViews(target=tgt.index, label=tgt.label, source=source, period=period, views=views,
                       image=img, input_hw=frame.input_hw, channels=explainer.spec.channels,
                       seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------------- picture
TILE_MIN, TILE_MAX = 112, 160
LABEL_H, TITLE_H = 12, 14


def to_rgb(g: np.ndarray, channels: str = "rgb") -> np.ndarray:
    """(C, H, W) gradient → (H, W, 3) uint8: ``0.5 + g / (2·q)`` clipped, q = 99.5th percentile of |g|."""
    g = np.asarray(g, np.float64)
    q = float(np.percentile(np.abs(g), 99.5)) if g.size else 0.0
    v = np.clip(0.5 + g / (2 * q), 0, 1) if q > 0 else np.full(g.shape, 0.5)
    if v.shape[0] == 1:
        v = np.repeat(v, 3, axis=0)
    elif channels == "bgr":
        v = v[::-1]
    return (np.moveaxis(v[:3], 0, -1) * 255).round().astype(np.uint8)


def _tile_size(hw: tuple[int, int]) -> tuple[int, int]:
    side = max(hw)
    f = min(max(TILE_MIN, side), TILE_MAX) / side
    return max(1, round(hw[1] * f)), max(1, round(hw[0] * f))


def _short(name: str, n: int) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def render_views(fv: FilterViews) -> Image.Image:
    """The view as one picture: a row per filter — the image with the filter's response, the four variants,
    and the difference between the paper's picture and plain Deconvnet."""
    from onnxfix import maps
    from onnxfix.render import colorize, overlay

    H, W = fv.input_hw
    tw, th = _tile_size((H, W))
    keys = [key(m, s) for m, s in VARIANTS]
    cols = 2 + len(keys)
    rows = max(1, len(fv.views))
    sheet = Image.new("RGB", (cols * (tw + 2) + 2, 3 * TITLE_H + rows * (LABEL_H + th + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    chars = max(20, sheet.width // 6)
    draw.text((4, 1), f"relevant filters for '{fv.label}' (class {fv.target})"[:chars], fill=(0, 0, 0))
    draw.text((4, TITLE_H + 1), _short(fv.source, chars), fill=(90, 90, 90))
    draw.text((4, 2 * TITLE_H + 1), LEGEND[:chars], fill=(90, 90, 90))
    base = (fv.image or Image.new("RGB", (W, H), (128, 128, 128))).convert("RGB").resize((W, H))
    cw = max(4, tw // 6)
    for r, v in enumerate(fv.views):
        y = 3 * TITLE_H + r * (LABEL_H + th + 2)
        tiles: list[tuple[Image.Image, str]] = []
        am = maps.normalise(maps.resize_map(np.maximum(v.activation, 0).astype(np.float32), (H, W)))
        tiles.append((overlay(base, am, alpha=0.6), f"{_short(v.layer, cw - 6)}:{v.filter}"))
        for kk in keys:
            if kk in v.grads:
                label = NAMES.get(tuple(kk.split("/")), kk)  # type: ignore[arg-type]
                tiles.append((Image.fromarray(to_rgb(v.grads[kk], fv.channels)), f"{label} {v.grid[kk]:.3f}"))
        ours, plain = v.grads.get(key("guided", "nearest")), v.grads.get(key("deconvnet", "exact"))
        if ours is not None and plain is not None:
            diff = np.abs(magnitude(ours) - magnitude(plain))
            tiles.append((Image.fromarray(colorize(maps.normalise(diff))), "|GB+NN - DC|"))
        for c, (im, label) in enumerate(tiles):
            x0 = 2 + c * (tw + 2)
            sheet.paste(im.resize((tw, th), Image.Resampling.BILINEAR if c == 0 else Image.Resampling.NEAREST),
                        (x0, y + LABEL_H))
            draw.text((x0 + 1, y), label[:cw], fill=(0, 0, 0))
    return sheet


def filters_view(explainer: Any, image: Any, target: int | str | None = None, layer: str | None = None,
                 relevant: str | Path | dict | None = None, k: int = K, seed: str = "map") -> Image.Image:
    """The explain-time relevant-filter view of ``image`` as a picture (``onnxfix view MODEL IMAGE --filters``).

    Parameters
    ----------
    explainer : onnxfix.Explainer
    image : anything ``Explainer.explain`` accepts
    target, relevant, k, layer, seed
        As :func:`relevant_filter_views`.

    Returns
    -------
    PIL.Image.Image
        A row per filter: the image with the filter's response, Guided Backprop and Deconvnet each with and without
        the stride-1 fix (labelled with :func:`grid_energy`), and ``|ours − plain deconvnet|``.
    """
    return render_views(relevant_filter_views(explainer, image, target=target, relevant=relevant, k=k,
                                              layer=layer, seed=seed))


__all__ = ["K", "VARIANTS", "FilterView", "FilterViews", "filter_seed", "filters_view", "grid_energy",
           "layer_period", "magnitude", "relevant_filter_views", "render_views", "to_rgb", "top_responding",
           "visualise_filter"]
