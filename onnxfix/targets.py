"""Target objects: *what* is explained, separate from *how* (pytorch-grad-cam's ``model_targets``; Captum's ``target``).

A target names a score of the model's explained output. It is *resolved* once per image against that image's
forward values into a :class:`Resolved`: its class index and label, the coordinates of the score in the output tensor
(with the batch index of its image), the logit and softmax probability, and — for scores that sum several output
elements (a segmentation region, a free-form seed) — a ``weights`` array over one item's output. From a resolved
target every method family reads what it needs, through one path:

* gradient methods: its **seed** (:func:`seed_batch`: one-hot at ``coords`` or the ``weights``), and, for export and
  one-call forward+backward, its seed *as ONNX nodes* (:meth:`Target.seed_nodes`);
* perturbation methods: its **score** in a perturbed copy's output (:func:`score_in`);
* CNN Fixations: its **locations** (:func:`locations`: the output elements it starts from).

Targets: :class:`Class` (a class index or label; ``None`` = the top class), :class:`Step` (a step of a sequence
output), :class:`Box` (a detection — the heads come with the detectors work; refused with a clear error until then),
:class:`Region` (a segmentation class summed over a mask or box; default its predicted mask), :class:`Output` (any
element or seed of the explained output), :class:`Text` (the whole string a CTC recogniser reads: the sum over its
steps). :func:`parse_target` reads the CLI's strings: ``281``, ``espresso``, ``box:0``, ``box:10,20,80,90``,
``region:3``, ``step:4``, ``text``, ``text:STRING``.

CTC outputs (:func:`onnxfix.heads.ctc_blank`): the default step skips the blank — the most confident step whose top
class is not the blank (with a class named, the step where that class is most probable); a sequence without a known
blank keeps the most confident step.

Decisions: ``text`` is the Text target, never a label (a class labelled "text" is ``class:text`` /
``region:text``); integers are ASCII digits only (``"²"`` is a label, not 2); ``True``/``False`` and non-integral
floats are refused; a label is matched exactly, then case-insensitively.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import helper, numpy_helper

from onnxfix.errors import InputError, UnsupportedModel

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from onnxfix.model import Model

_INT = re.compile(r"[+-]?[0-9]{1,9}")


def softmax(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    e = np.exp(v - np.max(v))
    return e / e.sum()


@dataclass(frozen=True)
class Resolved:
    """One explained score of one image: class ``index`` (at ``step`` for sequence outputs), where it sits in the
    logits tensor (``coords``, batch index included), its ``logit`` and softmax ``score``; ``weights`` (shaped like
    one item's logits, batch axis of size 1) when the score is a weighted sum of several elements."""

    index: int
    label: str
    step: int | None
    coords: tuple[int, ...]
    logit: float
    score: float
    weights: np.ndarray | None = field(default=None, compare=False, repr=False)
    kind: str = "class"

    def at_batch(self, n: int, batch_axis: int | None) -> Resolved:
        """The same target for the image at batch index ``n``."""
        if batch_axis is None:
            return self
        c = list(self.coords)
        c[batch_axis] = n
        return Resolved(self.index, self.label, self.step, tuple(c), self.logit, self.score, self.weights, self.kind)


class Target:
    """Base class: a description of the explained score, resolved per image by :meth:`resolve`."""

    def resolve(self, model: Model, logits: np.ndarray, n: int) -> Resolved:
        """The score of batch item ``n`` of ``logits`` (the explained tensor of the whole batch) this target names."""
        raise NotImplementedError

    def seed_nodes(self, model: Model, onnx_model: onnx.ModelProto, seed_name: str, of: str) -> None:
        """Append to ``onnx_model`` the nodes that compute this target's seed ``seed_name`` from ``of`` (the logits)
        in the graph, per batch item — one ORT call then does forward, seed and backward, and the seed can be
        exported with the model. Targets whose seed depends on post-processing done in numpy refuse."""
        raise UnsupportedModel(f"{self!r} has no in-graph seed")

    @property
    def key(self) -> tuple:
        """Hashable identity (program caches)."""
        return (type(self).__name__, repr(self))


def _label_index(model: Model, label: str, n: int) -> int:
    names = model.labels or []
    if label in names[:n]:
        return names.index(label)
    low = [x.lower() for x in names[:n]]
    if label.lower() in low:
        return low.index(label.lower())
    raise InputError(f"target label {label[:200]!r} is not among the model's {n} classes")


def class_index(model: Model, value: int | str | np.integer, n: int) -> int:
    """A class index from an int or a label (or an ASCII-digit string); ``InputError`` when out of range."""
    if isinstance(value, bool):
        raise InputError(f"target {value!r} is a boolean; give a class index or a label")
    if isinstance(value, float | np.floating):
        if not math.isfinite(value) or value != int(value):
            raise InputError(f"target {value!r} is not a class index (an integer) or a label")
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if _INT.fullmatch(text):
            value = int(text)
        else:
            return _label_index(model, text, n)
    if not isinstance(value, int | np.integer):
        raise InputError(f"target {value!r} is not a class index, a label or an onnxfix target")
    index = int(value)
    if not 0 <= index < n:
        raise InputError(f"target {index} is out of range: the model has {n} classes (0..{n - 1})")
    return index


def _step_of(model: Model, logits: np.ndarray, n: int, step: int | None, cls: Any = None) -> int | None:
    h = model.head
    if h.time_axis is None:
        if step is not None:
            raise InputError(f"--step {step}: the explained output {h.output!r} has no time axis (it is not a "
                             "sequence); leave --step out")
        return None
    T = logits.shape[h.time_axis]
    if step is None:
        from onnxfix.heads import ctc_blank

        probs = [softmax(model.scores_at(logits, t, n)) for t in range(T)]
        blank = ctc_blank(model)
        if blank is not None and cls is not None:  # where the recogniser reads that class
            k = class_index(model, cls, len(probs[0]))
            return int(np.argmax([p[k] for p in probs]))
        if blank is not None:
            read = [t for t in range(T) if int(np.argmax(probs[t])) != blank]
            if read:
                return max(read, key=lambda t: float(probs[t].max()))
        return int(np.argmax([p.max() for p in probs]))
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or not 0 <= int(step) < T:
        raise InputError(f"step {step!r} is out of range: the output has {T} steps (0..{T - 1})")
    return int(step)


def _class_target(model: Model, logits: np.ndarray, n: int, cls: Any, step: int | None, kind: str) -> Resolved:
    from onnxfix.io.labels import label_of

    h = model.head
    if h.kind == "dense":
        raise InputError(f"the explained output {h.output!r} is a dense map {list(logits.shape)} (segmentation); "
                         "a class target needs a region: Region(cls) / --target region:CLS")
    step = _step_of(model, logits, n, step, cls)
    scores = model.scores_at(logits, step, n)
    index = int(np.argmax(scores)) if cls is None else class_index(model, cls, len(scores))
    coords = [0] * logits.ndim
    coords[h.class_axis] = index
    if h.time_axis is not None:
        coords[h.time_axis] = step  # type: ignore[assignment]
    if h.batch_axis is not None:
        coords[h.batch_axis] = n
    p = softmax(scores)
    return Resolved(index, label_of(model.labels, index), step, tuple(coords), float(scores[index]), float(p[index]),
                    kind=kind)


@dataclass(frozen=True)
class Class(Target):
    """A class of a classifier: an index, a label, or ``None`` for the top class."""

    index_or_label: int | str | None = None

    def resolve(self, model, logits, n):
        return _class_target(model, logits, n, self.index_or_label, None, "class")

    def seed_nodes(self, model, onnx_model, seed_name, of):
        h = model.head
        if h.kind != "classifier" or h.time_axis is not None:
            super().seed_nodes(model, onnx_model, seed_name, of)
        add_class_seed(onnx_model, seed_name, of, h.class_axis,
                       None if self.index_or_label is None else class_index(model, self.index_or_label,
                                                                            model.n_classes or 0))


@dataclass(frozen=True)
class Step(Target):
    """One step ``t`` of a sequence output (default: the most confident step) and a class there (default: its top)."""

    t: int | None = None
    cls: int | str | None = None

    def resolve(self, model, logits, n):
        return _class_target(model, logits, n, self.cls, self.t, "step")


def log_softmax(v: np.ndarray, axis: int = -1) -> np.ndarray:
    v = np.asarray(v, np.float64)
    m = v.max(axis=axis, keepdims=True)
    return v - m - np.log(np.exp(v - m).sum(axis=axis, keepdims=True))


def ctc_greedy(path: np.ndarray, blank: int) -> list[int]:
    """Greedy CTC decoding of a per-step class path (the argmax per step): collapse repeats, then drop blanks."""
    out: list[int] = []
    prev = None
    for c in np.asarray(path).reshape(-1).tolist():
        if c != prev and c != blank:
            out.append(int(c))
        prev = c
    return out


def ctc_align(logp: np.ndarray, labels: list[int], blank: int) -> np.ndarray | None:
    """The most probable CTC path (one class per step) that decodes to ``labels`` — Viterbi over the blank-extended
    label sequence (Graves et al. 2006, §3: the same lattice as the CTC forward pass, with max for sum); ``None``
    when ``labels`` cannot be read in ``len(logp)`` steps. ``logp``: [T, C] log-probabilities."""
    T = logp.shape[0]
    ext = [blank]
    for c in labels:
        ext += [c, blank]
    S = len(ext)
    ext_a = np.array(ext)
    neg = -np.inf
    delta = np.full(S, neg)
    back = np.zeros((T, S), np.int64)
    delta[0] = logp[0, blank]
    if S > 1:
        delta[1] = logp[0, ext[1]]
    skip = np.zeros(S, bool)  # s may come from s-2: a label that differs from the label two back
    skip[2:] = (ext_a[2:] != blank) & (ext_a[2:] != ext_a[:-2])
    for t in range(1, T):
        c0 = delta
        c1 = np.concatenate([[neg], delta[:-1]])
        c2 = np.where(skip, np.concatenate([[neg, neg], delta[:-2]]), neg)
        stack = np.stack([c0, c1, c2])
        arg = np.argmax(stack, axis=0)
        back[t] = arg
        delta = stack[arg, np.arange(S)] + logp[t, ext_a]
    ends = [S - 1, S - 2] if S > 1 else [S - 1]
    end = max(ends, key=lambda e: delta[e])
    if not np.isfinite(delta[end]):
        return None
    path = np.zeros(T, np.int64)
    s = end
    for t in range(T - 1, -1, -1):
        path[t] = ext[s]
        s -= int(back[t, s])
    return path


@dataclass(frozen=True)
class Text(Target):
    """The whole text a CTC recogniser reads (``--target text``): greedy decoding — the top class per step, repeats
    collapsed, blanks dropped — explained as the sum over its steps (every step whose top class is not the blank) of
    that step's class score. ``text`` names another string (``--target text:STRING``): the most probable CTC path
    that reads it (:func:`ctc_align`), summed the same way; each character must be a class label. ``blank``
    overrides the head's blank (:func:`onnxfix.heads.ctc_blank`). Resolved: ``label`` the string, ``weights`` one
    at each (step, class) summed, ``index``/``step`` those of its first character, ``score`` the mean probability
    of its steps (rapidocr's line confidence).

    By the linearity of gradients, a gradient map of ``Text()`` is the sum of the maps of the :class:`Step` targets
    at its steps (each with its class)."""

    text: str | None = None
    blank: int | None = None

    def __post_init__(self):
        if self.text is not None and (not isinstance(self.text, str) or not self.text):
            raise InputError(f"Text target: text must be a non-empty string, got {self.text!r}")
        if self.blank is not None and (isinstance(self.blank, bool) or not isinstance(self.blank, int | np.integer)
                                       or self.blank < 0):
            raise InputError(f"Text target: blank must be a class index, got {self.blank!r}")

    def resolve(self, model, logits, n):
        from onnxfix.heads import ctc_blank

        h = model.head
        blank = self.blank if self.blank is not None else ctc_blank(model)
        if h.time_axis is None or blank is None:
            raise InputError(f"a text target needs a CTC sequence output; {h.output!r} is explained as a {h.kind} "
                             f"{list(logits.shape)}" + (" without a known blank (name it: --head ctc:BLANK)"
                                                        if h.time_axis is not None else
                                                        " (a class labelled 'text' is class:text / region:text)"))
        T = logits.shape[h.time_axis]
        S = np.stack([np.asarray(model.scores_at(logits, t, n), np.float64) for t in range(T)])  # [T, C]
        if not 0 <= blank < S.shape[1]:
            raise InputError(f"Text target: blank {blank} is not a class of the output (0..{S.shape[1] - 1})")
        logp = log_softmax(S)
        if self.text is None:
            path = S.argmax(axis=1)
        else:
            want = _tokens(model, self.text, blank, S.shape[1])
            path = ctc_align(logp, want, blank)
            if path is None:
                raise InputError(f"text target {self.text[:80]!r}: {len(want)} characters cannot be read in the "
                                 f"output's {T} steps (CTC needs a step per character and a blank between repeats)")
        steps = np.flatnonzero(path != blank)
        if not len(steps):
            raise InputError(f"text target: the model reads no text in this image (all {T} steps are the blank "
                             f"{blank}); explain a step (--target step:T) instead")
        from onnxfix.io.labels import label_of

        decoded = ctc_greedy(path, blank)
        string = "".join(label_of(model.labels, c) for c in decoded)
        item_shape = list(logits.shape)
        if h.batch_axis is not None:
            item_shape[h.batch_axis] = 1
        w = np.zeros(item_shape, np.float32)
        idx: list[Any] = [0] * logits.ndim
        idx[h.time_axis] = steps
        idx[h.class_axis] = path[steps]
        w[tuple(idx)] = 1.0
        first = int(steps[0])
        coords = [0] * logits.ndim
        coords[h.time_axis], coords[h.class_axis] = first, int(path[first])
        if h.batch_axis is not None:
            coords[h.batch_axis] = n
        logit = float(S[steps, path[steps]].sum())
        score = float(np.exp(logp[steps, path[steps]]).mean())
        # index/step/coords: the first character's (listings show that step's classes); label: the whole string
        return Resolved(int(path[first]), string, first, tuple(coords), logit, score, weights=w, kind="text")


def _tokens(model: Model, text: str, blank: int, n: int) -> list[int]:
    """Class indices of ``text``: the longest class label matching at each position (the blank never matches)."""
    names = (model.labels or [])[:n]
    table: dict[str, int] = {}
    for i, lab in enumerate(names):
        if i != blank and lab and lab not in table:
            table[lab] = i
    if not table:
        raise InputError("text target: the model has no class labels to spell the text with; give labels "
                         "(--labels FILE)")
    longest = min(max(len(k) for k in table), 32)
    out: list[int] = []
    i = 0
    while i < len(text):
        for k in range(min(longest, len(text) - i), 0, -1):
            if text[i:i + k] in table:
                out.append(table[text[i:i + k]])
                i += k
                break
        else:
            raise InputError(f"text target: {text[i]!r} (position {i}) is not a class label of the model")
    return out


@dataclass(frozen=True)
class Box(Target):
    """A detection: detection ``i`` after decoding and NMS, or the one matching the user box ``xyxy`` by IoU (optionally
    of class ``cls``); ``part`` explains its class ``"score"``, its ``"box"`` coordinates, or ``"both"``; ``conf``
    and ``iou`` are the thresholds of onnxfix's decoding + NMS (default 0.25 and 0.45; :mod:`onnxfix.heads`)."""

    i: int | None = None
    xyxy: tuple[float, float, float, float] | None = None
    cls: int | str | None = None
    part: str = "score"
    conf: float | None = None
    iou: float | None = None

    def __post_init__(self):
        if self.part not in ("score", "box", "both"):
            raise InputError(f"Box part must be 'score', 'box' or 'both', got {self.part!r}")
        for k in ("conf", "iou"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1):
                raise InputError(f"Box {k} must be a number in 0..1, got {v!r}")
        if self.xyxy is not None:
            v = tuple(float(a) for a in self.xyxy)
            if len(v) != 4 or not all(math.isfinite(a) for a in v) or v[2] <= v[0] or v[3] <= v[1]:
                raise InputError(f"Box xyxy must be x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {self.xyxy!r}")

    def resolve(self, model, logits, n):
        resolver = getattr(model.head, "resolve_box", None)
        if resolver is None:
            raise UnsupportedModel(f"a box target needs a detection output; {model.head.output!r} is explained as a "
                                   f"{model.head.kind} {list(logits.shape)} (use a class target, or --head)")
        return resolver(model, logits, n, self)


@dataclass(frozen=True)
class Region(Target):
    """A segmentation class summed over a region (pytorch-grad-cam's SemanticSegmentationTarget): ``mask`` (H×W
    booleans at the output's resolution), ``xyxy`` (a box in output pixels) or, by default, the class's predicted
    mask (where it is the argmax). ``cls=None``: the non-background class (class 0 is background when there are
    several) covering the most pixels."""

    cls: int | str | None = None
    mask: Any = None
    xyxy: tuple[int, int, int, int] | None = None

    def resolve(self, model, logits, n):
        from onnxfix.io.labels import label_of

        h = model.head
        if h.kind != "dense":
            raise UnsupportedModel(f"a region target needs a dense (segmentation) output; {h.output!r} is explained "
                                   f"as a {h.kind} {list(logits.shape)}")
        item = np.take(logits, [n], axis=h.batch_axis) if h.batch_axis is not None else logits
        C = item.shape[h.class_axis]
        per_class = np.moveaxis(item, h.class_axis, 0).reshape(C, -1)
        arg = per_class.argmax(axis=0)
        if self.cls is None:
            counts = np.bincount(arg, minlength=C)
            if C > 1 and counts[1:].any():
                counts[0] = 0
            cls = int(np.argmax(counts))
        else:
            cls = class_index(model, self.cls, C)
        spatial = [d for a, d in enumerate(item.shape) if a not in (h.class_axis, h.batch_axis)]
        if self.mask is not None:
            m = np.asarray(self.mask).astype(bool)
            if list(m.shape) != spatial:
                raise InputError(f"region mask shape {list(m.shape)} does not match the output's map {spatial}")
        elif self.xyxy is not None:
            x0, y0, x1, y1 = (int(v) for v in self.xyxy)
            m = np.zeros(spatial, bool)
            m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
        elif C == 1:  # a single map (text / salient object): where its probability is above one half
            v = per_class[0]
            m = (v > (0.5 if v.min() >= 0 and v.max() <= 1 else 0.0)).reshape(spatial)
        else:
            m = (arg == cls).reshape(spatial)
        if not m.any():
            raise InputError(f"region target: the region of class {cls} is empty in this image")
        w = np.zeros(item.shape, np.float32)
        idx: list[Any] = [slice(None)] * item.ndim
        idx[h.class_axis] = cls
        if h.batch_axis is not None:
            idx[h.batch_axis] = 0
        w[tuple(idx)] = m
        logit = float((item.astype(np.float64) * w).sum())
        probs = np.exp(per_class - per_class.max(axis=0))
        probs = probs / probs.sum(axis=0)
        score = float(probs[cls][m.reshape(-1)].mean())
        coords = [0] * logits.ndim
        coords[h.class_axis] = cls
        if h.batch_axis is not None:
            coords[h.batch_axis] = n
        return Resolved(cls, label_of(model.labels, cls), None, tuple(coords), logit, score, weights=w, kind="region")


@dataclass(frozen=True)
class Output(Target):
    """Any score of the explained output: the element at flat ``index`` of one item's output, or the sum weighted by
    ``seed`` (shaped like one item's output, batch axis of size 1). Default: the largest element."""

    name: str | None = None
    index: int | None = None
    seed: Any = None

    def resolve(self, model, logits, n):
        h = model.head
        if self.name is not None and self.name not in (h.output, h.logits):
            raise InputError(f"Output target {self.name!r}: the explained output is {h.output!r}; pick another "
                             f"output with Explainer(output={self.name!r}) / --output")
        item = np.take(logits, [n], axis=h.batch_axis) if h.batch_axis is not None else logits
        if self.seed is not None:
            w = np.asarray(self.seed, np.float32)
            if w.shape != item.shape:
                raise InputError(f"Output seed shape {list(w.shape)} does not match one item's output "
                                 f"{list(item.shape)}")
            flat = int(np.argmax(np.abs(w).reshape(-1)))
        else:
            flat = int(np.argmax(item.reshape(-1))) if self.index is None else int(self.index)
            if not 0 <= flat < item.size:
                raise InputError(f"Output index {flat} is out of range: one item's output has {item.size} elements")
            w = None
        coords = list(np.unravel_index(flat, item.shape))
        if h.batch_axis is not None:
            coords[h.batch_axis] = n
        logit = float(item.reshape(-1)[flat]) if w is None else float((item.astype(np.float64) * w).sum())
        return Resolved(flat, str(flat), None, tuple(int(c) for c in coords), logit, float("nan"), weights=w,
                        kind="output")


def parse_target(value: Any) -> Target | None:
    """A target object from what users write: ``None``, an int, a label, a :class:`Target`, or a CLI string
    (``281``, ``espresso``, ``box:0``, ``box:10,20,80,90``, ``region:3``, ``step:4``, ``step:4:a``, ``text``,
    ``text:STRING``)."""
    if value is None or isinstance(value, Target):
        return value
    if isinstance(value, bool):
        raise InputError(f"target {value!r} is a boolean; give a class index or a label")
    if isinstance(value, int | np.integer | float | np.floating):
        if isinstance(value, float | np.floating) and (not math.isfinite(value) or value != int(value)):
            raise InputError(f"target {value!r} is not a class index (an integer) or a label")
        return Class(int(value))
    if not isinstance(value, str):
        raise InputError(f"target {type(value).__name__} is not a class index, a label or an onnxfix target")
    text = value.strip()
    if len(text) > 1000:
        raise InputError("target text is longer than 1000 characters")
    kind, colon, rest = text.partition(":")
    kind = kind.lower()
    if text == "text":
        return Text()
    if colon and kind == "text":
        if not rest:
            raise InputError(f"--target {text!r}: text: wants the string to explain (text:12345), or plain 'text' "
                             "for what the model reads")
        return Text(rest)
    if colon and kind in ("box", "region", "step", "class"):
        parts = [p.strip() for p in rest.split(",")] if rest.strip() else []

        def ints(ps: list[str]) -> list[int]:
            if not all(_INT.fullmatch(p) for p in ps):
                raise InputError(f"--target {text!r}: {kind}: wants integers, got {rest!r}")
            return [int(p) for p in ps]

        if kind == "class":
            return Class(int(rest) if _INT.fullmatch(rest.strip()) else rest.strip())
        if kind == "step":
            sub = rest.split(":", 1)
            t = ints([sub[0].strip()])[0] if sub[0].strip() else None
            cls = None if len(sub) == 1 else (int(sub[1]) if _INT.fullmatch(sub[1].strip()) else sub[1].strip())
            return Step(t, cls)
        if kind == "box":
            if len(parts) == 1:
                return Box(i=ints(parts)[0])
            if len(parts) == 4:
                try:
                    v = tuple(float(p) for p in parts)
                except ValueError:
                    raise InputError(f"--target {text!r}: box: wants an index or x0,y0,x1,y1") from None
                return Box(xyxy=v)  # type: ignore[arg-type]
            raise InputError(f"--target {text!r}: box: wants an index (box:0) or four numbers (box:x0,y0,x1,y1)")
        if kind == "region":
            if len(parts) == 1:
                p = parts[0]
                return Region(cls=int(p) if _INT.fullmatch(p) else p)
            if len(parts) == 5:
                c = parts[0]
                return Region(cls=int(c) if _INT.fullmatch(c) else c, xyxy=tuple(ints(parts[1:])))  # type: ignore
            raise InputError(f"--target {text!r}: region: wants a class (region:3) or class,x0,y0,x1,y1")
    if _INT.fullmatch(text):
        return Class(int(text))
    if not text:
        raise InputError("target is empty; give a class index or a label")
    return Class(text)


# -- what methods read from resolved targets ---------------------------------------------------------------------

def seed_batch(shape: tuple[int, ...], targets: list[Resolved], batch_axis: int | None, sign: float = 1.0,
               dtype: Any = np.float32) -> np.ndarray:
    """The gradient seed over a batch's logits: each image's one-hot (or weights) at its own batch index."""
    seed = np.zeros(shape, dtype=dtype)
    for t in targets:
        if t.weights is None:
            seed[t.coords] = sign
        else:
            if batch_axis is None:
                seed += sign * t.weights.astype(dtype)
            else:
                n = t.coords[batch_axis]
                idx: list[Any] = [slice(None)] * len(shape)
                idx[batch_axis] = slice(n, n + 1)
                seed[tuple(idx)] = sign * t.weights.astype(dtype)
    return seed


def score_in(out: np.ndarray, t: Resolved, n: int, batch_axis: int | None) -> float:
    """The target's score in item ``n`` of ``out`` (a perturbed batch's logits); a resolved target with its own
    ``score_of`` (a detection after NMS inside the graph, whose rows move) scores itself."""
    own = getattr(t, "score_of", None)
    if own is not None:
        return own(out, n, batch_axis)
    if t.weights is None:
        c = list(t.coords)
        if batch_axis is not None:
            c[batch_axis] = n
        return float(out[tuple(c)])
    item = np.take(out, [n], axis=batch_axis) if batch_axis is not None else out
    return float((item.astype(np.float64) * t.weights).sum())


def locations(t: Resolved, batch_axis: int | None) -> np.ndarray:
    """Index rows into the logits tensor where CNN Fixations start for this target."""
    if t.weights is None:
        return np.array([t.coords], np.int64)
    rows = np.argwhere(t.weights != 0).astype(np.int64)
    if batch_axis is not None:
        rows[:, batch_axis] = t.coords[batch_axis]
    return rows


def add_class_seed(onnx_model: onnx.ModelProto, seed_name: str, of: str, class_axis: int,
                   index: int | None, dtype: Any = np.float32) -> None:
    """Seed nodes for a classifier: one-hot of ``index`` (a constant) or of the per-item ArgMax over ``class_axis``."""
    g = onnx_model.graph
    p = f"{seed_name}/class"
    g.initializer.append(numpy_helper.from_array(np.array([0, 1], dtype), p + "/values"))
    if index is not None:  # a constant one-hot along the class axis, broadcast to the batch
        rank = _rank_of(onnx_model, of)
        depth = _dim_of(onnx_model, of, class_axis)
        if rank is None or depth is None:
            raise UnsupportedModel(f"cannot build a fixed-class seed: the rank or class count of {of!r} is unknown")
        v = np.zeros([depth if a == class_axis else 1 for a in range(rank)], dtype)
        v.reshape(-1)[index] = 1
        g.initializer.append(numpy_helper.from_array(v, p + "/onehot_const"))
        g.node.extend([helper.make_node("Shape", [of], [p + "/shape"], name=p + "/shape"),
                       helper.make_node("Expand", [p + "/onehot_const", p + "/shape"], [seed_name], name=p + "/seed")])
        return
    g.node.append(helper.make_node("ArgMax", [of], [p + "/index"], axis=class_axis, keepdims=1, name=p + "/argmax"))
    g.node.extend([
        helper.make_node("Shape", [of], [p + "/oshape"], name=p + "/oshape"),
        helper.make_node("Gather", [p + "/oshape", p + "/axis"], [p + "/depth"], axis=0, name=p + "/depth"),
        helper.make_node("OneHot", [p + "/index", p + "/depth", p + "/values"], [p + "/onehot"], axis=class_axis,
                         name=p + "/onehot"),
        helper.make_node("Squeeze", [p + "/onehot", p + "/sq_axes"], [seed_name], name=p + "/seed"),
    ])
    g.initializer.extend([numpy_helper.from_array(np.array(class_axis, np.int64), p + "/axis"),
                          numpy_helper.from_array(np.array([class_axis + 1], np.int64), p + "/sq_axes")])


def _value_info(onnx_model: onnx.ModelProto, name: str):
    g = onnx_model.graph
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        if vi.name == name:
            return vi
    return None


def _rank_of(onnx_model: onnx.ModelProto, name: str) -> int | None:
    vi = _value_info(onnx_model, name)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    return len(vi.type.tensor_type.shape.dim)


def _dim_of(onnx_model: onnx.ModelProto, name: str, axis: int) -> int | None:
    vi = _value_info(onnx_model, name)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    d = vi.type.tensor_type.shape.dim[axis]
    return d.dim_value if d.HasField("dim_value") else None
