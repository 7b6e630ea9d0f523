"""Layer-wise discernible neurons as written: a neuron-selection policy for the fixations tracer.

Paper: "Interpreting CNN prediction through layer-wise selected discernible neurons" (ICLR 2020 submission;
published as Iqbal, Muqeet, Bae, IEEE Access 10, 2022). It walks the network backwards like CNN Fixations; per
selected neuron θ of the *succeeding* layer it scores every connected neuron Θ of the *current* layer with

    Ω_θ(Θ) = α_suc · Z_suc(Θ) · (α_cur · Z_cur(Θ, θ) + α_pre · Z_pre(Θ))            (§3.1, Eq. 1)

keeps the ``k`` best (Eq. 4, Alg. 1 line 5) and takes the union over θ (Eq. 5, Alg. 1 line 7). The supports, read
literally (no normalisation; the learned α absorb the scales):

* **Z_cur(Θ, θ)** (Eq. 2) — Θ's activation times its weight to θ, ``A_cur · W_cur``. In a conv layer a neuron is
  read per channel (§3.1, last paragraph): the Hadamard product of θ's receptive field and filter, *summed over
  the spatial window* of each input channel, as in CNN Fixations' Algorithm 2.
* **Z_pre(Θ)** (Eq. 3) — the largest ``A_pre · W_pre`` among the preceding-layer neurons connected to Θ, i.e. the
  strongest single contribution Θ receives from the layer below (conv: per preceding channel, summed over Θ's
  receptive field, as for Z_cur). See :func:`z_pre`.
* **Z_suc(Θ)** — a *counter*: for how many selected neurons θ of the succeeding layer Θ has the highest Z_cur;
  1 when it has none (the paper's default).

Decisions where the text leaves a choice (docs/discernible.md lists them with measurements):

* **Which ops.** The rule replaces the neuron choice of fc layers (Gemm with a constant B and no transA; MatMul of
  a 2-D data input by a constant matrix) and of Conv with a constant filter (any stride, padding, dilation, group).
  Pooling keeps CNN Fixations' window argmax, as the paper says (§3.1: "for pooling layers ... the locations having
  the highest activations"); Add, Concat, reshapes and activations keep their fixation rules.
* **Where a conv neuron sits.** The paper traces the (x, y) of θ onto the chosen channels (``location="centre"``:
  the centre tap of θ's window, the input position "unchanged" for a stride-1 'same' convolution; clipped into the
  input). CNN Fixations' alternative, the position of the largest contribution of that channel inside the window
  (``location="argmax"``, what the project's fixations rule does), is the default: with "centre" every trace runs
  straight down its receptive-field centres and the box collapses (IoU > 0.5 on 0–23% of the tuning images
  against 60–100% with "argmax", docs/paper_fidelity.md).
* **The preceding layer** is found by walking from Θ's tensor through elementwise ops (activations,
  normalisations) and reshapes to the producer: a Conv/Gemm/MatMul with constant weights (Eq. 3 as written), a
  MaxPool (weight 1: the largest activation of the window), an AveragePool / GlobalAveragePool (weight 1/n).
  Anything else — the image itself, an Add, a Concat — has no weights: Z_pre = 0 (only Z_cur and Z_suc count).
* **Ties** go to the first candidate (fc: input index; conv: input channel; the location argmax: row-major).
* **Per-layer α** (§3.2): ``layers`` maps a node name to its own (α_cur, α_pre, α_suc); other layers use the
  policy's α. ``tools/tune_discernible.py`` learns them with the paper's Bernoulli bandit (UCB1 over a grid,
  reward 1 when the traced box has IoU > 0.5 with the ground truth).
* **The start set** (top-n classes of the softmax) is the method's business (:mod:`onnxfix.methods.discernible`).

This project's first reading (Z_pre = the candidate's own |activation|, Z_suc = its summed positive contribution,
supports max-normalised, only positive contributions eligible) measured worse at its best k on all three bundled
localisation sets (docs/paper_fidelity.md) and was removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from onnxfix.fixations.registry import Context, Locations, SelectionPolicy
from onnxfix.fixations.rules import PASS_THROUGH, _from_chw, _spatial, _to_chw, _unsupported, _window
from onnxfix.graph import Node, resolve_pads

#: measured on the bundled localisation sets (docs/paper_fidelity.md): k = 3 with the argmax location
DEFAULTS: dict[str, float | int | str] = {"alpha_cur": 1.0, "alpha_pre": 0.25, "alpha_suc": 1.0, "k": 3,
                                          "location": "argmax"}
LOCATIONS = ("centre", "argmax")

_CHUNK_ELEMS = 1 << 21  # window elements handled at once (bounds memory)
#: elementwise ops a preceding layer is found through (Z_pre): the activation after a conv, its normalisation
_ELEMENTWISE = frozenset(PASS_THROUGH) - {"Softmax", "LogSoftmax", "LpNormalization", "InstanceNormalization"}
_RESHAPE = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze"})


def _chunks(n: int, per_row: int):
    step = max(1, _CHUNK_ELEMS // max(per_row, 1))
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


# --------------------------------------------------------------------------------------------- windows, Eq. 2/3
def _window_values(x3: np.ndarray, chans: np.ndarray, oy: np.ndarray, ox: np.ndarray, ks, st, pd, dl):
    """Receptive fields: ``x3[chans[s, g], iy, ix]`` for every window offset (S, G, kh, kw) in float64 (0 outside
    the input) and the in-input mask (S, kh, kw)."""
    _, h, wd = x3.shape
    iy = (oy * st[0] - pd[0])[:, None] + np.arange(ks[0])[None, :] * dl[0]  # (S, kh)
    ix = (ox * st[1] - pd[1])[:, None] + np.arange(ks[1])[None, :] * dl[1]  # (S, kw)
    valid = ((iy >= 0) & (iy < h))[:, :, None] & ((ix >= 0) & (ix < wd))[:, None, :]
    v = x3[chans[:, :, None, None], np.clip(iy, 0, h - 1)[:, None, :, None],
           np.clip(ix, 0, wd - 1)[:, None, None, :]].astype(np.float64)
    return np.where(valid[:, None], v, 0.0), valid, iy, ix


def conv_current(x3: np.ndarray, w4: np.ndarray, rows: np.ndarray, st, pd, dl, group: int,
                 location: str = "centre") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Z_cur of a 2-D convolution (Eq. 2, conv form): for each selected output ``rows[s] = (co, oy, ox)`` and each
    input channel of its group, the Hadamard product of the receptive field and the filter summed over the window.

    Returns
    -------
    z_cur : (S, C_in/group) float64
    chan, ly, lx : (S, C_in/group) int64 — the candidate neuron (channel, y, x) of each entry: the window's centre
        tap (``location="centre"``, clipped into the input) or the channel's largest in-input contribution
        (``"argmax"``, first in row-major order).
    """
    c_out, cin_g, kh, kw = w4.shape
    cout_g = c_out // group
    _, h, wd = x3.shape
    s_all = len(rows)
    z = np.zeros((s_all, cin_g), np.float64)
    ly = np.zeros((s_all, cin_g), np.int64)
    lx = np.zeros((s_all, cin_g), np.int64)
    chan = (rows[:, 0] // cout_g * cin_g)[:, None] + np.arange(cin_g)[None, :]
    for sl in _chunks(s_all, cin_g * kh * kw):
        co, oy, ox = rows[sl, 0], rows[sl, 1], rows[sl, 2]
        v, valid, iy, ix = _window_values(x3, chan[sl], oy, ox, (kh, kw), st, pd, dl)
        prod = v * w4[co].astype(np.float64)  # (S, G, kh, kw), 0 outside
        z[sl] = prod.sum(axis=(2, 3))
        if location == "argmax":
            flat = np.where(valid[:, None], prod, -np.inf).reshape(len(co), cin_g, kh * kw)
            am = np.argmax(flat, axis=2)
            ly[sl] = np.take_along_axis(np.broadcast_to(iy[:, None, :, None], (len(co), cin_g, kh, kw)).reshape(
                len(co), cin_g, -1), am[:, :, None], axis=2)[:, :, 0]
            lx[sl] = np.take_along_axis(np.broadcast_to(ix[:, None, None, :], (len(co), cin_g, kh, kw)).reshape(
                len(co), cin_g, -1), am[:, :, None], axis=2)[:, :, 0]
        else:
            ly[sl] = np.clip(oy * st[0] - pd[0] + (kh // 2) * dl[0], 0, h - 1)[:, None]
            lx[sl] = np.clip(ox * st[1] - pd[1] + (kw // 2) * dl[1], 0, wd - 1)[:, None]
    return z, chan.astype(np.int64), ly, lx


def conv_pre(x3: np.ndarray, w4: np.ndarray, rows: np.ndarray, st, pd, dl, group: int) -> np.ndarray:
    """Eq. 3 for neurons ``rows`` ((S, 3): channel, y, x) of a convolution's *output*: the largest per-input-channel
    contribution Σ_window A_pre ⊙ W_pre among the channels connected to the neuron."""
    if len(rows) == 0:
        return np.zeros(0, np.float64)
    z, _, _, _ = conv_current(x3, w4, np.asarray(rows, np.int64).reshape(-1, 3), st, pd, dl, group)
    return z.max(axis=1)


def fc_pre(a2: np.ndarray, w2: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Eq. 3 for outputs ``ids`` ((S, 2): row m, column n) of ``y = a2 @ w2``: ``max_k a2[m, k] · w2[k, n]``."""
    ids = np.asarray(ids, np.int64).reshape(-1, 2)
    out = np.empty(len(ids), np.float64)
    for sl in _chunks(len(ids), a2.shape[1]):
        m, n = ids[sl, 0], ids[sl, 1]
        out[sl] = (a2[m].astype(np.float64) * w2[:, n].T.astype(np.float64)).max(axis=1)
    return out


def pool_pre(x3: np.ndarray, rows: np.ndarray, ks, st, pd, dl, average: bool, include_pad: bool) -> np.ndarray:
    """Eq. 3 through a pooling layer (weight 1 for max pooling, 1/n for average pooling): the largest activation
    of the neuron's window, divided by the window's size for average pooling."""
    rows = np.asarray(rows, np.int64).reshape(-1, 3)
    v, valid, _, _ = _window_values(x3, rows[:, :1], rows[:, 1], rows[:, 2], ks, st, pd, dl)
    best = np.where(valid[:, None], v, -np.inf).reshape(len(rows), -1).max(axis=1)
    best = np.where(np.isfinite(best), best, 0.0)  # a window wholly on padding: nothing connected
    if average:
        n = np.full(len(rows), float(ks[0] * ks[1])) if include_pad else valid.reshape(len(rows), -1).sum(axis=1)
        best = best / np.maximum(n, 1)
    return best


def preceding_layer(ctx: Context, name: str) -> tuple[Node | None, str]:
    """The node whose weights connect tensor ``name``'s neurons to the layer below (through elementwise ops and
    reshapes), and the tensor it produces (same number of elements as ``name``, same row-major order)."""
    size = int(np.prod(ctx.value(name).shape))
    for _ in range(64):
        node = ctx.graph.producer(name)
        if node is None:
            return None, name
        x = node.inputs[0] if node.inputs else ""
        if node.op_type in _ELEMENTWISE | _RESHAPE and ctx.is_data(x) and int(np.prod(ctx.value(x).shape)) == size:
            if node.op_type in _ELEMENTWISE and ctx.value(x).shape != ctx.value(name).shape:
                return node, name
            name = x
            continue
        return node, name
    return None, name


def z_pre(ctx: Context, name: str, flat: np.ndarray) -> np.ndarray:
    """Z_pre (Eq. 3) of the neurons ``flat`` (row-major flat indices) of tensor ``name`` (batch one).

    The preceding layer is :func:`preceding_layer`'s node: Conv / Gemm / MatMul with constant weights (Eq. 3),
    MaxPool / AveragePool / GlobalAveragePool / GlobalMaxPool (weight 1 or 1/n); otherwise 0."""
    flat = np.asarray(flat, np.int64).reshape(-1)
    zero = np.zeros(len(flat), np.float64)
    node, prod_name = preceding_layer(ctx, name)
    if node is None or len(flat) == 0:
        return zero
    y_shape = ctx.value(prod_name).shape
    op = node.op_type
    if op in ("Conv", "MaxPool", "AveragePool") and len(y_shape) in (3, 4) and y_shape[0] == 1:
        x = ctx.value(node.inputs[0])
        x3, nsp = _spatial(node, x)
        rows = np.stack(np.unravel_index(flat, y_shape), axis=1)[:, 1:]
        if nsp == 1:
            rows = np.stack([rows[:, 0], np.zeros(len(rows), np.int64), rows[:, 1]], axis=1)
        if op == "Conv":
            if ctx.is_data(node.inputs[1]):
                return zero
            w = ctx.value(node.inputs[1])
            ks, st, pd, dl = _window(node, x, nsp)
            return conv_pre(x3, w if nsp == 2 else w[:, :, None, :], rows, st, pd, dl,
                            int(node.attrs.get("group", 1)))
        if len(node.outputs) > 1 and node.outputs[1]:
            return zero  # MaxPool with Indices: not a plain pooling layer
        ks, st, pd, dl = _window(node, x, nsp)
        return pool_pre(x3, rows, ks, st, pd, dl, op == "AveragePool", bool(node.attrs.get("count_include_pad", 0)))
    if op in ("GlobalAveragePool", "GlobalMaxPool") and len(y_shape) >= 3 and y_shape[0] == 1:
        x = ctx.value(node.inputs[0])
        ch = np.unravel_index(flat, y_shape)[1]
        best = x[0].reshape(x.shape[1], -1).max(axis=1).astype(np.float64)[ch]
        return best / (np.prod(x.shape[2:]) if op == "GlobalAveragePool" else 1.0)
    if op in ("Gemm", "MatMul") and len(y_shape) == 2:
        got = _fc_operands(node, ctx)
        if got is None:
            return zero
        a2, w2 = got
        return fc_pre(a2, w2, np.stack(np.unravel_index(flat, y_shape), axis=1))
    return zero


def _fc_operands(node: Node, ctx: Context) -> tuple[np.ndarray, np.ndarray] | None:
    """(A, B) of an fc layer ``Y = A @ B`` (data A, constant B, 2-D), or None for other Gemm/MatMul forms."""
    an, bn = node.inputs[0], node.inputs[1]
    if not ctx.is_data(an) or ctx.is_data(bn):
        return None
    a, b = ctx.value(an), ctx.value(bn)
    if a.ndim != 2 or b.ndim != 2:
        return None
    if node.op_type == "Gemm":
        if node.attrs.get("transA", 0):
            return None
        b = b.T if node.attrs.get("transB", 0) else b
        if node.attrs.get("alpha", 1.0) < 0:
            b = -b
    return a, b


# -------------------------------------------------------------------------------------------- Eq. 1, 4, 5
def select(z_cur: np.ndarray, z_pre_: np.ndarray, ids: np.ndarray, alphas: tuple[float, float, float],
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Alg. 1 over candidates: ``z_cur`` (S, G) per selected succeeding neuron θ (rows) and candidate (columns),
    ``z_pre_`` (S, G) and ``ids`` (S, G) the candidates' neuron identities (the same id in two rows is the same
    neuron of the current layer).

    Z_suc(id) = the number of rows whose largest Z_cur (first on ties) is that neuron, or 1 when none;
    Ω = α_suc·Z_suc·(α_cur·Z_cur + α_pre·Z_pre); per row the ``k`` largest Ω (first on ties).

    Returns
    -------
    omega : (S, G) float64
    chosen : (S, min(k, G)) int64 column indices per row
    """
    a_cur, a_pre, a_suc = alphas
    s = len(z_cur)
    if s == 0:
        return np.zeros_like(z_cur), np.zeros((0, min(k, z_cur.shape[1] if z_cur.ndim == 2 else 0)), np.int64)
    best = ids[np.arange(s), np.argmax(z_cur, axis=1)]
    uniq, counts = np.unique(best, return_counts=True)
    pos = np.clip(np.searchsorted(uniq, ids), 0, len(uniq) - 1)
    count = np.where(uniq[pos] == ids, counts[pos], 0)
    z_suc = np.maximum(count, 1).astype(np.float64)
    omega = a_suc * z_suc * (a_cur * z_cur + a_pre * z_pre_)
    chosen = np.argsort(-omega, axis=1, kind="stable")[:, :k]
    return omega, chosen.astype(np.int64)


def conv_select(ctx: Context | None, xn: str, x3: np.ndarray, w4: np.ndarray, rows: np.ndarray, st, pd, dl,
                group: int, alphas: tuple[float, float, float], k: int, location: str = "centre") -> np.ndarray:
    """The selected input neurons (channel, y, x) of a 2-D convolution for the selected outputs ``rows``.
    ``ctx`` and ``xn`` (the input tensor's name) give Z_pre; ``ctx=None``: Z_pre = 0."""
    rows = np.ascontiguousarray(rows, np.int64).reshape(-1, 3)
    _, h, wd = x3.shape
    kh, kw = w4.shape[2:]
    iy = (rows[:, 1] * st[0] - pd[0])[:, None] + np.arange(kh)[None, :] * dl[0]
    ix = (rows[:, 2] * st[1] - pd[1])[:, None] + np.arange(kw)[None, :] * dl[1]
    # a window lying wholly on padding connects to no neuron of the current layer: θ has no candidates
    rows = rows[((iy >= 0) & (iy < h)).any(axis=1) & ((ix >= 0) & (ix < wd)).any(axis=1)]
    if len(rows) == 0:
        return np.zeros((0, 3), np.int64)
    z, chan, ly, lx = conv_current(x3, w4, rows, st, pd, dl, group, location)
    ids = (chan * h + ly) * wd + lx
    zp = np.zeros_like(z)
    if ctx is not None and alphas[1] != 0:
        uniq, inv = np.unique(ids, return_inverse=True)
        zp = z_pre(ctx, xn, uniq)[inv.reshape(ids.shape)]
    _, chosen = select(z, zp, ids, alphas, k)
    r = np.repeat(np.arange(len(rows)), chosen.shape[1])
    c = chosen.reshape(-1)
    return np.stack([chan[r, c], ly[r, c], lx[r, c]], axis=1).astype(np.int64)


def fc_select(ctx: Context | None, an: str, a2: np.ndarray, w2: np.ndarray, locs: np.ndarray,
              alphas: tuple[float, float, float], k: int) -> np.ndarray:
    """``y = a2 @ w2`` ((M, K) @ (K, N)): the selected inputs (m, i) for the selected outputs ``locs`` (m, n)."""
    locs = np.asarray(locs, np.int64).reshape(-1, 2)
    out = []
    kk = a2.shape[1]
    for m in np.unique(locs[:, 0]):
        cols = locs[locs[:, 0] == m, 1]
        z = a2[m].astype(np.float64)[None, :] * w2[:, cols].T.astype(np.float64)  # (S, K)
        ids = np.broadcast_to(m * kk + np.arange(kk, dtype=np.int64), z.shape)
        zp = np.zeros(kk) if ctx is None or alphas[1] == 0 else z_pre(ctx, an, m * kk + np.arange(kk))
        _, chosen = select(z, np.broadcast_to(zp, z.shape), ids, alphas, k)
        c = chosen.reshape(-1)
        out.append(np.stack([np.full(len(c), m, np.int64), c], axis=1))
    return np.unique(np.concatenate(out), axis=0) if out else np.zeros((0, 2), np.int64)


# ------------------------------------------------------------------------------------------------ the policy
@dataclass(frozen=True)
class DiscerniblePolicy(SelectionPolicy):
    """Alg. 1 in fc and conv layers (see the module docstring); ``layers``: per-node (α_cur, α_pre, α_suc)."""

    alpha_cur: float = float(DEFAULTS["alpha_cur"])
    alpha_pre: float = float(DEFAULTS["alpha_pre"])
    alpha_suc: float = float(DEFAULTS["alpha_suc"])
    k: int = int(DEFAULTS["k"])
    location: str = str(DEFAULTS["location"])
    layers: tuple[tuple[str, float, float, float], ...] = field(default=())

    name: ClassVar[str] = "discernible"

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int | np.integer) and not isinstance(self.k, bool) and self.k >= 1):
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if self.location not in LOCATIONS:
            raise ValueError(f"location must be one of {', '.join(LOCATIONS)}, got {self.location!r}")
        triples = [("", self.alpha_cur, self.alpha_pre, self.alpha_suc)] + [tuple(t) for t in self.layers]
        for node, c, p, s in triples:
            where = f" (layer {node})" if node else ""
            for key, v in (("alpha_cur", c), ("alpha_pre", p), ("alpha_suc", s)):
                if not np.isfinite(v) or v < 0:
                    raise ValueError(f"{key} must be a finite number >= 0, got {v!r}{where}")
            if s <= 0 or c + p <= 0:
                raise ValueError(f"alpha_suc and alpha_cur + alpha_pre must be > 0 (else every score is 0){where}")

    @classmethod
    def with_layers(cls, layers: Mapping[str, tuple[float, float, float]] | None = None, **kw) -> DiscerniblePolicy:
        """A policy with per-layer α from a mapping ``{node name: (α_cur, α_pre, α_suc)}``."""
        rows = tuple(sorted((str(n), *(float(v) for v in a)) for n, a in (layers or {}).items()))
        return cls(layers=rows, **kw)  # type: ignore[arg-type]

    @property
    def alphas(self) -> tuple[float, float, float]:
        return float(self.alpha_cur), float(self.alpha_pre), float(self.alpha_suc)

    def alphas_for(self, node: Node) -> tuple[float, float, float]:
        for name, c, p, s in self.layers:
            if name == node.name:
                return float(c), float(p), float(s)
        return self.alphas

    def backtrack(self, node: Node, ctx: Context, out: dict[str, Locations]) -> dict[str, Locations] | None:
        if node.outputs[0] not in out:
            return None
        if node.op_type == "Conv":
            return self._conv(node, ctx, out)
        if node.op_type in ("Gemm", "MatMul"):
            return self._fc(node, ctx, out)
        return None

    def _conv(self, node: Node, ctx: Context, out: dict[str, Locations]) -> dict[str, Locations] | None:
        xn, wn = node.inputs[0], node.inputs[1]
        if ctx.is_data(wn):
            return None
        x = ctx.value(xn)
        if x.shape[0] != 1:
            raise _unsupported(node, "batch > 1")
        x3, nsp = _spatial(node, x)
        w = ctx.value(wn)
        w4 = w if nsp == 2 else w[:, :, None, :]
        _, st, pd, dl = _window(node, x, nsp)
        rows = _to_chw(out[node.outputs[0]], nsp)
        group = int(node.attrs.get("group", 1))
        got = conv_select(ctx, xn, x3, w4, rows, st, pd, dl, group, self.alphas_for(node), int(self.k),
                          self.location)
        return {xn: _from_chw(got, nsp)}

    def _fc(self, node: Node, ctx: Context, out: dict[str, Locations]) -> dict[str, Locations] | None:
        got = _fc_operands(node, ctx)
        if got is None:
            return None
        a2, w2 = got
        an = node.inputs[0]
        return {an: fc_select(ctx, an, a2, w2, out[node.outputs[0]], self.alphas_for(node), int(self.k))}


__all__ = ["DEFAULTS", "LOCATIONS", "DiscerniblePolicy", "conv_current", "conv_pre", "conv_select",
           "fc_pre", "fc_select", "pool_pre", "preceding_layer", "resolve_pads", "select", "z_pre"]
