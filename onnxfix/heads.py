"""Output heads: what the explained output *is* — a classifier, a sequence, a detector or a dense map — and, for
detectors, decoding + NMS in numpy and the resolution of :class:`onnxfix.targets.Box` targets.

Recognition (:func:`recognise`), first rule that fits:

* ``--head`` / ``Model(head=...)`` names the head (:data:`HEAD_CHOICES`); nothing is guessed then;
* **NMS inside** (``"nms"``): a ``NonMaxSuppression`` node on the path from the image to the outputs (or a ``TopK``
  with a box-shaped output [.., K, 4] beside it): the explained tensor is the scores output (boxes / classes are read
  beside it); its graph is not differentiable end to end through the selection — D-RISE explains it;
* **SSD/RetinaNet** (``"ssd"``): two float outputs [N, A, 4] (boxes) and [N, A, C] (scores) with the same A: onnxfix
  concatenates them in the graph into one [N, A, 4 + C] tensor, explained like a YOLOv5 head without objectness;
* **YOLOv8/11** (``"yolov8"``): [N, 4 + C, A] with A > 2 (4 + C), **YOLOv5** (``"yolov5"``): [N, A, 5 + C] with
  A > 2 (5 + C) — when the graph computes it as a detector does (a ``Concat`` at the end, ``Sigmoid`` behind it) or
  the metadata says ``task: detect`` (ultralytics). A text recogniser [N, T, C] has neither, and stays a sequence;
* **YOLOX** (``"yolox"``, exported with ``decode_in_inference=False``): a YOLOv5-shaped [N, A, 5 + C] whose A is the
  number of grid cells of strides 8, 16, 32 (and 64) for the static input size, one prediction per cell, and no
  ``Exp``/``Pow`` in the graph (the boxes are raw: onnxfix decodes x, y = (raw + cell) × stride, w, h = exp(raw) ×
  stride, as YOLOX's ``demo_postprocess``); objectness and classes are sigmoided in the graph;
* **dense** (``"dense"``): [N, C, H, W] with spatial extent; C = 1 is a single map (text / salient object);
* else classifier or sequence (:mod:`onnxfix.model`'s rules). ``--head ctc`` (or ``ctc:BLANK``) names a sequence
  head whose classes are CTC outputs (:func:`ctc_blank`).

**CTC** (:func:`ctc_blank`): a sequence output is a CTC recogniser when ``--head ctc[:BLANK]`` says so, when the
metadata has ``onnxfix.ctc_blank`` (the blank's index), or when it has PaddleOCR's ``character`` vocabulary (blank 0,
as PaddleOCR's ``CTCLabelDecode`` inserts it). ``--head ctc`` without an index takes the class labelled ``blank``,
else 0 (``torch.nn.CTCLoss``'s default). The blank is skipped when the default step is chosen, and the whole greedy
decoding is a target (:class:`onnxfix.targets.Text`).

Detections (:func:`detections`): centre-format boxes (x, y, w, h in input pixels; ``xyxy`` for SSD), confidence =
max class score (× objectness for YOLOv5), kept above ``conf``, per-class greedy NMS at ``iou``, by decreasing
confidence — the post-processing ultralytics' ``non_max_suppression`` does. A :class:`~onnxfix.targets.Box` resolves
to the raw (pre-NMS) prediction that produced the detection: its ``weights`` select that prediction's class score
(``part="score"``), box coordinates (``"box"``) or both, so gradient methods seed the raw head, perturbation
methods score that prediction, and CNN Fixations start from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.io.labels import metadata_labels
from onnxfix.targets import Resolved

if TYPE_CHECKING:  # pragma: no cover
    from onnxfix.graph import Graph
    from onnxfix.model import Model
    from onnxfix.targets import Box

#: what ``--head`` accepts
HEAD_CHOICES = ("classifier", "sequence", "ctc", "yolov8", "yolov5", "yolox", "ssd", "nms", "dense")

DETECTION_KINDS = ("yolov8", "yolov5", "yolox", "ssd")

#: YOLOX's strides (a P6 model adds 64)
YOLOX_STRIDES = (8, 16, 32)

#: default confidence and IoU thresholds of the numpy NMS (ultralytics' predict defaults)
CONF = 0.25
IOU = 0.45


@dataclass(frozen=True)
class Head:
    """The explained output: graph output name, the logits tensor, and its axes.

    ``kind``: ``"classifier"``, ``"sequence"``, ``"dense"``, ``"detection"`` or ``"nms"``; ``layout`` (detectors):
    ``"yolov8"`` [N, 4+C, A], ``"yolov5"`` [N, A, 5+C], ``"ssd"`` [N, A, 4+C] (boxes + scores joined by onnxfix),
    ``"nms"`` (scores [K] after NMS); ``n_classes`` the number of classes when it is not the class axis' length;
    ``extra``: other outputs the head reads (``boxes``, ``classes`` of an NMS-inside model)."""

    output: str
    logits: str
    rank: int
    class_axis: int
    batch_axis: int | None
    time_axis: int | None
    softmax: bool
    kind: str = "classifier"
    layout: str | None = None
    n_classes: int | None = None
    box_format: str = "xywh"
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def resolve_box(self):
        """:func:`resolve_box` for detection heads (``Box`` targets resolve through it), else ``None``."""
        return _resolve_box if self.kind in ("detection", "nms") else None


@dataclass(frozen=True)
class BoxResolved(Resolved):
    """A resolved detection target: also the detection's ``box`` (x0, y0, x1, y1 model-input pixels), the raw
    ``prediction`` index that produced it, and every detection of the image (for pictures)."""

    box: tuple[float, float, float, float] | None = None
    prediction: int | None = None
    detections: tuple = field(default=(), compare=False, repr=False)

    def at_batch(self, n, batch_axis):
        r = super().at_batch(n, batch_axis)
        return BoxResolved(r.index, r.label, r.step, r.coords, r.logit, r.score, r.weights, r.kind, self.box,
                           self.prediction, self.detections)

    def score_of(self, out: np.ndarray, n: int, batch_axis: int | None) -> float:
        """This detection's score in item ``n`` of a perturbed forward's explained tensor: the weighted raw
        prediction; for NMS inside the graph (rows x0, y0, x1, y1, score, class that move between forwards) the
        best IoU × score among the detections of the same class (D-RISE's similarity, one-hot classes)."""
        item = np.take(out, [n], axis=batch_axis) if batch_axis is not None else out
        if self.kind == "box-nms":
            rows = np.asarray(item, np.float64).reshape(-1, 6)
            if not len(rows) or self.box is None:
                return 0.0
            same = np.rint(rows[:, 5]).astype(np.int64) == self.index
            return float(np.max(iou(np.array([self.box]), rows[:, :4])[0] * same * rows[:, 4], initial=0.0))
        return float((item.astype(np.float64) * self.weights).sum())


@dataclass(frozen=True)
class Detection:
    """One detection after NMS: raw prediction ``index``, class ``cls``, confidence ``score``, ``box`` xyxy."""

    index: int
    cls: int
    score: float
    box: tuple[float, float, float, float]

    def as_dict(self, labels: list[str] | None = None) -> dict:
        from onnxfix.io.labels import label_of

        return {"index": self.index, "class": self.cls, "label": label_of(labels, self.cls), "score": self.score,
                "box": list(self.box)}


# -- decoding and NMS -------------------------------------------------------------------------------------------

def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, np.float64)
    return np.concatenate([b[:, :2] - b[:, 2:4] / 2, b[:, :2] + b[:, 2:4] / 2], axis=1)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes a [n, 4] and b [m, 4] → [n, m]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices kept, by decreasing score (a box is dropped when its IoU with a kept one is > the
    threshold — ONNX NonMaxSuppression's and torchvision's rule)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    boxes = np.asarray(boxes, np.float64)
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou(boxes[i:i + 1], boxes[rest])[0] <= iou_threshold]
    return np.array(keep, np.int64)


def decode(head: Head, item: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One image's raw predictions: boxes xyxy [A, 4] (input pixels), class scores [A, C], objectness [A] or None.

    ``item``: the explained tensor of one image (batch axis removed)."""
    a = np.asarray(item, np.float64)
    if head.layout == "yolov8":
        a = a.reshape(a.shape[-2], a.shape[-1]).T  # [A, 4 + C]
        return xywh_to_xyxy(a[:, :4]), a[:, 4:], None
    a = a.reshape(-1, a.shape[-1])
    if head.layout == "yolox":
        cells, strides = yolox_grid(head, len(a))
        xywh = np.concatenate([(a[:, :2] + cells) * strides, np.exp(np.clip(a[:, 2:4], -50, 50)) * strides], axis=1)
        return xywh_to_xyxy(xywh), a[:, 5:], a[:, 4]
    boxes = a[:, :4] if head.box_format == "xyxy" else xywh_to_xyxy(a[:, :4])
    if head.layout == "yolov5":
        return boxes, a[:, 5:], a[:, 4]
    return boxes, a[:, 4:], None


def _yolox_counts(h: int, w: int, strides: tuple[int, ...]) -> int:
    return sum((h // s) * (w // s) for s in strides)


def yolox_grid(head: Head, n: int) -> tuple[np.ndarray, np.ndarray]:
    """YOLOX's cell offsets [A, 2] (x, y) and strides [A, 1] for the head's input size (``extra["size"]``, "HxW")."""
    h, w = (int(v) for v in head.extra["size"].split("x"))
    strides = tuple(int(v) for v in head.extra.get("strides", "8,16,32").split(","))
    cells, per = [], []
    for s in strides:
        gx, gy = np.meshgrid(np.arange(w // s), np.arange(h // s))
        cells.append(np.stack([gx, gy], 2).reshape(-1, 2))
        per.append(np.full((cells[-1].shape[0], 1), s))
    c, st = np.concatenate(cells).astype(np.float64), np.concatenate(per).astype(np.float64)
    if len(c) != n:
        raise UnsupportedModel(f"yolox head: {n} predictions, but the grid of strides {strides} on {h}x{w} has "
                               f"{len(c)}; choose --head yolov5 (boxes already decoded)")
    return c, st


def detections(head: Head, item: np.ndarray, conf: float = CONF, iou_threshold: float = IOU,
               max_det: int = 300) -> list[Detection]:
    """Decoded detections of one image after the confidence threshold and per-class NMS, best first."""
    boxes, cls, obj = decode(head, item)
    if cls.shape[1] == 0:
        return []
    c = cls.argmax(axis=1)
    s = cls[np.arange(len(c)), c] * (obj if obj is not None else 1.0)
    cand = np.flatnonzero(s > conf)
    out: list[Detection] = []
    for k in np.unique(c[cand]):
        idx = cand[c[cand] == k]
        for j in nms(boxes[idx], s[idx], iou_threshold):
            i = int(idx[j])
            out.append(Detection(i, int(k), float(s[i]), tuple(float(v) for v in boxes[i])))  # type: ignore[arg-type]
    out.sort(key=lambda d: -d.score)
    return out[:max_det]


def nms_outputs(model: Model, item: np.ndarray) -> list[Detection]:
    """The detections an NMS-inside model returned, best first (``item``: its joined [K, 6] tensor of one image:
    x0, y0, x1, y1, score, class — :func:`joined_nms`)."""
    rows = np.asarray(item, np.float64).reshape(-1, 6)
    dets = [Detection(i, int(round(r[5])), float(r[4]), tuple(float(v) for v in r[:4]))  # type: ignore[arg-type]
            for i, r in enumerate(rows)]
    return sorted(dets, key=lambda d: -d.score)


def _item(head: Head, logits: np.ndarray, n: int) -> np.ndarray:
    return np.take(logits, [n], axis=head.batch_axis) if head.batch_axis is not None else logits


def _pick(model: Model, dets: list[Detection], box: Box, cls: int | None, what: str) -> Detection:
    pool = [d for d in dets if cls is None or d.cls == cls]
    if box.xyxy is not None:
        if not pool:
            raise InputError(f"box target {list(box.xyxy)}: no {what}{'' if cls is None else f' of class {cls}'} "
                             "to match; lower the confidence (Box(conf=...))")
        ious = iou(np.array([box.xyxy]), np.array([d.box for d in pool]))[0]
        return pool[int(np.argmax(ious))]
    i = 0 if box.i is None else int(box.i)
    if not 0 <= i < len(pool):
        raise InputError(f"box target {i}: the image has {len(pool)} {what}s"
                         f"{'' if cls is None else f' of class {cls}'} (0..{len(pool) - 1}) at confidence "
                         f"> {CONF if box.conf is None else box.conf}" if pool else
                         f"box target: no {what}{'' if cls is None else f' of class {cls}'} above confidence "
                         f"{CONF if box.conf is None else box.conf}; lower it with Box(conf=...) or name a box")
    return pool[i]


def _resolve_box(model: Model, logits: np.ndarray, n: int, box: Box) -> BoxResolved:
    """The raw prediction behind the detection ``box`` names (see the module docstring)."""
    from onnxfix.io.labels import label_of
    from onnxfix.targets import class_index

    h = model.head
    item = _item(h, logits, n)
    C = model.n_classes or 0
    cls = None if box.cls is None else class_index(model, box.cls, C)
    conf = CONF if box.conf is None else box.conf
    iou_t = IOU if box.iou is None else box.iou
    if h.kind == "nms":
        dets = nms_outputs(model, item)
        d = _pick(model, dets, box, cls, "detection")
        w = np.zeros(item.shape, np.float32)
        w.reshape(-1, 6)[d.index, 4] = 1.0
        coords = (d.index, 4)
        return BoxResolved(d.cls, label_of(model.labels, d.cls), None, coords, d.score, d.score, w, "box-nms", d.box,
                           d.index, tuple(dets))
    dets = detections(h, item, conf, iou_t)
    if box.xyxy is not None and not [d for d in dets if cls is None or d.cls == cls]:
        # nothing above the threshold: the raw prediction the model puts there (FasterRCNNBoxScoreTarget's match)
        dets_all = detections(h, item, -np.inf, 1.0, max_det=10**9)
        d = _pick(model, dets_all, box, cls, "prediction")
    else:
        d = _pick(model, dets, box, cls, "detection")
    w = np.zeros(item.shape, np.float32)
    wv = _as_rows(h, w)  # view [A, F]
    k = d.cls if cls is None else cls
    off = 5 if h.layout in ("yolov5", "yolox") else 4
    if box.part in ("score", "both"):
        wv[d.index, off + k] = 1.0
    if box.part in ("box", "both"):
        wv[d.index, :4] = 1.0
    rows = _as_rows(h, item)
    coords_item = _row_coords(h, item.shape, d.index, off + k)
    coords = tuple(n if a == h.batch_axis else c for a, c in enumerate(coords_item))
    raw = float(rows[d.index, off + k])
    return BoxResolved(k, label_of(model.labels, k), None, coords, raw, d.score, w, "box", d.box, d.index,
                       tuple(dets))


def _as_rows(head: Head, a: np.ndarray) -> np.ndarray:
    """[A, F] view (writable when ``a`` is) of one item's detection tensor."""
    if head.layout == "yolov8":
        return a.reshape(a.shape[-2], a.shape[-1]).T
    return a.reshape(-1, a.shape[-1])


def _row_coords(head: Head, shape: tuple[int, ...], a: int, f: int) -> tuple[int, ...]:
    idx = np.zeros(shape, bool)
    _as_rows(head, idx)[a, f] = True
    return tuple(int(v) for v in np.argwhere(idx)[0])


def detection_scores(model: Model, logits: np.ndarray, n: int) -> np.ndarray:
    """Per-class confidence of one image: the best raw prediction of each class."""
    h = model.head
    if h.kind == "nms":
        C = max(model.n_classes or 1, 1)
        out = np.zeros(C, np.float32)
        for d in nms_outputs(model, logits):
            if 0 <= d.cls < C:
                out[d.cls] = max(out[d.cls], d.score)
        return out
    _, cls, obj = decode(h, _item(h, logits, n))
    s = cls * (obj[:, None] if obj is not None else 1.0)
    return s.max(axis=0).astype(np.float32) if len(s) else np.zeros(cls.shape[1], np.float32)


# -- recognition ------------------------------------------------------------------------------------------------

_WALK = {"Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Mul", "Add", "Sub", "Div",
         "Sigmoid", "Split", "Slice", "Pow", "Exp", "Softmax", "Conv", "Gather", "Expand", "Tile"}


def _detector_like(g: Graph, name: str, depth: int = 10) -> bool:
    """The output is computed as detectors do: a Concat at the end (through reshapes), a Sigmoid behind it."""
    seen: set[str] = set()
    ops: set[str] = set()
    frontier = [name]
    node = g.producer(name)
    while node is not None and node.op_type in ("Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze"):
        node = g.producer(node.inputs[0])
    if node is None or node.op_type != "Concat":
        return False
    for _ in range(depth):
        nxt = []
        for t in frontier:
            p = g.producer(t)
            if p is None or p.name in seen:
                continue
            seen.add(p.name)
            ops.add(p.op_type)
            if p.op_type in _WALK:
                nxt.extend(i for i in p.inputs if i and i not in g.constants)
        frontier = nxt
    return "Sigmoid" in ops


def recognise(g: Graph, name: str, logits: str, softmax_head: bool, shape: tuple, symbolic: list[int],
              metadata: dict[str, str], image: str, override: str | None = None,
              time_axis: int | None = None, class_axis: int | None = None) -> Head | None:
    """A detection/NMS/dense head for output ``name`` (``logits``: the tensor explained), or ``None``: then
    :mod:`onnxfix.model` applies its classifier/sequence rules (with the ``time_axis``/``class_axis``
    overrides). ``override``: a :data:`HEAD_CHOICES` entry."""
    if override is not None and override not in HEAD_CHOICES and not _CTC.fullmatch(str(override)):
        raise InputError(f"--head {str(override)[:40]!r} is not one of {', '.join(HEAD_CHOICES)} (or ctc:BLANK)")
    rank = len(shape)
    if override in ("classifier", "sequence") or _CTC.fullmatch(str(override)):
        return None
    float_outs = [o.name for o in g.model.graph.output if o.type.tensor_type.elem_type in (1, 10, 11, 16)]
    if override == "nms" or (override is None and _has_nms(g, image)):
        return _nms_head(g, image, override == "nms")
    if override == "dense" or (override is None and rank == 4 and all(d is None or d > 1 for d in shape[2:])):
        if rank != 4:
            raise UnsupportedModel(f"--head dense: output {name!r} {list(shape)} is not [N, C, H, W]")
        return Head(name, logits, rank, 1, 0, None, softmax_head, "dense")
    if override == "ssd" or (override is None and _ssd_pair(g, float_outs)):
        pair = _ssd_pair(g, float_outs)
        if pair is None:
            raise UnsupportedModel(f"--head ssd needs a boxes output [N, A, 4] and a scores output [N, A, C]; "
                                   f"outputs: {_shapes(g)}")
        return Head(pair[1], "onnxfix/detections", 3, 2, 0, None, False, "detection", "ssd",
                    _last(g, pair[1]), "xyxy", {"boxes": pair[0], "scores": pair[1]})
    if rank == 3 or override in ("yolov8", "yolov5", "yolox"):
        if rank != 3:
            raise UnsupportedModel(f"--head {override}: output {name!r} {list(shape)} is not rank 3 "
                                   "([N, 4+C, A] or [N, A, 5+C])")
        d1, d2 = shape[1], shape[2]
        hinted = metadata.get("task") == "detect" or _detector_like(g, name)
        v8 = isinstance(d1, int) and d1 > 4 and (d2 is None or d2 > 2 * d1)
        v5 = isinstance(d2, int) and d2 > 5 and (d1 is None or d1 > 2 * d2)
        if override == "yolov8" or (override is None and hinted and v8):
            if not isinstance(d1, int) or d1 <= 4:
                raise UnsupportedModel(f"--head yolov8: output {name!r} {list(shape)} is not [N, 4+C, A]")
            return Head(name, name, rank, 1, 0, None, False, "detection", "yolov8", d1 - 4)
        size = _static_hw(g, image)
        grid = None if size is None or not isinstance(d1, int) else next(
            (st for st in (YOLOX_STRIDES, (*YOLOX_STRIDES, 64)) if _yolox_counts(*size, st) == d1), None)
        raw = not ({"Exp", "Pow"} & {n.op_type for n in g.nodes})
        if override == "yolox" or (override is None and hinted and v5 and grid is not None and raw):
            if not isinstance(d2, int) or d2 <= 5 or size is None or grid is None:
                raise UnsupportedModel(f"--head yolox: output {name!r} {list(shape)} is not [N, A, 5+C] with A the "
                                       f"grid cells of strides 8/16/32(/64) of a static input ({_shapes(g)})")
            return Head(name, name, rank, 2, 0, None, False, "detection", "yolox", d2 - 5,
                        extra={"size": f"{size[0]}x{size[1]}", "strides": ",".join(map(str, grid))})
        if override == "yolov5" or (override is None and hinted and v5):
            if not isinstance(d2, int) or d2 <= 5:
                raise UnsupportedModel(f"--head yolov5: output {name!r} {list(shape)} is not [N, A, 5+C]")
            return Head(name, name, rank, 2, 0, None, False, "detection", "yolov5", d2 - 5)
    return None


_CTC = re.compile(r"ctc(:[0-9]{1,9})?")


def _static_hw(g: Graph, image: str) -> tuple[int, int] | None:
    s = g.shape(image)
    if s is None or len(s) != 4:
        return None
    hw = (s[2], s[3]) if isinstance(s[1], int) and s[1] in (1, 3, 4) else (s[1], s[2])
    return (int(hw[0]), int(hw[1])) if all(isinstance(d, int) and d > 0 for d in hw) else None


def ctc_blank(model: Model) -> int | None:
    """The CTC blank class of the explained sequence output, or ``None`` when it is not a CTC output (see the module
    docstring: ``--head ctc[:BLANK]``, metadata ``onnxfix.ctc_blank``, PaddleOCR's ``character`` → 0).

    Raises
    ------
    InputError
        The blank named is not a class of the output, or the metadata's is not an integer.
    """
    h = model.head
    if h.kind != "sequence" or h.time_axis is None:
        return None
    ov = str(getattr(model, "_head_override", None) or "")
    meta = model.metadata
    if _CTC.fullmatch(ov):
        if ":" in ov:
            blank, where = int(ov.split(":", 1)[1]), f"--head {ov}"
        else:
            labels = model.labels or []
            blank, where = (labels.index("blank") if "blank" in labels else 0), "--head ctc"
    elif "onnxfix.ctc_blank" in meta:
        text, where = meta["onnxfix.ctc_blank"].strip(), "the model's metadata onnxfix.ctc_blank"
        if not re.fullmatch(r"[0-9]{1,9}", text):
            raise InputError(f"{where} {text[:40]!r} is not a class index")
        blank = int(text)
    elif "character" in meta:
        blank, where = 0, "PaddleOCR's blank"
    else:
        return None
    n = model.n_classes
    if n is not None and not 0 <= blank < n:
        raise InputError(f"{where}: blank {blank} is not a class of the output (0..{n - 1})")
    return blank


def _shapes(g: Graph) -> str:
    return ", ".join(f"{o} {list(g.shape(o) or [])}" for o in g.outputs)


def _last(g: Graph, t: str) -> int | None:
    s = g.shape(t)
    return s[-1] if s and isinstance(s[-1], int) else None


def _ssd_pair(g: Graph, outs: list[str]) -> tuple[str, str] | None:
    shapes = {o: g.shape(o) for o in outs}
    boxes = [o for o, s in shapes.items() if s is not None and len(s) == 3 and s[2] == 4]
    for b in boxes:
        for o, s in shapes.items():
            if o != b and s is not None and len(s) == 3 and s[1] == shapes[b][1] and isinstance(s[2], int) \
                    and s[2] >= 1 and (s[1] is None or s[1] > 4 * s[2]):
                return b, o
    return None


def _has_nms(g: Graph, image: str) -> bool:
    ops = {n.op_type for n in g.nodes}
    if "NonMaxSuppression" in ops:
        return True
    if "TopK" in ops:
        return any((s := g.shape(o)) is not None and len(s) in (2, 3) and s[-1] == 4 for o in g.outputs)
    return False


def _nms_head(g: Graph, image: str, forced: bool) -> Head:
    outs = g.model.graph.output
    boxes = classes = scores = None
    for o in outs:
        s = g.shape(o.name)
        lname = o.name.lower()
        is_float = o.type.tensor_type.elem_type in (1, 10, 11, 16)
        if s is not None and s and s[-1] == 4 and is_float and boxes is None:
            boxes = o.name
        elif ("class" in lname or "label" in lname) and classes is None:
            classes = o.name
        elif "score" in lname or "conf" in lname:
            scores = scores or o.name
    rest = [o.name for o in outs if o.name not in (boxes, classes, scores)]
    for o in rest:  # by shape: a float rank-1/2 output is the scores, an integer one the classes
        s = g.shape(o)
        is_float = next(x for x in outs if x.name == o).type.tensor_type.elem_type in (1, 10, 11, 16)
        if scores is None and is_float:
            scores = o
        elif classes is None:
            classes = o
    if boxes is None or scores is None:
        raise UnsupportedModel(f"the model runs NonMaxSuppression/TopK inside; onnxfix explains it with boxes and "
                               f"scores outputs, but found {_shapes(g)}; choose --head yolov8/yolov5/ssd/dense/"
                               "classifier for another output (--output)")
    extra = {"boxes": boxes, "scores": scores, **({"classes": classes} if classes else {})}
    return Head(scores, "onnxfix/nms", 2, 1, None, None, False, "nms", "nms", None, "xyxy", extra)


def joined_nms(proto: Any, head: Head) -> None:
    """Add to ``proto`` the tensor ``onnxfix/nms`` [K, 6] = x0, y0, x1, y1, score, class of the detections an
    NMS-inside model returns (its boxes, scores and classes outputs, each reshaped to K rows), as an output."""
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    p = "onnxfix/nms"
    g.initializer.extend([numpy_helper.from_array(np.array([-1, 4], np.int64), p + "/s4"),
                          numpy_helper.from_array(np.array([-1, 1], np.int64), p + "/s1")])
    parts = [p + "/boxes", p + "/scores"]
    g.node.extend([helper.make_node("Reshape", [head.extra["boxes"], p + "/s4"], [parts[0]], name=p + "/boxes"),
                   helper.make_node("Cast", [head.extra["scores"]], [p + "/scores_f"], to=TensorProto.FLOAT,
                                    name=p + "/scores_f"),
                   helper.make_node("Reshape", [p + "/scores_f", p + "/s1"], [parts[1]], name=p + "/scores")])
    if "classes" in head.extra:
        g.node.extend([helper.make_node("Cast", [head.extra["classes"]], [p + "/classes_f"], to=TensorProto.FLOAT,
                                        name=p + "/classes_f"),
                       helper.make_node("Reshape", [p + "/classes_f", p + "/s1"], [p + "/classes"],
                                        name=p + "/classes")])
    else:
        g.node.append(helper.make_node("Mul", [parts[1], p + "/zero"], [p + "/classes"], name=p + "/classes"))
        g.initializer.append(numpy_helper.from_array(np.array(0, np.float32), p + "/zero"))
    parts.append(p + "/classes")
    g.node.append(helper.make_node("Concat", parts, [p], axis=1, name=p))
    g.output.append(helper.make_tensor_value_info(p, TensorProto.FLOAT, None))


def joined_detections(proto: Any, head: Head) -> None:
    """Add to ``proto`` the tensor ``onnxfix/detections`` = Concat(boxes, scores, axis=2) of an SSD-style head
    (boxes [N, A, 4] and scores [N, A, C] → [N, A, 4 + C]) and expose it as an output."""
    from onnx import TensorProto, helper

    g = proto.graph
    g.node.append(helper.make_node("Concat", [head.extra["boxes"], head.extra["scores"]], [head.logits], axis=2,
                                   name="onnxfix/detections"))
    g.output.append(helper.make_tensor_value_info(head.logits, TensorProto.FLOAT, None))


def kind_summary(head: Head, model: Model | None = None) -> str:
    """One line for ``inspect`` (with ``model``: a sequence's CTC blank too)."""
    if head.kind == "sequence" and model is not None:
        blank = ctc_blank(model)
        return "sequence" if blank is None else f"sequence (CTC, blank {blank})"
    if head.kind == "dense":
        return "dense (single map)" if model is not None and model.n_classes == 1 else "dense"
    if head.kind == "detection":
        return f"detection ({head.layout}, {head.n_classes} classes, boxes {head.box_format})"
    if head.kind == "nms":
        return f"detections after NMS inside the graph (scores {head.logits}, boxes {head.extra.get('boxes')})"
    return head.kind


resolve_box = _resolve_box
parse_names = metadata_labels  # the name onnxfix.model imports


def neck_layer(model: Model) -> str | None:
    """Grad-CAM's default layer for a detector: the last 4-D feature map (with spatial extent) that every head
    branch reads — the neck's finest output, before the per-level box/class convolutions; maps after the head's
    reshapes (the DFL's Softmax over box bins × anchors) are never candidates."""
    import networkx as nx

    g = model.graph
    path = g.nodes_between([model.input], model.head.logits)
    after: set[str] = set()
    for nd in path:
        if nd.op_type in ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"):
            after |= {n[1] for n in nx.descendants(g.nx, ("op", nd.name)) if n[0] == "tensor"} | set(nd.outputs)
    cands = []
    for nd in path:
        for t in nd.outputs:
            sh = g.shape(t)
            if t not in after and sh is not None and len(sh) == 4 and all(isinstance(d, int) and d > 1
                                                                           for d in sh[2:]):
                cands.append(t)
    if not cands:
        return None
    cset = set(cands)
    desc = {t: {n[1] for n in nx.descendants(g.nx, ("tensor", t)) if n[0] == "tensor"} for t in cands}
    terminals = [t for t in cands if not (desc[t] & cset)]
    common = [t for t in cands if all(x == t or x in desc[t] for x in terminals)]
    return common[-1] if common else None
