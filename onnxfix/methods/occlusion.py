"""Occlusion — the survey's "muting pixels" (Zeiler & Fergus): slide a window set to a baseline over the input and
record how much the target logit drops; each pixel gets the mean drop over the windows that cover it (Captum's
``Occlusion`` semantics: windows at 0, s, 2s, …, ceil((dim − window)/s) + 1 of them, the last cut at the edge).

Perturbed copies run through ONNX Runtime in batches. A model exported with a fixed batch of one is rewritten once
into a batch-dynamic copy (symbolic batch axis; Reshapes whose constant shape starts with 1 copy the batch instead)
and that copy is used only if a batch of two reproduces the batch-one output exactly; otherwise one by one.
Defaults: a square window of 1/8 of the longer input side (at least 2 px, at most the shorter side), stride half the
window (coarser until there are at most ``MAX_WINDOWS`` windows), baseline 0 in
the preprocessed space (the dataset mean for mean/std-normalised models).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfix.errors import InputError
from onnxfix.methods.base import Method, Result, register_method
from onnxfix.methods.local_forward import local_plan, run_windows
from onnxfix.runtime import Runtime
from onnxfix.targets import score_in

BATCH = 32
MAX_WINDOWS = 1024  # the default stride grows until the windows are at most this many


def _count(n: int, k: int, s: int) -> int:
    """Windows along one axis: Captum's ceil((n - k) / s) + 1."""
    return -(-(n - k) // s) + 1 if n >= k else 0


def _pair(v, name: str) -> tuple[int, int]:
    t = (int(v), int(v)) if np.isscalar(v) else tuple(int(a) for a in v)
    if len(t) != 2 or min(t) < 1:
        raise InputError(f"occlusion {name} must be one or two positive integers, got {v!r}")
    return t  # type: ignore[return-value]


def batched_runtime(model, x: np.ndarray | None = None) -> tuple[Runtime, int]:
    """(runtime, batch size) for perturbed copies of one image: the model's batch-dynamic form
    (:meth:`~onnxfix.model.Model.batch_model`, validated and cached per model) in batches of ``BATCH``, or the model
    itself one by one when no batch-dynamic form reproduces it."""
    bm = model.batch_model()
    return (bm.runtime, BATCH) if bm is not None else (model.runtime, 1)


@register_method
class Occlusion(Method):
    name = "occlusion"
    summary = "Occlusion: score drop when a sliding window is muted (model-agnostic, forward passes only)"

    @dataclass
    class Options:
        window: int | tuple[int, int] | None = None
        stride: int | tuple[int, int] | None = None
        baseline: float = 0.0
        local: bool = True

        def check(self):
            for name in ("window", "stride"):
                v = getattr(self, name)
                vs = (v,) if isinstance(v, int) else (v or ())
                if any(a < 1 or a > 65536 for a in vs):
                    raise ValueError(f"{name} must be between 1 and 65536 pixels, got {v!r}")

    def explain(self, model, x, values, target, window=None, stride=None, baseline=0.0, local=True, **options):
        nhwc = model.layout == "nhwc"
        H, W = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
        # default: a square window of 1/8 of the long side (at most the short side), stride half of it, then
        # coarser strides until at most MAX_WINDOWS windows (a 48×320 text line: 300 forwards, not 1 590)
        k = _pair(window if window is not None else max(2, min(min(H, W), max(H, W) // 8)), "window")
        if stride is None:
            s = (max(1, k[0] // 2), max(1, k[1] // 2))
            while _count(H, k[0], s[0]) * _count(W, k[1], s[1]) > MAX_WINDOWS:
                s = (s[0] + 1, s[1] + 1)
        s = _pair(stride if stride is not None else s, "stride")
        if k[0] > H or k[1] > W:
            raise InputError(f"occlusion window {k} is larger than the input {H}×{W}")
        # Captum's positions: ceil((dim - window) / stride) + 1 windows per axis, the last one cut at the edge
        ys = [i * s[0] for i in range(-(-(H - k[0]) // s[0]) + 1)]
        xs = [i * s[1] for i in range(-(-(W - k[1]) // s[1]) + 1)]
        boxes = [(y, xx) for y in ys for xx in xs]
        logits_name = model.head.logits
        bax = model.head.batch_axis
        base = score_in(values[logits_name], target, 0, bax)
        runtime, batch = batched_runtime(model, x)

        def full(chunk: list[tuple[int, int]]) -> np.ndarray:
            xb = np.repeat(x, len(chunk), axis=0)
            for j, (iy, ix) in enumerate(chunk):
                y, xx = ys[iy], xs[ix]
                if nhwc:
                    xb[j, y:y + k[0], xx:xx + k[1], :] = baseline
                else:
                    xb[j, :, y:y + k[0], xx:xx + k[1]] = baseline
            return runtime.run({model.input: xb}, [logits_name])[logits_name]

        grid = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
        plan = local_plan(model, x, k, ys, xs, float(baseline), full) if local and batch > 1 else None
        if plan is not None:
            clean = {c: values[c] for c in plan.cuts if c in values}
            if len(clean) < len(plan.cuts):
                clean = model.runtime.run({model.input: x}, plan.cuts)
        drops = np.empty(len(boxes), np.float64)
        for start in range(0, len(boxes), batch):
            chunk = grid[start:start + batch]
            out = full(chunk) if plan is None else run_windows(plan, model, x, clean, chunk, k, ys, xs, float(baseline))
            for j in range(len(chunk)):
                drops[start + j] = base - score_in(out, target, j, bax)
        total = np.zeros((H, W), np.float64)
        count = np.zeros((H, W), np.float64)
        for (y, xx), d in zip(boxes, drops, strict=True):
            total[y:y + k[0], xx:xx + k[1]] += d
            count[y:y + k[0], xx:xx + k[1]] += 1
        att = np.divide(total, count, out=np.zeros_like(total), where=count > 0).astype(np.float32)
        return Result(attribution=att, map=np.maximum(att, 0), extras={"window": k, "stride": s,
                                                                       "windows": len(boxes)})
