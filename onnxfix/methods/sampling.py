"""What the many-sample methods share: input gradients of many copies of each image, forwards of many copies, and
runs of the tail from a layer on many modified feature maps — each batched through ONNX Runtime with an internal
batch size bounded by the memory budget (integrated gradients, SmoothGrad, GradientSHAP, Score-CAM, Ablation-CAM,
Recipro-CAM, RISE).

Rows are always (image n, sample k) with k fastest (Captum's ``repeat_interleave`` order), so a caller reshapes a
result to (N, K, ...).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.methods.base import check_finite
from onnxfix.model import Model
from onnxfix.runtime import MEMORY_FRACTION, Runtime, available_memory
from onnxfix.targets import Resolved, score_in, seed_batch

#: most rows per ORT call (beyond ~32 CPU throughput stops improving and latency of the first result grows)
MAX_BATCH = 32


def _tensor_bytes(model: Model, names: list[str] | None = None) -> int:
    g = model.graph
    total = 0
    for name, t in g.tensors.items():
        if name in g.constants or (names is not None and name not in names):
            continue
        n = 1
        for i, d in enumerate(t.shape or ()):
            n *= d if isinstance(d, int) and d > 0 else 1 if i == 0 else 16
        total += n * (t.dtype.itemsize if t.dtype is not None else 4)
    return total


def internal_batch(model: Model, rows: int, factor: float = 3.0, requested: int | None = None) -> int:
    """Rows per ORT call: ``requested`` if given, else as many as fit ``factor`` × one row's intermediate tensors in
    the memory budget (the runtime's, else half of the available memory), at most :data:`MAX_BATCH`."""
    if requested is not None:
        return max(1, min(int(requested), rows))
    per_row = max(1, int(_tensor_bytes(model) * factor))
    budget = model.runtime.memory_budget
    if budget is None:
        avail = available_memory()
        budget = int(avail * MEMORY_FRACTION) if avail is not None else 1 << 30
    return max(1, min(rows, MAX_BATCH, budget // per_row))


def _batched(model: Model) -> Model:
    bm = model.batch_model()
    if bm is None:
        raise UnsupportedModel("this model runs only one image at a time (no batch-dynamic copy reproduces it); "
                               "the many-sample methods need batches — saliency, gradcam and occlusion still work")
    return bm


def _logits_shape(model: Model, logits: np.ndarray, rows: int) -> tuple[int, ...]:
    shape = list(logits.shape)
    bax = model.head.batch_axis
    if bax is None:
        raise UnsupportedModel("the explained output has no batch axis; the many-sample methods need one")
    shape[bax] = rows
    return tuple(shape)


def input_gradients(model: Model, rows: np.ndarray, targets: list[Resolved], logits: np.ndarray,
                    mode: str = "gradient", batch: int | None = None,
                    with_scores: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Gradients of each row's target score w.r.t. the input, for ``rows`` (M, ...) with one resolved target per
    row (resolved on the original images; their batch index is moved to the row's place in each ORT call).

    ``logits`` is the original forward's output (its shape gives the seed's). With ``with_scores`` also each row's
    target score (M,) from the same calls."""
    from onnxfix.autodiff import GradientProgram

    m = len(rows)
    bm = model if m == 1 else _batched(model)
    b = internal_batch(model, m, 3.0, batch)
    prog = GradientProgram(bm.graph, of=bm.head.logits, wrt=[bm.input], mode=mode, provider=bm.provider,
                           threads=bm.runtime.threads)
    bax = model.head.batch_axis
    out = np.empty(rows.shape, np.float32)
    scores = np.empty(m, np.float64)
    for s in range(0, m, b):
        chunk = np.ascontiguousarray(rows[s:s + b])
        ts = [targets[s + j].at_batch(j, bax) for j in range(len(chunk))]
        seed = seed_batch(_logits_shape(model, logits, len(chunk)), ts, bax, 1.0, logits.dtype)
        res = prog.run({bm.input: chunk}, seed)
        g = res["grad:" + bm.input]
        check_finite(g, "the input gradient")
        out[s:s + len(chunk)] = g
        if with_scores:
            lg = res[bm.head.logits]
            scores[s:s + len(chunk)] = [score_in(lg, ts[j], j, bax) for j in range(len(chunk))]
    return (out, scores) if with_scores else out


def forward_scores(model: Model, rows: np.ndarray, targets: list[Resolved], batch: int | None = None,
                   score: Callable[[np.ndarray, Resolved, int], float] | None = None) -> np.ndarray:
    """Each row's target score (logit, or ``score(logits, target, j)``) from forwards of ``rows`` (M, ...)."""
    m = len(rows)
    bm = model if m == 1 else _batched(model)
    b = internal_batch(model, m, 1.0, batch)
    bax = model.head.batch_axis
    out = np.empty(m, np.float64)
    name = bm.head.logits
    for s in range(0, m, b):
        chunk = np.ascontiguousarray(rows[s:s + b])
        lg = bm.runtime.run({bm.input: chunk}, [name])[name]
        check_finite(lg, "the model's scores")
        for j in range(len(chunk)):
            t = targets[s + j].at_batch(j, bax)
            out[s + j] = score(lg, t, j) if score is not None else score_in(lg, t, j, bax)
    return out


# -- the tail from a layer, on batches of feature maps ---------------------------------------------------------------


def tail_runtime(model: Model, layer: str) -> tuple[Runtime, list[str]]:
    """A batch-dynamic runtime of the sub-graph from ``layer`` to the logits and its inputs (``layer`` first), built
    once per (model, layer) in ``model.cache``."""

    def build() -> tuple[Runtime, list[str]]:
        from onnxfix.graph import Graph

        sub = model.graph.submodel([layer], [model.head.logits], name="tail_batch", batch_dynamic=True)
        return Runtime(Graph.from_model(sub), provider=model.provider, threads=model.runtime.threads), \
            [i.name for i in sub.graph.input]

    return model.cache.get(("tail_batch", layer), build)


def layer_layout(model: Model, layer: str, value: np.ndarray) -> str:
    """"nchw" when the layer's value is an (N, C, h, w) map as the layer view gives it, "nhwc" when the view
    transposes it; anything else (token layers) is refused for the tail methods."""
    from onnxfix.methods.layers import layer_view

    v = layer_view(model, layer)(value)
    if v.shape == value.shape:
        return "nchw"
    if value.ndim == 4 and v.shape == value.transpose(0, 3, 1, 2).shape:
        return "nhwc"
    raise UnsupportedModel(f"layer {layer!r} is a token layer; the masked-tail methods need a 4-D feature map")


def tail_scores(model: Model, layer: str, values: dict[str, np.ndarray], n: int, maps: np.ndarray,
                target: Resolved, batch: int | None = None) -> np.ndarray:
    """Image ``n``'s target score when its feature map at ``layer`` is replaced by each of ``maps`` (K, C, h, w),
    in the layer's own layout; the tail's other inputs (skip connections) keep image ``n``'s values."""
    rt, ins = tail_runtime(model, layer)
    lay = layer_layout(model, layer, values[layer][n:n + 1])
    k = len(maps)
    b = internal_batch(model, k, 1.0, batch)
    bax = model.head.batch_axis if model.head.batch_axis is not None else 0
    t = target.at_batch(0, bax)
    name = model.head.logits
    out = np.empty(k, np.float64)
    for s in range(0, k, b):
        chunk = maps[s:s + b]
        if lay == "nhwc":
            chunk = chunk.transpose(0, 2, 3, 1)
        feeds = {layer: np.ascontiguousarray(chunk, dtype=values[layer].dtype)}
        for other in ins[1:]:
            v = values[other][n:n + 1]
            feeds[other] = np.repeat(v, len(chunk), axis=0)
        try:
            lg = rt.run(feeds, [name])[name]
        except InputError:
            raise
        check_finite(lg, "the tail's scores")
        out[s:s + len(chunk)] = [score_in(lg, t.at_batch(j, bax), j, bax) for j in range(len(chunk))]
    return out


def bilinear_align_corners(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """torch ``UpsamplingBilinear2d`` (bilinear, ``align_corners=True``) of (..., h, w) to (..., H, W), float32."""
    h, w = a.shape[-2:]
    H, W = hw

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if n_out == 1 or n_in == 1:
            pos = np.zeros(n_out, np.float32)
        else:
            pos = np.arange(n_out, dtype=np.float32) * np.float32((n_in - 1) / (n_out - 1))
        i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    y0, y1, fy = axis(h, H)
    x0, x1, fx = axis(w, W)
    a = np.asarray(a, np.float32)
    top = a[..., y0, :] * (1 - fy)[:, None] + a[..., y1, :] * fy[:, None]
    return (top[..., x0] * (1 - fx) + top[..., x1] * fx).astype(np.float32)
