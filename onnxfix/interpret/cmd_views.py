"""``onnxfix view`` and ``onnxfix impression``: the survey's views as PNGs (issue #6).

    onnxfix view MODEL IMAGE --activations [--layer NAME] [--max-channels 64] [--order activation|index] [--out F]
    onnxfix view MODEL --first-layer-filters [--out F]
    onnxfix view MODEL IMAGE --filters [--target C] [--layer NAME] [--relevant JSON] [--k N] [--out F]
    onnxfix impression MODEL --target CLASS [--steps 200] [--seed S] [--objective logit|log-softmax] [--out F]
                       [--json] [--quiet] ...

Decisions: ``--out`` is a PNG path, or a folder (existing, or ending in '/') that gets the default name —
``<image-stem>.activations.png``, ``<image-stem>.filters.png``, ``<model-stem>.first-layer-filters.png``,
``<model-stem>.impression-<class>.png`` — written atomically; a path that is one of the inputs is refused. The
impression is saved enlarged (nearest) so that its shorter side is at least 256 px (``--zoom`` overrides, 1 keeps
the model's size); ``--json`` prints the history (logit per checkpoint) as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from onnxfix.errors import InputError


def _common(p: argparse.ArgumentParser) -> None:
    from onnxfix.cli import add_model_options

    p.add_argument("--out", default=None, help="output PNG path, or a folder for the default name")
    add_model_options(p)


def _explainer(a: argparse.Namespace):
    from onnxfix.api import Explainer
    from onnxfix.cli import _overrides

    return Explainer(a.model, provider=a.provider, labels=a.labels, output=a.output, preprocess=_overrides(a))


def _dest(out: str | None, default_name: str) -> Path:
    if out is None:
        return Path(default_name)
    p = Path(out)
    if p.is_dir() or out.endswith(("/", "\\")):
        return p / default_name
    return p


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def cmd_view(argv: list[str]) -> int:
    """``onnxfix view``: an activation grid, the first layer's filters, or the filter view of another module."""
    p = argparse.ArgumentParser(prog="onnxfix view", description="Views of what a model computes: a layer's "
                                "activation maps, the first layer's filters, relevant filters.")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("image", nargs="?", default=None, help="image file (not needed for --first-layer-filters)")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--activations", action="store_true", help="grid of a layer's channels")
    kind.add_argument("--first-layer-filters", action="store_true", help="the first Conv's kernels as tiles")
    kind.add_argument("--filters", action="store_true", help="relevant-filter view (onnxfix.interpret.filters)")
    p.add_argument("--layer", default=None, help="layer (tensor or node name; default: Grad-CAM's auto layer)")
    p.add_argument("--max-channels", type=int, default=64, help="at most this many channels (default 64)")
    p.add_argument("--order", choices=["activation", "index"], default="activation",
                   help="strongest channels by mean activation (default) or the first ones")
    p.add_argument("--target", default=None, help="class index or label (--filters)")
    p.add_argument("--relevant", default=None,
                   help="relevant filters from 'onnxfix interpret' (--filters; default: <model>.interpret.json)")
    p.add_argument("--k", type=int, default=4, help="how many relevant filters to show (--filters, default 4)")
    _common(p)
    a = p.parse_args(argv)
    from onnxfix.render import save_png

    if (a.activations or a.filters) and a.image is None:
        raise InputError("this view needs an IMAGE after the model")
    ex = _explainer(a)
    protect = [a.model] + ([a.image] if a.image else [])
    if a.activations:
        from onnxfix.interpret.views import activation_grid

        im = activation_grid(ex, a.image, layer=a.layer, max_channels=a.max_channels, order=a.order)
        dest = _dest(a.out, f"{Path(a.image).stem or 'image'}.activations.png")
    elif a.first_layer_filters:
        from onnxfix.interpret.views import first_layer_filters

        im = first_layer_filters(ex)
        dest = _dest(a.out, f"{Path(a.model).stem}.first-layer-filters.png")
    else:
        try:
            from onnxfix.interpret.filters import filters_view
        except ImportError:
            raise InputError("--filters needs onnxfix.interpret.filters (filters_view), which this build of "
                             "onnxfix does not have; use --activations or --first-layer-filters") from None
        kw: dict = {}
        if a.target is not None:
            kw["target"] = int(a.target) if a.target.lstrip("-").isdigit() else a.target
        if a.layer is not None:
            kw["layer"] = a.layer
        if a.relevant is not None:
            kw["relevant"] = a.relevant
        if a.k < 1:
            raise InputError("--k must be at least 1")
        im = filters_view(ex, a.image, k=a.k, **kw)
        dest = _dest(a.out, f"{Path(a.image).stem or 'image'}.filters.png")
    save_png(im, dest, protect=protect)
    print(dest)
    return 0


def cmd_impression(argv: list[str]) -> int:
    """``onnxfix impression``: a class impression (gradient ascent on the input from noise) as a PNG."""
    p = argparse.ArgumentParser(prog="onnxfix impression", description="Class impression: gradient ascent on the "
                                "input, from noise, of one class's logit with jitter, scaling, rotation and a "
                                "total-variation prior.")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--target", required=True, help="class index or label")
    p.add_argument("--steps", type=int, default=200, help="ascent steps (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate, pixel units (default 0.05)")
    p.add_argument("--tv", type=float, default=0.5, help="total-variation weight (default 0.5)")
    p.add_argument("--tv-beta", type=float, default=2.0, help="total-variation exponent β (default 2)")
    p.add_argument("--l2", type=float, default=0.01, help="decay towards grey (default 0.01)")
    p.add_argument("--jitter", type=int, default=None, help="largest roll in pixels (default: input side / 28)")
    p.add_argument("--scale-jitter", type=float, default=0.05, help="random scaling ± (default 0.05)")
    p.add_argument("--rotate", type=float, default=5.0, help="random rotation ± degrees (default 5)")
    p.add_argument("--objective", choices=["logit", "log-softmax"], default="logit",
                   help="ascend the logit before softmax (default) or the log-probability")
    p.add_argument("--step", type=int, default=None, help="time step for sequence outputs")
    p.add_argument("--zoom", type=int, default=None, help="enlarge the PNG by this factor (default: to ≥ 256 px)")
    p.add_argument("--json", action="store_true", help="print the history as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(p)
    a = p.parse_args(argv)
    from PIL import Image

    from onnxfix.interpret.impressions import class_impression
    from onnxfix.render import save_png

    if a.zoom is not None and a.zoom < 1:
        raise InputError(f"--zoom must be at least 1, got {a.zoom}")
    ex = _explainer(a)
    target = int(a.target) if a.target.lstrip("-").isdigit() else a.target
    im, hist = class_impression(ex, target, steps=a.steps, lr=a.lr, seed=a.seed, jitter=a.jitter,
                                scale=a.scale_jitter, rotate=a.rotate, tv_weight=a.tv, tv_beta=a.tv_beta,
                                l2_weight=a.l2, step=a.step, objective=a.objective, progress=not a.quiet)
    zoom = a.zoom or max(1, math.ceil(256 / min(im.size)))
    if zoom > 1:
        im = im.resize((im.width * zoom, im.height * zoom), Image.Resampling.NEAREST)
    dest = _dest(a.out, f"{Path(a.model).stem}.impression-{_safe(hist.label)}.png")
    save_png(im, dest, protect=[a.model])
    if a.json:
        print(json.dumps({"model": a.model, "png": str(dest), **hist.to_json()}))
    else:
        print(f"{dest}  (class {hist.target} {hist.label}: logit {hist.logit[0]:.3f} → {hist.logit[-1]:.3f}, "
              f"best other {hist.best_other[-1]:.3f}, p={hist.probability[-1]:.4f}, {hist.seconds:.1f} s)")
    return 0
