"""ONNX Runtime sessions: forward passes that expose exactly the intermediate tensors a request needs.

One :class:`Runtime` per model; sessions are cached per set of exposed tensors, so asking twice for the same
tensors never builds a second ``InferenceSession``. Exposing every tensor costs 1.2–2.4× a bare forward
(DESIGN §1), so callers name what they need; :meth:`Runtime.activations` exposes everything.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.graph import Graph

_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def choose_providers(provider: str) -> tuple[list[str], str | None]:
    """Execution providers for ``provider`` ("cpu" or "cuda") and a message when falling back to the CPU."""
    if provider not in _PROVIDERS:
        raise InputError(f"unknown provider {provider!r}; choose cpu or cuda")
    if provider == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return _PROVIDERS["cpu"], (
            "CUDA execution provider is not available in this onnxruntime build "
            f"({', '.join(ort.get_available_providers())}); running on the CPU"
        )
    return _PROVIDERS[provider], None


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options for every session onnxfix makes: quiet logs, ``threads`` (or $ONNXFIX_THREADS) intra-op threads,
    and no spin-waiting. Spinning workers of one session (the forward) keep the cores busy after its run and starve
    the next one (the gradient program): measured 48 ms instead of 23 ms for EfficientNet's input gradient."""
    so = ort.SessionOptions()
    so.log_severity_level = 4  # failures reach the user as exceptions with ORT's message; no log lines on stderr
    n = threads or int(os.environ.get("ONNXFIX_THREADS", "0") or 0)
    if n:
        so.intra_op_num_threads = n
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class Runtime:
    """Forward passes of a :class:`~onnxfix.graph.Graph` on ONNX Runtime."""

    def __init__(self, graph: Graph, provider: str = "cpu", threads: int | None = None):
        self.graph = graph
        self.providers, self.fallback_message = choose_providers(provider)
        if self.fallback_message:
            print(f"onnxfix: {self.fallback_message}", file=sys.stderr)
        self.threads = threads
        self._sessions: dict[frozenset[str], ort.InferenceSession] = {}
        self._lock = threading.Lock()
        self._model_bytes: bytes | None = None

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
                try:
                    sess = ort.InferenceSession(model.SerializeToString(), self._options(), providers=self.providers)
                except Exception as exc:  # noqa: BLE001 - ORT raises many types; all mean "cannot run"
                    raise UnsupportedModel(f"ONNX Runtime cannot load this model: {_first_line(exc)}") from None
                self._sessions[key] = sess
        return sess

    # -- forward ------------------------------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray], tensors: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Run the model; return the graph outputs and the requested ``tensors`` (constants included) by name."""
        wanted = list(dict.fromkeys(tensors))
        sess = self.session(wanted)
        names = [o.name for o in sess.get_outputs()]
        try:
            values = sess.run(names, feeds)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"ONNX Runtime failed on this input: {_first_line(exc)}") from None
        out = dict(zip(names, values, strict=True))
        for t in wanted:
            if t in self.graph.constants:
                out[t] = self.graph.constants[t]
        return out

    def activations(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every tensor of the graph (inputs, intermediates, outputs, constants excluded) for ``feeds``."""
        names = [t for n in self.graph.nodes for t in n.outputs if t]
        out = self.run(feeds, names)
        out.update({k: v for k, v in feeds.items()})
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:400] if text else type(exc).__name__
