"""Muting pixels — the survey's occlusion variant without superpixels: the input plane is cut into a regular grid of
non-overlapping cells, each cell in turn is set to a baseline, and the drop of the target logit is that cell's score.

Decisions:

* **Grid.** Default 8×8 cells (cell ≈ input/8); ``grid=g`` or ``(gy, gx)`` sets the count, ``cell=c`` or
  ``(ch, cw)`` the size in input pixels instead (the last row/column of cells is cut at the edge). Cell edges are
  ``round(linspace(0, H, gy + 1))``, so cells differ by at most one pixel and cover the plane exactly once.
* **Baseline.** ``"mean"`` (default): the image's own mean colour, per channel — muting a cell removes its content
  without adding a colour the image does not have, whatever the model's normalisation (for a mean/std-normalised
  model 0 would be the *dataset* mean, a bright patch on a dark digit canvas). ``"zero"`` (0 in the preprocessed
  space, as ``occlusion``) or a number are accepted too.
* **Output.** ``attribution`` is the (gy, gx) grid of logit drops (the method's own resolution, signed);
  the map is the positive part spread over each cell's pixels, exactly (no interpolation).
* The perturbed copies run through ONNX Runtime in batches, with :func:`onnxfix.methods.occlusion.batched_runtime`
  (a fixed-batch export is rewritten batch-dynamic once, validated, and cached on the model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfix.errors import InputError
from onnxfix.methods.base import Method, Result, register_method
from onnxfix.methods.occlusion import batched_runtime
from onnxfix.targets import score_in

DEFAULT_GRID = 8


def _two(v, name: str) -> tuple[int, int]:
    try:
        t = (int(v), int(v)) if np.isscalar(v) else tuple(int(a) for a in v)
    except (TypeError, ValueError):
        raise InputError(f"muting-pixels {name} must be one or two positive integers, got {v!r}") from None
    if len(t) != 2 or min(t) < 1:
        raise InputError(f"muting-pixels {name} must be one or two positive integers, got {v!r}")
    return t  # type: ignore[return-value]


def cell_edges(size: int, count: int | None = None, cell: int | None = None) -> np.ndarray:
    """Edges of the cells along one axis: ``count`` near-equal cells, or cells of ``cell`` pixels (last one cut)."""
    if cell is not None:
        return np.unique(np.r_[np.arange(0, size, cell), size]).astype(np.int64)
    count = min(int(count or DEFAULT_GRID), size)
    return np.unique(np.round(np.linspace(0, size, count + 1))).astype(np.int64)


def baseline_values(x: np.ndarray, baseline, nhwc: bool) -> np.ndarray | float:
    """The value a muted cell takes: per-channel image mean (``"mean"``), 0 (``"zero"``) or a number."""
    if isinstance(baseline, str):
        if baseline == "mean":
            v = x[0].mean(axis=(0, 1)) if nhwc else x[0].mean(axis=(1, 2))
            return v.astype(x.dtype)
        if baseline == "zero":
            return 0.0
        raise InputError(f"muting-pixels baseline must be 'mean', 'zero' or a number, got {baseline!r}")
    try:
        return float(baseline)
    except (TypeError, ValueError):
        raise InputError(f"muting-pixels baseline must be 'mean', 'zero' or a number, got {baseline!r}") from None


@register_method
class MutingPixels(Method):
    name = "muting-pixels"
    summary = "Muting pixels: logit drop when each cell of a regular grid is set to the image's mean colour"

    @dataclass
    class Options:
        grid: int | tuple[int, int] | None = None
        cell: int | tuple[int, int] | None = None
        baseline: float | str = "mean"

        def check(self):
            for name in ("grid", "cell"):
                v = getattr(self, name)
                vs = (v,) if isinstance(v, int) else (v or ())
                if any(a < 1 or a > 65536 for a in vs):
                    raise ValueError(f"{name} must be between 1 and 65536, got {v!r}")

    def explain(self, model, x, values, target, grid=None, cell=None, baseline="mean", **options):
        nhwc = model.layout == "nhwc"
        H, W = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
        if cell is not None:
            c = _two(cell, "cell")
            ye, xe = cell_edges(H, cell=c[0]), cell_edges(W, cell=c[1])
        else:
            gcount = _two(grid if grid is not None else DEFAULT_GRID, "grid")
            ye, xe = cell_edges(H, gcount[0]), cell_edges(W, gcount[1])
        base_val = baseline_values(x, baseline, nhwc)
        fill = base_val if np.isscalar(base_val) else (base_val if nhwc else base_val[:, None, None])
        cells = [(i, j) for i in range(len(ye) - 1) for j in range(len(xe) - 1)]
        logits_name = model.head.logits
        bax = model.head.batch_axis
        base = score_in(values[logits_name], target, 0, bax)
        runtime, batch = batched_runtime(model, x)
        drops = np.zeros((len(ye) - 1, len(xe) - 1), np.float64)
        for start in range(0, len(cells), batch):
            chunk = cells[start:start + batch]
            xb = np.repeat(x, len(chunk), axis=0)
            for k, (i, j) in enumerate(chunk):
                if nhwc:
                    xb[k, ye[i]:ye[i + 1], xe[j]:xe[j + 1], :] = fill
                else:
                    xb[k, :, ye[i]:ye[i + 1], xe[j]:xe[j + 1]] = fill
            out = runtime.run({model.input: xb}, [logits_name])[logits_name]
            for k, (i, j) in enumerate(chunk):
                drops[i, j] = base - score_in(out, target, k, bax)
        if not np.isfinite(drops).all():
            raise InputError("muting-pixels: the model produced NaN or Inf on a muted copy; nothing to render")
        att = drops.astype(np.float32)
        rows = np.repeat(np.arange(len(ye) - 1), np.diff(ye))
        colsi = np.repeat(np.arange(len(xe) - 1), np.diff(xe))
        plane = np.maximum(att, 0)[rows][:, colsi]
        return Result(attribution=att, map=plane, extras={"y_edges": ye.tolist(), "x_edges": xe.tolist(),
                                                          "baseline": np.asarray(base_val).tolist(),
                                                          "cells": len(cells)})
