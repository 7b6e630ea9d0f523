"""Issue #5: the hostile-input corpus, resource limits, atomic outputs and Ctrl-C.

Every case of :mod:`tests.hostile.corpus` is generated into its own temporary folder and run in-process through
``onnxfix.cli.main``. A failure must be one line ``onnxfix: error: ...`` with the expected exit code and words,
no traceback, and nothing written; a success must write sane PNGs and nothing partial.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from tests.hostile import models as M
from tests.hostile.corpus import cases
from tests.hostile.runner import run_case

CASES = cases()


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() or p.is_symlink()] if folder.exists() else []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corpus_case(case, tmp_path):
    o = run_case(case, tmp_path)
    after = o.after(tmp_path)
    assert o.code == case.code, (o.code, o.stderr, o.stdout)
    assert "Traceback" not in o.stderr and "internal error" not in o.stderr, o.stderr
    assert not [p for p in _files(tmp_path) if p.name.endswith(".part")], "temporary files left behind"
    inputs_changed = [k for k, v in o.before.items() if k in after and after[k] != v and k.startswith("out/")
                      and "--overwrite" in o.argv]
    assert all(after.get(k) == v for k, v in o.before.items() if k not in inputs_changed), "an input changed"
    new = sorted(set(after) - set(o.before))
    if case.code != 0:
        lines = o.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("onnxfix: error: "), o.stderr
        for word in case.message:
            assert word in lines[0], (word, lines[0])
        assert not new and not inputs_changed, ("a failed run wrote files", new, inputs_changed)
        return
    assert new or inputs_changed, (o.stdout, o.stderr)
    for name in new + inputs_changed:
        assert name.startswith("out/") and name.endswith(".png"), name
        with Image.open(tmp_path / name) as im:
            im.load()
            assert im.format == "PNG" and im.mode == "RGB" and min(im.size) >= 1
    if case.check:
        case.check(tmp_path, o.argv, o.stdout)


def test_corpus_is_large_and_varied():
    by_cat = collections.Counter(c.category for c in CASES)
    assert len(CASES) >= 200
    assert set(by_cat) >= {"model", "external", "dtype", "shape", "opset", "engine", "image", "image-bad", "cli"}
    outcomes = collections.Counter(c.outcome for c in CASES)
    assert outcomes["ok"] >= 50 and outcomes["exit 2"] >= 100 and outcomes["exit 3"] >= 10


# -- atomic writes and Ctrl-C ---------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_save_png_leaves_nothing_when_interrupted(tmp_path, monkeypatch, exc):
    from onnxfix.render import save_png

    dest = tmp_path / "x.png"
    dest.write_bytes(b"OLD")

    def boom(self, fp, *a, **k):
        fp.write(b"\x89PNG half")
        raise exc("interrupted")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(exc):
        save_png(Image.new("RGB", (4, 4)), dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
    assert dest.read_bytes() == b"OLD"


@pytest.mark.slow
def test_ctrl_c_midway_leaves_only_complete_files(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(M.cnn(head="gap", shape=(1, 3, 64, 64)), model)
    big = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)).save(big, compress_level=1)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "onnxfix", str(model), *[str(big)] * 40, "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("big*.png")) and p.poll() is None:
            time.sleep(0.02)
        time.sleep(0.3)  # let it get into the next image's work
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, (p.returncode, stderr)
    assert "interrupted" in stderr and "Traceback" not in stderr
    names = [x.name for x in out.iterdir()]
    assert names and len(names) < 40, names
    assert not [n for n in names if n.endswith(".part") or n.startswith(".")], names
    for x in out.iterdir():
        with Image.open(x) as im:
            im.load()
            assert im.size == (2000, 1500)


# -- resource limits through the Python API -------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path) -> Path:
    p = tmp_path / "tiny.onnx"
    onnx.save(M.cnn(), p)
    return p


@pytest.fixture
def photo(tmp_path) -> Path:
    p = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(p)
    return p


def test_limits_as_keywords_and_module_defaults(tiny, photo, monkeypatch):
    import onnxfix.io.image as image_io
    import onnxfix.io.model as model_io
    from onnxfix import Explainer
    from onnxfix.errors import InputError

    with pytest.raises(InputError, match="--max-model-mb"):
        Explainer(tiny, max_model_mb=tiny.stat().st_size / 2 / 1024**2)
    ex = Explainer(tiny, max_image_pixels=599)
    with pytest.raises(InputError, match="600 pixels.*--max-image-pixels"):
        ex.explain(photo)
    assert Explainer(tiny, max_image_pixels=600).explain(photo).heatmap.shape == (20, 30)
    monkeypatch.setattr(image_io, "MAX_PIXELS", 100)
    with pytest.raises(InputError, match="above the limit of 100"):
        Explainer(tiny).explain(photo)
    monkeypatch.setattr(model_io, "MAX_MODEL_BYTES", 10)
    with pytest.raises(InputError, match="above the limit of 10 bytes"):
        Explainer(tiny)


def test_bomb_is_refused_from_the_header(tmp_path):
    from onnxfix.errors import InputError
    from onnxfix.io.image import decode_image
    from tests.hostile.images import png_header_only

    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_only(40_000, 40_000))
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="40000×40000"):
        decode_image(p)
    assert time.perf_counter() - t0 < 1.0
    for limit in (100, 900_000_000, 1_599_999_999):  # Pillow alone would only warn within twice its limit
        with pytest.raises(InputError, match=f"40000×40000 = 1600000000 pixels, above the limit of {limit} .*"
                                             "--max-image-pixels"):
            decode_image(p, max_pixels=limit)
    with pytest.raises(InputError, match="cannot decode"):  # raised: the header passes, the missing data fails
        decode_image(p, max_pixels=1_600_000_000)


def _exact_bytes(values: dict[str, np.ndarray], names: list[str]) -> int:
    return sum(values[n].nbytes for n in names)


@pytest.mark.parametrize("shape,feed", [((1, 3, 8, 8), (1, 3, 8, 8)), (("N", 3, "H", "W"), (1, 3, 24, 40))])
def test_exposed_bytes_estimate_is_exact(tmp_path, shape, feed):
    from onnxfix.model import Model

    m = Model(M.cnn(shape=shape, head="gap" if "H" in shape else "pool"))
    names = ["c1", "r1", "p1", "f", "logits"]
    x = np.random.default_rng(0).normal(size=feed).astype(np.float32)
    values = m.runtime.run({m.input: x}, names)
    assert m.runtime.exposed_bytes(names, {m.input: x}) == _exact_bytes(values, names)


def test_memory_budget_refuses_with_a_message(tiny, photo, monkeypatch):
    import onnxfix.runtime as rt
    from onnxfix import Explainer
    from onnxfix.errors import InputError

    ex = Explainer(tiny, memory_budget_mb=0.001)  # 1 KB: the 4×8×8 float feature maps alone are 1 KB each
    with pytest.raises(InputError, match="memory budget.*--memory-budget-mb"):
        ex.explain(photo, method="fixations")
    with pytest.raises(InputError, match="memory budget"):
        ex.activations(photo)
    # the default is a fraction of the available memory
    monkeypatch.setattr(rt, "available_memory", lambda: 4096)
    with pytest.raises(InputError, match="memory budget of 0.0 MB"):
        Explainer(tiny).activations(photo)
    monkeypatch.setattr(rt, "available_memory", lambda: 1 << 30)
    assert "c1" in Explainer(tiny).activations(photo)


def test_available_memory_is_read():
    from onnxfix.runtime import available_memory

    avail = available_memory()
    assert avail is None or avail > 1 << 20
    if os.path.exists("/proc/meminfo"):
        assert avail is not None
