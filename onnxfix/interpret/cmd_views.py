"""``onnxfix view`` and ``onnxfix impression``: the survey's views as PNGs (issue #6).

    onnxfix view MODEL IMAGE --activations [--layer NAME] [--max-channels 64] [--order activation|index] [--out F]
    onnxfix view MODEL --first-layer-filters [--out F]
    onnxfix view MODEL IMAGE --filters [--target C] [--layer NAME] [--relevant JSON] [--k N] [--out F]
    onnxfix impression MODEL --target CLASS [--steps 200] [--seed S] [--objective logit|log-softmax] [--out F]
                       [--json] [--quiet] ...

Decisions: ``--out`` is a folder (default: the current folder) that gets the derived name —
``<image-stem>.activations.png``, ``<image-stem>.filters.png``, ``<model-stem>.first-layer-filters.png``,
``<model-stem>.impression-<class>.png`` — under the output policy of every subcommand
(:func:`onnxfix.pipeline.out_candidates`): an existing file is never replaced (the next free name,
``<stem>-2…``, is claimed atomically) unless ``--overwrite``, an input never; kept for scripts, ``--out F.png``
names the file. The
impression is saved enlarged (nearest) so that its shorter side is at least 256 px (``--zoom`` overrides, 1 keeps
the model's size); ``--json`` prints the history (logit per checkpoint) as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from onnxfix.errors import InputError, printable


def _common(p: argparse.ArgumentParser) -> None:
    from onnxfix.cli import add_limit_options, add_model_options

    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="folder for the PNG (default: the current folder; F.png names the file)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing file of the same name (default: the next free name; never an input)")
    add_model_options(p)
    add_limit_options(p)


def _explainer(a: argparse.Namespace):
    from onnxfix.api import Explainer
    from onnxfix.cli import _overrides, model_kwargs

    return Explainer(a.model, provider=a.provider, labels=a.labels, output=a.output, preprocess=_overrides(a),
                     max_image_pixels=a.max_image_pixels, max_model_mb=a.max_model_mb,
                     memory_budget_mb=a.memory_budget_mb, **model_kwargs(a))


def _save(im: Any, a: argparse.Namespace, stem: str, tail: str, protect: list[str]) -> Path:
    """Write the PNG under the output policy; return the name it got."""
    from onnxfix.pipeline import out_candidates
    from onnxfix.render import save_png_new

    return save_png_new(im, out_candidates(a.out, stem, tail, protect), protect=protect, overwrite=a.overwrite)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def cmd_view(argv: list[str]) -> int:
    """``onnxfix view``: an activation grid, the first layer's filters, or the filter view of another module."""
    from onnxfix.cli import Parser, int_arg

    p = Parser(prog="onnxfix view", description="Views of what a model computes: a layer's "
                                "activation maps, the first layer's filters, relevant filters.")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("image", nargs="?", default=None, help="image file (not needed for --first-layer-filters)")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--activations", action="store_true", help="grid of a layer's channels")
    kind.add_argument("--first-layer-filters", action="store_true", help="the first Conv's kernels as tiles")
    kind.add_argument("--filters", action="store_true", help="relevant-filter view (onnxfix.interpret.filters)")
    p.add_argument("--layer", default=None, help="layer (tensor or node name; default: Grad-CAM's auto layer)")
    p.add_argument("--max-channels", type=int_arg(1, 4096), default=64,
                   help="at most this many channels (default 64)")
    p.add_argument("--order", choices=["activation", "index"], default="activation",
                   help="strongest channels by mean activation (default) or the first ones")
    p.add_argument("--target", default=None, help="class index or label (--filters)")
    p.add_argument("--relevant", default=None,
                   help="relevant filters from 'onnxfix interpret' (--filters; default: <model>.interpret.json)")
    p.add_argument("--k", type=int_arg(1, 4096), default=4,
                   help="how many relevant filters to show (--filters, default 4)")
    _common(p)
    a = p.parse_args(argv)
    from onnxfix.cli import parse_target_text

    if (a.activations or a.filters) and a.image is None:
        raise InputError("this view needs an IMAGE after the model")
    ex = _explainer(a)
    protect = [a.model] + ([a.image] if a.image else [])
    if a.activations:
        from onnxfix.interpret.views import activation_grid

        im = activation_grid(ex, a.image, layer=a.layer, max_channels=a.max_channels, order=a.order)
        stem, tail = Path(a.image).stem or "image", ".activations.png"
    elif a.first_layer_filters:
        from onnxfix.interpret.views import first_layer_filters

        im = first_layer_filters(ex)
        stem, tail = Path(a.model).stem or "model", ".first-layer-filters.png"
    else:
        try:
            from onnxfix.interpret.filters import filters_view
        except ImportError:
            raise InputError("--filters needs onnxfix.interpret.filters (filters_view), which this build of "
                             "onnxfix does not have; use --activations or --first-layer-filters") from None
        kw: dict = {}
        if a.target is not None:
            kw["target"] = parse_target_text(a.target)
        if a.layer is not None:
            kw["layer"] = a.layer
        if a.relevant is not None:
            kw["relevant"] = a.relevant
        im = filters_view(ex, a.image, k=a.k, **kw)
        stem, tail = Path(a.image).stem or "image", ".filters.png"
    dest = _save(im, a, stem, tail, protect)
    print(printable(dest), flush=True)
    return 0


def cmd_impression(argv: list[str]) -> int:
    """``onnxfix impression``: a class impression (gradient ascent on the input from noise) as a PNG."""
    from onnxfix.cli import Parser, float_arg, int_arg, parse_target_text

    p = Parser(prog="onnxfix impression", description="Class impression: gradient ascent on the "
                                "input, from noise, of one class's logit with jitter, scaling, rotation and a "
                                "total-variation prior.")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--target", required=True, help="class index or label")
    p.add_argument("--steps", type=int_arg(1, 100000), default=200, help="ascent steps (default 200)")
    p.add_argument("--seed", type=int_arg(0, 2**32 - 1), default=0, help="random seed (default 0)")
    p.add_argument("--lr", type=float_arg(0, lo_open=True), default=0.05,
                   help="Adam learning rate, pixel units (default 0.05)")
    p.add_argument("--tv", type=float_arg(0), default=0.5, help="total-variation weight (default 0.5)")
    p.add_argument("--tv-beta", type=float_arg(0, lo_open=True), default=2.0,
                   help="total-variation exponent β (default 2)")
    p.add_argument("--l2", type=float_arg(0), default=0.01, help="decay towards grey (default 0.01)")
    p.add_argument("--jitter", type=int_arg(0, 16384), default=None,
                   help="largest roll in pixels (default: input side / 28)")
    p.add_argument("--scale-jitter", type=float_arg(0, 1, hi_open=True), default=0.05,
                   help="random scaling ± (default 0.05)")
    p.add_argument("--rotate", type=float_arg(0, 180), default=5.0, help="random rotation ± degrees (default 5)")
    p.add_argument("--objective", choices=["logit", "log-softmax"], default="logit",
                   help="ascend the logit before softmax (default) or the log-probability")
    p.add_argument("--step", type=int_arg(0), default=None, help="time step for sequence outputs")
    p.add_argument("--zoom", type=int_arg(1, 64), default=None,
                   help="enlarge the PNG by this factor (default: to ≥ 256 px)")
    p.add_argument("--json", action="store_true", help="print the history as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(p)
    a = p.parse_args(argv)
    from PIL import Image

    from onnxfix.interpret.impressions import class_impression

    target = parse_target_text(a.target)
    if a.out is not None:  # the policy's refusals (an input, a file in the way) before the long ascent
        next(iter(_out_check(a)))
    ex = _explainer(a)
    im, hist = class_impression(ex, target, steps=a.steps, lr=a.lr, seed=a.seed, jitter=a.jitter,
                                scale=a.scale_jitter, rotate=a.rotate, tv_weight=a.tv, tv_beta=a.tv_beta,
                                l2_weight=a.l2, step=a.step, objective=a.objective, progress=not a.quiet)
    zoom = a.zoom or max(1, math.ceil(256 / min(im.size)))
    if zoom > 1:
        im = im.resize((im.width * zoom, im.height * zoom), Image.Resampling.NEAREST)
    dest = _save(im, a, f"{Path(a.model).stem or 'model'}", f".impression-{_safe(hist.label)}.png", [a.model])
    if a.json:
        print(json.dumps({"model": a.model, "png": str(dest), **hist.to_json()}), flush=True)
    else:
        print(f"{printable(dest)}  (class {hist.target} {printable(hist.label)}: logit {hist.logit[0]:.3f} → "
              f"{hist.logit[-1]:.3f}, "
              f"best other {hist.best_other[-1]:.3f}, p={hist.probability[-1]:.4f}, {hist.seconds:.1f} s)")
    return 0


def _out_check(a: argparse.Namespace) -> Any:
    from onnxfix.pipeline import out_candidates

    return out_candidates(a.out, "x", ".png", [a.model])
