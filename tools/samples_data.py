"""Synthetic, learnable data sets for the bundled sample models (see tools/build_samples.py).

Every image is rendered at TWICE the model's input size (that is what gets saved as the sample
PNG) and then shrunk exactly the way the app does it: ``PIL.Image.resize((W, H), BILINEAR)`` on the
uint8 image.  The models are therefore trained on precisely the pixels the app will feed them.

Boxes are ``[x0, y0, x1, y1]`` in the 2x image's pixel coordinates, x1/y1 exclusive (PIL getbbox).
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ["circle", "square", "triangle", "cross", "star"]
CAPTION_VOCAB = ["circle", "square", "triangle", "cross"]


# --------------------------------------------------------------------------------------------- utils
def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _luma(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _rot(pts, cx, cy, ang):
    ca, sa = math.cos(ang), math.sin(ang)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]


def shape_polygon(kind: str, cx: float, cy: float, r: float, ang: float):
    """Vertices of a filled shape of 'radius' r centred at (cx, cy); None for the circle."""
    if kind == "circle":
        return None
    if kind == "square":
        a = 0.82 * r
        pts = [(-a, -a), (a, -a), (a, a), (-a, a)]
    elif kind == "triangle":
        pts = [(r * math.cos(t), r * math.sin(t)) for t in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
        pts = [(x, y + 0.18 * r) for x, y in pts]  # centre the bounding box vertically
    elif kind == "cross":
        w = 0.3 * r
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w),
               (-r, -w), (-w, -w)]
    elif kind == "star":
        pts = []
        for k in range(10):
            t = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else 0.42 * r
            pts.append((rr * math.cos(t), rr * math.sin(t)))
    else:
        raise ValueError(kind)
    return _rot(pts, cx, cy, ang)


def _shape_angle(kind: str, rng: np.random.Generator) -> float:
    if kind in ("triangle", "star"):
        return float(rng.uniform(-math.pi, math.pi))
    return float(rng.uniform(-0.35, 0.35))  # square / cross: keep them recognisably upright-ish


def draw_shape(draw: ImageDraw.ImageDraw, mask_draw: ImageDraw.ImageDraw, kind, cx, cy, r, ang, fill):
    poly = shape_polygon(kind, cx, cy, r, ang)
    if poly is None:
        bb = [cx - r, cy - r, cx + r, cy + r]
        draw.ellipse(bb, fill=fill)
        mask_draw.ellipse(bb, fill=255)
    else:
        draw.polygon(poly, fill=fill)
        mask_draw.polygon(poly, fill=255)


def _clutter(draw: ImageDraw.ImageDraw, rng, w, h, n_blobs, n_lines, base_hue, blob_r, line_w):
    """Small blobs and thin lines whose hue is far from base_hue (the object's hue)."""
    for _ in range(n_blobs):
        c = _hsv(base_hue + rng.uniform(0.2, 0.8), rng.uniform(0.3, 1.0), rng.uniform(0.2, 1.0))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(*blob_r), rng.uniform(*blob_r)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=c)
    for _ in range(n_lines):
        c = _hsv(base_hue + rng.uniform(0.2, 0.8), rng.uniform(0.3, 1.0), rng.uniform(0.2, 1.0))
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        ln, t = rng.uniform(0.1, 0.35) * w, rng.uniform(0, 2 * math.pi)
        draw.line([x0, y0, x0 + ln * math.cos(t), y0 + ln * math.sin(t)], fill=c,
                  width=int(rng.integers(line_w[0], line_w[1] + 1)))


def _noise(img: Image.Image, rng, amp: int) -> Image.Image:
    a = np.asarray(img, dtype=np.int16)
    a = a + rng.integers(-amp, amp + 1, size=a.shape, dtype=np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _colours(rng):
    """(background, object) colours with a clear luminance contrast."""
    while True:
        bg = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.35), rng.uniform(0.1, 0.9))
        hue = float(rng.uniform(0, 1))
        fg = _hsv(hue, rng.uniform(0.5, 1.0), rng.uniform(0.35, 1.0))
        if abs(_luma(fg) - _luma(bg)) >= 55:
            return bg, fg, hue


# ------------------------------------------------------------------------------------------- shapes
def render_shapes(rng: np.random.Generator, size: int = 64):
    """One coloured shape on a cluttered background.  Returns (2x PIL image, class index, box)."""
    s2 = 2 * size
    cls = int(rng.integers(len(SHAPE_CLASSES)))
    kind = SHAPE_CLASSES[cls]
    bg, fg, hue = _colours(rng)
    img = Image.new("RGB", (s2, s2), bg)
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, s2, s2, int(rng.integers(6, 13)), int(rng.integers(2, 6)), hue, (2.0, 6.0), (1, 3))
    r = float(rng.uniform(0.14, 0.26) * s2)
    cx = float(rng.uniform(r + 2, s2 - r - 2))
    cy = float(rng.uniform(r + 2, s2 - r - 2))
    mask = Image.new("L", (s2, s2), 0)
    draw_shape(draw, ImageDraw.Draw(mask), kind, cx, cy, r, _shape_angle(kind, rng), fg)
    img = _noise(img, rng, 10)
    return img, cls, list(mask.getbbox())


# ------------------------------------------------------------------------------------------- digits
def render_digit(digit8: np.ndarray, rng: np.random.Generator, size: int = 56):
    """An sklearn 8x8 digit (0..16), upscaled x3 (x6 at 2x), pasted at a random position into a
    dark canvas with faint clutter.  Returns (2x PIL 'L' image, box of the ink)."""
    s2 = 2 * size
    d = Image.fromarray(np.clip(digit8 * (255.0 / 16.0), 0, 255).astype(np.uint8), "L")
    d = d.resize((48, 48), Image.BILINEAR)
    canvas = Image.new("L", (s2, s2), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 9))):  # faint specks
        x, y, rr = rng.uniform(0, s2), rng.uniform(0, s2), rng.uniform(1.0, 3.0)
        draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=int(rng.integers(30, 80)))
    for _ in range(int(rng.integers(1, 4))):  # faint scratches
        x0, y0 = rng.uniform(0, s2), rng.uniform(0, s2)
        ln, t = rng.uniform(8, 30), rng.uniform(0, 2 * math.pi)
        draw.line([x0, y0, x0 + ln * math.cos(t), y0 + ln * math.sin(t)], fill=int(rng.integers(25, 70)),
                  width=int(rng.integers(1, 3)))
    px, py = int(rng.integers(0, s2 - 48 + 1)), int(rng.integers(0, s2 - 48 + 1))
    a = np.asarray(canvas, dtype=np.int16)
    a = a + rng.integers(0, 26, size=a.shape, dtype=np.int16)  # faint background noise
    dd = np.asarray(d, dtype=np.int16)
    a[py:py + 48, px:px + 48] = np.maximum(a[py:py + 48, px:px + 48], dd)
    bb = Image.fromarray((dd > 40).astype(np.uint8) * 255).getbbox()
    box = [px + bb[0], py + bb[1], px + bb[2], py + bb[3]]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L"), box


# ----------------------------------------------------------------------------------------- captions
CAPTION_OBJECTS = 2  # objects per captioner scene = words per caption


def render_caption(rng: np.random.Generator, h: int = 48, w: int = 96, n: int = CAPTION_OBJECTS):
    """``n`` shapes, one per vertical slot of the strip (jittered inside it), named left to right.

    Returns (2x image, tokens, boxes), tokens and boxes in caption order (left to right)."""
    h2, w2 = 2 * h, 2 * w
    slot = w2 / n
    while True:
        bg = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.3), rng.uniform(0.1, 0.9))
        fgs = [_hsv(hh, rng.uniform(0.5, 1.0), rng.uniform(0.35, 1.0)) for hh in rng.uniform(0, 1, size=n)]
        if all(abs(_luma(f) - _luma(bg)) >= 55 for f in fgs):
            break
    rs = rng.uniform(0.15, 0.24, size=n) * h2
    cxs = np.array([rng.uniform(k * slot + r + 3, (k + 1) * slot - r - 3) for k, r in enumerate(rs)])
    cys = [float(rng.uniform(r + 3, h2 - r - 3)) for r in rs]
    img = Image.new("RGB", (w2, h2), bg)
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, w2, h2, int(rng.integers(3, 9)), int(rng.integers(0, 3)), float(rng.uniform(0, 1)),
             (1.5, 4.0), (1, 2))
    toks, boxes = [], []
    for k in np.argsort(cxs, kind="stable"):
        t = int(rng.integers(len(CAPTION_VOCAB)))
        kind = CAPTION_VOCAB[t]
        mask = Image.new("L", (w2, h2), 0)
        draw_shape(draw, ImageDraw.Draw(mask), kind, float(cxs[k]), cys[k], float(rs[k]), _shape_angle(kind, rng),
                   fgs[k])
        toks.append(t)
        boxes.append(list(mask.getbbox()))
    img = _noise(img, rng, 8)
    return img, toks, boxes


# ------------------------------------------------------------------------------------------- arrays
def shrink(img: Image.Image, w: int, h: int) -> np.ndarray:
    """What the app does before normalising: whole-image bilinear resize, uint8, HWC (or HW)."""
    return np.asarray(img.resize((w, h), Image.BILINEAR))


def make_shapes(n: int, seed: int, size: int = 64, keep: int = 0):
    """n shape images (uint8 NHWC at the input size) and labels; the first `keep` 2x renders are
    returned as well, as dicts {"image", "index", "boxes"}."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, size, size, 3), np.uint8)
    y = np.empty(n, np.int64)
    kept = []
    for i in range(n):
        img, c, box = render_shapes(rng, size)
        x[i], y[i] = shrink(img, size, size), c
        if i < keep:
            kept.append({"image": img, "index": c, "boxes": [box]})
    return x, y, kept


def make_digits(images8: np.ndarray, targets: np.ndarray, copies: int, seed: int, size: int = 56,
                keep: int = 0):
    rng = np.random.default_rng(seed)
    n = len(images8) * copies
    x = np.empty((n, size, size), np.uint8)
    y = np.empty(n, np.int64)
    kept = []
    i = 0
    for _ in range(copies):
        for d, t in zip(images8, targets, strict=True):
            img, box = render_digit(d, rng, size)
            x[i], y[i] = shrink(img, size, size), t
            if i < keep:
                kept.append({"image": img, "index": int(t), "boxes": [box]})
            i += 1
    return x, y, kept


def make_captions(n: int, seed: int, h: int = 48, w: int = 96, keep: int = 0, objects: int = CAPTION_OBJECTS):
    """n captioner scenes (uint8 NHWC at the input size) and their captions (n, objects); the first `keep` 2x
    renders as dicts {"image", "tokens", "boxes"}."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, h, w, 3), np.uint8)
    y = np.empty((n, objects), np.int64)
    kept = []
    for i in range(n):
        img, toks, boxes = render_caption(rng, h, w, objects)
        x[i], y[i] = shrink(img, w, h), toks
        if i < keep:
            kept.append({"image": img, "tokens": toks, "boxes": boxes})
    return x, y, kept
