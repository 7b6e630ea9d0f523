"""Explanation methods, one small file each, filed by name in :data:`METHODS`."""

from onnxfix.methods import fixations as _fixations  # noqa: F401
from onnxfix.methods.base import METHODS, Method, Result, register_method

__all__ = ["METHODS", "Method", "Result", "register_method"]
