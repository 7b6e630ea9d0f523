"""The bundled sample models (built by tools/build_samples.py) load, follow onnxfix's conventions and
get their own sample picture right through the app's preprocessing.  Fast; no torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
NAMES = ["digits_cnn", "resnet_shapes", "inception_shapes", "mobile_shapes", "captioner"]
META_KEYS = ["onnxfix.channels", "onnxfix.layout", "onnxfix.scale", "onnxfix.mean", "onnxfix.std",
             "onnxfix.labels", "onnxfix.description"]
ALLOWED_OPS = {
    "Conv", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm", "MatMul", "Add", "Mul",
    "Concat", "BatchNormalization", "HardSwish", "HardSigmoid", "Sigmoid", "Flatten", "Reshape",
    "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather", "Split", "LSTM", "Constant", "Identity", "ArgMax",
}
EXPECTED_OPS = {
    "digits_cnn": {"Conv", "Relu", "MaxPool", "Gemm"},
    "resnet_shapes": {"Add", "BatchNormalization", "GlobalAveragePool", "Gemm"},
    "inception_shapes": {"Concat", "AveragePool", "Gemm"},
    "mobile_shapes": {"HardSwish", "HardSigmoid", "Mul", "GlobalAveragePool", "Gemm"},
    "captioner": {"LSTM", "ArgMax", "Gather", "Gemm"},  # CNN Fixations §III-D: the previous word fed back
}


@pytest.fixture(scope="module", params=NAMES)
def sample(request):
    name = request.param
    path = SAMPLES / f"{name}.onnx"
    assert path.is_file(), f"{path} missing: run python tools/build_samples.py"
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    info = json.loads((SAMPLES / f"{name}.json").read_text())
    return name, path, model, meta, info


def preprocess(img: Image.Image, meta: dict, hw: tuple[int, int]) -> np.ndarray:
    gray = meta["onnxfix.channels"] == "gray"
    img = img.convert("L" if gray else "RGB").resize((hw[1], hw[0]), Image.BILINEAR)
    a = np.asarray(img, np.float32) * np.float32(float(meta["onnxfix.scale"]))
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    mean = np.array([float(v) for v in meta["onnxfix.mean"].split(",")], np.float32)
    std = np.array([float(v) for v in meta["onnxfix.std"].split(",")], np.float32)
    return ((a - mean[:, None, None]) / std[:, None, None])[None].astype(np.float32)


def test_file_and_checker(sample):
    name, path, model, meta, _ = sample
    assert path.stat().st_size < 2 * 1024 * 1024
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits"]
    ops = {n.op_type for n in model.graph.node}
    assert ops <= ALLOWED_OPS, ops - ALLOWED_OPS
    assert EXPECTED_OPS[name] <= ops


def test_metadata(sample):
    name, _, model, meta, _ = sample
    for k in META_KEYS:
        assert k in meta, k
    assert meta["onnxfix.layout"] == "nchw"
    assert meta["onnxfix.scale"] == "0.00392156862745098"
    n_ch = 1 if meta["onnxfix.channels"] == "gray" else 3
    assert meta["onnxfix.channels"] in ("rgb", "gray")
    assert len(meta["onnxfix.mean"].split(",")) == n_ch == len(meta["onnxfix.std"].split(","))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == n_ch
    labels = json.loads(meta["onnxfix.labels"])
    assert labels == (SAMPLES / f"{name}.labels.txt").read_text().splitlines()


def test_sample_prediction(sample):
    name, path, model, meta, info = sample
    labels = json.loads(meta["onnxfix.labels"])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    hw = (dims[2].dim_value, dims[3].dim_value)
    img = Image.open(SAMPLES / f"{name}.png")
    assert img.size == (2 * hw[1], 2 * hw[0])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"image": preprocess(img, meta, hw)})[0]
    for box in info["boxes"]:
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= img.size[0] and 0 <= y0 < y1 <= img.size[1]
    if name == "captioner":
        assert logits.shape == (1, 2, len(labels))
        assert [labels[i] for i in logits[0].argmax(-1)] == info["tokens"]
        assert len(info["boxes"]) == 2 and len(set(info["tokens"])) == 2
        assert [b[0] for b in info["boxes"]] == sorted(b[0] for b in info["boxes"])
    else:
        assert logits.shape == (1, len(labels))
        assert int(logits[0].argmax()) == info["index"]
        assert labels[info["index"]] == info["label"]
