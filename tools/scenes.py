"""Generated scenes with known boxes, masks and classes for the v2 sample models (tools/build_models_v2.py).

A scene is a few filled shapes (``SCENE_CLASSES``: circle, square, triangle) of random size, colour and
position on a textured background (flat, gradient, stripes, checker or blotches) with clutter (small blobs
and thin lines) and pixel noise, optionally with an unlabelled distractor shape (cross or star) that a
detector must ignore and a segmenter must call background.  Every object's colour contrasts with the
background (luma difference >= 60 against the background's mean, texture amplitude <= 22).

Like tools/samples_data.py, every image is rendered at twice the input size (what a sample PNG holds) and
shrunk exactly as onnxfix shrinks a picture: ``PIL.Image.resize((W, H), BILINEAR)`` on the uint8 image.

Coordinates are input pixels of the shrunk image: a box is ``[x0, y0, x1, y1]`` with x1/y1 exclusive (the 2x
mask's PIL ``getbbox`` halved); the label map holds 0 for background and ``k + 1`` for class k (a pixel is an
object's when at least half of its 2x2 block at 2x is); the instance map holds ``i + 1`` for object i.

The module depends on numpy and pillow only (no torch), so tests can import it by path.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SCENE_CLASSES = ("circle", "square", "triangle")
DISTRACTORS = ("cross", "star")
TEXTURES = ("flat", "gradient", "stripes", "checker", "blotches")


# --------------------------------------------------------------------------------------------- colours
def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _luma(c) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


# ---------------------------------------------------------------------------------------------- shapes
def shape_polygon(kind: str, cx: float, cy: float, r: float, ang: float) -> list[tuple[float, float]] | None:
    """Vertices of a filled shape of 'radius' ``r`` centred at (cx, cy), rotated by ``ang``; None for a circle."""
    if kind == "circle":
        return None
    if kind == "square":
        a = 0.8 * r
        pts = [(-a, -a), (a, -a), (a, a), (-a, a)]
    elif kind == "triangle":
        pts = [(r * math.cos(t), r * math.sin(t)) for t in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
        pts = [(x, y + 0.18 * r) for x, y in pts]
    elif kind == "cross":
        w = 0.3 * r
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w),
               (-r, -w), (-w, -w)]
    elif kind == "star":
        pts = [((r if k % 2 == 0 else 0.42 * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
                (r if k % 2 == 0 else 0.42 * r) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    else:
        raise ValueError(kind)
    ca, sa = math.cos(ang), math.sin(ang)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]


def _angle(kind: str, rng: np.random.Generator) -> float:
    if kind in ("triangle", "star"):
        return float(rng.uniform(-math.pi, math.pi))
    return float(rng.uniform(-0.4, 0.4))


# ----------------------------------------------------------------------------------------- backgrounds
def _background(rng: np.random.Generator, s2: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A textured float background (s2 x s2 x 3) around a random low-saturation colour; returns it and its mean."""
    base = np.asarray(_hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.4), rng.uniform(0.15, 0.85)), np.float32)
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    amp = float(rng.uniform(8, 22))
    yy, xx = np.mgrid[0:s2, 0:s2].astype(np.float32) / s2
    if kind == "flat":
        t = np.zeros((s2, s2), np.float32)
    elif kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = (math.cos(a) * (xx - 0.5) + math.sin(a) * (yy - 0.5)) * 2.0
    elif kind == "stripes":
        a, f = rng.uniform(0, math.pi), rng.uniform(3, 9)
        t = np.sin(2 * math.pi * f * (math.cos(a) * xx + math.sin(a) * yy) + rng.uniform(0, 2 * math.pi))
    elif kind == "checker":
        n = int(rng.integers(3, 9))
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2) * 2.0 - 1.0
    else:  # blotches: a coarse random grid, bilinearly upsampled
        g = int(rng.integers(3, 6))
        coarse = Image.fromarray(rng.uniform(0, 255, size=(g, g)).astype(np.uint8))
        t = np.asarray(coarse.resize((s2, s2), Image.BICUBIC), np.float32) / 127.5 - 1.0
    tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    bg = base[None, None, :] + amp * t[..., None] * tint[None, None, :]
    return bg, tuple(int(v) for v in base)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s2: int, n_blobs: int, n_lines: int) -> None:
    for _ in range(n_blobs):
        c = _hsv(rng.uniform(0, 1), rng.uniform(0.3, 1.0), rng.uniform(0.2, 1.0))
        x, y = rng.uniform(0, s2), rng.uniform(0, s2)
        rx, ry = rng.uniform(1.5, 0.045 * s2), rng.uniform(1.5, 0.045 * s2)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=c)
    for _ in range(n_lines):
        c = _hsv(rng.uniform(0, 1), rng.uniform(0.3, 1.0), rng.uniform(0.2, 1.0))
        x0, y0 = rng.uniform(0, s2), rng.uniform(0, s2)
        ln, t = rng.uniform(0.1, 0.3) * s2, rng.uniform(0, 2 * math.pi)
        draw.line([x0, y0, x0 + ln * math.cos(t), y0 + ln * math.sin(t)], fill=c, width=int(rng.integers(1, 3)))


def _object_colour(rng: np.random.Generator, bg_mean) -> tuple[int, int, int]:
    while True:
        c = _hsv(rng.uniform(0, 1), rng.uniform(0.45, 1.0), rng.uniform(0.3, 1.0))
        if abs(_luma(c) - _luma(bg_mean)) >= 60:
            return c


# -------------------------------------------------------------------------------------------- scenes
@dataclass
class Scene:
    """One generated scene (see the module docstring for the coordinate conventions)."""

    image: np.ndarray  # uint8 [S, S, 3]: what the model sees (the 2x render shrunk with PIL bilinear)
    image2x: Image.Image  # the 2x render (what a sample PNG holds)
    boxes: np.ndarray  # float32 [n, 4] x0, y0, x1, y1 in input pixels, x1/y1 exclusive
    classes: np.ndarray  # int64 [n] indices into SCENE_CLASSES
    labels: np.ndarray  # uint8 [S, S]: 0 background, k + 1 for class k
    instances: np.ndarray  # uint8 [S, S]: 0 background, i + 1 for object i
    distractor_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


def _place(rng, s2, r, taken, region) -> tuple[float, float] | None:
    x_lo, x_hi = region
    for _ in range(60):
        cx = float(rng.uniform(max(r + 2, x_lo + r), min(s2 - r - 2, x_hi - r)))
        cy = float(rng.uniform(r + 2, s2 - r - 2))
        if all(cx + r + 3 < a or cx - r - 3 > c or cy + r + 3 < b or cy - r - 3 > d for a, b, c, d in taken):
            return cx, cy
    return None


def render_scene(
    rng: np.random.Generator,
    size: int = 64,
    n_objects: tuple[int, int] = (1, 3),
    radius: tuple[float, float] = (0.10, 0.22),
    distractor_p: float = 0.0,
    classes: list[int] | None = None,
    halves: bool = False,
) -> Scene:
    """Render one scene.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness (a fixed seed gives the same scene).
    size : int
        Input side S; the render is 2S x 2S.
    n_objects : (int, int)
        Inclusive range of the number of labelled objects (ignored when ``classes`` is given).
    radius : (float, float)
        Object 'radius' range as a fraction of S (0.10-0.22 at S = 64: boxes of about 11-28 px).
    distractor_p : float
        Probability of one unlabelled cross/star distractor (not in ``boxes``, background in ``labels``).
    classes : list of int, optional
        Exactly these object classes (in this order), instead of random ones.
    halves : bool
        Object i is placed entirely in the i-th vertical half (left, right); needs at most two objects.

    Returns
    -------
    Scene
    """
    s2 = 2 * size
    if classes is None:
        n = int(rng.integers(n_objects[0], n_objects[1] + 1))
        classes = [int(rng.integers(len(SCENE_CLASSES))) for _ in range(n)]
    bg_f, bg_mean = _background(rng, s2)
    img = Image.fromarray(np.clip(bg_f, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, s2, int(rng.integers(3, 10)), int(rng.integers(1, 5)))
    kinds = [SCENE_CLASSES[c] for c in classes]
    if distractor_p > 0 and rng.uniform() < distractor_p:
        kinds.append(DISTRACTORS[int(rng.integers(len(DISTRACTORS)))])
    taken: list[tuple[float, float, float, float]] = []
    masks = []
    for i, kind in enumerate(kinds):
        r = float(rng.uniform(*radius) * s2)
        region = (0.0, float(s2))
        if halves and i < len(classes):
            region = (i * s2 / 2, (i + 1) * s2 / 2)
        pos = _place(rng, s2, r, taken, region)
        while pos is None and i < len(classes) and r > 0.07 * s2:  # crowded: shrink until it fits
            r *= 0.8
            pos = _place(rng, s2, r, taken, region)
        if pos is None:
            if i < len(classes):
                raise RuntimeError("could not place a labelled object")  # not seen for <= 3 objects
            continue
        cx, cy = pos
        taken.append((cx - r, cy - r, cx + r, cy + r))
        mask = Image.new("L", (s2, s2), 0)
        md = ImageDraw.Draw(mask)
        fill = _object_colour(rng, bg_mean)
        poly = shape_polygon(kind, cx, cy, r, _angle(kind, rng))
        if poly is None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            md.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        else:
            draw.polygon(poly, fill=fill)
            md.polygon(poly, fill=255)
        masks.append(mask)
    a = np.asarray(img, np.int16) + rng.integers(-8, 9, size=(s2, s2, 3), dtype=np.int16)
    img2 = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    small = np.asarray(img2.resize((size, size), Image.BILINEAR))
    n_lab = len(classes)
    boxes = np.zeros((n_lab, 4), np.float32)
    labels = np.zeros((size, size), np.uint8)
    inst = np.zeros((size, size), np.uint8)
    dboxes = []
    for i, m in enumerate(masks):
        bb = np.asarray(m.getbbox(), np.float32) / 2.0
        cover = np.asarray(m, np.float32).reshape(size, 2, size, 2).mean(axis=(1, 3)) >= 127.5
        if i < n_lab:
            boxes[i] = bb
            labels[cover] = classes[i] + 1
            inst[cover] = i + 1
        else:
            dboxes.append(bb)
    return Scene(small, img2, boxes, np.asarray(classes, np.int64), labels, inst,
                 np.asarray(dboxes, np.float32).reshape(-1, 4))


# ------------------------------------------------------------------------------------------ data sets
def detection_set(n: int, seed: int, size: int = 64, distractor_p: float = 0.3, keep: int = 0) -> dict:
    """``n`` scenes with 1-3 objects: ``images`` uint8 [n, S, S, 3], ``boxes``/``classes`` (lists of arrays),
    ``labels`` uint8 [n, S, S]; ``kept`` holds the first ``keep`` Scene objects (with their 2x renders)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n, size, size), np.uint8)
    boxes, classes, kept = [], [], []
    for i in range(n):
        sc = render_scene(rng, size, distractor_p=distractor_p)
        images[i], labels[i] = sc.image, sc.labels
        boxes.append(sc.boxes)
        classes.append(sc.classes)
        if i < keep:
            kept.append(sc)
    return {"images": images, "labels": labels, "boxes": boxes, "classes": classes, "kept": kept}


def classification_set(n: int, seed: int, size: int = 64, keep: int = 0) -> dict:
    """``n`` scenes with one salient object (class = its shape): ``images``, ``y`` int64 [n], ``boxes`` [n, 4],
    ``labels`` uint8 [n, S, S]."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n, size, size), np.uint8)
    y = np.empty(n, np.int64)
    boxes = np.empty((n, 4), np.float32)
    kept = []
    for i in range(n):
        sc = render_scene(rng, size, radius=(0.14, 0.26), classes=[int(rng.integers(len(SCENE_CLASSES)))])
        images[i], y[i], boxes[i], labels[i] = sc.image, sc.classes[0], sc.boxes[0], sc.labels
        if i < keep:
            kept.append(sc)
    return {"images": images, "y": y, "boxes": boxes, "labels": labels, "kept": kept}


def pair_set(n: int, seed: int, size: int = 64, keep: int = 0) -> dict:
    """``n`` scenes with two objects of different classes, one in each half: ``images``, ``classes`` int64
    [n, 2] (left, right), ``boxes`` float32 [n, 2, 4], ``labels`` uint8 [n, S, S]."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n, size, size), np.uint8)
    classes = np.empty((n, 2), np.int64)
    boxes = np.empty((n, 2, 4), np.float32)
    kept = []
    for i in range(n):
        a = int(rng.integers(len(SCENE_CLASSES)))
        b = (a + 1 + int(rng.integers(len(SCENE_CLASSES) - 1))) % len(SCENE_CLASSES)
        sc = render_scene(rng, size, radius=(0.12, 0.21), classes=[a, b], halves=True)
        images[i], classes[i], boxes[i], labels[i] = sc.image, sc.classes, sc.boxes, sc.labels
        if i < keep:
            kept.append(sc)
    return {"images": images, "classes": classes, "boxes": boxes, "labels": labels, "kept": kept}


def normalise(images_u8: np.ndarray, mean, std, scale: float = 1.0 / 255.0) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, ``(pixel * scale - mean) / std`` per channel (onnxfix's preprocessing)."""
    a = images_u8.astype(np.float32) * np.float32(scale)
    a = (a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.float32)


# ------------------------------------------------------------------------------------ scoring (numpy)
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of corner boxes (x0, y0, x1, y1)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Class-aware greedy NMS; indices of the kept boxes by decreasing score."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    for i in order:
        if all(classes[j] != classes[i] or box_iou(boxes[i], boxes[j])[0, 0] <= iou for j in keep):
            keep.append(int(i))
    return np.asarray(keep, np.int64)


def decode_yolov8(out: np.ndarray, conf: float = 0.25, iou: float = 0.5):
    """[4 + C, N] (centre x, centre y, w, h, class scores) -> (boxes [k, 4] corners, scores [k], classes [k])."""
    cls = out[4:].argmax(0)
    score = out[4:].max(0)
    return _finish(out[:4].T, score, cls, conf, iou)


def decode_yolov5(out: np.ndarray, conf: float = 0.25, iou: float = 0.5):
    """[N, 5 + C] (centre x, centre y, w, h, objectness, class scores) -> boxes, scores (obj x class), classes."""
    s = out[:, 4:5] * out[:, 5:]
    return _finish(out[:, :4], s.max(1), s.argmax(1), conf, iou)


def _finish(xywh, score, cls, conf, iou):
    m = score > conf
    xywh, score, cls = xywh[m], score[m], cls[m]
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    k = nms(boxes, score, cls, iou)
    return boxes[k].reshape(-1, 4), score[k], cls[k]


def detection_metrics(preds: list, gt_boxes: list, gt_classes: list, iou: float = 0.5) -> dict:
    """Precision, recall (at the given detections) and AP@``iou`` averaged over classes (all-point VOC AP).

    ``preds``: one (boxes, scores, classes) per image; a detection is a true positive when it matches a not yet
    matched ground-truth box of its class with IoU >= ``iou`` (highest-scoring detections first)."""
    recs = []  # (class, score, tp)
    n_gt = np.zeros(len(SCENE_CLASSES), np.int64)
    for (pb, ps, pc), gb, gc in zip(preds, gt_boxes, gt_classes, strict=True):
        for c in gc:
            n_gt[int(c)] += 1
        used = np.zeros(len(gb), bool)
        ious = box_iou(pb, gb) if len(pb) and len(gb) else np.zeros((len(pb), len(gb)))
        for i in np.argsort(-ps, kind="stable"):
            cand = [(ious[i, j], j) for j in range(len(gb)) if not used[j] and gc[j] == pc[i] and ious[i, j] >= iou]
            tp = bool(cand)
            if tp:
                used[max(cand)[1]] = True
            recs.append((int(pc[i]), float(ps[i]), tp))
    tp_all = sum(r[2] for r in recs)
    aps = []
    for c in range(len(SCENE_CLASSES)):
        rc = sorted((r for r in recs if r[0] == c), key=lambda r: -r[1])
        tps = np.cumsum([r[2] for r in rc]) if rc else np.zeros(0)
        recall = tps / max(n_gt[c], 1)
        precision = tps / np.arange(1, len(rc) + 1) if rc else np.zeros(0)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[1.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        idx = np.where(mrec[1:] != mrec[:-1])[0]
        aps.append(float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])))
    return {"precision": tp_all / max(len(recs), 1), "recall": tp_all / max(int(n_gt.sum()), 1),
            "map50": float(np.mean(aps)), "ap50_per_class": dict(zip(SCENE_CLASSES, aps, strict=True)),
            "n_images": len(preds), "n_objects": int(n_gt.sum())}


def segmentation_metrics(pred: np.ndarray, labels: np.ndarray, n_classes: int = len(SCENE_CLASSES) + 1) -> dict:
    """Pixel accuracy and IoU per class (0 = background) of predicted label maps against the true ones."""
    ious = []
    for c in range(n_classes):
        inter = np.sum((pred == c) & (labels == c))
        union = np.sum((pred == c) | (labels == c))
        ious.append(float(inter / union) if union else float("nan"))
    return {"pixel_accuracy": float(np.mean(pred == labels)), "miou": float(np.nanmean(ious)),
            "iou_per_class": dict(zip(("background",) + SCENE_CLASSES, ious, strict=True))}
