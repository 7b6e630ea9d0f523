"""`--option NAME=VALUE` reaches the method as a keyword argument, parsed as a Python literal."""

from __future__ import annotations

import pytest

from onnxfix import api, cli
from tests.conftest import SAMPLES


def test_options_are_parsed_as_literals():
    assert cli._options(["window=16", "stride=(8, 4)", "baseline=-0.5", "mode=fast", "alpha-pre=0.25"]) == {
        "window": 16, "stride": (8, 4), "baseline": -0.5, "mode": "fast", "alpha_pre": 0.25}


@pytest.mark.parametrize("bad", ["window", "=3", "2x=1", "target=3"])
def test_bad_options_are_usage_errors(bad, capsys):
    rc = cli.main([str(SAMPLES / "resnet_shapes.onnx"), str(SAMPLES / "resnet_shapes.png"), "--option", bad])
    assert rc == 2
    assert "--option" in capsys.readouterr().err


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
    assert seen["window"] == 8 and seen["stride"] == 4
    e = real(api.Explainer(SAMPLES / "resnet_shapes.onnx"), SAMPLES / "resnet_shapes.png", method="occlusion",
             window=8, stride=4)
    assert e.extras["window"] == (8, 8) and e.extras["stride"] == (4, 4)
