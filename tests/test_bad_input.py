"""Bad input: one clear line naming the file/op/node, the right exit code, no traceback, nothing written."""

from __future__ import annotations

import os

import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import run_cli, tiny_cnn


def _assert_clean_failure(r, code, *words, out=None):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    if out is not None:
        assert not any(out.iterdir()), list(out.iterdir())


@pytest.fixture
def out(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def test_missing_model(rgb_image, out):
    _assert_clean_failure(run_cli("nope.onnx", rgb_image, "--out", out), 2, "nope.onnx", "no such", out=out)


def test_empty_model(tmp_path, rgb_image, out):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    _assert_clean_failure(run_cli(p, rgb_image, "--out", out), 2, "empty.onnx", "empty", out=out)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_truncated_model(tmp_path, rgb_image, out, cut):
    data = tiny_cnn().SerializeToString()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: int(len(data) * cut)])
    _assert_clean_failure(run_cli(p, rgb_image, "--out", out), 2, "cut.onnx", out=out)


def test_not_onnx(tmp_path, rgb_image, out):
    p = tmp_path / "text.onnx"
    p.write_text("hello, I am not a model\n" * 20)
    _assert_clean_failure(run_cli(p, rgb_image, "--out", out), 2, "text.onnx", out=out)


def test_undecodable_image(tiny_model, tmp_path, out):
    p = tmp_path / "fake.jpg"
    p.write_text("not an image")
    _assert_clean_failure(run_cli(tiny_model, p, "--out", out), 2, "fake.jpg", "decode", out=out)


def test_missing_image(tiny_model, out):
    _assert_clean_failure(run_cli(tiny_model, "ghost.png", "--out", out), 2, "ghost.png", out=out)


def test_unsupported_op_names_op_and_node(tmp_path, rgb_image, out):
    p = tmp_path / "odd.onnx"
    onnx.save(tiny_cnn(extra_op="Weird"), p)
    r = run_cli(p, rgb_image, "--out", out)
    # ORT cannot even load an unknown custom op: that is an unsupported model (3), and it says which op
    _assert_clean_failure(r, 3, "Weird", out=out)


def test_op_without_fixation_rule(tmp_path, rgb_image, out):
    p = tmp_path / "lrn.onnx"
    onnx.save(tiny_cnn(extra_op="LRN"), p)  # LRN: ORT runs it, fixations has no rule
    r = run_cli(p, rgb_image, "--out", out)
    _assert_clean_failure(r, 3, "LRN", "odd_node", out=out)


def test_non_image_input(tmp_path, rgb_image, out):
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    p = tmp_path / "vec.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), p)
    _assert_clean_failure(run_cli(p, rgb_image, "--out", out), 2, "x", "4-D", out=out)


def _external_model(tmp_path, location: str):
    m = tiny_cnn()
    w = [i for i in m.graph.initializer if i.name == "fw"][0]
    arr = numpy_helper.to_array(w)
    w.ClearField("float_data")
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(arr.nbytes))):
        e = w.external_data.add()
        e.key, e.value = k, v
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    p = d / "ext.onnx"
    p.write_bytes(m.SerializeToString())
    return p, arr


@pytest.mark.parametrize("location", ["/etc/passwd", "../secret.bin", "sub/../../secret.bin"])
def test_external_data_escaping_folder(tmp_path, rgb_image, out, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    p, _ = _external_model(tmp_path, location)
    _assert_clean_failure(run_cli(p, rgb_image, "--out", out), 2, "ext.onnx", "refused", out=out)


def test_external_data_symlink_out_of_folder(tmp_path, rgb_image, out):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    p, _ = _external_model(tmp_path, "link.bin")
    os.symlink(tmp_path / "secret.bin", p.parent / "link.bin")
    _assert_clean_failure(run_cli(p, rgb_image, "--out", out), 2, "refused", out=out)


def test_external_data_inside_folder_works(tmp_path, rgb_image, out):
    p, arr = _external_model(tmp_path, "weights.bin")
    (p.parent / "weights.bin").write_bytes(arr.tobytes())
    r = run_cli(p, rgb_image, "--out", out)
    assert r.returncode == 0, r.stderr


def test_external_data_missing(tmp_path, rgb_image, out):
    p, _ = _external_model(tmp_path, "absent.bin")
    _assert_clean_failure(run_cli(p, rgb_image, "--out", out), 2, "missing", out=out)


def test_unwritable_output(tiny_model, rgb_image, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli(tiny_model, rgb_image, "--out", blocker / "sub")
    assert r.returncode == 2 and "Traceback" not in r.stderr
