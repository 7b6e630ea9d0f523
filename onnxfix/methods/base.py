"""What every method is: a tiny subclass of :class:`Method` registered by name (pytorch-grad-cam's layout).

A method declares which tensors its forward pass must expose, then turns (model, input, activations, target)
into a :class:`Result` at the model's own resolution: raw ``attribution`` numbers, plus either input-plane
``points`` (fixations) or a 2-D ``map``. :mod:`onnxfix.api` turns that into a user-facing explanation on the
user's image pixels; methods never see the user's image frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from onnxfix.model import Model, Target


@dataclass
class Result:
    attribution: np.ndarray
    points: np.ndarray | None = None  # (N, 2) x, y in model-input pixels
    map: np.ndarray | None = None  # 2-D map (any resolution covering the input plane)
    extras: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class; subclasses set ``name``/``summary`` and implement ``explain``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    engine: ClassVar[str] = "forward"  # "fixations", "autodiff" or "forward"

    def applies(self, model: Model) -> str | None:
        """``None`` when the method can explain ``model``, else the reason it cannot."""
        return None

    def forward_tensors(self, model: Model, **options: Any) -> list[str]:
        """Tensors the forward pass must expose for :meth:`explain` (besides the outputs), given its options."""
        return [model.head.logits]

    def explain(self, model: Model, x: np.ndarray, values: dict[str, np.ndarray], target: Target,
                **options: Any) -> Result:
        raise NotImplementedError

    def explain_in_one_pass(self, model: Model, x: np.ndarray, target: int | str | None, step: int | None,
                            **options: Any) -> tuple[np.ndarray, Target, Result] | None:
        """Forward and explanation in one ONNX Runtime call, when the method can do it: ``(logits, target,
        result)``; ``None`` (the default) makes the caller run the forward first and then :meth:`explain`."""
        return None


METHODS: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: file an instance under ``cls.name``."""
    METHODS[cls.name] = cls()
    return cls


def input_points(model: Model, coords: np.ndarray) -> np.ndarray:
    """Unique (x, y) model-input pixels of index rows into the image input tensor (NCHW or NHWC)."""
    nhwc = model.layout == "nhwc"
    if coords.size == 0:
        return np.zeros((0, 2), np.float64)
    ys, xs = (coords[:, 1], coords[:, 2]) if nhwc else (coords[:, 2], coords[:, 3])
    xy = np.unique(np.stack([xs, ys], axis=1), axis=0)
    return xy.astype(np.float64)
