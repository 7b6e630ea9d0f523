"""The CLI contract of DESIGN §2 on a tiny model: outputs, JSON, inspect, methods, exit codes."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tests.conftest import run_cli


def test_explain_writes_png_and_prints_topk(tiny_model, rgb_image, tmp_path):
    out = tmp_path / "out"
    r = run_cli(tiny_model, rgb_image, "--out", out)
    assert r.returncode == 0, r.stderr
    png = out / "photo.fixations.png"
    assert png.is_file()
    assert Image.open(png).size == (30, 20)  # drawn on the user's image, not the 8×8 input
    assert "1." in r.stdout and "fixations:" in r.stdout
    assert not list(out.glob("*.part")), "no temporary files left behind"


def test_json_line_per_image(tiny_model, rgb_image, tmp_path):
    r = run_cli(tiny_model, rgb_image, rgb_image, "--json", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert len(lines) == 2
    d = lines[0]
    assert set(d) >= {"image", "model", "method", "target", "top", "heatmap_png", "points", "box", "seconds"}
    assert d["method"] == "fixations"
    assert d["target"]["label"] in "abcde" and 0 <= d["target"]["index"] < 5
    pts = np.array(d["points"])
    assert len(pts) > 0
    assert (pts[:, 0] >= -0.5).all() and (pts[:, 0] <= 29.5).all() and (pts[:, 1] <= 19.5).all()
    x0, y0, x1, y1 = d["box"]
    assert 0 <= x0 <= x1 <= 30 and 0 <= y0 <= y1 <= 20
    # same stem twice: names do not collide
    assert lines[0]["heatmap_png"] != lines[1]["heatmap_png"]


def test_target_by_label_and_index(tiny_model, rgb_image, tmp_path):
    r1 = run_cli(tiny_model, rgb_image, "--json", "--target", "c", "--out", tmp_path)
    r2 = run_cli(tiny_model, rgb_image, "--json", "--target", "2", "--out", tmp_path)
    assert json.loads(r1.stdout)["target"]["index"] == 2
    assert json.loads(r2.stdout)["target"]["label"] == "c"


def test_target_out_of_range(tiny_model, rgb_image, tmp_path):
    r = run_cli(tiny_model, rgb_image, "--target", "7", "--out", tmp_path)
    assert r.returncode == 2
    assert "out of range" in r.stderr and "Traceback" not in r.stderr


def test_inspect_and_methods(tiny_model):
    r = run_cli("inspect", tiny_model)
    assert r.returncode == 0, r.stderr
    assert "Conv 1" in r.stdout and "fixations" in r.stdout and "image" in r.stdout
    r = run_cli("inspect", tiny_model, "--json")
    info = json.loads(r.stdout)
    assert info["methods"]["fixations"] == "ok"
    assert info["explained"]["logits"] == "logits"
    r = run_cli("methods")
    assert r.returncode == 0 and "fixations" in r.stdout


def test_never_overwrites_input(tiny_model, tmp_path):
    img = tmp_path / "x.fixations.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    before = img.read_bytes()
    # output for x.fixations.png is x.fixations.fixations.png, so it cannot collide; name the input explicitly
    r = run_cli(tiny_model, img, "--out", tmp_path)
    assert r.returncode == 0
    assert img.read_bytes() == before
