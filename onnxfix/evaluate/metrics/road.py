"""ROAD — RemOve And Debias (Rong, Leemann et al., ICML 2022, §4): remove pixels in the order of the map, fill them
by *noisy linear imputation* (each removed pixel is the weighted mean of its 8 neighbours, solved as one sparse
linear system, plus Gaussian noise) so that the removal shape leaks no class information, and follow the score.

Implemented as pytorch-grad-cam 1.5.7's ``pytorch_grad_cam.metrics.road`` (which vendors the paper's
``imputations.py``), on the same numbers:

* **MoRF at percentile p** (``ROADMostRelevantFirst``): keep the pixels with ``map < percentile(map, p)``, impute
  the rest; **LeRF** (``ROADLeastRelevantFirst``) does the same on ``1 − map`` (so it removes the least relevant
  ``100 − p`` %). Thresholds in float32 as pytorch-grad-cam takes them (``np.percentile`` of the float32 map).
* **Imputation**: neighbour weights 1/6 (edge) and 1/12 (corner); a removed pixel's equation is
  ``Σ_valid w_j (v_j − v_i) = 0`` over its in-image neighbours, the known ones moving to the right-hand side. We
  solve the (symmetric positive definite) system by conjugate gradients in a numba kernel to a relative residual of
  1e-10 instead of scipy's ``spsolve`` (scipy is no run-time dependency; the two agree to ~1e-8). A group of
  removed pixels with no kept neighbour (only when the whole image is removed) gets 0 where ``spsolve`` fails.
  Noise: ``noise · N(0, 1)`` per removed pixel and channel (0.01 as pytorch-grad-cam), drawn from a numpy
  ``Generator`` (or any ``noise_fn(shape)``, which is how the parity test feeds both sides the same draws).
* **Score**: ``score(imputed) − score(original)`` per percentile (``return_diff=True``); the averages over
  percentiles 10, 20, …, 90 are ``road_morf`` (lower is better) and ``road_lerf`` (higher is better);
  ``road_combined`` = (LeRF − MoRF) / 2 (``ROADCombined``; higher is better). LeRF runs before MoRF, as
  ``ROADCombined`` does, so a shared noise stream lines up.

The map is taken at the model input's resolution (H, W); the input ``x`` is a batch of one, NCHW or NHWC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numba
import numpy as np

ScoreFn = Callable[[np.ndarray], np.ndarray]
NoiseFn = Callable[[tuple[int, ...]], np.ndarray]

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
NOISE = 0.01
# (dy, dx, weight): pytorch-grad-cam's ``neighbors_weights`` ((row offset, column offset), weight)
NEIGHBOURS = np.array([(1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12), (0, -1, 1 / 6),
                       (-1, -1, 1 / 12), (1, 0, 1 / 6), (-1, 0, 1 / 6)], np.float64)
TOL = 1e-10
MAX_ITER = 100_000  # CG needs ~ a few × the hole's diameter; far fewer than this


def keep_mask(cam: np.ndarray, percentile: float, order: str) -> np.ndarray:
    """Bool (H, W): the pixels ROAD keeps at ``percentile`` for ``order`` "morf" or "lerf" (pytorch-grad-cam's
    ``RemoveMostRelevantFirst`` / ``RemoveLeastRelevantFirst``: ``m < np.percentile(m, p)`` with ``m`` the float32
    map, or ``1 − map`` for LeRF)."""
    m = np.asarray(cam, np.float32)
    if order == "lerf":
        m = np.float32(1.0) - m
    elif order != "morf":
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    return m < np.percentile(m, percentile)


@numba.njit(cache=True)
def _system(known: np.ndarray, nb: np.ndarray):  # pragma: no cover - compiled
    """CSR-like neighbour lists of the removed pixels: (ys, xs, diag, col (n, 8), w (n, 8), kcol (n, 8))."""
    h, w = known.shape
    n = 0
    vid = np.full((h, w), -1, np.int64)
    for y in range(h):
        for x in range(w):
            if not known[y, x]:
                vid[y, x] = n
                n += 1
    ys = np.empty(n, np.int64)
    xs = np.empty(n, np.int64)
    diag = np.empty(n, np.float64)
    col = np.full((n, 8), -1, np.int64)  # neighbour that is removed: its variable index
    kpos = np.full((n, 8), -1, np.int64)  # neighbour that is kept: its flat pixel index
    wts = np.zeros((n, 8), np.float64)
    for y in range(h):
        for x in range(w):
            i = vid[y, x]
            if i < 0:
                continue
            ys[i] = y
            xs[i] = x
            s = 1.0
            for k in range(8):
                yy = y + int(nb[k, 0])
                xx = x + int(nb[k, 1])
                wk = nb[k, 2]
                if yy < 0 or xx < 0 or yy >= h or xx >= w:
                    s -= wk
                    continue
                wts[i, k] = wk
                if known[yy, xx]:
                    kpos[i, k] = yy * w + xx
                else:
                    col[i, k] = vid[yy, xx]
            diag[i] = s
    return ys, xs, diag, col, kpos, wts


@numba.njit(cache=True)
def _cg(b: np.ndarray, diag: np.ndarray, col: np.ndarray, wts: np.ndarray, tol: float, max_iter: int):
    """Jacobi-preconditioned conjugate gradients for (D − W) x = b, one solve per row of ``b`` (C, n), all rows
    stepped together (one pass over the neighbour lists per iteration). Each row stops at ``‖r‖ ≤ tol·‖b‖``."""
    c, n = b.shape
    x = np.zeros((c, n))
    r = b.copy()
    z = np.empty((c, n))
    p = np.empty((c, n))
    ap = np.empty((c, n))
    bn = np.zeros(c)
    rz = np.zeros(c)
    active = np.zeros(c, np.bool_)
    for ch in range(c):
        bn[ch] = np.sqrt((b[ch] * b[ch]).sum())
        active[ch] = bn[ch] > 0.0
        for i in range(n):
            z[ch, i] = r[ch, i] / diag[i]
            p[ch, i] = z[ch, i]
        rz[ch] = (r[ch] * z[ch]).sum()
    it = 0
    while it < max_iter and active.any():
        for i in range(n):
            for ch in range(c):
                ap[ch, i] = diag[i] * p[ch, i]
            for k in range(8):
                j = col[i, k]
                if j >= 0:
                    wk = wts[i, k]
                    for ch in range(c):
                        ap[ch, i] -= wk * p[ch, j]
        it += 1
        for ch in range(c):
            if not active[ch]:
                continue
            pap = 0.0
            for i in range(n):
                pap += p[ch, i] * ap[ch, i]
            alpha = rz[ch] / pap
            rr = 0.0
            rz_new = 0.0
            for i in range(n):
                x[ch, i] += alpha * p[ch, i]
                r[ch, i] -= alpha * ap[ch, i]
                rr += r[ch, i] * r[ch, i]
                z[ch, i] = r[ch, i] / diag[i]
                rz_new += r[ch, i] * z[ch, i]
            if np.sqrt(rr) <= tol * bn[ch]:
                active[ch] = False
                continue
            beta = rz_new / rz[ch]
            rz[ch] = rz_new
            for i in range(n):
                p[ch, i] = z[ch, i] + beta * p[ch, i]
    return x, it


@numba.njit(cache=True)
def _impute(img: np.ndarray, known: np.ndarray, nb: np.ndarray, tol: float, max_iter: int):
    """(C, n) solution at the removed pixels (row-major order) and the iterations used, for a (C, H, W) image."""
    ys, xs, diag, col, kpos, wts = _system(known, nb)
    c = img.shape[0]
    n = ys.shape[0]
    w = img.shape[2]
    b = np.zeros((c, n))
    for i in range(n):
        for k in range(8):
            q = kpos[i, k]
            if q >= 0:
                for ch in range(c):
                    b[ch, i] += wts[i, k] * img[ch, q // w, q % w]
    return _cg(b, diag, col, wts, tol, max_iter)


def linear_impute_reference(img: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Dense numpy reference of the imputation (small images only): (C, n) values at the removed pixels."""
    img = np.asarray(img, np.float64)
    known = np.asarray(known, bool)
    h, w = known.shape
    idx = -np.ones((h, w), np.int64)
    miss = np.argwhere(~known)
    idx[~known] = np.arange(len(miss))
    a = np.zeros((len(miss), len(miss)))
    b = np.zeros((img.shape[0], len(miss)))
    for i, (y, x) in enumerate(miss):
        s = 1.0
        for dy, dx, wk in NEIGHBOURS:
            yy, xx = y + int(dy), x + int(dx)
            if not (0 <= yy < h and 0 <= xx < w):
                s -= wk
            elif known[yy, xx]:
                b[:, i] += wk * img[:, yy, xx]
            else:
                a[i, idx[yy, xx]] -= wk
        a[i, i] += s
    return np.linalg.solve(a, b.T).T if len(miss) else b


def noisy_linear_impute(img: np.ndarray, known: np.ndarray, noise: float = NOISE,
                        noise_fn: NoiseFn | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """pytorch-grad-cam's ``NoisyLinearImputer`` on a (C, H, W) image: removed pixels (``known`` False) become the
    solution of the neighbour-mean system plus ``noise · N(0, 1)`` (shape (C, n removed), row-major order).

    Parameters
    ----------
    img : (C, H, W) float array
    known : (H, W) bool, the pixels kept
    noise : the noise amplitude (0.01)
    noise_fn : ``noise_fn((C, n)) -> standard normal draws``; default ``rng.standard_normal``
    rng : numpy Generator for the default noise (``np.random.default_rng(0)`` when None)
    """
    img = np.asarray(img)
    known = np.asarray(known, bool)
    c, h, w = img.shape
    if known.shape != (h, w):
        raise ValueError(f"ROAD: mask {known.shape} and image {(h, w)} differ in shape")
    sol, _ = _impute(np.ascontiguousarray(img, np.float64), np.ascontiguousarray(known), NEIGHBOURS, TOL,
                     MAX_ITER)
    sol = sol.astype(np.float32)
    if noise:
        if noise_fn is None:
            rng = rng if rng is not None else np.random.default_rng(0)
            draws = rng.standard_normal(sol.shape).astype(np.float32)
        else:
            draws = np.asarray(noise_fn(sol.shape), np.float32).reshape(sol.shape)
        sol = sol + np.float32(noise) * draws
    out = img.astype(np.float32, copy=True).reshape(c, -1)
    out[:, ~known.reshape(-1)] = sol
    return out.reshape(c, h, w).astype(img.dtype, copy=False)


def _chw(x: np.ndarray, layout: str) -> np.ndarray:
    x0 = np.asarray(x)[0]
    return x0 if layout == "nchw" else np.moveaxis(x0, -1, 0)


def _back(img: np.ndarray, layout: str) -> np.ndarray:
    return (img if layout == "nchw" else np.moveaxis(img, 0, -1))[None]


def road_inputs(x: np.ndarray, cam: np.ndarray, percentiles: Sequence[float], order: str, noise: float = NOISE,
                noise_fn: NoiseFn | None = None, rng: np.random.Generator | None = None,
                layout: str = "nchw") -> np.ndarray:
    """The imputed copies of the batch-of-one ``x`` for each percentile, batched along axis 0."""
    img = _chw(x, layout)
    outs = [_back(noisy_linear_impute(img, keep_mask(cam, p, order), noise, noise_fn, rng), layout)
            for p in percentiles]
    return np.concatenate(outs).astype(x.dtype, copy=False)


def road(x: np.ndarray, cam: np.ndarray, score_fn: ScoreFn, percentiles: Sequence[float] = PERCENTILES,
         noise: float = NOISE, noise_fn: NoiseFn | None = None, seed: int = 0,
         layout: str = "nchw") -> dict[str, float | np.ndarray]:
    """ROAD MoRF, LeRF and combined scores of ``cam`` (H, W) for the batch-of-one input ``x``.

    Returns
    -------
    dict with ``road_morf``, ``road_lerf``, ``road_combined`` (floats) and the per-percentile score differences
    ``morf_curve`` / ``lerf_curve`` (float32, as pytorch-grad-cam returns them).
    """
    rng = np.random.default_rng(seed)
    lerf_in = road_inputs(x, cam, percentiles, "lerf", noise, noise_fn, rng, layout)
    morf_in = road_inputs(x, cam, percentiles, "morf", noise, noise_fn, rng, layout)
    s = np.asarray(score_fn(np.concatenate([x, lerf_in, morf_in])), np.float32).reshape(-1)
    base, k = s[0], len(percentiles)
    lerf = (s[1:1 + k] - base).astype(np.float32)
    morf = (s[1 + k:] - base).astype(np.float32)
    lm, mm = float(np.mean(lerf)), float(np.mean(morf))
    return {"road_morf": mm, "road_lerf": lm, "road_combined": (lm - mm) / 2.0, "morf_curve": morf,
            "lerf_curve": lerf}


def compute(ctx) -> dict[str, float | None]:
    """The ``road`` family for one image (:class:`onnxfix.evaluate.metrics.context.MetricContext`)."""
    r = road(ctx.x, ctx.heatmap, ctx.score_fn, seed=ctx.seed, layout=ctx.layout)
    return {k: float(r[k]) for k in ("road_morf", "road_lerf", "road_combined")}
