"""The Python API: ``Explainer(model).explain(image, method=..., target=...)`` (DESIGN §2).

One signature for every method (Captum's lesson); ``attribution`` keeps the method's raw numbers and the
picture is made separately by :meth:`Explanation.save`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from PIL import Image

from onnxfix import maps, render
from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.io.image import Frame, Preprocess, prepare
from onnxfix.methods import METHODS
from onnxfix.model import Model, Target


@dataclass
class Explanation:
    """One explained image × method. Coordinates (points, box, heatmap) are on the user's image pixels."""

    method: str
    target: int
    label: str
    step: int | None
    score: float
    logit: float
    scores: np.ndarray
    top: list[dict]
    attribution: np.ndarray
    heatmap: np.ndarray
    points: np.ndarray | None
    box: list[float] | None
    frame: Frame
    image: Image.Image | None = None
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    def render(self, alpha: float = 0.5) -> Image.Image:
        """The overlay picture: image (or a grey canvas for preprocessed input) + heatmap + points + box."""
        base = self.image
        if base is None:
            h, w = self.heatmap.shape
            base = Image.new("RGB", (w, h), (128, 128, 128))
        title = f"{self.method}: {self.label} ({self.score:.2f})"
        return render.overlay(base, self.heatmap, self.points, self.box, alpha=alpha, title=title)

    def save(self, path: str | os.PathLike, protect: list[str | os.PathLike] = ()) -> Path:
        """Write the overlay PNG atomically."""
        return render.save_png(self.render(), path, protect=protect)

    def to_json(self, image: str, model: str, heatmap_png: str | None) -> dict[str, Any]:
        """The CLI's JSON object (DESIGN §2)."""
        d: dict[str, Any] = {
            "image": image, "model": model, "method": self.method,
            "target": {"index": self.target, "label": self.label, "score": self.score, "logit": self.logit},
            "top": self.top, "heatmap_png": heatmap_png,
            "points": None if self.points is None else [[round(float(x), 2), round(float(y), 2)]
                                                        for x, y in self.points],
            "box": None if self.box is None else [round(float(v), 2) for v in self.box],
            "seconds": round(self.seconds, 4),
        }
        if self.step is not None:
            d["target"]["step"] = self.step
        if "textual" in self.extras:  # Grad-CAM §7 (onnxfix.methods.textual)
            d["textual"] = self.extras["textual"]
        return d


class Explainer:
    """Load a model once, explain many images.

    Parameters
    ----------
    model : str, path-like or onnx.ModelProto
        The ONNX model (loaded safely: external data must stay inside the model's folder).
    provider : {"cpu", "cuda"}
        ONNX Runtime execution provider; "cuda" falls back to the CPU with a message when unavailable.
    labels : str or list of str, optional
        A labels file (one name per line, or JSON) or the names themselves; default: model metadata,
        ``<model>.labels.txt``, ImageNet.
    output : str, optional
        The model output to explain (default: the first floating-point output).
    preprocess : dict, optional
        Overrides of the inferred preprocessing: ``height``, ``width``, ``mean``, ``std``, ``scale``,
        ``layout`` ("nchw"/"nhwc"), ``channels`` ("rgb"/"bgr"/"gray").
    max_image_pixels : int, optional
        Refuse images larger than this many pixels (default ``onnxfix.io.image.MAX_PIXELS``, 100 megapixels).
    max_model_mb : float, optional
        Refuse models (file plus external data) larger than this (default ``onnxfix.io.model.MAX_MODEL_BYTES``,
        2048 MB).
    memory_budget_mb : float, optional
        Refuse a forward pass whose exposed intermediate tensors would take more than this (default
        ``onnxfix.runtime.MEMORY_FRACTION`` of the available memory); see docs/robustness.md.
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, provider: str = "cpu",
                 labels: str | list[str] | None = None, output: str | None = None, preprocess: dict | None = None,
                 threads: int | None = None, max_image_pixels: int | None = None, max_model_mb: float | None = None,
                 memory_budget_mb: float | None = None):
        self.model = Model(model, provider=provider, output=output, labels_file=labels, threads=threads,
                           max_model_bytes=None if max_model_mb is None else int(max_model_mb * 1024**2))
        self.max_image_pixels = max_image_pixels
        if memory_budget_mb is not None:
            self.model.runtime.memory_budget = int(memory_budget_mb * 1024**2)
        self._pre_overrides = dict(preprocess or {})
        self._spec: Preprocess | None = None
        self._applies: dict[str, str | None] = {}

    @property
    def spec(self) -> Preprocess:
        """The preprocessing in use (inferred, then overridden)."""
        if self._spec is None:
            self._spec = self.model.preprocess(**self._pre_overrides)
            self.model.layout = self._spec.layout
        return self._spec

    def methods(self) -> dict[str, str | None]:
        """Every method → ``None`` if it applies to this model, else why not."""
        return {name: self._why_not(name) for name in METHODS}

    def _why_not(self, name: str) -> str | None:
        """``METHODS[name].applies`` for this model, worked out once (it depends on the model alone)."""
        if name not in self._applies:
            self._applies[name] = METHODS[name].applies(self.model)
        return self._applies[name]

    def prepare(self, image: Any) -> tuple[np.ndarray, Frame, Image.Image | None]:
        """Decode and preprocess ``image`` into the model's input tensor."""
        return prepare(image, self.spec, self.model.input_shape, self.max_image_pixels)

    def predict(self, image: Any, k: int = 5) -> list[dict]:
        """Top-``k`` classes for ``image`` (forward only)."""
        x, _, _ = self.prepare(image)
        values = self.model.runtime.run({self.model.input: x}, [self.model.head.logits])
        target = self.model.resolve_target(values[self.model.head.logits])
        return self.model.top(self.model.scores_at(values[self.model.head.logits], target.step), k)

    def explain(self, image: Any, method: str = "fixations", target: int | str | None = None,
                layer: str | None = None, step: int | None = None, top_k: int = 5,
                **options: Any) -> Explanation:
        """Explain one image.

        Parameters
        ----------
        image : path, PIL image, H×W×C uint8 array, or a preprocessed float32 array shaped like the input
        method : str
            One of :data:`onnxfix.methods.METHODS` (``Explainer.methods()`` tells which apply).
        target : int or str, optional
            Class index or label to explain; default the top class.
        layer : str, optional
            Layer (tensor or node name) for layer methods.
        step : int, optional
            Time step for sequence outputs; default the most confident step.

        Returns
        -------
        Explanation
        """
        m = METHODS.get(method)
        if m is None:
            raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        why = self._why_not(method)
        if why:
            ok = [n for n, r in self.methods().items() if r is None]
            raise UnsupportedModel(f"{method} cannot explain this model: {why}; methods that work: "
                                   f"{', '.join(ok) or 'none'}")
        t0 = time.perf_counter()
        x, frame, img = self.prepare(image)
        mdl = self.model
        opts = dict(options)
        if layer is not None:
            opts["layer"] = layer
        one_pass = m.explain_in_one_pass(mdl, x, target, step, **opts)
        if one_pass is not None:
            logits, tgt, res = one_pass
        else:
            values = mdl.runtime.run({mdl.input: x}, m.forward_tensors(mdl, **opts))
            logits = values[mdl.head.logits]
            if not np.isfinite(logits).all():
                raise InputError("the model produced NaN or Inf scores for this input; nothing to explain")
            tgt: Target = mdl.resolve_target(logits, target, step)
            res = m.explain(mdl, x, values, tgt, **opts)
        if "textual" in res.extras:  # Grad-CAM §7: boxes and peaks to the image frame (onnxfix.methods.textual)
            from onnxfix.methods.textual import to_image_frame

            res.extras["textual"] = to_image_frame(res.extras["textual"], frame)
        image_hw = frame.image_hw
        if res.points is not None:
            pts = frame.to_image(res.points)
            inl = pts[maps.fixation_inliers(pts, image_hw)]
            heat = maps.density(inl, image_hw, maps.fixation_sigma(frame.input_hw, image_hw))
            box = maps.bounding_box(inl)
        else:
            pts = None
            heat = maps.normalise(maps.resize_map(res.map, image_hw)) if res.map is not None else np.zeros(
                image_hw, np.float32)
            box = maps.heatmap_box(heat)
        scores = mdl.scores_at(logits, tgt.step)
        return Explanation(
            method=method, target=tgt.index, label=tgt.label, step=tgt.step, score=tgt.score, logit=tgt.logit,
            scores=scores, top=mdl.top(scores, top_k), attribution=res.attribution, heatmap=heat, points=pts,
            box=box, frame=frame, image=img, seconds=time.perf_counter() - t0, extras=res.extras)

    def gradient(self, image: Any, of: str | None = None, wrt: list[str] | str | None = None,
                 seed: np.ndarray | None = None, mode: str = "gradient", strided: str = "exact"
                 ) -> dict[str, np.ndarray]:
        """The autodiff engine, raw: ``d(of · seed) / d(tensor)`` for each tensor in ``wrt``.

        Parameters
        ----------
        image : anything :meth:`explain` accepts
        of : str, optional
            The differentiated tensor (default: the explained logits, before softmax).
        wrt : str or list of str, optional
            Tensors (or node names) to differentiate with respect to (default: the image input).
        seed : ndarray, optional
            Shaped like ``of``; default: one-hot of the top class (at the most confident step).
        mode : {"gradient", "guided", "deconvnet"}
            The ReLU backward rule.
        strided : {"exact", "nearest"}
            Backward of strided Conv/MaxPool/AveragePool: the true gradient, or Oramas et al.'s stride-1 +
            nearest-neighbour variant for visualisations without grid artifacts (docs/views.md).

        Returns
        -------
        dict
            {tensor name: gradient array shaped like the tensor}
        """
        from onnxfix.autodiff import GradientProgram

        mdl = self.model
        g = mdl.graph
        of = of or mdl.head.logits
        if of not in g.tensors:
            raise InputError(f"no tensor {of!r} in this model")
        names = [wrt] if isinstance(wrt, str) else list(wrt or [mdl.input])
        names = [g.node_by_name[n].outputs[0] if n not in g.tensors and n in g.node_by_name else n for n in names]
        for n in names:
            if n not in g.tensors:
                raise InputError(f"no tensor or node {n!r} in this model")
        x, _, _ = self.prepare(image)
        prog = GradientProgram(g, of=of, wrt=names, mode=mode, provider=mdl.provider, threads=mdl.runtime.threads,
                               strided=strided)
        if seed is None:
            values = mdl.runtime.run({mdl.input: x}, [of])
            out = values[of]
            seed = np.zeros_like(out)
            if of == mdl.head.logits:
                seed[mdl.resolve_target(out).coords] = 1.0
            else:
                seed.reshape(-1)[int(np.argmax(out))] = 1.0
        seed = np.asarray(seed, dtype=np.float32)
        res = prog.run({mdl.input: x}, seed)
        return {n: res["grad:" + n] for n in names}

    def activations(self, image: Any) -> dict[str, np.ndarray]:
        """Every intermediate tensor for ``image``, by name."""
        x, _, _ = self.prepare(image)
        return self.model.runtime.activations({self.model.input: x})
