"""Real OCR and detector exports from PyPI wheels (tools/real_models.py): rapidocr-onnxruntime's PP-OCRv4 DB text
detector (dense single map), CTC recogniser and orientation classifier; ddddocr's YOLOX detector (raw boxes).

Text lines are rendered with PIL's default font (tools/real_models.py ``render_line``), so what the model should read
is known. Inputs are small (48 px lines, a 64×192 page) to keep the CI cost low.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import onnxfix
from onnxfix import heads
from onnxfix.errors import UnsupportedModel
from onnxfix.targets import Step, Text, ctc_greedy

pytestmark = pytest.mark.integration



def _tool():
    from tests.integration.conftest import _load_tool

    return _load_tool()


def explainer(entry: dict, hw: tuple[int, int] | None = None, **kw) -> onnxfix.Explainer:
    pre = {k: entry[k] for k in ("mean", "std", "scale", "channels", "layout")}
    if hw is not None:  # a dynamic-H/W model: the size of this image
        pre["height"], pre["width"] = hw
    return onnxfix.Explainer(entry["path"], labels=entry.get("labels"), preprocess=pre, threads=2, **kw)


def page() -> np.ndarray:
    """64×192 white page, one word in black at rows ~18..44."""
    im = Image.new("RGB", (192, 64), (255, 255, 255))
    ImageDraw.Draw(im).text((12, 16), "Hello 42", fill=(0, 0, 0), font=ImageFont.load_default(size=28))
    return np.asarray(im)


TEXT_ROWS = slice(14, 50)


@pytest.fixture(scope="module")
def rec(real_model):
    return real_model("ppocr_rec")


@pytest.fixture(scope="module")
def rec_explainer(rec):
    img = _tool().render_line("12345")
    return explainer(rec, img.shape[:2]), img


# -- recogniser (CTC) --------------------------------------------------------------------------------------------


def test_rec_head_labels_and_decoding(rec_explainer):
    ex, img = rec_explainer
    m = ex.model
    assert m.head.kind == "sequence" and m.n_classes == 6625 and heads.ctc_blank(m) == 0
    assert m.labels[0] == "blank" and m.labels[-1] == " "
    r = ex.explain(img, method="saliency", target="text")
    assert r.label == "12345"  # what the model reads (greedy CTC over the labels from its metadata)
    x = ex.prepare(img)[0]
    logits = m.runtime.run({m.input: x}, [m.head.logits])[m.head.logits]
    path = logits[0].argmax(-1)
    assert "".join(m.labels[c] for c in ctc_greedy(path, 0)) == "12345"
    d = ex.explain(img, method="saliency")  # the default step is a read character, not the blank
    assert d.label != "blank" and d.label in "12345" and path[d.step] != 0


def test_rec_text_target_is_the_sum_of_its_steps(rec_explainer):
    ex, img = rec_explainer
    whole = ex.explain(img, method="saliency", target="text")
    w = whole.resolved.weights[0]
    steps = [(int(t), int(c)) for t, c in np.argwhere(w)]
    assert len(steps) >= 5
    parts = [ex.explain(img, method="saliency", target=Step(t, c)) for t, c in steps]
    total = np.sum([np.asarray(p.attribution, np.float64) for p in parts], axis=0)
    got = np.asarray(whole.attribution, np.float64)
    np.testing.assert_allclose(got, total, rtol=1e-5, atol=1e-5 * np.abs(total).max())
    assert np.isclose(whole.logit, sum(p.logit for p in parts), rtol=1e-5)
    # another string: aligned on the steps; a wrong last digit scores lower than what the model reads
    other = ex.explain(img, method="saliency", target="text:12346")
    assert other.label == "12346" and other.logit < whole.logit


@pytest.mark.parametrize("method,options", [
    ("saliency", {}),
    # paddle2onnx's SVTR neck reshapes with shape tensors computed from the trunk: the Grad-CAM tail has integer
    # inputs, whose values each gradient variant bakes in (onnxfix/autodiff/program.py, _baked)
    ("gradcam", {}),
    ("fixations", {}),
    ("occlusion", {}),
    ("rise", {"masks": 48}),
])
def test_rec_methods(rec_explainer, method, options):
    ex, img = rec_explainer
    r = ex.explain(img, method=method, target="text", **options)
    assert r.label == "12345"
    hm = r.heatmap
    assert hm.shape == img.shape[:2] and np.isfinite(hm).all() and hm.std() > 1e-3
    if method == "fixations":
        assert r.points is not None and len(r.points) > 0


# -- detector (DB, dense single map) -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def det_explainer(real_model):
    img = page()
    return explainer(real_model("ppocr_det"), img.shape[:2]), img


@pytest.mark.parametrize("method,options", [
    ("saliency", {}), ("gradcam", {}), ("fixations", {}), ("occlusion", {}), ("rise", {"masks": 48}),
])
def test_det_methods_point_at_the_text(det_explainer, method, options):
    ex, img = det_explainer
    assert ex.model.head.kind == "dense" and ex.model.n_classes == 1
    r = ex.explain(img, method=method, **options)  # default: the region where the text probability > 0.5
    assert r.resolved.kind == "region" and r.resolved.weights[0, 0, TEXT_ROWS].sum() == r.resolved.weights.sum()
    hm = np.asarray(r.heatmap, np.float64)
    assert hm.shape == img.shape[:2] and np.isfinite(hm).all() and hm.std() > 1e-3
    share = hm[TEXT_ROWS].sum() / hm.sum()
    assert share > 0.6, f"{method}: {share:.2f} of the map on the text rows"


# -- orientation classifier ----------------------------------------------------------------------------------------


def test_cls_reads_orientation_and_explains(real_model):
    e = real_model("ppocr_cls")
    img = _tool().render_line("Hello 42", size=36, width=192)
    ex = explainer(e, img.shape[:2])
    assert ex.model.head.kind == "classifier"
    for method in ("gradcam", "saliency"):
        up = ex.explain(img, method=method)
        assert up.label == "0" and np.isfinite(up.heatmap).all() and up.heatmap.std() > 1e-3
    assert ex.explain(np.ascontiguousarray(img[::-1, ::-1]), method="saliency").label == "180"


# -- YOLOX detector (raw boxes decoded by onnxfix) -------------------------------------------------------------------


def _glyphs() -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    im = Image.new("RGB", (416, 416), (230, 220, 200))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=60)
    boxes = []
    for x0, y0, ch in ((40, 50, "A"), (120, 260, "7")):
        draw.text((x0, y0), ch, fill=(20, 20, 120), font=font)
        gl, gt, gr, gb = font.getbbox(ch)
        boxes.append((x0 + gl, y0 + gt, x0 + gr, y0 + gb))
    return np.asarray(im), boxes


@pytest.fixture(scope="module")
def yolox(real_model):
    e = real_model("ddddocr_det")
    img, boxes = _glyphs()
    return explainer(e), img, boxes, e


def test_yolox_head_decodes_as_the_package(yolox):
    ex, img, boxes, e = yolox
    m = ex.model
    assert m.head.kind == "detection" and m.head.layout == "yolox" and m.n_classes == 1
    x = ex.prepare(img)[0]
    out = m.runtime.run({m.input: x}, [m.head.logits])[m.head.logits][0].astype(np.float64)
    # ddddocr core/detection_engine.py demo_postprocess (YOLOX's), written out
    grids, strides = [], []
    for s in (8, 16, 32):
        xv, yv = np.meshgrid(np.arange(416 // s), np.arange(416 // s))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((grids[-1].shape[0], 1), s))
    g, st = np.concatenate(grids), np.concatenate(strides)
    xy, wh = (out[:, :2] + g) * st, np.exp(out[:, 2:4]) * st
    want = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    got_boxes, cls, obj = heads.decode(m.head, out)
    np.testing.assert_allclose(got_boxes, want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(cls[:, 0] * obj, out[:, 4] * out[:, 5])
    dets = heads.detections(m.head, out, conf=0.1)
    for b in boxes:  # each glyph is detected (IoU > 0.4 with its ink box)
        assert max(heads.iou(np.array([b]), np.array([d.box]))[0, 0] for d in dets) > 0.4


@pytest.mark.parametrize("method,options,localises", [
    # occlusion runs on the PP-OCR models above: here it needs ~200 forwards of 0.3 s (docs/real_models.md)
    ("saliency", {}, True), ("fixations", {}, True),
    # 32 masks (0.3 s each): too few for a sharp peak; the box is still brighter than the image on average
    ("d-rise", {"masks": 32}, False),
    # Grad-CAM's spatially averaged weights do not localise one raw prediction of this head (its map peaks off the
    # glyph; HiResCAM and LayerCAM put > 80 % of their mass in the box, docs/real_models.md): shape and content
    ("gradcam", {}, False),
])
def test_yolox_methods_point_at_the_detection(yolox, method, options, localises):
    ex, img, boxes, _ = yolox
    r = ex.explain(img, method=method, target="box:0", **options)
    box = r.resolved.box
    hm = np.asarray(r.heatmap, np.float64)
    assert hm.shape == img.shape[:2] and np.isfinite(hm).all() and hm.std() > 1e-4
    y, x = np.unravel_index(int(np.argmax(hm)), hm.shape)
    pad = 24
    if localises:
        assert box[0] - pad <= x <= box[2] + pad and box[1] - pad <= y <= box[3] + pad, (method, (x, y), box)
    if method == "d-rise":
        b = [int(round(v)) for v in box]
        assert hm[b[1]:b[3], b[0]:b[2]].mean() > 1.2 * hm.mean()


# -- ddddocr's quantised CTC recogniser: a declared [1, seqlen] output that is really [T, 1, C] -----------------------


@pytest.fixture(scope="module")
def ddddocr_q(real_model):
    e = real_model("ddddocr_ocr_q")  # 13.6 MB; ddddocr_ocr (54 MB) is the same network in float
    img = _tool().render_line("12345", height=64, size=48)
    return explainer(e, img.shape[:2]), img


def test_ddddocr_declared_shape_is_not_trusted(ddddocr_q):
    ex, img = ddddocr_q
    m = ex.model
    assert m.head.kind == "sequence" and m.head.time_axis == 0 and m.head.class_axis == 2
    assert ex.explain(img, method="occlusion", target=Text(blank=0)).label == "12345"


def test_ddddocr_quantised_refuses_gradients_naming_the_ops(ddddocr_q):
    ex, img = ddddocr_q
    for method in ("saliency", "gradcam"):
        with pytest.raises(UnsupportedModel, match="quantised.*ConvInteger"):
            ex.explain(img, method=method)


# -- ddddocr's float CTC recogniser: a CNN + LSTM with a dynamic width, so a dynamic sequence length ---------------


@pytest.fixture(scope="module")
def ddddocr_float(real_model):
    e = real_model("ddddocr_ocr")
    img = _tool().render_line("12345", height=64, size=48)
    return explainer(e, img.shape[:2]), img


def test_ddddocr_lstm_gradient_per_input_width(ddddocr_float):
    """The LSTM's T follows the image width: gradient methods apply (the lowering unrolls it per input shape,
    onnxfix/autodiff/lowering.py STATIC_T) and the saliency of the read text is its directional derivative."""
    ex, img = ddddocr_float
    m = ex.model
    assert METHODS_OK(m, "saliency") and METHODS_OK(m, "gradcam")
    r = ex.explain(img, method="saliency", target=Text(blank=0))
    assert r.label == "12345"
    x = ex.prepare(img)[0].astype(np.float64)
    w = np.asarray(r.resolved.weights, np.float64)  # [T, 1, C]: one at each step of the text, its class
    g = np.asarray(r.attribution, np.float64)

    def score(z: np.ndarray) -> float:
        out = m.runtime.run({m.input: z.astype(np.float32)}, [m.head.logits])[m.head.logits]
        return float((np.asarray(out, np.float64) * w).sum())

    # central differences along random directions; the net is piecewise linear at small scales (ReLU kinks), so
    # the step is small (1e-3 of the [0, 1] pixel scale) and float32 noise bounds the tolerance (≈2 % seen)
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = rng.standard_normal(x.shape)
        fd = (score(x + 1e-3 * v) - score(x - 1e-3 * v)) / 2e-3
        assert abs(float((g * v).sum()) - fd) <= 0.06 * max(abs(fd), 10.0), (float((g * v).sum()), fd)
    cam = ex.explain(img, method="gradcam", target=Text(blank=0)).heatmap
    assert cam.shape == img.shape[:2] and np.isfinite(cam).all() and cam.std() > 1e-3


def METHODS_OK(model, name: str) -> bool:
    from onnxfix.methods import METHODS

    return METHODS[name].applies(model) is None


def test_dynamic_size_models_take_the_image_size(rec, real_model):
    """No size given: the recogniser reads the 48-px line at its own size; the DB detector, which runs only on
    multiples of 32, gets the page rounded up (64×192 already is one) — onnxfix/api.py Explainer.prepare."""
    line = _tool().render_line("12345")
    ex = explainer(rec)
    assert ex.prepare(line)[0].shape[2:] == line.shape[:2]
    assert ex.explain(line, method="saliency", target="text").label == "12345"
    det = explainer(real_model("ppocr_det"))
    odd = page()[:, :150]
    assert det.prepare(odd)[0].shape[2:] == (64, 160)
    r = det.explain(odd, method="saliency")
    assert r.heatmap.shape == odd.shape[:2] and r.heatmap[TEXT_ROWS].sum() > 0.6 * r.heatmap.sum()
