"""ONNX Runtime's native blocked layout (NCHWc), handed over instead of copied back (issue 16: the exposed forward).

On the CPU, ONNX Runtime's NCHWc transformer runs convolutions, pools and the adds between them on blocked tensors:
memory laid out as ``(N, ⌈C/b⌉, H, W, b)``, with ``b`` the block size of its MLAS kernels (8 with AVX2, 16 with
AVX-512) and the channels padded up to a multiple of ``b``. Every graph output it produced in that layout gets a
``ReorderOutput`` node, a full copy back to NCHW. A forward exposing the ~60 tensors CNN Fixations reads paid ~60
such copies: 1.40–1.48× a bare forward on EfficientNet-Lite0 and opennsfw, against 1.05–1.2× without them
(docs/fixations_speed.md, fourth round).

:func:`native_session` asks ONNX Runtime for its optimised graph of the model with those outputs
(``optimized_model_filepath``), removes each ``ReorderOutput`` (``channels_last=0``) that only feeds a graph output
the caller accepts in the native layout, gives its input the output's name, and loads that graph without optimising
it again. The values are ONNX Runtime's own buffers: the same float32 numbers, bit for bit, as the NCHW session's
(tested on the sample and real models). :class:`Blocked` wraps one with its block size and its logical channel
count; readers either address it directly (the compiled fixation pass) or take :meth:`Blocked.numpy`.

The block size is learnt once per process (:func:`block_size`) from a probe convolution whose output values name
their own channel and position; when the probe does not give one exact answer, or anything about the optimised
graph is unexpected, :func:`native_session` returns ``None`` and callers keep the NCHW session. ``ONNXFIX_NCHWC=0``
turns the native layout off.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxfix.sessions import make_session, session_options

__all__ = ["Blocked", "block_size", "enabled", "native_session", "plain"]

_DOMAIN = "com.microsoft.nchwc"


class Blocked:
    """A 4-D float32 tensor in ONNX Runtime's NCHWc layout.

    Attributes
    ----------
    raw : ndarray
        The buffer as ONNX Runtime returned it: shape ``(N, Cp, H, W)`` with ``Cp`` the padded channel count, memory
        ordered ``(N, Cp / block, H, W, block)``.
    block : int
        The block size ``b``.
    shape : tuple of int
        The logical NCHW shape ``(N, C, H, W)``.
    """

    __slots__ = ("raw", "block", "shape", "dtype")
    ndim = 4

    def __init__(self, raw: np.ndarray, block: int, channels: int):
        n, cp, h, w = raw.shape
        if block < 1 or block & (block - 1) or cp % block or not (cp - block < channels <= cp) \
                or not raw.flags.c_contiguous:
            raise ValueError(f"not an NCHWc buffer: shape {raw.shape}, block {block}, {channels} channels")
        self.raw, self.block, self.dtype = raw, block, raw.dtype
        self.shape = (n, channels, h, w)

    def numpy(self) -> np.ndarray:
        """The tensor in NCHW (a copy; exactly the values ONNX Runtime's ``ReorderOutput`` would give)."""
        n, cp, h, w = self.raw.shape
        b = self.block
        v = self.raw.reshape(n, cp // b, h, w, b).transpose(0, 1, 4, 2, 3).reshape(n, cp, h, w)
        return np.ascontiguousarray(v[:, :self.shape[1]])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: ANN001 - numpy's protocol
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:
        return f"Blocked(shape={self.shape}, block={self.block})"


def plain(value):  # noqa: ANN001, ANN201 - any value of a forward
    """``value`` in NCHW when it is :class:`Blocked`, else itself."""
    return value.numpy() if isinstance(value, Blocked) else value


def enabled() -> bool:
    """False when ``$ONNXFIX_NCHWC`` is ``0`` (the native layout is never used)."""
    return os.environ.get("ONNXFIX_NCHWC", "1") != "0"


_BLOCK: list = []  # [block size or None], filled once per process
_BLOCK_LOCK = threading.Lock()


def _optimized(model: onnx.ModelProto, threads: int | None) -> onnx.ModelProto:
    """ONNX Runtime's optimised graph of ``model`` on the CPU (every level, NCHWc included)."""
    with tempfile.TemporaryDirectory(prefix="onnxfix-nchwc-") as d:
        path = os.path.join(d, "optimized.onnx")
        so = session_options(threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = path
        make_session(model, "cpu", options=so)
        return onnx.load(path)


def _strip(opt: onnx.ModelProto, names: set[str]) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``opt`` without the ``ReorderOutput`` nodes that only feed graph outputs in ``names``; their inputs take the
    outputs' names. Returns the new model and, per native output, its logical channel count."""
    g = opt.graph
    producer = {o: k for k, n in enumerate(g.node) for o in n.output}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    outputs = {o.name for o in g.output}
    inputs = {i.name for i in g.input} | {t.name for t in g.initializer}
    rename: dict[str, str] = {}
    channels: dict[str, int] = {}
    drop: set[int] = set()
    for o in g.output:
        k = producer.get(o.name)
        n = g.node[k] if k is not None else None
        if o.name not in names or n is None or n.op_type != "ReorderOutput" or n.domain != _DOMAIN:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        src = n.input[0]
        if attrs.get("channels_last", 0) or "channels" not in attrs or readers.get(o.name) or src in rename \
                or src in outputs or src in inputs:
            continue
        rename[src] = o.name
        channels[o.name] = int(attrs["channels"])
        drop.add(k)
    new = onnx.ModelProto()
    new.CopyFrom(opt)
    ng = new.graph
    kept = []
    for k, old in enumerate(g.node):
        if k not in drop:
            kept.append(onnx.NodeProto())
            kept[-1].CopyFrom(old)
    for n in kept:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
        for k, i in enumerate(n.output):
            if i in rename:
                n.output[k] = rename[i]
    del ng.node[:]
    ng.node.extend(kept)
    gone = set(rename) | set(channels)
    vi = [v for v in ng.value_info if v.name not in gone]
    del ng.value_info[:]
    ng.value_info.extend(vi)
    outs = [helper.make_tensor_value_info(o.name, TensorProto.FLOAT, None) if o.name in channels else o
            for o in ng.output]
    del ng.output[:]
    ng.output.extend(outs)
    return new, channels


def _plain_options(threads: int | None) -> ort.SessionOptions:
    so = session_options(threads)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph is optimised already
    return so


def _probe() -> int | None:
    x = np.arange(16 * 9, dtype=np.float32).reshape(1, 16, 3, 3)
    w = np.zeros((40, 16, 1, 1), np.float32)
    w[np.arange(40), np.arange(40) % 16] = 1.0
    b = (np.arange(40) * 1000.0).astype(np.float32)  # channel o, position p: 1000·o + x[o % 16, p] (exact)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    want = (x[:, np.arange(40) % 16] + b[None, :, None, None]).astype(np.float32)
    stripped, ch = _strip(_optimized(model, 1), {"y"})
    if ch != {"y": 40}:
        return None
    raw = make_session(stripped, "cpu", options=_plain_options(1)).run(["y"], {"x": x})[0]
    hits = []
    for blk in (4, 8, 16, 32, 64):
        try:
            if np.array_equal(Blocked(raw, blk, 40).numpy(), want):
                hits.append(blk)
        except ValueError:
            continue
    return hits[0] if len(hits) == 1 else None


def block_size() -> int | None:
    """ONNX Runtime's NCHWc block size on this machine, or ``None`` (no exact answer: never use the layout)."""
    with _BLOCK_LOCK:
        if not _BLOCK:
            try:
                _BLOCK.append(_probe())
            except Exception:  # noqa: BLE001 - any failure means: keep NCHW
                _BLOCK.append(None)
        return _BLOCK[0]


def native_session(model: onnx.ModelProto, native: Iterable[str], threads: int | None = None
                   ) -> tuple[ort.InferenceSession, dict[str, int], int] | None:
    """A CPU session of ``model`` (its outputs already include the exposed tensors) whose outputs in ``native``
    come back in ONNX Runtime's blocked layout where it computes them so.

    Returns
    -------
    (session, channels, block) or None
        ``channels``: logical channel count per output left blocked (wrap its value with :class:`Blocked`);
        ``None`` when the layout is off, unknown on this machine, or no output would stay blocked.
    """
    names = set(native)
    if not names or not enabled():
        return None
    blk = block_size()
    if blk is None:
        return None
    try:
        stripped, channels = _strip(_optimized(model, threads), names)
        if not channels:
            return None
        return make_session(stripped, "cpu", options=_plain_options(threads)), channels, blk
    except Exception:  # noqa: BLE001 - the NCHW session stays the answer
        return None
