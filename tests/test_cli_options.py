"""`--option NAME=VALUE` reaches the method as text; the method's typed options convert and check it."""

from __future__ import annotations

import pytest

from onnxfix import api, cli
from tests.conftest import SAMPLES


def test_options_stay_text_for_the_methods_typed_options():
    # no literal evaluation of untrusted text (nested-literal bombs, 5000-digit integers): values stay strings
    assert cli.parse_options(["window=16", "stride=(8, 4)", "baseline=-0.5", "mode=fast", "alpha-pre=0.25"]) == {
        "window": "16", "stride": "(8, 4)", "baseline": "-0.5", "mode": "fast", "alpha_pre": "0.25"}
    bomb = "[" * 100_000 + "]" * 100_000
    assert cli.parse_options([f"window={bomb}"]) == {"window": bomb}


@pytest.mark.parametrize("bad", ["window", "=3", "2x=1", "target=3", "self=1", "_private=1", "wíndow=1", "top-k=3",
                                 "batch_size=2", "window=1,window=2"])
def test_bad_options_are_usage_errors(bad, capsys):
    argv = [str(SAMPLES / "resnet_shapes.onnx"), str(SAMPLES / "resnet_shapes.png"), "--option", bad]
    if bad.count("window=") == 2:
        argv = argv[:-1] + ["window=1", "--option", "window=2"]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--option" in err and len(err.strip().splitlines()) == 1


def test_options_reach_the_method(tmp_path, monkeypatch):
    seen = {}
    real = api.Explainer.explain

    def spy(self, image, method="fixations", **kw):
        seen.update(kw)
        return real(self, image, method=method, **kw)

    monkeypatch.setattr(api.Explainer, "explain", spy)
    rc = cli.main([str(SAMPLES / "resnet_shapes.onnx"), str(SAMPLES / "resnet_shapes.png"), "--method", "occlusion",
                   "--option", "window=8", "--option", "stride=4", "--out", str(tmp_path)])
    assert rc == 0
    assert seen["window"] == "8" and seen["stride"] == "4"
    # the method's typed options read the text as the numbers a program would pass
    e = real(api.Explainer(SAMPLES / "resnet_shapes.onnx"), SAMPLES / "resnet_shapes.png", method="occlusion",
             window="8", stride="4")
    assert e.extras["window"] == (8, 8) and e.extras["stride"] == (4, 4)
