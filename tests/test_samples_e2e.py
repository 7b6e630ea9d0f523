"""Each bundled sample model end to end: the CLI explains its sample image, and the fixations land on the object
the ground-truth box marks (per step for the captioner)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import onnxfix
from tests.conftest import SAMPLES, run_cli

CLASSIFIERS = ["digits_cnn", "resnet_shapes", "inception_shapes", "mobile_shapes"]
ALL = CLASSIFIERS + ["captioner"]


def _truth(name: str) -> dict:
    return json.loads((SAMPLES / f"{name}.json").read_text())


def _grow(box, margin):
    return [box[0] - margin, box[1] - margin, box[2] + margin, box[3] + margin]


def _inside(pts, box):
    pts = np.asarray(pts).reshape(-1, 2)
    return (pts[:, 0] >= box[0]) & (pts[:, 0] <= box[2]) & (pts[:, 1] >= box[1]) & (pts[:, 1] <= box[3])


def _peak(heatmap):
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return np.array([[x, y]], float)


@pytest.mark.parametrize("name", ALL)
def test_cli_on_sample(name, tmp_path):
    r = run_cli(SAMPLES / f"{name}.onnx", SAMPLES / f"{name}.png", "--json", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    truth = _truth(name)
    if name != "captioner":
        assert d["target"]["label"] == truth["label"]
    assert (tmp_path / f"{name}.fixations.png").is_file()
    assert len(d["points"]) > 0


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_fixations_land_on_the_object(name):
    truth = _truth(name)
    e = onnxfix.Explainer(SAMPLES / f"{name}.onnx").explain(SAMPLES / f"{name}.png")
    assert e.label == truth["label"]
    h, w = e.heatmap.shape
    box = _grow(truth["boxes"][0], 0.05 * max(h, w))
    assert _inside(_peak(e.heatmap), box).all(), (_peak(e.heatmap), box)
    assert _inside(e.points, box).mean() >= 0.5, _inside(e.points, box).mean()


def test_captioner_steps_trace_through_the_lstm_onto_the_shapes():
    """Each word's explanation walks back through its own LSTM op, then through m_{t−1} down to step 0's image
    embedding (CNN Fixations §III-D), and peaks on one of the two shapes. (That each word lands on the shape it names,
    on fresh scenes, is tests/test_captioner.py's.)"""
    truth = _truth("captioner")
    ex = onnxfix.Explainer(SAMPLES / "captioner.onnx")
    lstm = [n for n in ex.model.graph.nodes if n.op_type == "LSTM"]
    assert len(lstm) == len(truth["tokens"]) == 2  # one LSTM op per step (the decoder is unrolled)
    for t, token in enumerate(truth["tokens"]):
        e = ex.explain(SAMPLES / "captioner.png", step=t)
        assert e.step == t and e.label == token
        tr = e.extras["trace"]
        assert len(tr.at(lstm[0].inputs[0])) > 0, "no location reached step 0's input, the image embedding"
        h, w = e.heatmap.shape
        on_a_shape = [_inside(_peak(e.heatmap), _grow(b, 0.05 * max(h, w))).all() for b in truth["boxes"]]
        assert any(on_a_shape), _peak(e.heatmap)
