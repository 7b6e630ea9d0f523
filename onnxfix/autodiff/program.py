"""A built backward pass with its ONNX Runtime session, cached per request (DESIGN §1: never a session per call).

``GradientProgram(graph, of, wrt, mode, activations)`` (or ``.get``) returns the cached program for that request —
the cache is keyed by ``id(graph)`` plus the request and holds only a weak reference to the graph, so programs go
away with their graph. ``run(feeds, seed)`` is one ``InferenceSession.run`` call that returns the forward value of
``of``, the requested activations and ``d(of · seed)/d(wrt)`` for each ``wrt`` tensor.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxfix.autodiff.builder import build_backward
from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.graph import Graph
from onnxfix.runtime import choose_providers, session_options

_CACHE: dict[tuple, tuple[weakref.ref, GradientProgram]] = {}
_LOCK = threading.Lock()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:400] if text else type(exc).__name__


SEEDS = ("fed", "argmax")


def _key(graph: Graph, of: str, wrt: Sequence[str], mode: str, activations: Sequence[str], provider: str,
         threads: int | None, conv_input_grad: str, seed: str = "fed", strided: str = "exact") -> tuple:
    return (id(graph), of, tuple(wrt), mode, tuple(activations), provider, threads, conv_input_grad, seed, strided)


def seed_in_graph(model: onnx.ModelProto, seed_name: str, of: str, dtype: np.dtype | None = None) -> None:
    """Replace the seed input by the one-hot of ``argmax(of)`` computed in the graph (over all of ``of``'s elements:
    for a batch-1 classifier output, the top class; ties go to the first index, as numpy's argmax).

    One ``InferenceSession.run`` then does forward, seed and backward: no separate forward to find the top class."""
    g = model.graph
    keep = [i for i in g.input if i.name != seed_name]
    del g.input[:]
    g.input.extend(keep)
    p = f"{seed_name}/argmax"
    g.initializer.extend([numpy_helper.from_array(np.array([1, -1], np.int64), p + "/flat_shape"),
                          numpy_helper.from_array(np.array([0, 1], dtype or np.float32), p + "/values")])
    g.node.extend([
        helper.make_node("Reshape", [of, p + "/flat_shape"], [p + "/flat"], name=p + "/reshape"),
        helper.make_node("ArgMax", [p + "/flat"], [p + "/index"], axis=1, keepdims=0, name=p + "/argmax"),
        helper.make_node("Size", [of], [p + "/depth"], name=p + "/size"),
        helper.make_node("OneHot", [p + "/index", p + "/depth", p + "/values"], [p + "/onehot"], axis=-1,
                         name=p + "/onehot"),
        helper.make_node("Shape", [of], [p + "/shape"], name=p + "/shape"),
        helper.make_node("Reshape", [p + "/onehot", p + "/shape"], [seed_name], name=p + "/seed"),
    ])


def _evict(graph_id: int) -> None:
    with _LOCK:
        for key in [k for k in _CACHE if k[0] == graph_id]:
            del _CACHE[key]


class GradientProgram:
    """The forward + backward model of one request and its session.

    Constructing one is cached: ``GradientProgram(graph, of, wrt, …)`` with the same graph object and the same
    request returns the program built the first time (so does :meth:`get`)."""

    def __new__(cls, graph: Graph, of: str, wrt: Sequence[str], mode: str = "gradient",
                activations: Sequence[str] = (), provider: str = "cpu", threads: int | None = None,
                conv_input_grad: str = "auto", seed: str = "fed", strided: str = "exact"):
        key = _key(graph, of, wrt, mode, activations, provider, threads, conv_input_grad, seed, strided)
        with _LOCK:
            hit = _CACHE.get(key)
            if hit is not None and hit[0]() is graph:
                return hit[1]
        self = super().__new__(cls)
        self._built = False
        return self

    def __init__(self, graph: Graph, of: str, wrt: Sequence[str], mode: str = "gradient",
                 activations: Sequence[str] = (), provider: str = "cpu", threads: int | None = None,
                 conv_input_grad: str = "auto", seed: str = "fed", strided: str = "exact"):
        if self._built:
            return
        if seed not in SEEDS:
            raise InputError(f"seed must be one of {SEEDS}")
        self.of = of
        self.wrt = tuple(dict.fromkeys(wrt))
        self.mode = mode
        self.activations = tuple(dict.fromkeys(activations))
        self.model, self.seed_name, self.grad_names = build_backward(graph, of, list(self.wrt), mode,
                                                                     list(self.activations), conv_input_grad,
                                                                     strided=strided)
        self.seed = seed
        if seed == "argmax":
            seed_in_graph(self.model, self.seed_name, of, graph.tensors[of].dtype)
        self.providers, self.fallback_message = choose_providers(provider)
        if self.fallback_message:
            print(f"onnxfix: {self.fallback_message}", file=sys.stderr)
        so = session_options(threads)
        try:
            self.session = ort.InferenceSession(self.model.SerializeToString(), so, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises many types; all mean "cannot run"
            raise UnsupportedModel(f"autodiff: ONNX Runtime cannot load the backward model: {_first_line(exc)}"
                                   ) from None
        self.input_names = [i.name for i in self.session.get_inputs() if i.name != self.seed_name]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._from_feeds = [a for a in (of, *self.activations) if a not in self.output_names]
        self._built = True
        key = _key(graph, of, wrt, mode, activations, provider, threads, conv_input_grad, seed, strided)
        with _LOCK:
            if not any(k[0] == id(graph) for k in _CACHE):
                weakref.finalize(graph, _evict, id(graph))
            _CACHE.setdefault(key, (weakref.ref(graph), self))

    @classmethod
    def get(cls, graph: Graph, of: str, wrt: Sequence[str], mode: str = "gradient",
            activations: Sequence[str] = (), provider: str = "cpu", threads: int | None = None,
            conv_input_grad: str = "auto", seed: str = "fed", strided: str = "exact") -> GradientProgram:
        """The cached program for this request (built on first use); the same as calling the class."""
        return cls(graph, of, wrt, mode, activations, provider, threads, conv_input_grad, seed, strided)

    def run(self, feeds: dict[str, np.ndarray], seed: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``{"grad:"+wrt: gradient, activation: value, of: value}`` for one forward + backward pass.

        ``seed`` (shaped like ``of``) is required unless the program was built with ``seed="argmax"``."""
        inputs = {}
        for name in self.input_names:
            if name not in feeds:
                raise InputError(f"missing input {name!r} for the gradient computation")
            inputs[name] = feeds[name]
        if self.seed == "fed":
            if seed is None:
                raise InputError("this gradient program needs a seed")
            inputs[self.seed_name] = np.asarray(seed)
        try:
            values = self.session.run(self.output_names, inputs)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"ONNX Runtime failed on this input: {_first_line(exc)}") from None
        out = dict(zip(self.output_names, values, strict=True))
        for name in self._from_feeds:
            if name in feeds:
                out[name] = np.asarray(feeds[name])
        return out


def clear_cache() -> None:
    """Drop every cached program (tests, benchmarks)."""
    with _LOCK:
        _CACHE.clear()
