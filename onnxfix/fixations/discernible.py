"""Layer-wise discernible neurons: a neuron-selection policy for the fixations tracer.

The ICLR 2020 submission "Layer-wise discernible neurons" (published as Iqbal, Muqeet, Bae, "Visual Interpretation
of CNN Prediction Through Layerwise Sequential Selection of Discernible Neurons", IEEE Access 10, 2022) walks the
network backwards like CNN Fixations, but instead of the single argmax input of every selected neuron it keeps, per
selected neuron, the ``k`` input neurons with the highest score

    Ω = α_suc · Z_suc · (α_cur · Z_cur + α_pre · Z_pre),

and the union over the selected neurons is the layer's selection. The three supports of a candidate neuron ``i``
(in the input of the node being backtracked) for a selected neuron ``j`` (in its output) are, as implemented here:

* **Z_cur(i, j)** — the contribution of ``i`` to the selected neuron ``j``: the positive part of the Hadamard term
  ``a_i · w_ij`` (what CNN Fixations ranks by), divided by the largest such term among ``j``'s candidates.
* **Z_pre(i)** — the support ``i`` receives from the preceding layer: the magnitude of its own activation ``|a_i|``
  (what the layer below delivered to it; after a ReLU this is ``max(a_i, 0)``; on the image or a BatchNorm output
  the sign is only an offset), divided by the largest magnitude in the tensor.
* **Z_suc(i)** — the support ``i`` gives to the succeeding layer: ``Σ_j max(a_i · w_ij, 0)`` over *all* selected
  neurons ``j`` of the node's output, divided by its largest value over the tensor. A neuron that feeds many
  selected neurons is preferred to one that feeds only the neuron at hand.

All three lie in [0, 1]. Decisions where the source is ambiguous (only the abstract and the formula were available;
written down in docs/discernible.md as well):

* **Where it applies.** The policy replaces the neuron choice of the fc rules (Gemm, and MatMul of a 2-D data input
  by a constant matrix) and of the Conv rule (any stride, padding, dilation, group; a "neuron" of a feature map is
  one (channel, y, x) element). Every other op — pooling, Add, Concat, reshapes, activations — keeps its fixation
  rule; a Gemm/MatMul whose weight is itself computed at run time falls back to the fixation rule too.
* **Eligibility.** Only candidates with a positive contribution ``a_i · w_ij > 0`` are ranked; among them the ``k``
  largest Ω win, ties to the first index in row-major order of the candidates (fc: input index; conv: (channel, ky,
  kx)). A selected neuron with no positive contribution keeps its single largest *nonzero* contributor (never a
  padded position; a zero input — the border of an explicit Pad node, a dead ReLU — carries nothing and, after a
  Pad, would end the trace there). When every input in the field is zero (a dead channel), a conv keeps the
  centre tap of the group's first channel (inside the image for a "same" convolution, whose explicit Pad would
  drop a corner tap), an fc its first input; so a trace does not die midway.
* **fc reading a feature map** (VGG's fc6 on pool5): the same top-k rule, no special argmax case.
* **α_suc** multiplies every score of a layer alike, so it cannot change a ranking (only its sign would); it is kept
  for fidelity to the formula and must be > 0. Likewise only the ratio α_pre : α_cur matters.
* **Defaults** (α_cur, α_pre, α_suc, k) = (1, 0.25, 1, 1), from the measurements in docs/discernible.md
  (``tools/tune_discernible.py --grid`` on digits_loc, 300 renders of the held-out digits): the box pointing game
  ties at 1.000 for fixations and every k; the stricter mask pointing game is best at k = 1 (1.000 tune / 0.993
  held-out, fixations 0.953 / 0.940) and falls as k grows; α_pre/α_cur ∈ [0, 1] tie at k = 1 (0.25 keeps all three
  supports). k = 1 is also the only k that stays usable on a deep network: on EfficientNet-Lite0 k ≥ 2 saturates the
  selection (k = 2: ~31k of 50k input pixels, 3 s per image). Its price: one neuron per layer, hence one input point
  on a plain chain (a sharp peak, a degenerate box); k = 5 gives a box IoU of 0.70 (fixations 0.46) at a mask
  pointing of ~0.93.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from onnxfix.fixations.registry import Context, Locations, SelectionPolicy
from onnxfix.fixations.rules import _from_chw, _spatial, _to_chw, _unsupported, _window
from onnxfix.graph import Node

DEFAULTS: dict[str, float] = {"alpha_cur": 1.0, "alpha_pre": 0.25, "alpha_suc": 1.0, "k": 1}

_CHUNK_ELEMS = 1 << 21  # candidates × selected neurons handled at once (bounds memory)


def _max_normalise(v: np.ndarray, axis: int | None = None) -> np.ndarray:
    m = np.max(v, axis=axis, keepdims=axis is not None) if v.size else np.float64(0)
    return np.divide(v, m, out=np.zeros_like(v), where=np.asarray(m) > 0)


def _top_k(omega: np.ndarray, contrib: np.ndarray, valid: np.ndarray, k: int,
           centre: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` eligible columns (``contrib > 0``) with the largest ``omega`` (ties: first column); a row
    without an eligible column keeps its largest nonzero valid contribution; when all are zero, column ``centre``
    if it is valid, else the first valid one. Returns (row index, column index) pairs."""
    eligible = (contrib > 0) & valid
    score = np.where(eligible, omega, -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")[:, :k]
    taken = np.take_along_axis(eligible, order, axis=1)
    rows = np.broadcast_to(np.arange(len(score))[:, None], order.shape)
    r, c = rows[taken], order[taken]
    empty = ~eligible.any(axis=1) & valid.any(axis=1)
    if empty.any():
        v, c0 = valid[empty], contrib[empty]
        nz = v & (c0 != 0)
        use = np.where(nz.any(axis=1, keepdims=True), nz, v)
        fb = np.argmax(np.where(use, c0, -np.inf), axis=1)
        if centre is not None:
            fb = np.where(~nz.any(axis=1) & v[:, centre], centre, fb)
        r = np.concatenate([r, np.nonzero(empty)[0]])
        c = np.concatenate([c, fb])
    return r.astype(np.int64), c.astype(np.int64)


def fc_omega(a: np.ndarray, w: np.ndarray, cols: np.ndarray, alpha_cur: float, alpha_pre: float,
             alpha_suc: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores of an fc layer ``y = a @ w`` (``a`` (K,), ``w`` (K, N)) for the selected outputs ``cols``.

    Returns
    -------
    omega, contrib : (S, K) float64 arrays — Ω of every input for every selected output, and the Hadamard
        contributions ``a[k] · w[k, n]``.
    """
    a64 = np.asarray(a, np.float64)
    contrib = a64[None, :] * np.asarray(w, np.float64)[:, cols].T  # (S, K)
    pos = np.maximum(contrib, 0.0)
    z_cur = _max_normalise(pos, axis=1)
    z_pre = _max_normalise(np.abs(a64))
    z_suc = _max_normalise(pos.sum(axis=0))
    omega = alpha_suc * z_suc[None, :] * (alpha_cur * z_cur + alpha_pre * z_pre[None, :])
    return omega, contrib


def _conv_patches(x3: np.ndarray, w4: np.ndarray, rows: np.ndarray, st, pd, dl, group: int):
    """For selected outputs ``rows`` ((S, 3): co, oy, ox) the candidate inputs and their contributions.

    Returns (ci, iy, ix, contrib, valid), each (S, cin_g·kh·kw) in (channel, ky, kx) row-major order."""
    c_in, h, wd = x3.shape
    c_out, cin_g, kh, kw = w4.shape
    cout_g = c_out // group
    co, oy, ox = rows[:, 0], rows[:, 1], rows[:, 2]
    ky, kx = np.arange(kh), np.arange(kw)
    iy = (oy * st[0] - pd[0])[:, None] + ky[None, :] * dl[0]  # (S, kh)
    ix = (ox * st[1] - pd[1])[:, None] + kx[None, :] * dl[1]  # (S, kw)
    ci = (co // cout_g * cin_g)[:, None] + np.arange(cin_g)[None, :]  # (S, cin_g)
    s = len(rows)
    shape = (s, cin_g, kh, kw)
    iy4 = np.broadcast_to(iy[:, None, :, None], shape)
    ix4 = np.broadcast_to(ix[:, None, None, :], shape)
    ci4 = np.broadcast_to(ci[:, :, None, None], shape)
    valid = (iy4 >= 0) & (iy4 < h) & (ix4 >= 0) & (ix4 < wd)
    xv = x3[ci4, np.clip(iy4, 0, h - 1), np.clip(ix4, 0, wd - 1)].astype(np.float64)
    contrib = np.where(valid, xv * w4[co].astype(np.float64), 0.0)
    flat = (s, cin_g * kh * kw)
    return (ci4.reshape(flat), iy4.reshape(flat), ix4.reshape(flat), contrib.reshape(flat), valid.reshape(flat))


def _chunks(n: int, per_row: int):
    step = max(1, _CHUNK_ELEMS // max(per_row, 1))
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


def conv_omega(x3: np.ndarray, w4: np.ndarray, rows: np.ndarray, st, pd, dl, group: int, alpha_cur: float,
               alpha_pre: float, alpha_suc: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores of a 2-D convolution (input ``x3`` (C, H, W), filter ``w4`` (C_out, C_in/group, kh, kw)) for the
    selected outputs ``rows`` ((S, 3): channel, y, x).

    Returns
    -------
    omega, contrib, valid : (S, C_in/group, kh, kw) arrays — Ω and the Hadamard contribution of every window
        position of every selected output, and whether the position lies inside the input (not padding).
    """
    z_pre, z_suc = _conv_supports(x3, w4, rows, st, pd, dl, group)
    c_out, cin_g, kh, kw = w4.shape
    ci, iy, ix, contrib, valid = _conv_patches(x3, w4, rows, st, pd, dl, group)
    omega = _conv_chunk_omega(ci, iy, ix, contrib, valid, z_pre, z_suc, alpha_cur, alpha_pre, alpha_suc)
    shape = (len(rows), cin_g, kh, kw)
    return omega.reshape(shape), contrib.reshape(shape), valid.reshape(shape)


def _conv_supports(x3, w4, rows, st, pd, dl, group) -> tuple[np.ndarray, np.ndarray]:
    """Z_pre and Z_suc over the whole input tensor (C, H, W)."""
    z_pre = _max_normalise(np.abs(x3.astype(np.float64)))
    suc = np.zeros(x3.size, np.float64)
    per_row = int(np.prod(w4.shape[1:]))
    for sl in _chunks(len(rows), per_row):
        ci, iy, ix, contrib, valid = _conv_patches(x3, w4, rows[sl], st, pd, dl, group)
        keep = valid & (contrib > 0)
        flat = np.ravel_multi_index((ci[keep], iy[keep], ix[keep]), x3.shape)
        suc += np.bincount(flat, weights=contrib[keep], minlength=x3.size)
    return z_pre, _max_normalise(suc).reshape(x3.shape)


def _conv_chunk_omega(ci, iy, ix, contrib, valid, z_pre, z_suc, alpha_cur, alpha_pre, alpha_suc) -> np.ndarray:
    h, wd = z_pre.shape[1:]
    yy, xx = np.clip(iy, 0, h - 1), np.clip(ix, 0, wd - 1)
    z_cur = _max_normalise(np.maximum(contrib, 0.0), axis=1)
    omega = alpha_suc * z_suc[ci, yy, xx] * (alpha_cur * z_cur + alpha_pre * z_pre[ci, yy, xx])
    return np.where(valid, omega, 0.0)


def conv_select(x3: np.ndarray, w4: np.ndarray, rows: np.ndarray, st, pd, dl, group: int, alpha_cur: float,
                alpha_pre: float, alpha_suc: float, k: int) -> np.ndarray:
    """Top-``k`` input neurons by Ω per selected output of a 2-D convolution; rows (channel, y, x) of the input,
    possibly repeated (the tracer dedupes)."""
    rows = np.ascontiguousarray(rows, np.int64).reshape(-1, 3)
    if len(rows) == 0:
        return np.zeros((0, 3), np.int64)
    z_pre, z_suc = _conv_supports(x3, w4, rows, st, pd, dl, group)
    picked = []
    for sl in _chunks(len(rows), int(np.prod(w4.shape[1:]))):
        ci, iy, ix, contrib, valid = _conv_patches(x3, w4, rows[sl], st, pd, dl, group)
        omega = _conv_chunk_omega(ci, iy, ix, contrib, valid, z_pre, z_suc, alpha_cur, alpha_pre, alpha_suc)
        r, c = _top_k(omega, contrib, valid, k, centre=(w4.shape[2] // 2) * w4.shape[3] + w4.shape[3] // 2)
        picked.append(np.stack([ci[r, c], iy[r, c], ix[r, c]], axis=1))
    return np.concatenate(picked).astype(np.int64)


def fc_select(a2: np.ndarray, w2: np.ndarray, locs: np.ndarray, alpha_cur: float, alpha_pre: float,
              alpha_suc: float, k: int) -> np.ndarray:
    """``y = a2 @ w2`` ((M, K) @ (K, N)): top-``k`` inputs (m, k) by Ω per selected output (m, n)."""
    locs = np.asarray(locs, np.int64).reshape(-1, 2)
    out = []
    for m in np.unique(locs[:, 0]):
        cols = locs[locs[:, 0] == m, 1]
        omega, contrib = fc_omega(a2[m], w2, cols, alpha_cur, alpha_pre, alpha_suc)
        _, c = _top_k(omega, contrib, np.ones_like(contrib, bool), k)
        out.append(np.stack([np.full(len(c), m, np.int64), c], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


@dataclass(frozen=True)
class DiscerniblePolicy(SelectionPolicy):
    """Top-``k`` input neurons by Ω per selected neuron in fc and conv layers (see the module docstring)."""

    alpha_cur: float = DEFAULTS["alpha_cur"]
    alpha_pre: float = DEFAULTS["alpha_pre"]
    alpha_suc: float = DEFAULTS["alpha_suc"]
    k: int = int(DEFAULTS["k"])

    name: ClassVar[str] = "discernible"

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int | np.integer) and self.k >= 1):
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        for key in ("alpha_cur", "alpha_pre", "alpha_suc"):
            v = getattr(self, key)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{key} must be a finite number >= 0, got {v!r}")
        if self.alpha_suc <= 0 or self.alpha_cur + self.alpha_pre <= 0:
            raise ValueError("alpha_suc and alpha_cur + alpha_pre must be > 0 (else every score is 0)")

    @property
    def alphas(self) -> tuple[float, float, float]:
        return float(self.alpha_cur), float(self.alpha_pre), float(self.alpha_suc)

    def backtrack(self, node: Node, ctx: Context, out: dict[str, Locations]) -> dict[str, Locations] | None:
        if node.op_type == "Conv":
            return self._conv(node, ctx, out)
        if node.op_type in ("Gemm", "MatMul"):
            return self._fc(node, ctx, out)
        return None

    def _conv(self, node: Node, ctx: Context, out: dict[str, Locations]) -> dict[str, Locations] | None:
        xn, wn = node.inputs[0], node.inputs[1]
        if ctx.is_data(wn) or node.outputs[0] not in out:
            return None
        x = ctx.value(xn)
        if x.shape[0] != 1:
            raise _unsupported(node, "batch > 1")
        x3, nsp = _spatial(node, x)
        w = ctx.value(wn)
        w4 = w if nsp == 2 else w[:, :, None, :]
        _, st, pd, dl = _window(node, x, nsp)
        rows = conv_select(x3, w4, _to_chw(out[node.outputs[0]], nsp), st, pd, dl,
                           int(node.attrs.get("group", 1)), *self.alphas, int(self.k))
        return {xn: _from_chw(rows, nsp)}

    def _fc(self, node: Node, ctx: Context, out: dict[str, Locations]) -> dict[str, Locations] | None:
        an, bn = node.inputs[0], node.inputs[1]
        if not ctx.is_data(an) or ctx.is_data(bn) or node.outputs[0] not in out:
            return None
        a, b = ctx.value(an), ctx.value(bn)
        if node.op_type == "Gemm":
            ta = node.attrs.get("transA", 0)
            if ta:
                return None
            b2 = b.T if node.attrs.get("transB", 0) else b
            if node.attrs.get("alpha", 1.0) < 0:
                b2 = -b2
        else:
            if a.ndim != 2 or b.ndim != 2:
                return None
            b2 = b
        return {an: fc_select(a, b2, out[node.outputs[0]], *self.alphas, int(self.k))}
