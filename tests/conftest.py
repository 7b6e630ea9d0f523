"""Shared fixtures: tiny models built with onnx.helper (no torch), images, a CLI runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


def tiny_cnn(extra_op: str | None = None, softmax: bool = True, seed: int = 0, nhwc: bool = False) -> onnx.ModelProto:
    """Conv(3→4, 3×3, pad 1) → Relu → MaxPool 2 → Flatten → Gemm(→5) [→ Softmax], input 1×3×8×8."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b = rng.normal(size=(4,)).astype(np.float32)
    fw = rng.normal(size=(5, 64)).astype(np.float32)
    fb = np.zeros(5, np.float32)
    nodes = []
    src = "image"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["image"], ["chw"], perm=[0, 3, 1, 2], name="to_nchw"))
        src = "chw"
    nodes += [
        helper.make_node("Conv", [src, "w", "b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
    ]
    last = "p1"
    if extra_op:
        nodes.append(helper.make_node(extra_op, [last], ["odd"], domain="custom.domain" if extra_op == "Weird"
                                      else "", name="odd_node"))
        last = "odd"
    nodes += [helper.make_node("Flatten", [last], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1, name="fc")]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], axis=1, name="softmax"))
        out = "prob"
    shape = [1, 8, 8, 3] if nhwc else [1, 3, 8, 8]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 5])],
                          initializer=[numpy_helper.from_array(a, n) for a, n in
                                       ((w, "w"), (b, "b"), (fw, "fw"), (fb, "fb"))])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("custom.domain", 1)] if extra_op == "Weird" else [])
    m = helper.make_model(g, opset_imports=opsets, producer_name="onnxfix-tests")
    m.ir_version = 8
    helper.set_model_props(m, {"onnxfix.labels": '["a", "b", "c", "d", "e"]'})
    return m


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    p = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), p)
    return p


@pytest.fixture
def rgb_image(tmp_path) -> Path:
    p = tmp_path / "photo.png"
    a = (np.random.default_rng(1).random((20, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(p)
    return p


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxfix", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def torchvision_stub() -> None:
    """Put tests/stubs on ``sys.path`` (after site-packages) when torchvision is not installed: pytorch-grad-cam,
    Quantus and Zennit import it at import time (tests/stubs/README.md)."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        stubs = str(Path(__file__).resolve().parent / "stubs")
        if stubs not in sys.path:
            sys.path.append(stubs)


def import_peer(module: str):
    """``pytest.importorskip(module)`` for a peer that imports torchvision (see :func:`torchvision_stub`)."""
    torchvision_stub()
    return pytest.importorskip(module)
