"""The scikit-image photo set (tools/eval_sets/skimage.json) with EfficientNet-Lite0: the hand-picked photos are
recognised (top-1 or an accepted class) through the app's own preprocessing."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    name = "_onnxfix_tools_build_eval_sets"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "build_eval_sets.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_efficientnet_recognises_the_skimage_set(real_model, tmp_path):
    pytest.importorskip("skimage")
    entry = real_model("efficientnet_lite0")
    results = _tool().build_skimage(tmp_path / "skimage", model=Path(entry["path"]))
    n = len(json.loads((ROOT / "tools" / "eval_sets" / "skimage.json").read_text())["images"])
    assert len(results) == n
    assert sum(r["ok"] for r in results) >= n - 1, results  # measured: 8/8
