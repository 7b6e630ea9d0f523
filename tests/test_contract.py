"""The core contract as a cross-product (pytorch-grad-cam's test_run_all_models idea): every method × every sample
model × {one image, a batch of 3} × {default target, an explicit target}: it runs, the shapes follow the contract of
``Attribution`` (onnxfix/methods/base.py), and a batch gives the same numbers as one image at a time."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import onnxfix
from onnxfix import Class, InputError, Region, Step
from onnxfix.methods import METHODS
from onnxfix.targets import parse_target

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MODELS = sorted(p.stem for p in SAMPLES.glob("*.onnx"))
# slow or window-heavy methods get small windows so the cross-product stays quick
FAST = {"occlusion": {"window": 8, "stride": 8}, "muting-pixels": {"grid": 4}}
_EX: dict[str, onnxfix.Explainer] = {}


# models with inputs besides the image get the values their sample's JSON documents
EXTRA_INPUTS = {"cond_shapes": {"query": np.array([[1.0, 0.0]], np.float32)}}


def _ex(name: str) -> onnxfix.Explainer:
    if name not in _EX:
        _EX[name] = onnxfix.Explainer(SAMPLES / f"{name}.onnx", inputs=EXTRA_INPUTS.get(name))
    return _EX[name]


def _images(name: str, n: int) -> list[np.ndarray]:
    """``n`` RGB uint8 images: the model's sample picture (or a generated one), flipped and shifted copies."""
    png = SAMPLES / f"{name}.png"
    if png.exists():
        base = np.asarray(Image.open(png).convert("RGB"))
    else:
        rng = np.random.default_rng(len(name))
        base = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    out = [base, base[:, ::-1].copy(), np.roll(base, base.shape[1] // 7, axis=1)]
    return out[:n]


def _explicit_target(ex: onnxfix.Explainer):
    return 1 if ex.model.head.kind != "dense" else Region(cls=1)


def _check_shapes(e, ex: onnxfix.Explainer, kind: str) -> None:
    x_shape = tuple(int(d) if isinstance(d, int) and d > 0 else 1 for d in ex.model.input_shape)
    if kind == "points":
        assert e.points is not None and e.points.ndim == 2 and e.points.shape[1] == 2
        assert e.attribution.ndim == 2 and e.attribution.shape[1] == 2
    elif kind == "input":
        assert e.attribution.shape == x_shape
    else:
        assert np.ndim(e.attribution) == 2
    assert e.heatmap.shape == e.frame.image_hw
    assert np.isfinite(e.heatmap).all() and e.heatmap.min() >= 0 and e.heatmap.max() <= 1


def _close(a, b) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = max(np.abs(b).max(), 1e-12)
    assert np.abs(a - b).max() <= 1e-5 * scale, np.abs(a - b).max() / scale


CASES = [(model, method) for model in MODELS for method in sorted(METHODS)]


@pytest.mark.parametrize("explicit", [False, True], ids=["default", "explicit"])
@pytest.mark.parametrize(("model", "method"), CASES)
def test_every_method_every_model(model, method, explicit):
    ex = _ex(model)
    why = ex.methods()[method]
    if why is not None:
        pytest.skip(f"{method} does not apply to {model}: {why}")
    m = METHODS[method]
    opts = FAST.get(method, {})
    target = _explicit_target(ex) if explicit else None
    imgs = _images(model, 3)
    one = ex.explain(imgs[0], method=method, target=target, **opts)
    _check_shapes(one, ex, m.kind)
    if explicit and ex.model.head.kind != "dense":
        assert one.target == 1
    batch = ex.explain(imgs, method=method, target=target, batch_size=3, **opts)
    assert isinstance(batch, list) and len(batch) == 3
    for img, b in zip(imgs, batch, strict=True):
        single = ex.explain(img, method=method, target=target, **opts)
        assert (b.target, b.step) == (single.target, single.step)
        _check_shapes(b, ex, m.kind)
        if m.kind == "points":
            np.testing.assert_array_equal(b.points, single.points)
        else:
            _close(b.attribution, single.attribution)


def test_raw_attribute_over_a_batch_with_target_objects():
    ex = _ex("resnet_shapes")
    x = np.concatenate([ex.prepare(i)[0] for i in _images("resnet_shapes", 3)])
    att = ex.attribute(x, method="saliency", targets=[Class(0), Class(1), Class("square")])
    assert att.values.shape == x.shape and len(att.maps) == 3
    assert [t.index for t in att.targets] == [0, 1, ex.model.labels.index("square")]
    for n in range(3):  # equals the single-image gradient of that target
        one = ex.attribute(x[n:n + 1], method="saliency", targets=[att.targets[n].index])
        _close(att.values[n:n + 1], one.values)
    cam = ex.attribute(x, method="gradcam", targets=None)
    assert cam.kind == "layer" and cam.values.ndim == 3 and cam.values.shape[0] == 3


def test_targets_parse_strictly():
    assert parse_target("281") == Class(281)
    assert parse_target("espresso") == Class("espresso")
    assert parse_target("box:0").i == 0
    assert parse_target("box:10,20,80,90").xyxy == (10.0, 20.0, 80.0, 90.0)
    assert parse_target("region:3") == Region(cls=3)
    assert parse_target("step:2") == Step(2)
    assert parse_target("²") == Class("²")  # not an integer: a label, refused later if unknown
    for bad in (True, 2.9, float("nan"), "box:a", "box:1,2,3", "region:", object()):
        with pytest.raises(InputError):
            parse_target(bad)
    ex = _ex("resnet_shapes")
    with pytest.raises(InputError, match="not among"):
        ex.explain(_images("resnet_shapes", 1)[0], method="saliency", target="²")
    with pytest.raises(InputError, match="boolean"):
        ex.explain(_images("resnet_shapes", 1)[0], method="saliency", target=True)


def test_box_target_on_a_classifier_is_refused_with_the_reason():
    ex = _ex("resnet_shapes")
    with pytest.raises(onnxfix.UnsupportedModel, match="detection output"):
        ex.explain(_images("resnet_shapes", 1)[0], method="gradcam", target="box:0")


@pytest.mark.parametrize(("method", "options", "match"), [
    ("occlusion", {"window": "abc"}, "window"),
    ("occlusion", {"window": "1e400"}, "window"),
    ("occlusion", {"window": 10**5000}, "window"),
    ("occlusion", {"self": 1}, "no option 'self'"),
    ("occlusion", {"window": True}, "window"),
    ("saliency", {"layer": "x"}, "takes no layer"),
    ("gradcam", {"textual": "maybe"}, "textual"),
    ("muting-pixels", {"grid": -2}, "grid"),
])
def test_options_are_typed(method, options, match):
    ex = _ex("resnet_shapes")
    with pytest.raises(InputError, match=match):
        ex.explain(_images("resnet_shapes", 1)[0], method=method, **options)


def test_cli_strings_coerce_to_the_declared_types():
    ex = _ex("resnet_shapes")
    a = ex.explain(_images("resnet_shapes", 1)[0], method="occlusion", window="8", stride="8,4", local="false")
    b = ex.explain(_images("resnet_shapes", 1)[0], method="occlusion", window=8, stride=(8, 4), local=False)
    np.testing.assert_array_equal(a.attribution, b.attribution)


def test_step_on_a_classifier_is_refused():
    ex = _ex("resnet_shapes")
    with pytest.raises(InputError, match="no time axis"):
        ex.explain(_images("resnet_shapes", 1)[0], method="saliency", step=1)


def test_explainer_pickles_by_path():
    ex = _ex("digits_cnn")
    clone = pickle.loads(pickle.dumps(ex))
    img = _images("digits_cnn", 1)[0]
    _close(clone.explain(img, method="saliency").attribution, ex.explain(img, method="saliency").attribution)
    assert len(pickle.dumps(ex)) < 10_000  # the path and options, not the sessions


def test_display_work_is_lazy():
    ex = _ex("resnet_shapes")
    e = ex.explain(_images("resnet_shapes", 1)[0], method="gradcam")
    assert e._heatmap is None and not e._box_done
    assert e.box is not None and e._heatmap is not None


def test_a_detection_lists_its_detections_and_draws_them():
    ex = _ex("yolov8_shapes")
    img = np.asarray(Image.open(SAMPLES / "yolov8_shapes.png").convert("RGB"))
    e = ex.explain(img, method="gradcam", target="box:0")
    dets = e.resolved.detections
    assert len(dets) >= 2 and len(e.top) == min(5, len(dets))
    assert all({"label", "score", "box", "prediction"} <= set(t) for t in e.top)
    assert e.render().size == (img.shape[1], img.shape[0])
