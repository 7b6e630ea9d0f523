"""The dataset loader, the runner and ``onnxfix evaluate`` end to end (issue #4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxfix.cli import main
from onnxfix.errors import InputError
from onnxfix.evaluate.dataset import label_index, load_dataset, resolve_labels

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "resnet_shapes.onnx"
META = json.loads((ROOT / "sample_models" / "resnet_shapes.json").read_text())
LABELS = (ROOT / "sample_models" / "resnet_shapes.labels.txt").read_text().split()


def _write_dataset(folder: Path, bad: bool = True) -> Path:
    """Two good copies of the sample image (one with a box, one with a mask), plus one bad row of each kind."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    src = ROOT / "sample_models" / "resnet_shapes.png"
    for name in "abcde":
        shutil.copy(src, folder / "images" / f"{name}.png")
    w, h = META["image_size"]
    box = META["boxes"][0]
    mask = np.zeros((h, w), np.uint8)
    mask[box[1]:box[3], box[0]:box[2]] = 255
    Image.fromarray(mask).save(folder / "masks" / "b.png")
    Image.fromarray(mask[:10, :10]).save(folder / "masks" / "small.png")
    images = [{"file": "images/a.png", "label": META["index"], "boxes": [box]},
              {"file": "images/b.png", "label": META["label"], "mask": "masks/b.png"}]
    if bad:
        images += [{"file": "images/missing.png", "label": 1, "boxes": [box]},
                   {"file": "images/c.png", "label": 1, "boxes": [[0, 0, w + 5, 10]]},
                   {"file": "images/d.png", "label": 1, "mask": "masks/small.png"},
                   {"file": "images/e.png", "label": "dog"},
                   {"file": "../outside.png", "label": 1}]
    (folder / "annotations.json").write_text(json.dumps({"classes": LABELS, "images": images}))
    return folder


# -- loader --------------------------------------------------------------------------------------------------------
def test_loader_reports_bad_rows_and_keeps_the_rest(tmp_path):
    ds = load_dataset(_write_dataset(tmp_path / "ds"))
    assert [it.file for it in ds.items] == ["images/a.png", "images/b.png", "images/e.png"]
    reasons = {s.where: s.reason for s in ds.skipped}
    assert "image file not found" in reasons["images[2]"]
    assert "outside the 128×128 image" in reasons["images[3]"]
    assert "is 10×10, the image 128×128" in reasons["images[4]"]
    assert "leaves the dataset folder" in reasons["images[6]"]
    items, skipped = resolve_labels(ds, LABELS, 5)
    assert [it.label for it in items] == [4, 4]
    assert len(ds.skipped) == 4 and len(skipped) == 1
    assert skipped[0].file == "images/e.png" and "label 'dog' is not in the model (5 classes)" in skipped[0].reason
    assert "class index 7 is not in the model" in resolve_labels(
        ds.__class__(ds.folder, "json", [ds.items[0].__class__(file="x", path=Path("x"), label=7)], []),
        LABELS, 5)[1][0].reason


def test_label_matching():
    names = ["n01440764 tench, Tinca tinca", "goldfish, Carassius auratus", "star"]
    assert label_index("n01440764", names, 3) == 0
    assert label_index("Carassius auratus", names, 3) == 1
    assert label_index("STAR", names, 3) == 2
    assert label_index(2, names, 3) == 2
    assert label_index(3, names, 3) is None and label_index("dog", names, 3) is None


def test_csv_and_xml_formats(tmp_path):
    d = tmp_path / "csv"
    d.mkdir()
    shutil.copy(ROOT / "sample_models" / "resnet_shapes.png", d / "a.png")
    (d / "annotations.csv").write_text("file,label,x0,y0,x1,y1,mask\n"
                                       "a.png,star,59,34,118,93,\n"
                                       "a.png,star,0,0,10,10,\n"
                                       "nothere.png,star,,,,,\n")
    ds = load_dataset(d)
    assert ds.format == "csv" and ds.items[0].boxes == [[59, 34, 118, 93], [0, 0, 10, 10]]
    assert ds.skipped[0].file == "nothere.png"
    x = tmp_path / "xml"
    x.mkdir()
    shutil.copy(ROOT / "sample_models" / "resnet_shapes.png", x / "ILSVRC_0001.png")
    (x / "ILSVRC_0001.xml").write_text(
        "<annotation><filename>ILSVRC_0001</filename><object><name>n04999999</name><bndbox><xmin>60</xmin>"
        "<ymin>35</ymin><xmax>118</xmax><ymax>93</ymax></bndbox></object></annotation>")
    (x / "broken.xml").write_text("<annotation><filename>")
    ds = load_dataset(x)
    assert ds.format == "xml" and ds.items[0].boxes == [[59, 34, 118, 93]] and ds.items[0].label == "n04999999"
    assert "unreadable XML" in ds.skipped[0].reason
    (tmp_path / "bare").mkdir()
    with pytest.raises(InputError, match="no annotations"):
        load_dataset(tmp_path / "bare")


# -- the command ---------------------------------------------------------------------------------------------------
def _run(args, capsys):
    code = main(["evaluate", str(SAMPLE), *map(str, args)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_evaluate_cli_outputs_skips_and_resume(tmp_path, capsys):
    ds = _write_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    args = [ds, "--methods", "gradcam,fixations", "--out", out, "--steps", "4"]
    code, stdout, err = _run(args, capsys)
    assert code == 0, err
    assert "| pointing ↑ |" in stdout and "| gradcam | fixations |" in stdout.replace("| metric ", "")
    for reason in ("image file not found", "outside the 128×128 image", "the image 128×128",
                   "leaves the dataset folder", "label 'dog' is not in the model"):
        assert reason in err
    def prefix_with(ext):
        return out / f"resnet_shapes.ds{ext}"

    rows = [json.loads(line) for line in prefix_with(".jsonl").read_text().splitlines()]
    assert len(rows) == 4 and not any(r["error"] for r in rows)
    summary = json.loads(prefix_with(".json").read_text())
    assert summary["images"] == 2 and len(summary["skipped"]) == 5
    g = summary["summary"]["gradcam"]["mean"]
    assert g["pointing"] == 1.0 and 0 <= g["mask_iou_auc"] <= 1 and -1 <= g["faithfulness"] <= 1
    assert 0 <= g["deletion_auc"] <= 1 and 0 <= g["insertion_auc"] <= 1 and g["avg_drop"] >= 0
    assert all(-1 <= g[k] <= 1 for k in ("class_sensitivity", "cascade_first", "cascade_half", "cascade_all"))
    assert g["loc_top1_error"] in (0.0, 1.0) and summary["summary"]["fixations"]["n"]["box_iou"] == 2
    assert prefix_with(".csv").read_text().count("\n") == 5
    with Image.open(prefix_with(".png")) as im:
        assert im.size[0] > 300
    # interrupted run: the last row half written, one row lost → the rerun recomputes exactly those
    lines = prefix_with(".jsonl").read_text().splitlines()
    prefix_with(".jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])
    code, _, err = _run([*args, "--json"], capsys)
    assert code == 0, err
    rows2 = [json.loads(line) for line in prefix_with(".jsonl").read_text().splitlines()]
    assert len(rows2) == 4 and rows2[:2] == rows[:2]
    summary2 = json.loads(prefix_with(".json").read_text())
    for m in ("gradcam", "fixations"):
        for k, v in summary["summary"][m]["mean"].items():
            assert summary2["summary"][m]["mean"][k] == pytest.approx(v, nan_ok=True), (m, k)
    # a complete file: nothing recomputed
    before = prefix_with(".jsonl").read_text()
    assert _run(args, capsys)[0] == 0
    assert prefix_with(".jsonl").read_text() == before


def test_evaluate_cli_bad_usage(tmp_path, capsys):
    ds = _write_dataset(tmp_path / "ds", bad=False)
    assert _run([ds, "--methods", "nope"], capsys)[0] == 2
    assert _run([ds, "--metrics", "pointing,bogus"], capsys)[0] == 2
    assert _run([tmp_path / "none"], capsys)[0] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "annotations.json").write_text('{"images": [{"file": "x.png", "label": 1}]}')
    code, _, err = _run([empty, "--out", tmp_path], capsys)
    assert code == 2 and "no image left to evaluate" in err and "x.png: image file not found" in err


def test_a_failing_image_does_not_lose_the_run(tmp_path, monkeypatch, capsys):
    from onnxfix.evaluate import runner

    ds = _write_dataset(tmp_path / "ds", bad=False)
    real = runner.Evaluator.evaluate

    def flaky(self, item, method):
        if item.file == "images/a.png":
            raise InputError("simulated failure")
        return real(self, item, method)

    monkeypatch.setattr(runner.Evaluator, "evaluate", flaky)
    code, stdout, err = _run([ds, "--methods", "gradcam", "--metrics", "pointing,mask", "--out", tmp_path / "o",
                              "--progress"], capsys)
    assert code == 0
    assert "images/a.png [gradcam]: simulated failure" in err and "2/2" in err  # the bar reached the end
    rows = [json.loads(x) for x in (tmp_path / "o" / "resnet_shapes.ds.jsonl").read_text().splitlines()]
    assert [r["error"] for r in rows] == ["simulated failure", None]
    assert rows[1]["values"]["pointing"] == 1.0 and rows[1]["values"]["mask_iou"] > 0


def test_progress_bar_is_silent_unless_enabled():
    import io

    from onnxfix.evaluate.runner import Progress

    buf = io.StringIO()
    p = Progress(total=3, enabled=False, stream=buf)
    p.step("x")
    p.close()
    assert buf.getvalue() == ""
    p = Progress(total=2, enabled=True, stream=buf)
    p.step("a.png gradcam")
    p.step("b.png gradcam")
    p.close()
    assert "2/2" in buf.getvalue() and "#" * 30 in buf.getvalue() and buf.getvalue().endswith("\n")
