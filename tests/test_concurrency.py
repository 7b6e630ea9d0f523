"""Issue #17 class 1: parallel runs into one output folder never lose or swap outputs; SIGTERM/SIGINT leave no
``.part`` file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from tests.hostile import models as M


def test_threads_claim_distinct_names(tmp_path):
    """16 writers released at once on the same wished name: 16 distinct complete files, each writer told its own."""
    from onnxfix.io.atomic import numbered, write_new

    gate = threading.Barrier(16)
    got: dict[int, Path] = {}

    def writer(k: int) -> None:
        def write(fh) -> None:
            gate.wait()
            fh.write(f"content {k}".encode())

        got[k] = write_new((tmp_path / n for n in numbered("photo", ".fixations.png")), write)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got.values())) == 16
    for k, p in got.items():
        assert p.read_bytes() == f"content {k}".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in got.values())


def test_eight_parallel_cli_writers_into_one_folder(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(M.cnn(), model)
    images = []
    for k in range(8):  # same file name, different sizes: a PNG's size tells whose result it holds
        d = tmp_path / f"in{k}"
        d.mkdir()
        p = d / "photo.png"
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (20 + k, 30 + k, 3), dtype=np.uint8)).save(p)
        images.append(p)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "onnxfix", str(model), str(img), "--out", str(out), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for img in images]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_stdout, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr
    records = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in results]
    pngs = [r["heatmap_png"] for r in records]
    assert len(set(pngs)) == 8, pngs
    assert sorted(x.name for x in out.iterdir()) == sorted(Path(p).name for p in pngs)  # nothing else, no .part
    for r in records:
        k = int(Path(r["image"]).parent.name[2:])
        with Image.open(r["heatmap_png"]) as im:
            im.load()
            assert im.size == (30 + k, 20 + k), (r["image"], r["heatmap_png"], im.size)
        assert (os.stat(r["heatmap_png"]).st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143)])  # SIGINT: tests/test_hostile.py
def test_signal_midway_leaves_only_complete_files(tmp_path, sig, code):
    model = tmp_path / "m.onnx"
    onnx.save(M.cnn(head="gap", shape=(1, 3, 64, 64)), model)
    big = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)).save(big, compress_level=1)
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "onnxfix", str(model), *[str(big)] * 40, "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("big*.png")) and p.poll() is None:
            time.sleep(0.02)
        time.sleep(0.3)
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, (p.returncode, stderr)
    assert ("terminated" if sig == signal.SIGTERM else "interrupted") in stderr and "Traceback" not in stderr
    names = [x.name for x in out.iterdir()]
    assert names and len(names) < 40, names
    assert not [n for n in names if n.endswith(".part") or n.startswith(".")], names
    for x in out.iterdir():
        with Image.open(x) as im:
            im.load()
            assert im.size == (2000, 1500)


def test_sigterm_handler_removes_partial_files(tmp_path):
    """In-process: SIGTERM while a file is being written removes the temporary file and unwinds."""
    from onnxfix.io.atomic import Terminated, signal_cleanup, write_atomic

    def write(fh) -> None:
        fh.write(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs here
        fh.write(b"never")

    with signal_cleanup(), pytest.raises(Terminated):
        write_atomic(tmp_path / "x.png", write)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler) or callable(
        signal.getsignal(signal.SIGTERM))
