#!/usr/bin/env python
"""Build onnxfix's evaluation data sets (with ground truth) and the small models trained on them.

    python tools/build_eval_sets.py                       # digits_loc, an8flower6, an8flower12 (+ models)
    python tools/build_eval_sets.py --only digits_loc     # one set (repeatable)
    python tools/build_eval_sets.py --only skimage        # == --skimage: the scikit-image photo set
    python tools/build_eval_sets.py --no-train            # write the test splits only, keep the models

Outputs (docs/datasets.md describes them):

* ``sample_data/<set>/annotations.json`` + ``images/NNNN.png`` + ``masks/NNNN.png`` — the committed test splits
  (60 images each), in the evaluation format fixed by the lead (``{"classes": [...], "images": [{"file", "label",
  "boxes", "mask"}]}``, boxes ``[x0, y0, x1, y1]`` in image pixels, x1/y1 exclusive = PIL ``getbbox``).
* ``sample_models/<set>.onnx`` + ``<set>.labels.txt`` — one small CNN per synthetic set, trained here.
* ``.cache/eval/skimage/`` — scikit-image's bundled photos with the hand-drawn boxes of
  ``tools/eval_sets/skimage.json`` (for EfficientNet-Lite0; not committed).

Decisions (the issue leaves them open):

* **digits_loc**: sklearn's ``load_digits`` (8×8, 0..16) upscaled (PIL bilinear) to a random square size of
  28–64 px and pasted (pixel-wise max) at a random position of a 112×112 grey canvas with a random background
  level and gradient, pixel noise, and clutter that is *not* a digit: specks, blobs, straight scratches and short
  random-walk "fragments", all dimmer on average than the digit ink.  Ground truth = the box: getbbox of the
  digit's ink (upscaled digit ≥ 25% of its own maximum).  No mask: the thin strokes (a "0" has a hole) are not
  the object's region, and the pointing game would then penalise maps that land on the digit's middle.  The 300
  digits of a fixed permutation's tail are held out: the test split uses only them, the model never saw them.
* **an8flower6 / an8flower12** (after Oramas et al., ICLR 2019): a "flower" = stem, one leaf on the stem, 5–8
  petals and a centre disc, at a random position, scale (petal radius 15–27 px on a 96×96 image) and rotation
  (±45°), on a two-colour gradient background with clutter blobs and strokes.  Six *class colours* are saturated
  (s ≥ 0.8, v ≥ 0.8) hues at 0/60/120/180/240/300° (±4°).  Every other colour in the picture (stem, petals,
  the non-discriminative part, clutter) is random but drawn from hues at least ~16° away from every class hue
  (class hue + 30° ± 10°), or is a low-saturation background colour: so the other parts vary randomly and carry no
  class information, and the only class evidence in the image is the discriminative part.
  an8flower6: class = colour of the centre disc.  an8flower12: two possible discriminative parts — classes 0–5 =
  the centre's colour (the leaf is a distractor colour), classes 6–11 = the leaf's colour (the centre is a
  distractor colour).  Mask = the visible pixels of the discriminative part; box = its getbbox.
* **Models**: conv blocks (Conv-BN-ReLU, MaxPool) → a last conv block at 1/4 of the input → GlobalAveragePool →
  Gemm, so that CAM, Grad-CAM and fixations all apply.  BatchNorm is folded into the Convs by the exporter.
  Trained on CPU with one thread and fixed seeds on freshly rendered images that are shrunk exactly as the app
  does (whole-image PIL bilinear resize to the input, x = (pixel/255 − mean)/std with the training set's mean/std
  stored in the model metadata).  Exported with the legacy TorchScript exporter, opset 17, verified: ORT == torch
  (< 1e-4), file < 2 MB, accuracy of the exported model through the app's own path (onnxfix.Explainer.predict)
  on the written test split ≥ 0.9.
* Everything is deterministic from the seeds below: running the tool twice gives byte-identical files.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import colorsys  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "sample_data"
MODEL_DIR = ROOT / "sample_models"
SKIMAGE_JSON = Path(__file__).resolve().parent / "eval_sets" / "skimage.json"
SKIMAGE_OUT = ROOT / ".cache" / "eval" / "skimage"
EFFICIENTNET = ROOT / ".cache" / "real_models" / "models" / "efficientnet_lite0.onnx"

SCALE_STR = "0.00392156862745098"  # 1/255
SCALE = float(SCALE_STR)
OPSET = 17
MAX_BYTES = 2 * 1024 * 1024
N_TEST = 60
MIN_ACC = 0.90

COLOUR_NAMES = ["red", "yellow", "green", "cyan", "blue", "magenta"]
CLASS_HUES = [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]  # degrees


def log(msg: str) -> None:
    print(msg, flush=True)


# ============================================================================================== colours
def hsv(h_deg: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((h_deg / 360.0) % 1.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def class_colour(rng: np.random.Generator, c: int) -> tuple[int, int, int]:
    """A saturated, bright colour of class hue ``c`` (±4°)."""
    return hsv(CLASS_HUES[c] + rng.uniform(-4, 4), rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0))


def distractor_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A random colour whose hue lies between two class hues (≥ ~16° from each): never class evidence."""
    h = CLASS_HUES[int(rng.integers(6))] + 30.0 + rng.uniform(-10, 10)
    return hsv(h, rng.uniform(0.25, 1.0), rng.uniform(0.3, 1.0))


def background_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Low-saturation colour of any hue (saturation ≤ 0.3, far below the class colours' ≥ 0.8)."""
    return hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.3), rng.uniform(0.15, 0.9))


# ============================================================================================ geometry
def ellipse_poly(cx: float, cy: float, a: float, b: float, ang: float, n: int = 20) -> list[tuple[float, float]]:
    """Vertices of an ellipse with half-axes a (along ``ang``) and b."""
    ca, sa = math.cos(ang), math.sin(ang)
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x, y = a * math.cos(t), b * math.sin(t)
        pts.append((cx + x * ca - y * sa, cy + x * sa + y * ca))
    return pts


def gradient_background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Linear blend of two low-saturation colours in a random direction (RGB)."""
    c0 = np.array(background_colour(rng), np.float32)
    c1 = np.array(background_colour(rng), np.float32)
    t = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    p = (xx - w / 2) * math.cos(t) + (yy - h / 2) * math.sin(t)
    p = (p - p.min()) / max(float(p.max() - p.min()), 1e-6)
    a = c0[None, None] * (1 - p[..., None]) + c1[None, None] * p[..., None]
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "RGB")


# ========================================================================================== digits_loc
DIGITS_SIZE = 112  # test images (the app shrinks them to the model's 56×56)
DIGITS_INPUT = 56
DIGITS_HELD_OUT = 300


def _digits_split():
    from sklearn.datasets import load_digits

    d = load_digits()
    perm = np.random.default_rng(2024).permutation(len(d.target))
    tr, te = perm[:-DIGITS_HELD_OUT], perm[-DIGITS_HELD_OUT:]
    return (d.images[tr], d.target[tr]), (d.images[te], d.target[te])


def render_digit_loc(digit8: np.ndarray, rng: np.random.Generator, size: int = DIGITS_SIZE):
    """One digit on a cluttered grey canvas.  Returns (PIL 'L' image, box, PIL 'L' ink mask)."""
    base = rng.uniform(0, 60)
    t = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    grad = ((xx - size / 2) * math.cos(t) + (yy - size / 2) * math.sin(t)) / size * rng.uniform(0, 40)
    canvas = Image.fromarray(np.clip(base + grad, 0, 255).astype(np.uint8), "L")
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 10))):  # specks and blobs
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        rx, ry = rng.uniform(1.0, 5.0), rng.uniform(1.0, 5.0)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=int(rng.integers(50, 170)))
    for _ in range(int(rng.integers(1, 5))):  # straight scratches
        x0, y0 = rng.uniform(0, size), rng.uniform(0, size)
        ln, a = rng.uniform(10, 45), rng.uniform(0, 2 * math.pi)
        draw.line([x0, y0, x0 + ln * math.cos(a), y0 + ln * math.sin(a)], fill=int(rng.integers(40, 150)),
                  width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 3))):  # random-walk fragments (curvy, not digits)
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        a = rng.uniform(0, 2 * math.pi)
        pts = [(x, y)]
        for _ in range(int(rng.integers(3, 7))):
            a += rng.uniform(-1.2, 1.2)
            step = rng.uniform(3, 7)
            x, y = x + step * math.cos(a), y + step * math.sin(a)
            pts.append((x, y))
        draw.line(pts, fill=int(rng.integers(60, 160)), width=int(rng.integers(2, 4)))
    s = int(rng.integers(28, 65))
    gain = rng.uniform(0.75, 1.0)
    d = Image.fromarray(np.clip(digit8 * (255.0 * gain / 16.0), 0, 255).astype(np.uint8), "L")
    dd = np.asarray(d.resize((s, s), Image.Resampling.BILINEAR), dtype=np.int16)
    px, py = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
    a = np.asarray(canvas, dtype=np.int16) + rng.integers(0, int(rng.integers(6, 31)), size=(size, size),
                                                          dtype=np.int16)
    a[py:py + s, px:px + s] = np.maximum(a[py:py + s, px:px + s], dd)
    ink = np.zeros((size, size), np.uint8)
    ink[py:py + s, px:px + s] = (dd >= 0.25 * dd.max()) * 255
    mask = Image.fromarray(ink, "L")
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L"), list(mask.getbbox()), mask


def digits_loc_test(n: int = N_TEST, seed: int = 32) -> list[dict]:
    """A class-balanced split of held-out digits: item i is class i mod 10, the (i // 10)-th held-out digit of that
    class (cycling), at a random placement."""
    _, (xte8, yte) = _digits_split()
    per_class = [np.flatnonzero(yte == c) for c in range(10)]
    rng = np.random.default_rng(seed)
    test = []
    for i in range(n):
        idx = per_class[i % 10][(i // 10) % len(per_class[i % 10])]
        img, box, _ = render_digit_loc(xte8[idx], rng)
        test.append({"image": img, "label": int(yte[idx]), "box": box, "mask": None})  # ground truth: the box
    return test


def digits_loc_data(n_train_copies: int = 4) -> dict:
    (xtr8, ytr), (xte8, _) = _digits_split()
    rng = np.random.default_rng(31)
    xs, ys = [], []
    for _ in range(n_train_copies):
        for dg, t in zip(xtr8, ytr, strict=True):
            img, _, _ = render_digit_loc(dg, rng)
            xs.append(shrink(img, DIGITS_INPUT, DIGITS_INPUT))
            ys.append(int(t))
    return {"xtr": np.stack(xs), "ytr": np.asarray(ys, np.int64), "test": digits_loc_test(),
            "heldout": lambda: digits_loc_test(len(xte8) * 2, seed=33),
            "note": f"{len(xtr8)} sklearn digits × {n_train_copies} random placements = {len(ys)} training "
                    f"images; test: {N_TEST} placements of the {len(xte8)} held-out digits"}


# ========================================================================================== an8flower
FLOWER_SIZE = 96  # test images (the app shrinks them to the model's 64×64)
FLOWER_INPUT = 64


def render_flower(rng: np.random.Generator, cls: int, two_parts: bool, size: int = FLOWER_SIZE):
    """One an8Flower-style image of class ``cls``.

    Returns (PIL RGB image, PIL 'L' mask of the discriminative part, its box)."""
    img = gradient_background(rng, size, size)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):  # clutter blobs
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        rx, ry = rng.uniform(2, 7), rng.uniform(2, 7)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=distractor_colour(rng))
    for _ in range(int(rng.integers(1, 4))):  # clutter strokes
        x0, y0 = rng.uniform(0, size), rng.uniform(0, size)
        ln, a = rng.uniform(8, 30), rng.uniform(0, 2 * math.pi)
        draw.line([x0, y0, x0 + ln * math.cos(a), y0 + ln * math.sin(a)], fill=distractor_colour(rng),
                  width=int(rng.integers(1, 4)))

    # discriminative part and colours
    part = "centre"
    colour = cls
    if two_parts and cls >= 6:
        part, colour = "leaf", cls - 6
    centre_c = class_colour(rng, colour) if part == "centre" else distractor_colour(rng)
    leaf_c = class_colour(rng, colour) if part == "leaf" else distractor_colour(rng)
    petal_c = distractor_colour(rng)
    stem_c = distractor_colour(rng)

    # geometry: the flower's "down" is rotated by rot; the stem runs from the centre along it
    r = float(rng.uniform(15, 27))
    rot = float(rng.uniform(-math.pi / 4, math.pi / 4))
    down = (math.sin(-rot), math.cos(-rot))  # unit vector of the stem
    stem_len = 1.5 * r
    leaf_side = 1 if rng.random() < 0.5 else -1
    leaf_at = rng.uniform(1.05, 1.3) * r
    leaf_a, leaf_b = rng.uniform(0.45, 0.6) * r, rng.uniform(0.2, 0.28) * r
    stem_ang = math.atan2(down[1], down[0])
    leaf_ang = stem_ang - leaf_side * rng.uniform(0.6, 1.0)  # leaf points up and sideways
    # extent relative to the centre, to place the flower inside the canvas
    ext = [(-r, -r), (r, r), (down[0] * stem_len, down[1] * stem_len)]
    lx_rel = down[0] * leaf_at + math.cos(leaf_ang) * leaf_a
    ly_rel = down[1] * leaf_at + math.sin(leaf_ang) * leaf_a
    ext += [(lx_rel - leaf_a, ly_rel - leaf_a), (lx_rel + leaf_a, ly_rel + leaf_a)]
    xmin, xmax = min(e[0] for e in ext), max(e[0] for e in ext)
    ymin, ymax = min(e[1] for e in ext), max(e[1] for e in ext)
    cx = float(rng.uniform(2 - xmin, size - 2 - xmax))
    cy = float(rng.uniform(2 - ymin, size - 2 - ymax))

    labels = Image.new("L", (size, size), 0)  # part id per pixel, last drawn wins
    ldraw = ImageDraw.Draw(labels)

    def put(poly_or_line, fill, pid, kind="poly", width=1):
        if kind == "poly":
            draw.polygon(poly_or_line, fill=fill)
            ldraw.polygon(poly_or_line, fill=pid)
        else:
            draw.line(poly_or_line, fill=fill, width=width)
            ldraw.line(poly_or_line, fill=pid, width=width)

    sw = max(2, int(round(0.14 * r)))
    put([(cx, cy), (cx + down[0] * stem_len, cy + down[1] * stem_len)], stem_c, 1, "line", sw)
    lcx, lcy = cx + down[0] * leaf_at, cy + down[1] * leaf_at
    put(ellipse_poly(lcx + math.cos(leaf_ang) * leaf_a, lcy + math.sin(leaf_ang) * leaf_a, leaf_a, leaf_b,
                     leaf_ang), leaf_c, 2)
    n_pet = int(rng.integers(5, 9))
    a0 = rng.uniform(0, 2 * math.pi)
    pw = rng.uniform(0.2, 0.3) * r
    for k in range(n_pet):
        t = a0 + 2 * math.pi * k / n_pet
        put(ellipse_poly(cx + 0.55 * r * math.cos(t), cy + 0.55 * r * math.sin(t), 0.45 * r, pw, t), petal_c, 3)
    cr = rng.uniform(0.27, 0.34) * r
    put(ellipse_poly(cx, cy, cr, cr, 0.0, 24), centre_c, 4)
    pid = 4 if part == "centre" else 2
    mask = Image.fromarray((np.asarray(labels) == pid).astype(np.uint8) * 255, "L")
    return img, mask, list(mask.getbbox())


def flower_labels(two_parts: bool) -> list[str]:
    if not two_parts:
        return [f"{c}_centre" for c in COLOUR_NAMES]
    return [f"{c}_centre" for c in COLOUR_NAMES] + [f"{c}_leaf" for c in COLOUR_NAMES]


def flower_test(two_parts: bool, seed: int, n: int = N_TEST) -> list[dict]:
    """A class-balanced split of ``n`` renders (class = index mod number of classes)."""
    n_cls = 12 if two_parts else 6
    rng = np.random.default_rng(seed)
    test = []
    for i in range(n):
        img, mask, box = render_flower(rng, i % n_cls, two_parts)
        test.append({"image": img, "label": i % n_cls, "box": box, "mask": mask})
    return test


def flower_data(two_parts: bool, n_train: int, seed: int) -> dict:
    n_cls = 12 if two_parts else 6
    rng = np.random.default_rng(seed)
    ytr = rng.integers(n_cls, size=n_train).astype(np.int64)
    xtr = np.stack([shrink(render_flower(rng, int(c), two_parts)[0], FLOWER_INPUT, FLOWER_INPUT) for c in ytr])
    return {"xtr": xtr, "ytr": ytr, "test": flower_test(two_parts, seed + 1),
            "heldout": lambda: flower_test(two_parts, seed + 2, 600),
            "note": f"{n_train} fresh random renders for training; test: {N_TEST} others ({N_TEST // n_cls} per "
                    f"class)"}


FLOWER_SEEDS = {"an8flower6": 61, "an8flower12": 121}  # training renders; test split seed + 1, held out seed + 2


def eval_split(name: str, n: int = N_TEST) -> list[dict]:
    """The committed test split of set ``name`` (its first ``n`` items): dicts image/label/box/mask."""
    if name == "digits_loc":
        return digits_loc_test(n)
    return flower_test(name == "an8flower12", FLOWER_SEEDS[name] + 1, n)


# ============================================================================================== helpers
def shrink(img: Image.Image, w: int, h: int) -> np.ndarray:
    """What the app does before normalising: whole-image bilinear resize, uint8 HWC (or HW)."""
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR))


def png_bytes(img: Image.Image, optimize: bool = True) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=optimize)
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_dataset(folder: Path, classes: list[str], items: list[dict]) -> dict:
    """Write images/, masks/ and annotations.json into a fresh sibling folder, then swap it in."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700
    try:
        (tmp / "images").mkdir()
        if any(it.get("mask") is not None for it in items):
            (tmp / "masks").mkdir()
        rows = []
        for i, it in enumerate(items):
            name = f"{i:04d}.png"
            (tmp / "images" / name).write_bytes(png_bytes(it["image"]))
            row: dict = {"file": f"images/{name}", "label": it["label"], "boxes": [it["box"]]}
            if it.get("mask") is not None:
                (tmp / "masks" / name).write_bytes(png_bytes(it["mask"]))
                row["mask"] = f"masks/{name}"
            if it.get("accept"):
                row["accept"] = it["accept"]
            rows.append(row)
        ann = {"classes": classes, "images": rows}
        (tmp / "annotations.json").write_text(json.dumps(ann, indent=1) + "\n")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ann


# ============================================================================================== models
@dataclass
class SetSpec:
    name: str
    description: str
    channels: str  # "gray" | "rgb"
    hw: tuple[int, int]
    labels: list[str]
    data: Callable[[], dict]
    widths: tuple[int, int, int, int]
    epochs: int
    lr: float
    seed: int
    bs: int = 64


SETS = [
    SetSpec("digits_loc",
            "Digit classifier for localisation tests: sklearn 8x8 digits upscaled to 28-64 px and placed anywhere on "
            "a cluttered 112x112 canvas; Conv-ReLU-MaxPool blocks, last conv block at 14x14, GlobalAveragePool, "
            "Gemm (CAM/Grad-CAM/fixations all apply).",
            "gray", (DIGITS_INPUT, DIGITS_INPUT), [str(i) for i in range(10)], digits_loc_data,
            widths=(16, 32, 64, 64), epochs=8, lr=4e-3, seed=7),
    SetSpec("an8flower6",
            "an8Flower-style classifier: the class is the colour of the flower's centre disc (6 colours); stem, leaf, "
            "petals and clutter vary in uninformative colours. Conv-ReLU-MaxPool blocks, GlobalAveragePool, Gemm.",
            "rgb", (FLOWER_INPUT, FLOWER_INPUT), flower_labels(False),
            lambda: flower_data(False, 6000, FLOWER_SEEDS["an8flower6"]),
            widths=(16, 32, 48, 64), epochs=6, lr=4e-3, seed=8),
    SetSpec("an8flower12",
            "an8Flower-style classifier with two possible discriminative parts: classes 0-5 = colour of the centre "
            "disc, 6-11 = colour of the leaf (6 colours each); everything else uninformative. Conv-ReLU-MaxPool "
            "blocks, GlobalAveragePool, Gemm.",
            "rgb", (FLOWER_INPUT, FLOWER_INPUT), flower_labels(True),
            lambda: flower_data(True, 7000, FLOWER_SEEDS["an8flower12"]),
            widths=(16, 32, 48, 64), epochs=6, lr=4e-3, seed=9),
]
BY_NAME = {s.name: s for s in SETS}


def make_net(cin: int, widths: tuple[int, int, int, int], n_classes: int):
    """Conv-BN-ReLU-MaxPool ×2 → Conv-BN-ReLU ×2 (the last conv block, at 1/4 of the input) → GAP → Gemm."""
    import torch
    import torch.nn as nn

    w1, w2, w3, w4 = widths

    def block(a, b):
        return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]

    class CamNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*block(cin, w1), nn.MaxPool2d(2), *block(w1, w2), nn.MaxPool2d(2),
                                          *block(w2, w3), *block(w3, w4))
            self.fc = nn.Linear(w4, n_classes)

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)  # -> GlobalAveragePool
            return self.fc(torch.flatten(x, 1))

    return CamNet()


def norm_stats(x_u8: np.ndarray) -> tuple[list[float], list[float]]:
    a = x_u8.astype(np.float64) * SCALE
    axes = tuple(range(a.ndim - 1)) if a.ndim == 4 else None
    mean, std = np.atleast_1d(a.mean(axis=axes)), np.atleast_1d(a.std(axis=axes))
    return [round(float(m), 3) for m in mean], [round(float(s), 3) for s in std]


def to_tensor(x_u8: np.ndarray, mean, std):
    import torch

    a = x_u8.astype(np.float32) * np.float32(SCALE)
    a = a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2)
    m = np.asarray(mean, np.float32)[None, :, None, None]
    s = np.asarray(std, np.float32)[None, :, None, None]
    return torch.from_numpy(np.ascontiguousarray((a - m) / s))


def train(spec: SetSpec, net, xtr, ytr, mean, std) -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(spec.seed)
    g = torch.Generator().manual_seed(spec.seed)
    n = len(ytr)
    per_epoch = n // spec.bs
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.epochs * per_epoch,
                                                pct_start=0.25)
    x_all = to_tensor(xtr, mean, std)
    y_all = torch.from_numpy(ytr)
    for ep in range(spec.epochs):
        net.train()
        perm = torch.randperm(n, generator=g)
        tot, t0, right = 0.0, time.time(), 0
        for b in range(per_epoch):
            idx = perm[b * spec.bs:(b + 1) * spec.bs]
            out = net(x_all[idx])
            loss = F.cross_entropy(out, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
            right += int((out.argmax(1) == y_all[idx]).sum())
        log(f"  epoch {ep + 1}/{spec.epochs}  loss {tot / per_epoch:.4f}  train acc "
            f"{right / (per_epoch * spec.bs):.3f}  ({time.time() - t0:.1f}s)")


def export(spec: SetSpec, net, mean, std):
    import onnx
    import torch

    net.eval()
    dummy = torch.zeros(1, 1 if spec.channels == "gray" else 3, *spec.hw)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), buf, dynamo=False, opset_version=OPSET, do_constant_folding=True,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    m = onnx.load_from_string(buf.getvalue())
    ops = sorted({nd.op_type for nd in m.graph.node})
    want = {"Conv", "Relu", "MaxPool", "GlobalAveragePool", "Gemm"}
    if set(ops) - want - {"Flatten"} or want - set(ops):
        raise SystemExit(f"{spec.name}: unexpected op inventory {ops}")
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, {
        "onnxfix.channels": spec.channels,
        "onnxfix.layout": "nchw",
        "onnxfix.scale": SCALE_STR,
        "onnxfix.mean": ",".join(repr(v) for v in mean),
        "onnxfix.std": ",".join(repr(v) for v in std),
        "onnxfix.labels": json.dumps(spec.labels),
        "onnxfix.description": spec.description,
    })
    m.doc_string = spec.description
    m.producer_version = ""  # keep the file independent of the exact torch build
    onnx.checker.check_model(m, full_check=True)
    return m


def session(raw: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(raw, so, providers=["CPUExecutionProvider"])


def build_model(spec: SetSpec, d: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    mean, std = norm_stats(d["xtr"])
    log(f"  training data {d['xtr'].shape}, mean {mean} std {std}")
    torch.manual_seed(spec.seed)
    net = make_net(1 if spec.channels == "gray" else 3, spec.widths, len(spec.labels))
    train(spec, net, d["xtr"], d["ytr"], mean, std)
    train_s = time.time() - t0
    m = export(spec, net, mean, std)
    raw = m.SerializeToString()
    if len(raw) >= MAX_BYTES:
        raise SystemExit(f"{spec.name}: ONNX file is {len(raw)} bytes (>= 2 MB)")
    sess = session(raw)
    xs = np.stack([shrink(it["image"], spec.hw[1], spec.hw[0]) for it in d["test"]])
    x = to_tensor(xs, mean, std)
    with torch.no_grad():
        ref = net(x).numpy()
    got = sess.run(["logits"], {"image": x.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    if not diff < 1e-4:
        raise SystemExit(f"{spec.name}: ONNX Runtime differs from torch by {diff:.3g}")
    write_atomic(MODEL_DIR / f"{spec.name}.onnx", raw)
    write_atomic(MODEL_DIR / f"{spec.name}.labels.txt", ("\n".join(spec.labels) + "\n").encode())
    n_params = sum(p.numel() for p in net.parameters())
    log(f"  exported {len(raw) / 1024:.0f} KiB, {n_params} params, |ORT-torch| {diff:.1e}, "
        f"trained in {train_s:.0f}s")
    return {"params": n_params, "size_bytes": len(raw), "train_seconds": round(train_s, 1), "max_abs_diff": diff}


def heldout_accuracy(spec: SetSpec, d: dict) -> tuple[float, int]:
    """Accuracy of the written model on a larger held-out set (ONNX Runtime on app-identical preprocessing)."""
    import onnx

    raw = (MODEL_DIR / f"{spec.name}.onnx").read_bytes()
    meta = {p.key: p.value for p in onnx.load_from_string(raw).metadata_props}
    mean = [float(v) for v in meta["onnxfix.mean"].split(",")]
    std = [float(v) for v in meta["onnxfix.std"].split(",")]
    sess = session(raw)
    ho = d["heldout"]()
    xh = to_tensor(np.stack([shrink(it["image"], spec.hw[1], spec.hw[0]) for it in ho]), mean, std).numpy()
    pred = np.concatenate([sess.run(["logits"], {"image": xh[i:i + 200]})[0].argmax(1)
                           for i in range(0, len(xh), 200)])
    return float((pred == np.array([it["label"] for it in ho])).mean()), len(ho)


def app_accuracy(spec_name: str, folder: Path) -> float:
    """Top-1 of sample_models/<name>.onnx on the written split through the app's own path."""
    import onnxfix

    ex = onnxfix.Explainer(MODEL_DIR / f"{spec_name}.onnx", threads=1)
    ann = json.loads((folder / "annotations.json").read_text())
    right = sum(ex.predict(folder / r["file"], k=1)[0]["index"] == r["label"] for r in ann["images"])
    return right / len(ann["images"])


def build_set(spec: SetSpec, train_model: bool) -> dict:
    log(f"== {spec.name}")
    t0 = time.time()
    d = spec.data()
    log(f"  data ready in {time.time() - t0:.1f}s: {d['note']}")
    folder = DATA_DIR / spec.name
    write_dataset(folder, spec.labels, d["test"])
    info: dict = {"data": d["note"]}
    if train_model:
        info.update(build_model(spec, d))
    ho, n_ho = heldout_accuracy(spec, d)
    info["heldout_accuracy"] = round(ho, 4)
    log(f"  held-out accuracy (ORT) {ho:.4f} on {n_ho} further images")
    acc = app_accuracy(spec.name, folder)
    info["test_accuracy"] = round(acc, 4)
    log(f"  test accuracy through onnxfix.Explainer.predict: {acc:.4f} on {len(d['test'])} images")
    if acc < MIN_ACC:
        raise SystemExit(f"{spec.name}: accuracy {acc:.4f} < {MIN_ACC}")
    return info


# ============================================================================================= skimage
def build_skimage(out: Path = SKIMAGE_OUT, model: Path | None = EFFICIENTNET) -> list[dict]:
    """Write the scikit-image photos + annotations.json (boxes from tools/eval_sets/skimage.json) into ``out`` and
    report EfficientNet-Lite0's top-1 on each."""
    import skimage.data

    spec = json.loads(SKIMAGE_JSON.read_text())
    items = []
    for e in spec["images"]:
        arr = getattr(skimage.data, e["source"])()
        if isinstance(arr, tuple):  # stereo_motorcycle: (left, right, disparity)
            arr = arr[e.get("index", 0)]
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, -1)
        img = Image.fromarray(np.asarray(arr[..., :3], np.uint8), "RGB")
        if e.get("crop"):
            img = img.crop(tuple(e["crop"]))
        w, h = img.size
        for b in e["boxes"]:
            if not (0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h):
                raise SystemExit(f"skimage.json: box {b} of {e['name']} is outside the {w}x{h} image")
        items.append({"image": img, "label": e["label"], "box": e["boxes"][0], "boxes": e["boxes"],
                      "accept": e.get("accept", []), "name": e["name"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    os.chmod(tmp, 0o755)
    rows = []
    try:
        (tmp / "images").mkdir()
        for it in items:
            (tmp / "images" / f"{it['name']}.png").write_bytes(png_bytes(it["image"], optimize=False))
            row = {"file": f"images/{it['name']}.png", "label": it["label"], "boxes": it["boxes"]}
            if it["accept"]:
                row["accept"] = it["accept"]
            rows.append(row)
        (tmp / "annotations.json").write_text(json.dumps({"images": rows}, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {len(rows)} images to {out}")
    results = []
    if model is not None and Path(model).exists():
        import onnxfix

        ex = onnxfix.Explainer(model, threads=1)
        for it, row in zip(items, rows, strict=True):
            top = ex.predict(out / row["file"], k=5)
            ok = top[0]["index"] == it["label"] or top[0]["index"] in it["accept"]
            results.append({"name": it["name"], "label": it["label"], "top1": top[0]["index"],
                            "top1_label": top[0]["label"], "score": round(float(top[0]["score"]), 3), "ok": ok})
            log(f"  {it['name']:>12}: top-1 {top[0]['index']} {top[0]['label']!r} ({top[0]['score']:.2f}) "
                f"{'OK' if ok else 'MISS'}; top-5 {[t['index'] for t in top]}")
        n_ok = sum(r["ok"] for r in results)
        log(f"  EfficientNet-Lite0 top-1 correct on {n_ok}/{len(results)}")
    else:
        log(f"  ({model} not available: top-1 not measured)")
    return results


# ================================================================================================ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=[*BY_NAME, "skimage"], action="append",
                    help="build just this set (repeatable); the others are left alone")
    ap.add_argument("--skimage", action="store_true", help="same as --only skimage")
    ap.add_argument("--no-train", action="store_true", help="write the test splits only; keep the existing models")
    args = ap.parse_args(argv)
    names = list(args.only or [])
    if args.skimage:
        names.append("skimage")
    if not names:
        names = [s.name for s in SETS]
    t0 = time.time()
    summary = {}
    for name in dict.fromkeys(names):
        if name == "skimage":
            build_skimage()
        else:
            summary[name] = build_set(BY_NAME[name], not args.no_train)
    if summary:
        log(json.dumps(summary, indent=1))
    log(f"done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
