"""A model ready to explain: its graph, its runtime, its image input and the output being explained.

Decisions on the explained output (the *head*):

* the explained output is the model's first floating-point output unless the caller names another;
* if it is produced by Softmax/LogSoftmax (through Identity/Cast at most), the scores explained are that op's
  input — the logits before the softmax, as Grad-CAM and CNN Fixations prescribe;
* the class axis is the last non-singleton axis; the batch axis is a symbolic dimension if the output has one,
  else the first axis of size 1; a remaining axis of size > 1 is a time axis (sequence models such as a CRNN or a
  captioner): one step is explained, by default the most confident one (highest softmax probability).

Input element types: a floating-point input takes the normalised image in its own precision; a uint8 input takes raw
pixels 0..255 (mean 0, std 1, scale 1 unless metadata or flags say otherwise); other integer inputs are refused
(they would need the model's quantisation parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.graph import Graph
from onnxfix.io.image import Preprocess, infer_preprocess
from onnxfix.io.labels import find_labels, label_of
from onnxfix.io.model import load_model
from onnxfix.io.model import validate as validate_model
from onnxfix.runtime import Runtime

_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Head:
    """The explained output: graph output name, the logits tensor, and its axes."""

    output: str
    logits: str
    rank: int
    class_axis: int
    batch_axis: int | None
    time_axis: int | None
    softmax: bool


@dataclass(frozen=True)
class Target:
    """One explained score: class ``index`` (at ``step`` for sequence outputs) and its full coordinates."""

    index: int
    label: str
    step: int | None
    coords: tuple[int, ...]
    logit: float
    score: float  # softmax probability over the class axis


def softmax(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    e = np.exp(v - np.max(v))
    return e / e.sum()


class Model:
    """Load and analyse once; :class:`~onnxfix.api.Explainer` and the methods share it."""

    def __init__(self, source: str | Path | onnx.ModelProto, provider: str = "cpu", output: str | None = None,
                 labels_file: str | list[str] | None = None, threads: int | None = None,
                 max_model_bytes: int | None = None):
        if isinstance(source, onnx.ModelProto):
            proto, self.path = source, None
            validate_model(proto, proto.graph.name or "<model>", max_model_bytes)
        else:
            proto, self.path = load_model(source, max_model_bytes), Path(source)
        self.name = self.path.name if self.path else (proto.graph.name or "model")
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        self.graph = Graph.from_model(proto)
        self.provider = provider
        self.runtime = Runtime(self.graph, provider=provider, threads=threads)
        self.input = self._image_input()
        self.input_shape = self.graph.shape(self.input) or ()
        self.head = self._head(output)
        #: "nchw" or "nhwc": the image input's layout (metadata or shape); the Explainer sets it from its
        #: preprocessing, overrides included, so every method reads one answer
        self.layout = self._layout()
        n_classes = self._dim(self.head.logits, self.head.class_axis)
        self.labels = find_labels(self.path, self.metadata, n_classes, labels_file)

    # -- analysis -----------------------------------------------------------------------------------------------
    def _image_input(self) -> str:
        g = self.graph
        if not g.inputs:
            raise UnsupportedModel("the model has no inputs to explain")
        rank4 = [i for i in g.inputs if g.shape(i) is not None and len(g.shape(i)) == 4]
        if len(g.inputs) > 1:
            others = [i for i in g.inputs if i not in rank4[:1]]
            raise UnsupportedModel(
                f"the model has {len(g.inputs)} inputs ({', '.join(g.inputs)}); onnxfix explains models with one "
                f"image input — {', '.join(others)} would need values")
        return g.inputs[0]

    def _layout(self) -> str:
        try:
            return infer_preprocess(self.input_shape if len(self.input_shape) == 4 else None, self.metadata,
                                    self.input).layout
        except InputError:
            return "nchw"

    def _dim(self, tensor: str, axis: int) -> int | None:
        s = self.graph.shape(tensor)
        return s[axis] if s is not None and axis < len(s) and isinstance(s[axis], int) else None

    def _head(self, output: str | None) -> Head:
        g = self.graph
        outs = [o.name for o in g.model.graph.output]
        if output is not None:
            if output not in outs:
                raise InputError(f"the model has no output {output!r}; outputs: {', '.join(outs)}")
            name = output
        else:
            floats = [o.name for o in g.model.graph.output if o.type.tensor_type.elem_type in _FLOAT]
            # skip outputs that are constants or the input itself (they do not depend on the image)
            floats = [o for o in floats if o not in g.constants and o not in g.inputs] or floats
            if not floats:
                raise UnsupportedModel("the model has no floating-point output to explain")
            name = floats[0]
        logits, softmax_head = name, False
        node = g.producer(name)
        while node is not None and node.op_type in ("Identity", "Cast"):
            logits = node.inputs[0]
            node = g.producer(logits)
        if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
            logits, softmax_head = node.inputs[0], True
        for t in dict.fromkeys((name, logits)):  # a hostile or degenerate graph: nothing depends on the image
            if t in g.constants or t in g.inputs:
                raise UnsupportedModel(f"output {name!r} is {'a constant' if t in g.constants else 'a model input'}"
                                       f"{'' if t == name else f' ({t!r}) under a softmax'}; it does not depend on "
                                       "the image, nothing to explain")
        if not g.nodes_between([self.input], logits):
            raise UnsupportedModel(f"output {name!r} does not depend on the image input {self.input!r} (no path in "
                                   "the graph); nothing to explain")
        shape = g.shape(logits) or g.shape(name)
        out_vi = {o.name: o for o in g.model.graph.output}[name]
        dims = out_vi.type.tensor_type.shape.dim
        symbolic = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
        if shape is None:
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        rank = len(shape)
        if rank == 0:
            raise UnsupportedModel(f"output {name!r} is a scalar; nothing to explain")
        non1 = [i for i, d in enumerate(shape) if d != 1]
        class_axis = non1[-1] if non1 else rank - 1
        batch_axis = symbolic[0] if symbolic and symbolic[0] != class_axis else next(
            (i for i, d in enumerate(shape) if d == 1 and i != class_axis), None)
        time_axis = next((i for i, d in enumerate(shape)
                          if i not in (class_axis, batch_axis) and (d is None or d > 1)), None)
        return Head(name, logits, rank, class_axis, batch_axis, time_axis, softmax_head)

    # -- preprocessing and targets ------------------------------------------------------------------------------
    def preprocess(self, **overrides) -> Preprocess:
        shape = self.input_shape
        spec = infer_preprocess(shape if len(shape) == 4 else None, self.metadata, self.input)
        if overrides.get("layout") and overrides["layout"] != spec.layout and len(shape) == 4:
            c = shape[1] if overrides["layout"] == "nchw" else shape[3]
            h, w = (shape[2], shape[3]) if overrides["layout"] == "nchw" else (shape[1], shape[2])
            spec = spec.with_overrides(layout=overrides["layout"], height=h if isinstance(h, int) else spec.height,
                                       width=w if isinstance(w, int) else spec.width,
                                       channels="gray" if c == 1 else spec.channels)
        dt = self.graph.tensors[self.input].dtype
        if dt is not None and np.issubdtype(dt, np.floating):
            spec = spec.with_overrides(dtype=str(dt))
        elif dt == np.uint8:
            # a uint8 input takes raw pixels 0..255 (the usual convention), unless metadata or flags say otherwise
            raw = {k: v for k, v in (("mean", (0.0,) * spec.n_channels), ("std", (1.0,) * spec.n_channels),
                                     ("scale", 1.0)) if f"onnxfix.{k}" not in self.metadata}
            spec = spec.with_overrides(dtype="uint8", **raw)
        elif dt is not None:
            raise UnsupportedModel(f"model input {self.input!r} has element type {dt}; onnxfix feeds float or uint8 "
                                   "images (an integer input needs the model's own quantisation)")
        spec = spec.with_overrides(**{k: v for k, v in overrides.items() if k != "layout"})
        if not (0 < spec.height <= 16384 and 0 < spec.width <= 16384):  # a corrupt or hostile declared size
            raise InputError(f"model input {self.input!r} declares {spec.height}×{spec.width} pixels, outside "
                             "1..16384; give the size with --size H W")
        return spec

    def scores_at(self, logits: np.ndarray, step: int | None) -> np.ndarray:
        """The class-score vector of batch item 0 (at ``step`` for sequence outputs)."""
        h = self.head
        idx: list[int | slice] = [0] * logits.ndim
        idx[h.class_axis] = slice(None)
        if h.time_axis is not None:
            idx[h.time_axis] = 0 if step is None else step
        return np.asarray(logits[tuple(idx)], np.float32).reshape(-1)

    def resolve_target(self, logits: np.ndarray, target: int | str | None = None,
                       step: int | None = None) -> Target:
        """Pick the explained score: ``target`` (index or label) or the top class; the most confident step."""
        h = self.head
        if h.time_axis is not None:
            T = logits.shape[h.time_axis]
            if step is None:
                conf = [softmax(self.scores_at(logits, t)).max() for t in range(T)]
                step = int(np.argmax(conf))
            elif not 0 <= step < T:
                raise InputError(f"step {step} is out of range: the output has {T} steps")
        else:
            step = None
        scores = self.scores_at(logits, step)
        index = int(np.argmax(scores)) if target is None else self.class_index(target, len(scores))
        coords = [0] * logits.ndim
        coords[h.class_axis] = index
        if h.time_axis is not None:
            coords[h.time_axis] = step  # type: ignore[assignment]
        p = softmax(scores)
        return Target(index, label_of(self.labels, index), step, tuple(coords), float(scores[index]), float(p[index]))

    def class_index(self, target: int | str, n: int) -> int:
        """The class index of ``target`` (an index or a label) among ``n`` classes; InputError when out of range."""
        if isinstance(target, str) and not target.lstrip("-").isdigit():
            names = self.labels or []
            if target in names:
                return names.index(target)
            low = [x.lower() for x in names]
            if target.lower() not in low:
                raise InputError(f"target label {target!r} is not among the model's {n} classes")
            return low.index(target.lower())
        index = int(target)
        if not 0 <= index < n:
            raise InputError(f"target {index} is out of range: the model has {n} classes (0..{n - 1})")
        return index

    def single_logits_shape(self) -> tuple[int, ...] | None:
        """The logits' shape for a batch-1 input when they hold one score vector (no time axis; a symbolic batch
        axis counts as 1), else ``None``: then a target's coordinates are known before any forward pass."""
        h = self.head
        shape = self.graph.shape(h.logits)
        if h.time_axis is not None or shape is None:
            return None
        shape = tuple(1 if i == h.batch_axis and not (isinstance(d, int) and d > 0) else d for i, d in enumerate(shape))
        if not all(isinstance(d, int) and d > 0 for d in shape):
            return None
        if int(np.prod(shape)) != shape[h.class_axis]:
            return None
        return tuple(int(d) for d in shape)

    def top(self, scores: np.ndarray, k: int = 5) -> list[dict]:
        p = softmax(scores)
        order = np.argsort(-scores, kind="stable")[:k]
        return [{"index": int(i), "label": label_of(self.labels, int(i)), "score": float(p[i]),
                 "logit": float(scores[i])} for i in order]
