"""Issue #10 items 8–9: the pipeline behind the CLI (inputs, methods, outputs), help/version, the progress bar, and the
small helpers every subcommand shares (typed flags, printable text)."""

from __future__ import annotations

import argparse
import io

import numpy as np
import onnx
import pytest
from PIL import Image

from tests.hostile import models as M


@pytest.fixture
def tree(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(M.cnn(), model)
    d = tmp_path / "imgs"
    for k, name in enumerate(["b.png", "a.jpg", "sub/c.PNG"]):
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 30, 3), 40 * k, np.uint8)).save(p, format="PNG" if "png" in name.lower()
                                                                           else "JPEG")
    (d / "readme.txt").write_text("x")
    return model, d


def test_explain_files_api(tree, tmp_path):
    from onnxfix.pipeline import explain_files

    model, d = tree
    skipped: list = []
    res = explain_files(model, [d], methods="fixations,occlusion", out=tmp_path / "out", skipped=skipped)
    assert [(r.image.split("/")[-1], r.method) for r in res] == [
        ("a.jpg", "fixations"), ("a.jpg", "occlusion"), ("b.png", "fixations"), ("b.png", "occlusion"),
        ("c.PNG", "fixations"), ("c.PNG", "occlusion")]
    assert len({r.png for r in res}) == 6 and all(r.png.is_file() for r in res) and not skipped
    again = explain_files(model, str(d / "*.png"), out=tmp_path / "out", write=False)
    assert [r.png for r in again] == [None]


def test_collect_inputs_rules(tree, tmp_path):
    from onnxfix.errors import InputError
    from onnxfix.pipeline import collect_inputs

    _, d = tree
    assert [p.split("/")[-1] for p in collect_inputs([d])] == ["a.jpg", "b.png", "c.PNG"]
    assert collect_inputs([d], exclude=[d / "sub"])[-1].endswith("b.png")
    assert collect_inputs([str(d / "nothere.png")]) == [str(d / "nothere.png")]  # the decoder reports it
    with pytest.raises(InputError, match="no image file matches"):
        collect_inputs([str(d / "*.gif")])


def test_progress_bar_only_on_a_terminal(tree, tmp_path, monkeypatch, capsys):
    from onnxfix.cli import main

    model, d = tree

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for images, drawn in (([str(d)], True), ([str(d / "b.png")], False)):
        err = Tty()
        monkeypatch.setattr("sys.stderr", err)
        assert main([str(model), *images, "--out", str(tmp_path / "o")]) == 0
        assert ("3/3" in err.getvalue()) is drawn, err.getvalue()
    err = Tty()
    monkeypatch.setattr("sys.stderr", err)
    assert main([str(model), str(d), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "3/3" not in err.getvalue()


def test_help_version_and_missing_subcommand(monkeypatch, capsys):
    from onnxfix import cli

    assert cli.main(["--version"]) == 0 and capsys.readouterr().out.startswith("onnxfix ")
    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", "onnxfix.no_such_module:cmd")
    cli.SUMMARIES["ghost"] = "a command whose module is missing"
    try:
        assert cli.main(["--help"]) == 0
        assert "  ghost " in capsys.readouterr().out  # listed without importing it
        assert cli.main(["help", "ghost"]) == 0
        assert "not available" in capsys.readouterr().out
        assert cli.main(["ghost", "x"]) == 2
        assert "not available in this installation" in capsys.readouterr().err
    finally:
        cli.SUMMARIES.pop("ghost")


@pytest.mark.parametrize("text,ok", [("0", True), ("+7", True), ("16384", True), ("16385", False), ("-1", False),
                                     ("1.0", False), ("\u0663", False), ("1_0", False), ("9" * 19, False),
                                     (" 3 ", True), ("0x10", False)])
def test_int_arg(text, ok):
    from onnxfix.cli import int_arg

    parse = int_arg(0, 16384)
    if ok:
        assert parse(text) == int(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="allowed|expected"):
            parse(text)


@pytest.mark.parametrize("text,ok", [("0.5", True), ("1e-3", True), (".5", True), ("nan", False), ("inf", False),
                                     ("1e400", False), ("-0.1", False), ("0", False), ("1,5", False),
                                     ("\u0661.5", False)])
def test_float_arg(text, ok):
    from onnxfix.cli import float_arg

    parse = float_arg(0, lo_open=True)
    if ok:
        assert parse(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_printable_escapes_controls_only():
    from onnxfix.errors import printable

    assert printable("tabby cat, é 中") == "tabby cat, é 中"
    assert printable("a\x1b]2;x\x07b\nc\u202ed\x9b\udcff") == "a\\x1b]2;x\\x07b\\nc\\u202ed\\x9b\\udcff"
    assert printable(3) == "3"


def test_parse_target_text():
    from onnxfix.cli import parse_target_text
    from onnxfix.errors import InputError

    assert parse_target_text("281") == 281 and parse_target_text("-1") == -1
    assert parse_target_text("\u00b2") == "\u00b2" and parse_target_text("box:0") == "box:0"
    with pytest.raises(InputError, match="--target"):
        parse_target_text("9" * 5000)
