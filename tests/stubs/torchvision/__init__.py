"""Minimal stand-in for torchvision, enough for pytorch-grad-cam's imports (see tests/stubs/README.md)."""

from . import ops, transforms  # noqa: F401

__version__ = "0.0.0+onnxfix-test-stub"
