"""ONNX Runtime sessions: forward passes that expose exactly the intermediate tensors a request needs.

One :class:`Runtime` per model; sessions are cached per set of exposed tensors, so asking twice for the same
tensors never builds a second ``InferenceSession``. Exposing every tensor costs 1.2–2.4× a bare forward
(DESIGN §1), so callers name what they need; :meth:`Runtime.activations` exposes everything.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxfix.errors import InputError
from onnxfix.graph import Graph
from onnxfix.nchwc import Blocked, native_session
from onnxfix.sessions import choose_providers, make_session, session_options  # noqa: F401 - re-exported

#: Memory-aware exposure: a forward pass may expose intermediate tensors worth at most this fraction of the memory
#: available when it runs (``MemAvailable`` of /proc/meminfo, else ``os.sysconf``); beyond it the request is
#: refused with a message instead of risking an out-of-memory kill. ``Runtime.memory_budget`` (bytes; the
#: Explainer's ``memory_budget_mb``, the CLI's ``--memory-budget-mb``) replaces the fraction.
MEMORY_FRACTION = 0.5


_MEM_READ: list = [-1.0, None]  # (monotonic time of the last reading, its value)


def available_memory(max_age: float = 0.5) -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), or ``None`` when unknown; a reading at
    most ``max_age`` seconds old is reused (forwards in a loop need not read /proc each time; 0: read now)."""
    now = time.monotonic()
    if max_age > 0 and 0 <= now - _MEM_READ[0] <= max_age:
        return _MEM_READ[1]
    _MEM_READ[:] = [now, _read_available_memory()]
    return _MEM_READ[1]


def _read_available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


class Runtime:
    """Forward passes of a :class:`~onnxfix.graph.Graph` on ONNX Runtime."""

    def __init__(self, graph: Graph, provider: str = "cpu", threads: int | None = None):
        self.graph = graph
        self.providers, self.fallback_message = choose_providers(provider)
        if self.fallback_message:
            print(f"onnxfix: {self.fallback_message}", file=sys.stderr)
        self.threads = threads
        self._sessions: dict[frozenset[str], ort.InferenceSession] = {}
        self._native: dict[tuple[frozenset[str], frozenset[str]], tuple | None] = {}
        self._lock = threading.Lock()
        self._model_bytes: bytes | None = None
        #: bytes the exposed tensors of one forward may take; ``None``: MEMORY_FRACTION of the available memory
        self.memory_budget: int | None = None
        self._shape_cache: dict[tuple, dict[str, tuple[int | None, ...]]] = {}
        self._need_cache: dict[tuple, int] = {}

    # -- sessions -----------------------------------------------------------------------------------------------
    def _options(self) -> ort.SessionOptions:
        return session_options(self.threads)

    def _model_with_outputs(self, extra: Iterable[str]) -> onnx.ModelProto:
        g = self.graph
        model = onnx.ModelProto()
        model.CopyFrom(g.model)
        have = {o.name for o in model.graph.output}
        for name in extra:
            if name in have or name in g.constants:
                continue
            t = g.tensors.get(name)
            elem = helper.np_dtype_to_tensor_dtype(t.dtype) if t is not None and t.dtype is not None else 1
            model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
            have.add(name)
        return model

    def session(self, extra: Iterable[str] = ()) -> ort.InferenceSession:
        """The cached session whose outputs are the model's outputs plus ``extra`` tensors."""
        key = frozenset(x for x in extra if x not in self.graph.constants)
        with self._lock:
            sess = self._sessions.get(key)
            if sess is None:
                model = self._model_with_outputs(sorted(key))
                sess = make_session(model, "cuda" if "CUDAExecutionProvider" in self.providers else "cpu",
                                    self.threads)
                self._sessions[key] = sess
        return sess

    def native_session(self, extra: Iterable[str], native: Iterable[str]) -> tuple | None:
        """The cached session exposing ``extra`` whose ``native`` tensors stay in ONNX Runtime's blocked layout
        (:func:`onnxfix.nchwc.native_session`: ``(session, channels, block)``), or ``None`` (then :meth:`session`)."""
        key = frozenset(x for x in extra if x not in self.graph.constants)
        model_outputs = {o.name for o in self.graph.model.graph.output}
        nat = frozenset(x for x in native if x in key and x not in model_outputs)
        if not nat or "CUDAExecutionProvider" in self.providers:
            return None
        with self._lock:
            if (key, nat) not in self._native:
                self._native[(key, nat)] = native_session(self._model_with_outputs(sorted(key)), nat, self.threads)
            return self._native[(key, nat)]

    # -- forward ------------------------------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray], tensors: Sequence[str] = (), native: Iterable[str] = ()
            ) -> dict[str, np.ndarray]:
        """Run the model; return the graph outputs and the requested ``tensors`` (constants included) by name.

        ``native``: requested tensors the caller reads in ONNX Runtime's blocked layout; those it computes so come
        back as :class:`onnxfix.nchwc.Blocked` (the same values, not copied back to NCHW)."""
        wanted = list(dict.fromkeys(tensors))
        self.check_memory(wanted, feeds)
        nat = self.native_session(wanted, native) if native else None
        sess = nat[0] if nat is not None else self.session(wanted)
        names = [o.name for o in sess.get_outputs()]
        try:
            values = sess.run(names, feeds)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"ONNX Runtime failed on this input: {_first_line(exc)}") from None
        out = dict(zip(names, values, strict=True))
        if nat is not None:
            try:
                for name, channels in nat[1].items():
                    out[name] = Blocked(out[name], nat[2], channels)  # type: ignore[assignment]
            except ValueError:  # not the layout the probe found: NCHW from now on for this request
                with self._lock:
                    self._native = {k: (None if v is nat else v) for k, v in self._native.items()}
                return self.run(feeds, tensors)
        for t in wanted:
            if t in self.graph.constants:
                out[t] = self.graph.constants[t]
        return out

    # -- memory -----------------------------------------------------------------------------------------------
    def _shapes_for(self, feeds: dict[str, np.ndarray]) -> dict[str, tuple[int | None, ...]]:
        """Tensor shapes for these feed shapes: the graph's, re-inferred with the inputs' actual dims when some
        are symbolic (dynamic batch/height/width); cached per feed shapes."""
        key = tuple(sorted((k, tuple(v.shape)) for k, v in feeds.items()))
        if key in self._shape_cache:
            return self._shape_cache[key]
        shapes = {n: t.shape for n, t in self.graph.tensors.items() if t.shape is not None}
        if any(None in (shapes.get(k) or (None,)) for k in feeds):
            model = onnx.ModelProto()
            model.CopyFrom(self.graph.model)
            for vi in model.graph.input:
                if vi.name in feeds and vi.type.HasField("tensor_type"):
                    dims = vi.type.tensor_type.shape.dim
                    for d, n in zip(dims, feeds[vi.name].shape, strict=False):
                        d.Clear()
                        d.dim_value = int(n)
            try:
                inferred = onnx.shape_inference.infer_shapes(model)
                for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
                    tt = vi.type.tensor_type
                    if vi.type.HasField("tensor_type") and tt.HasField("shape"):
                        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
            except Exception:  # noqa: BLE001 - best effort: the static shapes stay
                pass
        self._shape_cache[key] = shapes
        return shapes

    def exposed_bytes(self, tensors: Sequence[str], feeds: dict[str, np.ndarray]) -> int:
        """Estimated bytes of ``tensors`` (shape × dtype; an unknown dimension counts as 1, a lower bound)."""
        shapes = self._shapes_for(feeds)
        total = 0
        for name in tensors:
            if name in self.graph.constants or name in feeds:
                continue
            t = self.graph.tensors.get(name)
            item = t.dtype.itemsize if t is not None and t.dtype is not None else 4
            n = 1
            for d in shapes.get(name) or ():
                n *= d if isinstance(d, int) and d > 0 else 1
            total += n * item
        return total

    def check_memory(self, tensors: Sequence[str], feeds: dict[str, np.ndarray]) -> None:
        """Refuse (``InputError``) a forward whose exposed tensors would exceed the memory budget."""
        if not tensors:
            return
        key = (tuple(tensors), tuple((k, v.shape) for k, v in feeds.items()))
        need = self._need_cache.get(key)
        if need is None:
            need = self._need_cache[key] = self.exposed_bytes(tensors, feeds)
            if len(self._need_cache) > 64:
                self._need_cache.pop(next(iter(self._need_cache)))
        budget = self.memory_budget
        if budget is None:
            avail = available_memory()
            if avail is None:
                return
            budget = int(avail * MEMORY_FRACTION)
        if need > budget:
            mb = 1024**2
            raise InputError(
                f"this request exposes {len(tensors)} intermediate tensors taking about {need / mb:.1f} MB, above "
                f"the memory budget of {budget / mb:.1f} MB; use a smaller input size or raise the budget with "
                "--memory-budget-mb (Explainer(memory_budget_mb=...))")

    def activations(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every tensor of the graph (inputs, intermediates, outputs, constants excluded) for ``feeds``."""
        names = [t for n in self.graph.nodes for t in n.outputs if t]
        out = self.run(feeds, names)
        out.update({k: v for k, v in feeds.items()})
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:400] if text else type(exc).__name__
