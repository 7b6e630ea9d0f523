"""RISE (Petsiuk, Das, Saenko, BMVC 2018, §3): ``masks`` random binary grids of ``cell``×``cell`` cells, each cell
kept with probability ``p_keep``, upsampled bilinearly to (cell + 1)·⌈H/cell⌉ pixels and cropped at a random shift
in [0, ⌈H/cell⌉) (§3.2), multiply the input; the map is Σ_i P(c | x ⊙ M_i) M_i / (masks · p_keep) with P the
target's softmax probability (its score for region/box targets). Black box: forward passes only, batched through
ONNX Runtime — the fallback for any model ORT can run. Masks come from ``np.random.default_rng(seed)``
(:func:`rise_masks`), or are given as an (M, H, W) array; the bilinear upsampling uses half-pixel centres with
edge clamping (Petsiuk's code uses scikit-image's ``resize(order=1, mode="reflect")``, equal away from the border).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfix.errors import InputError
from onnxfix.methods.base import Attribution, Method, check_finite, register_method
from onnxfix.methods.sampling import forward_scores
from onnxfix.targets import softmax


def _bilinear_half_pixel(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = a.shape[-2:]

    def axis(n_in: int, n_out: int):
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, pos - i0

    y0, y1, fy = axis(h, hw[0])
    x0, x1, fx = axis(w, hw[1])
    top = a[..., y0, :] * (1 - fy)[:, None] + a[..., y1, :] * fy[:, None]
    return top[..., x0] * (1 - fx) + top[..., x1] * fx


def rise_masks(n: int, hw: tuple[int, int], cell: int = 7, p_keep: float = 0.5, seed: int = 0) -> np.ndarray:
    """(n, H, W) float32 RISE masks in [0, 1] (Petsiuk et al.'s ``generate_masks``)."""
    rng = np.random.default_rng(seed)
    H, W = hw
    ch, cw = -(-H // cell), -(-W // cell)
    grid = (rng.random((n, cell, cell)) < p_keep).astype(np.float64)
    up = _bilinear_half_pixel(grid, ((cell + 1) * ch, (cell + 1) * cw))
    dy = rng.integers(0, ch, n)
    dx = rng.integers(0, cw, n)
    return np.stack([up[i, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(n)]).astype(np.float32)


@register_method
class RISE(Method):
    needs_batch = True  # many rows per image: refused (applies) where no batch-dynamic form exists
    name = "rise"
    summary = "RISE: randomised input sampling, black-box (masks, cell, p_keep, seed; forward passes only)"
    engine = "forward"
    kind = "map"

    @dataclass
    class Options:
        masks: int | np.ndarray = 2000
        cell: int = 7
        p_keep: float = 0.5
        seed: int = 0
        batch: int | None = None

        def check(self):
            if isinstance(self.masks, int) and not 1 <= self.masks <= 100_000:
                raise ValueError(f"masks must be in 1..100000, got {self.masks}")
            if not 1 <= self.cell <= 1024:
                raise ValueError(f"cell must be in 1..1024, got {self.cell}")
            if not 0 < self.p_keep <= 1:
                raise ValueError(f"p_keep must be in (0, 1], got {self.p_keep}")

    def attribute_resolved(self, model, x, values, targets, opts):
        nhwc = model.layout == "nhwc"
        hw = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
        if isinstance(opts.masks, np.ndarray):
            m = np.asarray(opts.masks, np.float32)
            if m.ndim != 3 or m.shape[1:] != hw:
                raise InputError(f"{self.name}: masks must be (M, {hw[0]}, {hw[1]}), got {list(m.shape)}")
        else:
            m = rise_masks(opts.masks, hw, opts.cell, opts.p_keep, opts.seed)
        head = model.head
        cams = []
        for n in range(x.shape[0]):
            rows = (x[n:n + 1] * (m[:, :, :, None] if nhwc else m[:, None])).astype(x.dtype)
            t = targets[n]

            def prob(lg, tt, j):
                if tt.weights is not None:
                    from onnxfix.targets import score_in

                    return score_in(lg, tt, j, head.batch_axis)
                bax = head.batch_axis if head.batch_axis is not None else 0
                row = np.take(lg, [j], axis=bax)
                c = list(tt.coords)
                idx: list = [0] * row.ndim
                for ax in range(row.ndim):
                    if ax not in (head.class_axis, bax):
                        idx[ax] = c[ax]
                idx[head.class_axis] = slice(None)
                return float(softmax(row[tuple(idx)].reshape(-1).astype(np.float64))[tt.index])

            s = forward_scores(model, rows, [t] * len(m), batch=opts.batch, score=prob)
            cams.append(np.tensordot(s, m.astype(np.float64), axes=(0, 0)) / (len(m) * opts.p_keep))
        arr = np.stack(cams).astype(np.float32)
        check_finite(arr, f"{self.name}'s map")
        return Attribution(self.name, "map", arr, list(arr), targets, values[head.logits],
                           [{"masks": len(m)} for _ in targets])
