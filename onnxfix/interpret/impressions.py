"""Class impressions: gradient ascent on the input, from small noise, of one class's logit (before softmax), through
onnxfix's own autodiff engine — the survey's "class impression" / Simonyan et al.'s class model visualisation with
the regularisers of Mahendran & Vedaldi and the jitter of DeepDream/Lucid.

The image is optimised in *pixel space*: ``u`` in [0, 1], (H, W, C) in the model's channel order; the model sees
``x = (u·255·scale − mean) / std`` in its layout, so the picture is the de-normalised input by construction and
``u`` is clipped to [0, 1] after every step (a displayable image). One step:

1. a random transform ``T``: rotation by θ ~ U(±rotate°) and scaling by s ~ U(1 ± scale) about the centre
   (bilinear resampling, edge-clamped) followed by a random roll (jitter) of up to ``jitter`` pixels per axis;
2. one forward + backward ONNX Runtime call of the autodiff program gives the target logit of ``T(u)`` and its
   gradient; it is carried back to ``u`` *exactly* through the chain rule: the de-normalisation's per-channel factor
   ``255·scale/std``, the inverse roll, and the adjoint (transpose) of the bilinear resampling (a scatter-add
   with the same weights) — no approximation of "un-rotating the gradient";
3. the ascent direction is ``ĝ − λ_tv·∇TV_β(u) − λ_l2·(u − ½)``, where ``ĝ`` is that gradient scaled to unit RMS
   (so the prior weights mean the same for every model) and ``TV_β(u) = Σ_{i,j,c} (Δ_y² + Δ_x² + ε)^{β/2}`` over
   forward differences (Mahendran & Vedaldi's total variation, β = 2 by default; β = 1 is the classic TV);
4. an Adam step on ``u`` (Lucid's optimiser; lr decays linearly to 10 %), then ``u`` clipped to [0, 1].

``objective="log-softmax"`` ascends log p_c instead of the logit (seed one-hot − softmax of the same transformed
copy, one more forward per step): raising one raw logit can raise another more (measured on resnet_shapes' circle);
the log-probability pushes the other classes down.

Defaults: 200 steps, lr 0.05, jitter = input side / 28 pixels (8 at 224), scale ± 5 %, rotation ± 5°, λ_tv 0.5,
λ_l2 0.01, start ``u = ½ + 0.05·N(0, 1)``, seed 0. Transforms use numpy only (no scipy at run time).

History: the target logit, the best other class's logit and the target's softmax probability measured on the
*un-transformed* image every ``eval_every`` steps (step 0 and the last step included), plus the logit of every
transformed copy (free: it comes with the gradient). The tests and docs call the ascent monotone when the logit on
the un-transformed image at those checkpoints never decreases.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
from PIL import Image

from onnxfix.errors import InputError, UnsupportedModel


# ------------------------------------------------------------------------------------------------ pure numerics
def tv_loss(u: np.ndarray, beta: float = 2.0, eps: float = 1e-8) -> tuple[float, np.ndarray]:
    """Total variation ``Σ (Δ_y² + Δ_x² + eps)^{β/2}`` of an (H, W, C) image and its gradient.

    Forward differences ``Δ_y = u[i+1, j] − u[i, j]``, ``Δ_x = u[i, j+1] − u[i, j]`` over ``i < H−1, j < W−1``,
    summed over channels (Mahendran & Vedaldi 2015, eq. 8 of the survey's description).

    Parameters
    ----------
    u : ndarray (H, W, C)
    beta : float
        The exponent β (2: smooth quadratic prior; 1: classic TV).
    eps : float
        Keeps the gradient finite where both differences vanish (β < 2).

    Returns
    -------
    (value, gradient shaped like u)
    """
    u = np.asarray(u, np.float64)
    dy = u[1:, :-1] - u[:-1, :-1]
    dx = u[:-1, 1:] - u[:-1, :-1]
    a = dy * dy + dx * dx + eps
    value = float(np.sum(a ** (beta / 2)))
    q = beta * a ** (beta / 2 - 1)
    g = np.zeros_like(u)
    g[1:, :-1] += q * dy
    g[:-1, 1:] += q * dx
    g[:-1, :-1] -= q * (dy + dx)
    return value, g


@dataclass(frozen=True)
class Warp:
    """Bilinear resampling ``out[p] = Σ_k w[k, p]·u[idx[k, p]]`` of an (H, W, C) image (edge-clamped)."""

    shape: tuple[int, int]
    idx: np.ndarray  # (4, H*W) flat source indices
    w: np.ndarray  # (4, H*W) weights

    def apply(self, u: np.ndarray) -> np.ndarray:
        """The resampled image, shaped like ``u``."""
        h, w = self.shape
        flat = u.reshape(h * w, -1)
        out = np.einsum("kp,kpc->pc", self.w, flat[self.idx])
        return out.reshape(u.shape)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        """The transpose of :meth:`apply` applied to ``g``: ``<apply(u), g> = <u, adjoint(g)>``."""
        h, w = self.shape
        flat = g.reshape(h * w, -1)
        out = np.empty_like(flat)
        idx = self.idx.reshape(-1)
        for c in range(flat.shape[1]):
            out[:, c] = np.bincount(idx, weights=(self.w * flat[:, c][None, :]).reshape(-1), minlength=h * w)
        return out.reshape(g.shape)


def affine_warp(shape: tuple[int, int], scale: float = 1.0, degrees: float = 0.0) -> Warp:
    """Rotation by ``degrees`` and scaling by ``scale`` about the image centre, as a bilinear :class:`Warp`.

    Output pixel ``p`` samples the source at ``R(−θ)·(p − c)/s + c`` (edge-clamped), so content grows with
    ``scale > 1`` and turns clockwise on screen (rows run down) with ``degrees > 0``.
    """
    h, w = shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    t = math.radians(degrees)
    ct, st = math.cos(t), math.sin(t)
    dy, dx = (yy - cy) / scale, (xx - cx) / scale
    sy = np.clip(cy + ct * dy - st * dx, 0, h - 1).reshape(-1)
    sx = np.clip(cx + st * dy + ct * dx, 0, w - 1).reshape(-1)
    y0 = np.minimum(np.floor(sy), max(h - 2, 0)).astype(np.int64)
    x0 = np.minimum(np.floor(sx), max(w - 2, 0)).astype(np.int64)
    fy, fx = sy - y0, sx - x0
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    idx = np.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1])
    wts = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])
    return Warp((h, w), idx, wts)


# ------------------------------------------------------------------------------------------------ progress bar
class Progress:
    """A minimal progress bar on ``stream`` (stderr): redrawn in place on a terminal, every 10 % otherwise."""

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None, width: int = 30):
        self.total, self.desc, self.width = max(1, total), desc, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._last_decile = -1

    def update(self, n: int, note: str = "") -> None:
        """Show ``n`` of ``total`` done, the rate and ``note``."""
        frac = min(1.0, n / self.total)
        decile = int(frac * 10)
        if not self.tty and decile == self._last_decile and n < self.total:
            return
        self._last_decile = decile
        rate = n / max(time.perf_counter() - self.t0, 1e-9)
        fill = int(round(frac * self.width))
        line = f"{self.desc} [{'#' * fill}{'.' * (self.width - fill)}] {n}/{self.total} {rate:.1f} it/s {note}"
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------------------------------------ the ascent
@dataclass
class ImpressionHistory:
    """What happened during one class impression."""

    target: int
    label: str
    steps: list[int] = field(default_factory=list)  # checkpoints (un-transformed image)
    logit: list[float] = field(default_factory=list)  # target logit at each checkpoint
    best_other: list[float] = field(default_factory=list)  # highest other-class logit at each checkpoint
    probability: list[float] = field(default_factory=list)  # target softmax probability at each checkpoint
    jittered_logit: list[float] = field(default_factory=list)  # target logit of each step's transformed copy
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "label": self.label, "steps": self.steps,
                "logit": [round(v, 5) for v in self.logit], "best_other": [round(v, 5) for v in self.best_other],
                "probability": [round(v, 6) for v in self.probability], "seconds": round(self.seconds, 3)}


class _Pixels:
    """u (H, W, C) in [0, 1] ↔ the model's input tensor, and the chain-rule factor back."""

    def __init__(self, explainer: Any):
        spec = explainer.spec
        self.h, self.w, self.c = spec.height, spec.width, spec.n_channels
        self.nhwc = spec.layout == "nhwc"
        self.mean = np.asarray(spec.mean, np.float64).reshape(-1)
        self.std = np.asarray(spec.std, np.float64).reshape(-1)
        if self.mean.size not in (1, self.c) or self.std.size not in (1, self.c) or np.any(self.std == 0):
            raise InputError(f"preprocessing mean {spec.mean} / std {spec.std} does not fit {self.c} channels")
        self.k = 255.0 * spec.scale / self.std  # dx/du per channel
        self.dtype = np.dtype(spec.dtype)
        self.bgr = spec.channels == "bgr"
        shape = explainer.model.input_shape
        want = (1, self.h, self.w, self.c) if self.nhwc else (1, self.c, self.h, self.w)
        for got, need in zip(shape, want, strict=False):
            if isinstance(got, int) and got > 0 and got != need:
                raise UnsupportedModel(f"the model input has shape {list(shape)}; class impressions need an image "
                                       f"input of shape {list(want)}")

    def to_model(self, u: np.ndarray) -> np.ndarray:
        x = u * self.k - self.mean / self.std
        x = x if self.nhwc else x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None].astype(self.dtype))

    def grad_to_pixels(self, gx: np.ndarray) -> np.ndarray:
        g = np.asarray(gx[0], np.float64)
        g = g if self.nhwc else g.transpose(1, 2, 0)
        return g * self.k

    def to_image(self, u: np.ndarray) -> Image.Image:
        a = (np.clip(u, 0, 1) * 255).round().astype(np.uint8)
        if self.c == 1:
            return Image.fromarray(a[:, :, 0], "L").convert("RGB")
        return Image.fromarray(np.ascontiguousarray(a[:, :, ::-1] if self.bgr else a), "RGB")


def pixel_gradient(prog: Any, input_name: str, px: _Pixels, u: np.ndarray, warp: Warp | None,
                   shift: tuple[int, int], seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits of ``roll(warp(u), shift)`` and ``d(logits · seed)/du`` — the exact chain rule back to ``u``."""
    ut = warp.apply(u) if warp is not None else u
    ut = np.roll(ut, shift, axis=(0, 1))
    res = prog.run({input_name: px.to_model(ut)}, seed)
    gx = res["grad:" + input_name]
    if not np.isfinite(gx).all():
        raise InputError("the input gradient contains NaN or Inf during the class impression")
    g = np.roll(px.grad_to_pixels(gx), (-shift[0], -shift[1]), axis=(0, 1))
    if warp is not None:
        g = warp.adjoint(g)
    return np.asarray(res[prog.of]), g


def class_impression(explainer: Any, target: int | str, steps: int = 200, lr: float = 0.05, seed: int = 0,
                     jitter: int | None = None, scale: float = 0.05, rotate: float = 5.0, tv_weight: float = 0.5,
                     tv_beta: float = 2.0, l2_weight: float = 0.01, init_std: float = 0.05,
                     eval_every: int = 10, step: int | None = None,
                     objective: str = "logit", progress: bool | Callable[[int, float], None] = False,
                     stream: TextIO | None = None) -> tuple[Image.Image, ImpressionHistory]:
    """Gradient ascent on the input of one class's logit (before softmax), from small noise.

    Parameters
    ----------
    explainer : onnxfix.Explainer
    target : int or str
        Class index or label.
    steps : int
        Ascent steps (default 200).
    lr : float
        Adam learning rate in pixel units (u in [0, 1]); decays linearly to 10 %.
    seed : int
        Seeds the starting noise and the random transforms: the same seed gives the same picture.
    jitter : int, optional
        Largest random roll per axis in pixels (default: input side / 28, at least 1; 0 disables).
    scale : float
        Random scaling in [1 − scale, 1 + scale] (0 disables).
    rotate : float
        Random rotation in [−rotate, rotate] degrees (0 disables).
    tv_weight, tv_beta : float
        Weight and exponent β of the total-variation prior.
    l2_weight : float
        Weight of the decay towards mid-grey.
    init_std : float
        Standard deviation of the starting noise around mid-grey (pixel units).
    eval_every : int
        Checkpoint interval: the logit of the un-transformed image is measured then.
    step : int, optional
        Time step, for sequence outputs (default: the most confident one on the starting noise).
    objective : {"logit", "log-softmax"}
        Ascend the target logit before softmax (default, Simonyan et al.), or its log-probability — logit minus
        log-sum-exp over the classes, which also pushes the other classes down (one more forward per step).
    progress : bool or callable
        True draws a progress bar on ``stream`` (stderr); a callable gets ``(step, logit)`` after every step.
    stream : file, optional
        Where the bar goes (default ``sys.stderr``).

    Returns
    -------
    (image, history)
        The impression as an RGB PIL image at the model's input size, and an :class:`ImpressionHistory`.
    """
    from onnxfix.autodiff import GradientProgram
    from onnxfix.methods.gradients import missing_rules_reason, seed_for

    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    if objective not in ("logit", "log-softmax"):
        raise InputError(f"objective must be 'logit' or 'log-softmax', got {objective!r}")
    if eval_every < 1:
        raise InputError(f"eval_every must be at least 1, got {eval_every}")
    if not (0 <= scale < 1) or rotate < 0 or lr <= 0 or tv_weight < 0 or l2_weight < 0 or tv_beta <= 0:
        raise InputError("class impression: need lr > 0, 0 ≤ scale < 1, rotate ≥ 0, weights ≥ 0 and tv_beta > 0")
    mdl = explainer.model
    why = missing_rules_reason(mdl, mdl.input)
    if why:
        raise UnsupportedModel(f"class impressions need input gradients: {why}")
    px = _Pixels(explainer)
    rng = np.random.default_rng(seed)
    u = np.clip(0.5 + init_std * rng.standard_normal((px.h, px.w, px.c)), 0, 1)
    logits_name = mdl.head.logits

    def forward(img: np.ndarray) -> np.ndarray:
        out = mdl.runtime.run({mdl.input: px.to_model(img)}, [logits_name])[logits_name]
        if not np.isfinite(out).all():
            raise InputError("the model produced NaN or Inf scores during the class impression")
        return out

    logits0 = forward(u)
    tgt = mdl.resolve_target(logits0, target, step)
    seed_arr = seed_for(logits0, tgt)
    prog = GradientProgram(mdl.graph, of=logits_name, wrt=[mdl.input], provider=mdl.provider,
                           threads=mdl.runtime.threads)
    hist = ImpressionHistory(target=tgt.index, label=tgt.label)

    def checkpoint(k: int, out: np.ndarray) -> None:
        scores = mdl.scores_at(out, tgt.step).astype(np.float64)
        others = np.delete(scores, tgt.index)
        p = np.exp(scores - scores.max())
        hist.steps.append(k)
        hist.logit.append(float(scores[tgt.index]))
        hist.best_other.append(float(others.max()) if others.size else float("-inf"))
        hist.probability.append(float(p[tgt.index] / p.sum()))

    checkpoint(0, logits0)
    jit = max(1, round(min(px.h, px.w) / 28)) if jitter is None else int(jitter)
    m = np.zeros_like(u)
    v = np.zeros_like(u)
    b1, b2, eps = 0.9, 0.999, 1e-8
    bar = Progress(steps, f"impression {tgt.label}", stream) if progress is True else None
    t0 = time.perf_counter()
    for k in range(1, steps + 1):
        s = 1.0 + rng.uniform(-scale, scale) if scale > 0 else 1.0
        deg = rng.uniform(-rotate, rotate) if rotate > 0 else 0.0
        dy, dx = (int(a) for a in rng.integers(-jit, jit + 1, size=2)) if jit > 0 else (0, 0)
        warp = affine_warp((px.h, px.w), s, deg) if (s != 1.0 or deg != 0.0) else None
        if objective == "log-softmax":  # d log p_c = d z_c − Σ_j p_j d z_j: seed one-hot − p on this copy
            ut = np.roll(warp.apply(u) if warp is not None else u, (dy, dx), axis=(0, 1))
            z = forward(ut)
            p_all = np.zeros_like(z, dtype=np.float64)
            p_idx = [slice(None) if a == mdl.head.class_axis else c for a, c in enumerate(tgt.coords)]
            zc = np.asarray(z[tuple(p_idx)], np.float64)
            e = np.exp(zc - zc.max())
            p_all[tuple(p_idx)] = e / e.sum()
            seed_arr = (seed_for(logits0, tgt) - p_all).astype(logits0.dtype)
        out_t, g = pixel_gradient(prog, mdl.input, px, u, warp, (dy, dx), seed_arr)
        hist.jittered_logit.append(float(out_t[tgt.coords]))
        g = g / (np.sqrt(np.mean(g * g)) + 1e-12)
        if tv_weight:
            g -= tv_weight * tv_loss(u, tv_beta)[1]
        if l2_weight:
            g -= l2_weight * (u - 0.5)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        rate = lr * (1.0 - 0.9 * (k - 1) / max(steps - 1, 1))
        u = np.clip(u + rate * (m / (1 - b1 ** k)) / (np.sqrt(v / (1 - b2 ** k)) + eps), 0, 1)
        if k % eval_every == 0 or k == steps:
            checkpoint(k, forward(u))
        if bar is not None:
            bar.update(k, f"logit {hist.logit[-1]:.2f}")
        elif callable(progress):
            progress(k, hist.logit[-1])
    if bar is not None:
        bar.close()
    hist.seconds = time.perf_counter() - t0
    return px.to_image(u), hist
