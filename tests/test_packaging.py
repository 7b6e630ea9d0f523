"""Every package under onnxfix/ is listed in pyproject.toml, so a wheel (non-editable install) has all of it."""

from __future__ import annotations

import tomllib

from tests.conftest import ROOT


def test_every_subpackage_is_packaged():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(cfg["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "onnxfix").rglob("__init__.py")}
    found |= {"onnxfix.kernels"}  # installed from kernels/ (package-dir mapping)
    assert found <= listed, f"missing from pyproject.toml packages: {sorted(found - listed)}"
