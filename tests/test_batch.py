"""``onnxfix batch``: every row once, the same values on every engine, error rows, resume after SIGKILL, manifests.

A few hundred small generated images through the sample digits CNN (gradcam + fixations): the in-process local
run is the reference; ``--workers 2`` (spawned processes) and ``--engine dask`` on a LocalCluster of 2 worker
processes started here must give the same rows, value for value (float fields rel. ≤ 1e-6; the float16 maps at
float16 resolution). A CLI run killed with SIGKILL in the middle must keep every finished part untouched, and the
rerun must compute only what was missing and give the same table.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

from onnxfix import batch  # noqa: E402
from onnxfix.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "sample_models" / "digits_cnn.onnx"
SHAPES = ROOT / "sample_models" / "resnet_shapes.onnx"
N_IMAGES = 240
METHODS = ("gradcam", "fixations")
BAD = ("corrupt.png", "truncated.png", "empty.jpg")
FLOAT_COLS = ("score", "logit")


def _make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Dark canvases of assorted sizes/modes/formats with a bright blob and noise (the digits model's domain)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        a = (rng.random((h, w)) * 40).astype(np.float32)
        y, x = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 20))
        a[y:y + int(rng.integers(8, 20)), x:x + int(rng.integers(4, 20))] += 200
        a = a.clip(0, 255).astype(np.uint8)
        sub = folder / (f"d{i % 4}" if i % 2 else ".")
        sub.mkdir(parents=True, exist_ok=True)
        kind = i % 5
        if kind == 0:
            p = sub / f"img{i:04d}.jpg"
            Image.fromarray(np.stack([a] * 3, -1)).save(p, quality=90)
        elif kind == 1:
            p = sub / f"img{i:04d}.png"
            Image.fromarray(np.stack([a, a, a, np.full_like(a, 255)], -1), "RGBA").save(p)
        else:
            p = sub / f"img{i:04d}.png"
            Image.fromarray(a, "L").save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batch_images")
    _make_images(folder, N_IMAGES)
    (folder / BAD[0]).write_bytes(b"this is not an image at all")
    good = folder / "img0002.png"
    (folder / BAD[1]).write_bytes(good.read_bytes()[:60])
    (folder / BAD[2]).write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("batch_ref")
    res = batch.run(MODEL, [str(images)], list(METHODS), out, row_group=32, batch_size=8, progress=False)
    return out, res


def _table(out: Path):
    return batch.read_results(out, maps=True).sort_values("key").reset_index(drop=True)


def assert_same_rows(a, b) -> None:
    """Same keys and the same values, rel. ≤ 1e-6 (maps: float16 storage, compared at one float16 ulp)."""
    assert list(a["key"]) == list(b["key"])
    for col in ("path", "sha256", "method", "options", "label", "error"):
        assert a[col].fillna("").tolist() == b[col].fillna("").tolist(), col
    for col in ("target", "image_width", "image_height", "map_height", "map_width"):
        assert a[col].fillna(-1).tolist() == b[col].fillna(-1).tolist(), col
    for col in FLOAT_COLS:
        np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-6, atol=0)
    for ra, rb in zip(a.itertuples(), b.itertuples(), strict=True):
        if not pd.isna(ra.error):
            continue
        np.testing.assert_allclose([t["score"] for t in ra.top], [t["score"] for t in rb.top], rtol=1e-6)
        assert [t["index"] for t in ra.top] == [t["index"] for t in rb.top]
        if ra.box is None:
            assert rb.box is None
        else:
            np.testing.assert_allclose(np.asarray(ra.box), np.asarray(rb.box), rtol=1e-6, atol=1e-6)
        if ra.points is None:
            assert rb.points is None
        else:
            pa_, pb_ = (np.array([list(p) for p in v], np.float32) for v in (ra.points, rb.points))
            np.testing.assert_allclose(pa_, pb_, rtol=1e-6, atol=1e-6)
        ha, hb = ra.heatmap.astype(np.float32), rb.heatmap.astype(np.float32)
        assert np.all(np.abs(ha - hb) <= np.spacing(np.maximum(np.abs(ha), np.float16(1e-3)).astype(np.float16)))


def test_every_row_once_with_error_rows(reference, images):
    out, res = reference
    df = batch.read_results(out)
    n = N_IMAGES + len(BAD)
    assert len(df) == n * len(METHODS) == res["rows"]
    assert df["key"].is_unique
    assert sorted(df.groupby(["path", "method"]).size().unique()) == [1]
    assert set(df["method"]) == set(METHODS)
    bad = df[df["error"].notna()]
    assert sorted(Path(p).name for p in bad["path"]) == sorted(b for b in BAD for _ in METHODS)
    assert all("cannot" in e or "empty" in e for e in bad["error"])
    good = df[df["error"].isna()]
    assert len(good) == N_IMAGES * len(METHODS)
    assert good["label"].notna().all() and (good["score"] > 0).all()
    # the model's own prediction: the top-1 of 'top' is the explained target (no --target given)
    assert all(r.top[0]["index"] == r.target for r in good.itertuples())
    fx = good[good["method"] == "fixations"]
    assert fx["points"].map(len).min() > 0  # fixation points, on the image's pixels
    for r in fx.itertuples():
        p = np.array([list(q) for q in r.points])
        assert p[:, 0].max() <= r.image_width and p[:, 1].max() <= r.image_height
    # maps: float16 at ≤ 64×64 (the digits model's input is 56×56: never upsampled), values in [0, 1]
    assert set(good["map_height"]) == {56} and set(good["map_width"]) == {56}
    m = batch.decode_map(good["map"].iloc[0], 56, 56)
    assert m.dtype == np.float16 and 0 <= m.min() and m.max() == 1


def test_values_equal_explainer(reference, images):
    """A row holds what ``Explainer.explain`` gives for that image (map: its heatmap resized, float16)."""
    import onnxfix
    from onnxfix.maps import resize_map

    out, _ = reference
    df = batch.read_results(out, maps=True)
    ex = onnxfix.Explainer(MODEL)
    for r in df[df["error"].isna()].head(6).itertuples():
        x, frame, _ = ex.prepare(r.path)
        e = ex.explain(x, method=r.method)
        assert e.target == r.target and abs(e.score - r.score) <= 1e-6 * abs(e.score)
        want = resize_map(e.heatmap, (56, 56)).astype(np.float16)
        assert np.array_equal(want, r.heatmap)
        if r.method == "fixations":
            np.testing.assert_allclose(frame.to_image(e.points), np.array([list(p) for p in r.points]), atol=1e-4)


def test_rerun_skips_everything(reference, images):
    out, _ = reference
    res = batch.run(MODEL, [str(images)], list(METHODS), out, row_group=32, batch_size=8, progress=False)
    assert res["rows"] == 0 and res["explained"] == 0
    assert res["skipped"] == (N_IMAGES + len(BAD)) * len(METHODS)


def test_workers_2_same_values(reference, images, tmp_path, capsys):
    out = tmp_path / "w2"
    rc = main(["batch", str(MODEL), str(images), "--methods", ",".join(METHODS), "--out", str(out),
               "--workers", "2", "--row-group", "32", "--batch-size", "8"])
    assert rc == 0, capsys.readouterr().err
    assert "2 workers" in capsys.readouterr().out
    assert_same_rows(_table(reference[0]), _table(out))


def test_dask_local_cluster_same_values(reference, images, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    import logging

    out = tmp_path / "dask"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster:
        rc = main(["batch", str(MODEL), str(images), "--methods", ",".join(METHODS), "--out", str(out),
                   "--engine", "dask", "--scheduler", cluster.scheduler_address, "--row-group", "32",
                   "--batch-size", "8"])
        assert rc == 0, capsys.readouterr().err
        # the resume rule holds across engines: the local engine finds everything done
        res = batch.run(MODEL, [str(images)], list(METHODS), out, row_group=32, batch_size=8, progress=False)
        assert res["rows"] == 0 and res["skipped"] == (N_IMAGES + len(BAD)) * len(METHODS)
    assert_same_rows(_table(reference[0]), _table(out))


def test_resume_after_sigkill(reference, images, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "onnxfix", "batch", str(MODEL), str(images), "--methods", ",".join(METHODS),
           "--out", str(out), "--row-group", "8", "--batch-size", "4", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts_dir = out / "explanations.parquet"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if parts_dir.is_dir() and len([p for p in parts_dir.iterdir() if p.name.startswith("part-")]) >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts_dir.iterdir()
              if p.name.startswith("part-")}
    finished = batch.read_results(out)
    total = (N_IMAGES + len(BAD)) * len(METHODS)
    assert 0 < len(finished) < total  # killed in the middle; what is there is readable

    res = batch.run(MODEL, [str(images)], list(METHODS), out, row_group=8, batch_size=4, progress=False)
    assert res["skipped"] == len(finished)  # nothing finished is computed again
    assert res["rows"] == total - len(finished)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts_dir.iterdir()}
    assert all(after[k] == v for k, v in before.items())  # finished parts untouched
    assert not [p for p in parts_dir.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert_same_rows(_table(reference[0]), _table(out))


def test_manifest_with_per_row_targets(tmp_path):
    imgs = _make_images(tmp_path / "imgs", 12, seed=3)
    dup = tmp_path / "imgs" / "copy_of_first.png"
    dup.write_bytes(imgs[1].read_bytes())  # same content, another path: one row (keyed by content)
    rows = [("imgs/" + str(p.relative_to(tmp_path / "imgs")), t) for p, t in
            zip(imgs, ["circle", "2", "", "star", "4", "espresso"] * 2, strict=True)]
    rows.append(("imgs/copy_of_first.png", "2"))
    man = tmp_path / "manifest.csv"
    with open(man, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "target"])
        w.writerows(rows)
    out = tmp_path / "out"
    rc = main(["batch", str(SHAPES), str(man), "--methods", "gradcam", "--out", str(out), "--no-progress"])
    assert rc == 0
    df = batch.read_results(out)
    assert len(df) == 12 and df["key"].is_unique
    labels = ["circle", "square", "triangle", "cross", "star"]
    for r in df.itertuples():
        req = None if pd.isna(r.target_request) else r.target_request
        if req == "espresso":  # not a label of this model: an error row, the run goes on
            assert "espresso" in r.error and pd.isna(r.label)
            continue
        assert pd.isna(r.error)
        if req is None:
            assert r.target == r.top[0]["index"]
        elif req.isdigit():
            assert r.target == int(req)
        else:
            assert r.target == labels.index(req) and r.label == req
    # the same manifest as Parquet: same keys → nothing to do
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"path": [r[0] for r in rows], "target": [r[1] or None for r in rows]}),
                   tmp_path / "manifest.parquet")
    res = batch.run(SHAPES, [str(tmp_path / "manifest.parquet")], "gradcam", out, progress=False)
    assert res["rows"] == 0 and res["skipped"] == 13


def test_png_overlays_never_overwrite_and_fresh(tmp_path):
    _make_images(tmp_path / "imgs", 4, seed=5)
    out = tmp_path / "out"
    res = batch.run(MODEL, [str(tmp_path / "imgs")], "gradcam", out, png=True, progress=False)
    df = batch.read_results(out)
    pngs = [Path(p) for p in df["png"]]
    assert res["rows"] == 4 and all(p.exists() and p.parent == out / "png" for p in pngs)
    stamp = {p: p.stat().st_mtime_ns for p in pngs}
    res = batch.run(MODEL, [str(tmp_path / "imgs")], "gradcam", out, png=True, fresh=True, progress=False)
    assert res["rows"] == 4 and res["skipped"] == 0  # --fresh: computed again
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())  # existing PNGs kept
    assert len(batch.read_results(out)) == 4


def test_options_are_part_of_the_key_and_arrow_output(tmp_path):
    _make_images(tmp_path / "imgs", 3, seed=7)
    out = tmp_path / "out"
    batch.run(SHAPES, [str(tmp_path / "imgs")], "occlusion", out, method_options={"occlusion": {"window": 16}},
              progress=False)
    res = batch.run(SHAPES, [str(tmp_path / "imgs")], "occlusion", out,
                    method_options={"occlusion": {"window": 32}}, progress=False)
    assert res["rows"] == 3 and res["skipped"] == 0
    t = batch.read_results(out, format="arrow", columns=["method", "options"])
    assert isinstance(t, pa.Table) and t.num_rows == 6 and len(set(t.column("options").to_pylist())) == 2


@pytest.mark.parametrize("argv, code, text", [
    (["--methods", "nope"], 2, "unknown method"),
    (["--methods", "gradcam", "--option", "gradcam:bogus=1"], 2, "bogus"),
])
def test_user_errors_are_one_line(argv, code, text, images, tmp_path, capsys):
    rc = main(["batch", str(MODEL), str(images), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == code and text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_input_and_other_model(images, reference, tmp_path, capsys):
    assert main(["batch", str(MODEL), str(tmp_path / "nothing_here"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    # the results folder belongs to another model: refused, --fresh starts over
    assert main(["batch", str(SHAPES), str(images / "img0002.png"), "--out", str(reference[0])]) == 2
    assert "another run" in capsys.readouterr().err
