"""A built backward pass with its ONNX Runtime session, cached per request (DESIGN §1: never a session per call).

``GradientProgram(graph, of, wrt, mode, activations)`` (or ``.get``) returns the cached program for that request —
the cache is keyed by ``id(graph)`` plus the request and holds only a weak reference to the graph, so programs go
away with their graph. ``run(feeds, seed)`` is one ``InferenceSession.run`` call that returns the forward value of
``of``, the requested activations and ``d(of · seed)/d(wrt)`` for each ``wrt`` tensor.

Models whose inputs have symbolic sizes beyond the batch axis (OCR, detectors: symbolic H/W) are differentiated
as they are when every rule on the path can work with run-time shapes; where one needs a static size (a Conv, a
Resize, an LSTM's sequence length), the program builds the backward pass for the concrete input shapes of each call
instead, and keeps one built variant per distinct shape (the last :data:`MAX_VARIANTS`).
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxfix.autodiff.builder import build_backward
from onnxfix.autodiff.seeds import ArgmaxSeed, seed_in_graph  # noqa: F401 - seed_in_graph re-exported
from onnxfix.errors import InputError, UnsupportedModel, UnsupportedOp
from onnxfix.graph import Graph
from onnxfix.runtime import choose_providers, session_options
from onnxfix.sessions import make_session

_CACHE: dict[tuple, tuple[weakref.ref, GradientProgram]] = {}
_LOCK = threading.Lock()
#: Built variants kept per program whose backward depends on the input shape.
MAX_VARIANTS = 8


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:400] if text else type(exc).__name__


SEEDS = ("fed", "argmax")


def _seed_key(seed: Any, argmax_axis: int | None = None) -> Any:
    if isinstance(seed, str):
        if seed not in SEEDS:
            raise InputError(f"seed must be one of {SEEDS} or a seed builder (an object with `key` and `build`)")
        if argmax_axis is not None:
            if seed != "argmax":
                raise InputError("argmax_axis applies to seed='argmax' only")
            return ("argmax", int(argmax_axis))
        return seed
    key = getattr(seed, "key", None)
    if key is None or not callable(getattr(seed, "build", None)):
        raise InputError(f"seed must be one of {SEEDS} or a seed builder (an object with `key` and `build`)")
    try:
        hash(key)
    except TypeError:
        raise InputError("a seed builder's `key` must be hashable") from None
    return ("builder", key)


def _key(graph: Graph, of: str, wrt: Sequence[str], mode: str, activations: Sequence[str], provider: str,
         threads: int | None, conv_input_grad: str, seed: Any = "fed", strided: str = "exact") -> tuple:
    return (id(graph), of, tuple(wrt), mode, tuple(activations), provider, threads, conv_input_grad, seed, strided)


def _evict(graph_id: int) -> None:
    with _LOCK:
        for key in [k for k in _CACHE if k[0] == graph_id]:
            del _CACHE[key]


def _symbolic_inputs(graph: Graph) -> bool:
    """Whether a data input has a size (the batch axis included: a batch-dynamic detector's Resize backward needs
    it) that is not known statically."""
    for name in graph.inputs:
        t = graph.tensors.get(name)
        if name in graph.constants or t is None or t.shape is None:
            continue
        if any(d is None for d in t.shape) or _baked(t.dtype, t.shape):
            return True
    return False


def _baked(dtype: Any, shape: Any) -> bool:
    """Whether an input is a small integer tensor — a shape computed upstream, as in a Grad-CAM tail of a
    paddle2onnx export — whose value a per-shape variant bakes in (the shapes behind it become static)."""
    return dtype is not None and np.dtype(dtype).kind in "iu" and shape is not None and \
        all(isinstance(d, int) for d in shape) and int(np.prod(shape)) <= 16


def specialise(graph: Graph, shapes: dict[str, tuple[int, ...]],
               values: dict[str, np.ndarray] | None = None) -> Graph:
    """``graph`` with its inputs fixed to ``shapes`` (shapes inferred and constants folded again); inputs in
    ``values`` become constants (small integer shape tensors, see :func:`_baked`)."""
    m = onnx.ModelProto()
    m.CopyFrom(graph.model)
    g = m.graph
    if values:
        keep = [vi for vi in g.input if vi.name not in values]
        del g.input[:]
        g.input.extend(keep)
        g.initializer.extend(numpy_helper.from_array(np.asarray(v), name) for name, v in values.items())
    for vi in g.input:
        if vi.name in shapes:
            tt = vi.type.tensor_type
            tt.ClearField("shape")
            for d in shapes[vi.name]:
                tt.shape.dim.add().dim_value = int(d)
    del g.value_info[:]
    for vi in g.output:
        vi.type.tensor_type.ClearField("shape")
    return Graph.from_model(m)


@dataclass
class _Variant:
    model: onnx.ModelProto
    seed_name: str
    grad_names: dict[str, str]
    session: Any
    input_names: list[str]
    output_names: list[str]


class GradientProgram:
    """The forward + backward model of one request and its session.

    Constructing one is cached: ``GradientProgram(graph, of, wrt, …)`` with the same graph object and the same
    request returns the program built the first time (so does :meth:`get`).

    Parameters
    ----------
    graph, of, wrt, mode, activations, conv_input_grad, strided
        As :func:`~onnxfix.autodiff.builder.build_backward`.
    provider, threads
        ORT execution provider ("cpu", "cuda", …) and intra-op threads.
    seed : "fed", "argmax" or a seed builder
        "fed": ``run`` takes the seed; "argmax": the one-hot of the argmax of ``of``, built in the graph (over all
        elements, or along ``argmax_axis``); a seed builder (``key`` + ``build(model, seed_name, of)``, see
        seeds.py) appends its own nodes; programs are cached by its ``key``.
    argmax_axis : int, optional
        With ``seed="argmax"``: the class axis; one one-hot per position of the other axes (per batch item).
    """

    def __new__(cls, graph: Graph, of: str, wrt: Sequence[str], mode: str = "gradient",
                activations: Sequence[str] = (), provider: str = "cpu", threads: int | None = None,
                conv_input_grad: str = "auto", seed: Any = "fed", strided: str = "exact",
                argmax_axis: int | None = None):
        key = _key(graph, of, wrt, mode, activations, provider, threads, conv_input_grad,
                   _seed_key(seed, argmax_axis), strided)
        with _LOCK:
            hit = _CACHE.get(key)
            if hit is not None and hit[0]() is graph:
                return hit[1]
        self = super().__new__(cls)
        self._built = False
        return self

    def __init__(self, graph: Graph, of: str, wrt: Sequence[str], mode: str = "gradient",
                 activations: Sequence[str] = (), provider: str = "cpu", threads: int | None = None,
                 conv_input_grad: str = "auto", seed: Any = "fed", strided: str = "exact",
                 argmax_axis: int | None = None):
        if self._built:
            return
        seed_key = _seed_key(seed, argmax_axis)
        self.of = of
        self.wrt = tuple(dict.fromkeys(wrt))
        self.mode = mode
        self.activations = tuple(dict.fromkeys(activations))
        self.seed = "fed" if seed == "fed" else ("argmax" if seed == "argmax" else "builder")
        self._seed_builder = (ArgmaxSeed(axis=argmax_axis) if seed == "argmax" else
                              None if seed == "fed" else seed)
        self._request = (list(self.wrt), mode, list(self.activations), conv_input_grad, strided)
        self.providers, self.fallback_message = choose_providers(provider)
        if self.fallback_message:
            print(f"onnxfix: {self.fallback_message}", file=sys.stderr)
        self._threads = threads
        self._graph_ref = weakref.ref(graph)
        self._variants: OrderedDict[tuple, _Variant] = OrderedDict()
        self._vlock = threading.Lock()
        self.per_shape = False
        try:
            self._use(self._build(graph))
        except (UnsupportedOp, UnsupportedModel) as exc:
            if not _symbolic_inputs(graph) or _truly_missing(graph, of, self.wrt, exc):
                raise
            self.per_shape = True  # build for each concrete input shape at run time
            self.model = None
            self.input_names = [n for n in graph.inputs if n not in graph.constants]
        self._built = True
        key = _key(graph, of, wrt, mode, activations, provider, threads, conv_input_grad, seed_key, strided)
        with _LOCK:
            if not any(k[0] == id(graph) for k in _CACHE):
                weakref.finalize(graph, _evict, id(graph))
            _CACHE.setdefault(key, (weakref.ref(graph), self))

    # -- building ---------------------------------------------------------------------------------------------------
    def _build(self, graph: Graph) -> _Variant:
        wrt, mode, activations, conv_input_grad, strided = self._request
        model, seed_name, grad_names = build_backward(graph, self.of, wrt, mode, activations, conv_input_grad,
                                                      strided=strided)
        if self._seed_builder is not None:
            if isinstance(self._seed_builder, ArgmaxSeed):
                self._seed_builder.build(model, seed_name, self.of, graph.tensors[self.of].dtype)
            else:
                from onnxfix.autodiff.seeds import drop_input

                drop_input(model, seed_name)
                try:
                    self._seed_builder.build(model, seed_name, self.of)
                except (InputError, UnsupportedModel):
                    raise
                except Exception as exc:  # noqa: BLE001 - a third-party builder
                    raise InputError(f"the seed builder {self._seed_builder!r} failed: {_first_line(exc)}") from None
        so = session_options(self._threads)
        try:
            session = make_session(model, self.providers, options=so)
        except Exception as exc:  # noqa: BLE001 - ORT raises many types; all mean "cannot run"
            raise UnsupportedModel(f"autodiff: ONNX Runtime cannot load the backward model: {_first_line(exc)}"
                                   ) from None
        input_names = [i.name for i in session.get_inputs() if i.name != seed_name]
        output_names = [o.name for o in session.get_outputs()]
        return _Variant(model, seed_name, grad_names, session, input_names, output_names)

    def _use(self, v: _Variant) -> None:
        self.model, self.seed_name, self.grad_names = v.model, v.seed_name, v.grad_names
        self.session, self.input_names, self.output_names = v.session, v.input_names, v.output_names
        self._from_feeds = [a for a in (self.of, *self.activations) if a not in v.output_names]

    def _variant_for(self, feeds: dict[str, np.ndarray]) -> _Variant:
        graph = self._graph_ref()
        if graph is None:  # pragma: no cover - the cache drops programs with their graph
            raise InputError("the model of this gradient program is gone")
        arrays = {n: np.asarray(feeds[n]) for n in graph.inputs if n not in graph.constants and n in feeds}
        values = {n: a for n, a in arrays.items() if _baked(a.dtype, a.shape)}
        shapes = {n: tuple(int(d) for d in a.shape) for n, a in arrays.items() if n not in values}
        key = (tuple(sorted(shapes.items())), tuple(sorted((n, v.tobytes()) for n, v in values.items())))
        with self._vlock:
            hit = self._variants.get(key)
            if hit is not None:
                self._variants.move_to_end(key)
                return hit
        v = self._build(specialise(graph, shapes, values))
        with self._vlock:
            self._variants[key] = v
            while len(self._variants) > MAX_VARIANTS:
                self._variants.popitem(last=False)
        return v

    @classmethod
    def get(cls, graph: Graph, of: str, wrt: Sequence[str], mode: str = "gradient",
            activations: Sequence[str] = (), provider: str = "cpu", threads: int | None = None,
            conv_input_grad: str = "auto", seed: Any = "fed", strided: str = "exact",
            argmax_axis: int | None = None) -> GradientProgram:
        """The cached program for this request (built on first use); the same as calling the class."""
        return cls(graph, of, wrt, mode, activations, provider, threads, conv_input_grad, seed, strided, argmax_axis)

    def run(self, feeds: dict[str, np.ndarray], seed: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``{"grad:"+wrt: gradient, activation: value, of: value}`` for one forward + backward pass.

        ``seed`` (shaped like ``of``) is required unless the program builds its seed in the graph."""
        for name in self.input_names:
            if name not in feeds:
                raise InputError(f"missing input {name!r} for the gradient computation")
        if self.per_shape:
            v = self._variant_for(feeds)
            self._use(v)  # the last variant run answers .model & co.
        else:
            v = _Variant(self.model, self.seed_name, self.grad_names, self.session, self.input_names,
                         self.output_names)
        inputs = {name: feeds[name] for name in v.input_names if name in feeds}
        missing = [n for n in v.input_names if n not in feeds]
        if missing:
            raise InputError(f"missing input {missing[0]!r} for the gradient computation")
        if self.seed == "fed":
            if seed is None:
                raise InputError("this gradient program needs a seed")
            inputs[v.seed_name] = np.asarray(seed)
        try:
            values = v.session.run(v.output_names, inputs)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"ONNX Runtime failed on this input: {_first_line(exc)}") from None
        out = dict(zip(v.output_names, values, strict=True))
        for name in (self.of, *self.activations):
            if name not in out and name in feeds:
                out[name] = np.asarray(feeds[name])
        return out


def _truly_missing(graph: Graph, of: str, wrt: Sequence[str], exc: BaseException) -> bool:
    """Whether the build failed for want of a rule (not for want of a static shape): no shape can fix that."""
    from onnxfix.autodiff import lowering
    from onnxfix.autodiff.registry import VJP_RULES

    for n in graph.nodes_between(list(wrt), of):
        if lowering.has_lowering(n):
            continue
        if n.domain not in ("", "ai.onnx") or n.op_type not in VJP_RULES:
            return True
    return False


def clear_cache() -> None:
    """Drop every cached program (tests, benchmarks)."""
    with _LOCK:
        _CACHE.clear()
