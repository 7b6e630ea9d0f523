"""Fuzzing (issue #5) with hypothesis: model loading and the image decoder must return or raise an onnxfix error.

Targets:

* ``parse_model`` on arbitrary bytes and on mutated serialized models;
* the whole model path — ``Explainer(path)`` then one explanation — on mutated models written to a file;
* ``decode_image`` (and preprocessing) on mutated PNG, JPEG, GIF, BMP, TIFF and WebP files.

Mutations: bit flips, byte overwrites, insertions, deletions, duplicated spans and truncations, stacked up to 8;
for models also field-level ones (:func:`structured`). In CI the run is deterministic (``derandomize``) and
bounded by ``max_examples`` (well under a minute here); set ``ONNXFIX_FUZZ_SCALE=20`` for a longer, randomised
session. A crash found becomes a corpus case (category ``fuzz`` in tests/hostile/corpus.py) — see
docs/robustness.md for what was found.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from onnxfix.errors import OnnxfixError
from tests.hostile import images as I
from tests.hostile import models as M

SCALE = int(os.environ.get("ONNXFIX_FUZZ_SCALE", "1"))


def _settings(n: int):
    return settings(max_examples=n * SCALE, deadline=None, derandomize=SCALE == 1, database=None,
                    suppress_health_check=list(HealthCheck))


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "dup", "truncate"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif kind == "dup":
            n = draw(st.integers(1, 64))
            data[pos:pos] = data[pos:pos + n]
        else:
            del data[pos:]
    return bytes(data)


_OPS = ["Relu", "Conv", "MaxPool", "AveragePool", "Gemm", "MatMul", "Softmax", "Add", "Mul", "Identity", "Flatten",
        "Reshape", "Transpose", "Concat", "Split", "Slice", "Pad", "LSTM", "Loop", "If", "Scan", "Shape", "Gather",
        "BatchNormalization", "GlobalAveragePool", "Resize", "NoSuchOp", ""]


@st.composite
def structured(draw) -> bytes:
    """A seed model with 1–4 field-level mutations: op types, attributes, wiring, shapes, types, opset, outputs.

    Byte mutations mostly break the protobuf framing (85% end at the parser); these reach the graph analysis,
    ONNX Runtime and the engines."""
    m = onnx.ModelProto()
    m.ParseFromString(draw(st.sampled_from(MODEL_SEEDS)))
    g = m.graph
    names = sorted({t for n in g.node for t in list(n.input) + list(n.output)} | {t.name for t in g.initializer})
    anyint = st.one_of(st.integers(-3, 8), st.sampled_from([0, -1, 2**31, 2**62, 10**6]))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["op", "attr", "input", "drop", "dup", "dims", "elem", "shape", "opset",
                                     "output", "domain"]))
        node = g.node[draw(st.integers(0, len(g.node) - 1))] if len(g.node) else None
        if kind == "op" and node is not None:
            node.op_type = draw(st.sampled_from(_OPS))
        elif kind == "attr" and node is not None and len(node.attribute):
            a = node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
            if a.ints:
                del a.ints[:]
                a.ints.extend(draw(st.lists(anyint, max_size=5)))
            else:
                a.i = draw(anyint)
        elif kind == "input" and node is not None and len(node.input):
            node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(names + ["", "new"]))
        elif kind == "drop" and node is not None:
            g.node.remove(node)
        elif kind == "dup" and node is not None:
            g.node.append(node)
        elif kind == "dims" and len(g.initializer):
            t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
            del t.dims[:]
            t.dims.extend(draw(st.lists(anyint, max_size=4)))
        elif kind == "elem":
            g.input[0].type.tensor_type.elem_type = draw(st.integers(0, 25))
        elif kind == "shape":
            dims = g.input[0].type.tensor_type.shape.dim
            if len(dims):
                d = dims[draw(st.integers(0, len(dims) - 1))]
                if draw(st.booleans()):
                    d.dim_value = draw(anyint)
                else:
                    d.dim_param = "S"
        elif kind == "opset":
            m.opset_import[0].version = draw(st.integers(-1, 40))
        elif kind == "output" and len(g.output):
            g.output[0].name = draw(st.sampled_from(names + ["", "nowhere"]))
        elif kind == "domain" and node is not None:
            node.domain = draw(st.sampled_from(["", "ai.onnx", "ai.onnx.ml", "com.microsoft", "x"]))
    return m.SerializeToString()


def _model_seeds() -> list[bytes]:
    # GAP heads keep the weights small (4×5 fc), so most mutations land on the graph structure, not on floats
    ms = [M.cnn(head="gap"), M.cnn(head="gap", shape=("N", 3, "H", "W")), M.cnn(opset=7, head="gap"),
          M.cnn(outputs=2, head="gap"), M.cnn(extra=("Sigmoid", ""), head="gap"), M.cnn(softmax=False)]
    return [m.SerializeToString() for m in ms]


MODEL_SEEDS = _model_seeds()


def _image_seeds() -> list[bytes]:
    a = I.pixels(12, 16, seed=5)
    rgb = Image.fromarray(a)
    return [I.encode(rgb, "PNG"), I.encode(rgb, "JPEG", quality=80), I.encode(rgb, "GIF"), I.encode(rgb, "BMP"),
            I.encode(rgb, "TIFF"), I.encode(rgb, "WEBP"), I.encode(rgb.convert("P"), "PNG"),
            I.encode(Image.fromarray(a[..., 0].astype(np.uint16) * 200), "PNG"),
            I.jpeg_with_orientation(a, 6), I.animated_gif([a, a[::-1]])]


IMAGE_SEEDS = _image_seeds()


@_settings(1000)
@given(st.one_of(st.binary(max_size=2048), mutated(MODEL_SEEDS)))
def test_fuzz_parse_model(data):
    from onnxfix.io.model import parse_model

    try:
        m = parse_model(data, "fuzz.onnx")
    except OnnxfixError:
        return
    assert isinstance(m, onnx.ModelProto)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    Image.fromarray(I.pixels()).save(d / "photo.png")
    return d


@_settings(300)
@given(data=st.one_of(mutated(MODEL_SEEDS), structured()),
       method=st.sampled_from(["fixations", "saliency", "gradcam", "occlusion"]))
def test_fuzz_model_loading_and_explaining(fuzz_dir, data, method):
    from onnxfix import Explainer

    p = fuzz_dir / "m.onnx"
    p.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ex = Explainer(p, threads=1)
            e = ex.explain(fuzz_dir / "photo.png", method=method)
        except OnnxfixError:
            return
    assert np.isfinite(e.heatmap).all()


@_settings(1000)
@given(data=mutated(IMAGE_SEEDS))
def test_fuzz_image_decoder(fuzz_dir, data):
    from onnxfix.io.image import Preprocess, decode_image, to_tensor

    path = fuzz_dir / "image.bin"
    path.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            im = decode_image(path)
        except OnnxfixError:
            im = None
    assert not caught, [str(w.message) for w in caught]  # nothing may leak onto the user's stderr
    if im is None:
        return
    assert im.mode == "RGB" and min(im.size) >= 1
    x = to_tensor(im, Preprocess(8, 8))
    assert x.shape == (1, 3, 8, 8) and np.isfinite(x).all()
