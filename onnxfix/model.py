"""A model ready to explain: its graph, its runtime, its image input and the output being explained.

Decisions on the explained output (the *head*):

* the explained output is the model's first floating-point output unless the caller names another;
* if it is produced by Softmax/LogSoftmax (through Identity/Cast at most), the scores explained are that op's
  input — the logits before the softmax, as Grad-CAM and CNN Fixations prescribe;
* the class axis is the last non-singleton axis; the batch axis is a symbolic dimension if the output has one,
  else the first axis of size 1; a remaining axis of size > 1 is a time axis (sequence models such as a CRNN or a
  captioner): one step is explained, by default the most confident one (highest softmax probability);
* a 4-D output whose last two axes have spatial extent (> 1 or symbolic) is a *dense* map (segmentation logits
  [N, C, H, W], a single-map output [N, 1, H, W]): class axis 1, batch axis 0, explained through
  :class:`onnxfix.targets.Region` — never as a classifier over its columns.

Analysis worked out once per model (tails, CAM heads, feature maps, occlusion plans, the batch-dynamic copy) lives in
``Model.cache`` (:class:`AnalysisCache`), an explicit per-model cache — never attributes parked on the model.

Input element types: a floating-point input takes the normalised image in its own precision; a uint8 input takes raw
pixels 0..255 (mean 0, std 1, scale 1 unless metadata or flags say otherwise); other integer inputs are refused
(they would need the model's quantisation parameters).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.graph import Graph
from onnxfix.heads import Head as Head  # re-exported: the explained output and its axes
from onnxfix.io.image import Preprocess, infer_preprocess
from onnxfix.io.labels import find_labels, label_of
from onnxfix.io.model import load_model
from onnxfix.io.model import validate as validate_model
from onnxfix.runtime import Runtime
from onnxfix.targets import Class as ClassTarget
from onnxfix.targets import Resolved, Target, parse_target
from onnxfix.targets import Step as StepTarget
from onnxfix.targets import class_index as _class_index
from onnxfix.targets import softmax as softmax  # re-exported (evaluate.runner imports it from here)

_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


class AnalysisCache:
    """Per-model analysis, built on first use: ``cache.get(key, build)``. Thread-safe; one per :class:`Model`."""

    def __init__(self) -> None:
        self._d: dict[Any, Any] = {}
        self._lock = threading.RLock()

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._d:
                self._d[key] = build()
            return self._d[key]

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


class Model:
    """Load and analyse once; :class:`~onnxfix.api.Explainer` and the methods share it."""

    def __init__(self, source: str | Path | onnx.ModelProto, provider: str = "cpu", output: str | None = None,
                 labels_file: str | list[str] | None = None, threads: int | None = None,
                 max_model_bytes: int | None = None, head: str | None = None,
                 inputs: dict[str, Any] | None = None, time_axis: int | None = None, class_axis: int | None = None,
                 base_dir: str | Path | None = None):
        if isinstance(source, onnx.ModelProto):
            # in-memory models follow the external-data folder rule too (base_dir; none: external data refused)
            proto, self.path = validate_model(source, source.graph.name or "<model>", max_model_bytes,
                                              base_dir=base_dir), None
        else:
            proto, self.path = load_model(source, max_model_bytes), Path(source)
        self.name = self.path.name if self.path else (proto.graph.name or "model")
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        self.graph = Graph.from_model(proto)
        #: values of the inputs other than the image, held fixed (baked into the graph as constants)
        self.fixed_inputs: dict[str, np.ndarray] = {}
        if len(self.graph.inputs) > 1 or inputs:
            proto = self._fix_inputs(proto, dict(inputs or {}))
            self.graph = Graph.from_model(proto)
        self._head_override, self._axes = head, (time_axis, class_axis)
        self.provider = provider
        self.threads = threads
        #: per-model analysis cache (tails, CAM head, feature maps, occlusion plans, the batch-dynamic copy)
        self.cache = AnalysisCache()
        self.runtime = Runtime(self.graph, provider=provider, threads=threads)
        self.input = self._image_input()
        self.input_shape = self.graph.shape(self.input) or ()
        self.head = self._head(output)
        if self.head.logits not in self.graph.tensors:  # a joined tensor (SSD boxes+scores, NMS outputs)
            from onnxfix import heads

            proto = onnx.ModelProto()
            proto.CopyFrom(self.graph.original)
            (heads.joined_nms if self.head.kind == "nms" else heads.joined_detections)(proto, self.head)
            self.graph = Graph.from_model(proto)
            self.runtime = Runtime(self.graph, provider=provider, threads=threads)
        #: "nchw" or "nhwc": the image input's layout (metadata or shape); the Explainer sets it from its
        #: preprocessing, overrides included, so every method reads one answer
        self.layout = self._layout()
        self.n_classes = self.head.n_classes if self.head.n_classes is not None or self.head.kind == "nms" else \
            self._dim(self.head.logits, self.head.class_axis)
        self.labels = find_labels(self.path, self.metadata, self.n_classes, labels_file)
        if self.labels is not None and self.n_classes is None:
            self.n_classes = len(self.labels)
        if self.labels is None:
            from onnxfix.heads import parse_names

            self.labels = parse_names(self.metadata, self.n_classes)
            if self.labels is not None and self.n_classes is None:
                self.n_classes = len(self.labels)

    # -- analysis -----------------------------------------------------------------------------------------------
    def _image_input(self) -> str:
        g = self.graph
        if not g.inputs:
            raise UnsupportedModel("the model has no inputs to explain")
        return g.inputs[0]

    def _fix_inputs(self, proto: onnx.ModelProto, given: dict[str, Any]) -> onnx.ModelProto:
        """Hold every input but the image fixed: ``given`` values, else a default (an image-size input gets the
        image's height and width); each becomes a constant expanded to the image's batch, so the methods see a
        one-input model. InputError for an unknown name, a wrong shape, or a value still missing."""
        from onnx import helper, numpy_helper

        g = self.graph
        for k in given:
            if k not in g.inputs:
                raise InputError(f"--input {str(k)[:80]!r}: the model has no input of that name; inputs: "
                                 f"{', '.join(g.inputs)}")
        cands = [i for i in g.inputs if i not in given]
        rank4 = [i for i in cands if g.shape(i) is not None and len(g.shape(i)) == 4]
        named = [i for i in rank4 if any(w in i.lower() for w in ("image", "img", "pixel", "input"))]
        image = (named or rank4 or cands or [None])[0]
        if image is None:
            raise InputError("--input gives values for every input; leave the image input out")
        ishape = g.shape(image) or ()
        hw = [d for d in ishape[1:] if isinstance(d, int) and d > 4][-2:] if len(ishape) == 4 else []
        out = onnx.ModelProto()
        out.CopyFrom(proto)
        gp = out.graph
        for name in [i for i in g.inputs if i != image]:
            t = g.tensors[name]
            dt = t.dtype if t.dtype is not None else np.dtype(np.float32)
            shape = t.shape or ()
            if name in given:
                v = np.asarray(given[name])
                if v.dtype.kind not in "biuf":
                    raise InputError(f"--input {name}: values of type {v.dtype} are not numbers")
                v = v.astype(dt)
                if v.ndim == len(shape) - 1:
                    v = v[None]
                if v.ndim != len(shape) or any(isinstance(d, int) and d > 0 and d != s
                                               for d, s in zip(shape, v.shape, strict=True)):
                    raise InputError(f"--input {name}: shape {list(v.shape)} does not fit the input's "
                                     f"{[d if isinstance(d, int) else '?' for d in shape]}")
            elif len(hw) == 2 and any(w in name.lower() for w in ("size", "shape", "hw")) and \
                    shape and shape[-1] == 2 and len(shape) <= 2:
                v = np.array(hw, dt).reshape([1] * (len(shape) - 1) + [2])
            else:
                listed = ", ".join(f"{i} {list(g.shape(i) or [])}" for i in g.inputs)
                raise UnsupportedModel(
                    f"the model has {len(g.inputs)} inputs ({listed}); "
                    f"onnxfix explains {image!r} and holds the others fixed: give {name!r} with --input "
                    f"{name}=FILE.npy / Explainer(inputs={{{name!r}: array}})")
            self.fixed_inputs[name] = v
            keep = [i for i in gp.input if i.name != name]
            del gp.input[:]
            gp.input.extend(keep)
            p = f"onnxfix/input/{name}"
            gp.initializer.append(numpy_helper.from_array(v, p + "/value"))
            batch_follows = len(shape) >= 1 and v.shape[0] == 1 and len(ishape) >= 1 and not (
                isinstance(shape[0], int) and shape[0] > 1)
            if batch_follows:  # broadcast to the image's batch: Expand(value, [N, *rest])
                gp.initializer.extend([numpy_helper.from_array(np.array(v.shape[1:], np.int64), p + "/rest"),
                                       numpy_helper.from_array(np.array([0], np.int64), p + "/zero"),
                                       numpy_helper.from_array(np.array([1], np.int64), p + "/one")])
                gp.node.extend([
                    helper.make_node("Shape", [image], [p + "/ishape"], name=p + "/ishape"),
                    helper.make_node("Slice", [p + "/ishape", p + "/zero", p + "/one"], [p + "/n"], name=p + "/n"),
                    helper.make_node("Concat", [p + "/n", p + "/rest"], [p + "/shape"], axis=0, name=p + "/shape"),
                    helper.make_node("Expand", [p + "/value", p + "/shape"], [name], name=p + "/expand")])
            else:
                gp.node.append(helper.make_node("Identity", [p + "/value"], [name], name=p + "/identity"))
        # nodes must stay topologically sorted: move the new ones first
        new = [n for n in gp.node if n.name.startswith("onnxfix/input/")]
        old = [n for n in gp.node if not n.name.startswith("onnxfix/input/")]
        del gp.node[:]
        gp.node.extend(new + old)
        return out

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
        if not shape:
            raise UnsupportedModel(f"output {name!r} is a scalar; nothing to explain")
        ishape = g.shape(self.input) or ()
        # a symbolic leading (batch) axis alone needs no probe; an unknown other axis, or an image input of dynamic
        # size (whose declared output shape may be wrong altogether: ddddocr), does
        if any(d is None for d in shape[1:]) or not all(isinstance(d, int) and d > 0 for d in ishape[1:]):
            probed = self._probe_shape(logits, tuple(shape))
            if len(probed) != len(shape):  # the declared shape was wrong: its symbolic axes mean nothing
                symbolic = []
            shape = probed
        rank = len(shape)
        if rank == 0:
            raise UnsupportedModel(f"output {name!r} is a scalar; nothing to explain")
        from onnxfix.heads import recognise

        special = recognise(g, name, logits, softmax_head, tuple(shape), symbolic, self.metadata, self.input,
                            getattr(self, "_head_override", None))
        if special is not None:
            return special
        t_over, c_over = getattr(self, "_axes", (None, None))
        for what, ax in (("--time-axis", t_over), ("--class-axis", c_over)):
            if ax is not None and not (isinstance(ax, int) and -rank <= ax < rank):
                raise InputError(f"{what} {ax!r} is out of range for output {name!r} of rank {rank}")
        non1 = [i for i, d in enumerate(shape) if d != 1]
        class_axis = non1[-1] if non1 else rank - 1
        if c_over is not None:
            class_axis = c_over % rank
        batch_axis = symbolic[0] if symbolic and symbolic[0] != class_axis else next(
            (i for i, d in enumerate(shape) if d == 1 and i != class_axis), None)
        time_axis = next((i for i, d in enumerate(shape)
                          if i not in (class_axis, batch_axis) and (d is None or d > 1)), None)
        if t_over is not None:
            time_axis = t_over % rank
            if time_axis == class_axis:
                raise InputError(f"--time-axis and --class-axis are both {time_axis}")
            if batch_axis == time_axis:
                batch_axis = next((i for i in range(rank) if i not in (time_axis, class_axis)), None)
        if self._head_override == "sequence" and time_axis is None:
            raise UnsupportedModel(f"--head sequence: output {name!r} {list(shape)} has no time axis")
        # a probed shape that disagrees with the declared one: its class count is the one to trust
        n_cls = shape[class_axis] if isinstance(shape[class_axis], int) and \
            self._dim(logits, class_axis) != shape[class_axis] else None
        return Head(name, logits, rank, class_axis, batch_axis, time_axis, softmax_head,
                    "sequence" if time_axis is not None else "classifier", n_classes=n_cls)

    def _probe_shape(self, tensor: str, shape: tuple) -> tuple:
        """The run-time shape of ``tensor`` for a batch-1 input of zeros (declared shapes can be symbolic or wrong,
        e.g. ddddocr's declared ``[1, seqlen]`` that is really [T, 1, C]); the batch axis stays symbolic.

        A dynamic height/width of the image input gets stand-in sizes (64, then 96 on the last dynamic axis, both
        multiples of 32 as detectors and OCR trunks need): a dimension of ``tensor`` that changes between the two
        runs depends on the image size and stays unknown (``None``). When the probe cannot run, the declared shape
        stands."""
        ishape = self.graph.shape(self.input) or ()
        dt = self.graph.tensors[self.input].dtype
        if not ishape or dt is None:
            return shape
        rest = [d if isinstance(d, int) and d > 0 else None for d in ishape[1:]]
        dynamic = [i for i, d in enumerate(rest) if d is None]
        if len(dynamic) > 2:  # more than H and W unknown (channels too): no sensible stand-in
            return shape
        sizes = [64 if d is None else d for d in rest]
        if int(np.prod(sizes)) > 16_000_000:
            return shape
        runs = [sizes] if not dynamic else [sizes, [96 if i == dynamic[-1] else d for i, d in enumerate(sizes)]]
        real: list[tuple[int, ...]] = []
        try:
            for dims in runs:
                x = np.zeros((1, *dims), dt)
                real.append(tuple(self.runtime.run({self.input: x}, [tensor])[tensor].shape))
        except Exception:  # noqa: BLE001 - the probe is a hint; the declared shape stands
            return shape
        if len({len(r) for r in real}) != 1:
            return shape
        got = tuple(None if any(r[i] != real[0][i] for r in real) else int(real[0][i]) for i in range(len(real[0])))
        if len(got) != len(shape):
            return got
        return tuple(None if (d is None and r == 1 and i == 0) or r is None else r
                     for i, (d, r) in enumerate(zip(shape, got, strict=True)))

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

    def scores_at(self, logits: np.ndarray, step: int | None, n: int = 0) -> np.ndarray:
        """The class-score vector of batch item ``n`` (at ``step`` for sequence outputs; for a dense output the
        class scores summed over the map)."""
        h = self.head
        if h.kind in ("detection", "nms"):
            from onnxfix.heads import detection_scores

            return detection_scores(self, logits, n)
        if h.kind == "dense":
            item = np.take(logits, n, axis=h.batch_axis)
            return np.asarray(item, np.float64).reshape(item.shape[0], -1).mean(axis=1).astype(np.float32)
        idx: list[int | slice] = [0] * logits.ndim
        idx[h.class_axis] = slice(None)
        if h.batch_axis is not None:
            idx[h.batch_axis] = n
        if h.time_axis is not None:
            idx[h.time_axis] = 0 if step is None else step
        return np.asarray(logits[tuple(idx)], np.float32).reshape(-1)

    def default_target(self) -> Target:
        """What is explained when the user names nothing: the top class (at the most confident step), or for a
        dense output the predicted region of its main class."""
        from onnxfix.targets import Box, Class, Region

        if self.head.kind in ("detection", "nms"):
            return Box()
        return Region() if self.head.kind == "dense" else Class()

    def resolve_target(self, logits: np.ndarray, target: Any = None, step: int | None = None,
                       n: int = 0) -> Resolved:
        """Resolve ``target`` (None, an index, a label, a CLI string or a :class:`~onnxfix.targets.Target`) for batch
        item ``n`` of ``logits``; ``step`` picks the time step of sequence outputs (default: the most confident)."""
        t = self.as_target(target, step)
        if t is None:
            t = self.default_target()
        if self.head.kind == "sequence" and isinstance(t, ClassTarget):
            t = StepTarget(None, t.index_or_label)
        if self.head.kind in ("detection", "nms") and isinstance(t, ClassTarget):
            from onnxfix.targets import Box

            t = Box(cls=t.index_or_label)  # the best detection of that class
        return t.resolve(self, logits, n)

    def as_target(self, target: Any, step: int | None = None) -> Target | None:
        """The target object for what users write (``None``, an index, a label, a CLI string or a Target) and an
        optional ``step`` of a sequence output; ``None`` stays ``None`` (the default target, decided per image)."""
        t = parse_target(target)
        if step is None:
            return t
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise InputError(f"step {step!r} is not an integer")
        if self.head.time_axis is None:
            raise InputError(f"--step {step}: the explained output {self.head.output!r} has no time axis (it is not a "
                             "sequence); leave --step out")
        if t is not None and not isinstance(t, ClassTarget | StepTarget):
            raise InputError(f"--step applies to class targets on sequence outputs, not to {t!r}")
        return StepTarget(int(step), None if t is None else (t.index_or_label if isinstance(t, ClassTarget) else t.cls))

    def class_index(self, target: int | str, n: int) -> int:
        """The class index of ``target`` (an index or a label) among ``n`` classes; InputError when out of range."""
        return _class_index(self, target, n)

    def batch_model(self) -> Model | None:
        """This model if its batch axis is dynamic; else its validated batch-dynamic copy (built once, cached), or
        ``None`` when the copy does not reproduce the batch-one outputs exactly (then images run one by one)."""
        return self.cache.get("batch_model", self._build_batch_model)

    def _build_batch_model(self) -> Model | None:
        shape = self.input_shape
        if not shape or not isinstance(shape[0], int) or shape[0] <= 0:
            return self
        if shape[0] != 1:
            return None
        from onnxfix.errors import OnnxfixError
        from onnxfix.graph import batch_dynamic_copy

        try:
            proto = batch_dynamic_copy(self.graph, self.input)
            sib = Model.__new__(Model)
            sib.__dict__.update(self.__dict__)
            sib.graph = Graph.from_model(proto)
            sib.cache = AnalysisCache()
            sib.runtime = Runtime(sib.graph, provider=self.provider, threads=self.threads)
            sib.runtime.memory_budget = self.runtime.memory_budget
            sib.input_shape = sib.graph.shape(self.input) or ()
            rng = np.random.default_rng(0)
            dt = self.graph.tensors[self.input].dtype or np.float32
            x = rng.standard_normal((1, *[int(d) for d in shape[1:]])).astype(dt)
            name = self.head.logits
            one = self.runtime.run({self.input: x}, [name])[name]
            two = sib.runtime.run({self.input: np.concatenate([x, x])}, [name])[name]
            axis = self.head.batch_axis if self.head.batch_axis is not None else 0
            if two.shape[axis] == 2 and np.allclose(np.take(two, [0], axis=axis), one, rtol=1e-5, atol=1e-6) and \
                    np.allclose(np.take(two, [1], axis=axis), one, rtol=1e-5, atol=1e-6):
                sib.cache.get("batch_model", lambda: sib)
                return sib
        except (OnnxfixError, ValueError, IndexError, TypeError):
            pass
        return None

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
