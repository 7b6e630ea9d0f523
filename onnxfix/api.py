"""The Python API: ``Explainer(model).explain(image, method=..., target=...)`` (DESIGN §2).

One signature for every method (Captum's lesson); ``attribution`` keeps the method's raw numbers and the
picture is made separately by :meth:`Explanation.save`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from PIL import Image

from onnxfix import maps, render
from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.io.image import Frame, Preprocess, decode_image, own_size, prepare
from onnxfix.methods import METHODS
from onnxfix.model import Model
from onnxfix.targets import Resolved, Target


class Explanation:
    """One explained image × method. Coordinates (points, box, heatmap) are on the user's image pixels.

    The raw numbers (``attribution``, ``target``, ``scores``…) are set at construction; the picture-side values
    (``heatmap``, ``box``, and the fixations' density) are computed on first access, so batch and pipeline users pay
    nothing for pictures they do not want."""

    def __init__(self, method: str, target: int, label: str, step: int | None, score: float, logit: float,
                 scores: np.ndarray, top: list[dict], attribution: Any, frame: Frame, map: np.ndarray | None = None,
                 points: np.ndarray | None = None, image: Image.Image | None = None, seconds: float = 0.0,
                 extras: dict[str, Any] | None = None, resolved: Resolved | None = None):
        self.method, self.target, self.label, self.step = method, target, label, step
        self.score, self.logit, self.scores, self.top = score, logit, scores, top
        self.attribution, self.frame, self.map, self.points = attribution, frame, map, points
        self.image, self.seconds, self.extras = image, seconds, dict(extras or {})
        self.resolved = resolved
        #: the model's class names (for pictures that label several detections)
        self.labels: list[str] | None = None
        self._heatmap: np.ndarray | None = None
        self._box: list[float] | None = None
        self._box_done = False
        self._inliers: np.ndarray | None = None

    def __repr__(self) -> str:
        return (f"Explanation(method={self.method!r}, target={self.target}, label={self.label!r}, "
                f"score={self.score:.4f})")

    def _inlier_points(self) -> np.ndarray:
        if self._inliers is None:
            pts = self.points if self.points is not None else np.zeros((0, 2))
            self._inliers = pts[maps.fixation_inliers(pts, self.frame.image_hw)]
        return self._inliers

    @property
    def heatmap(self) -> np.ndarray:
        """float32 (H, W) in [0, 1] on the user's image pixels (lazy)."""
        if self._heatmap is None:
            hw = self.frame.image_hw
            if self.points is not None:
                self._heatmap = maps.density(self._inlier_points(), hw, maps.fixation_sigma(self.frame.input_hw, hw))
            elif self.map is not None:
                self._heatmap = maps.normalise(maps.resize_map(self.map, hw))
            else:
                self._heatmap = np.zeros(hw, np.float32)
        return self._heatmap

    @heatmap.setter
    def heatmap(self, value: np.ndarray) -> None:
        self._heatmap = value

    @property
    def box(self) -> list[float] | None:
        """[x0, y0, x1, y1] on the user's image pixels (lazy): the fixations' inlier box, or a box from the map."""
        if not self._box_done:
            self._box = maps.bounding_box(self._inlier_points()) if self.points is not None else \
                maps.heatmap_box(self.heatmap)
            self._box_done = True
        return self._box

    @box.setter
    def box(self, value: list[float] | None) -> None:
        self._box, self._box_done = value, True

    def render(self, alpha: float = 0.5) -> Image.Image:
        """The overlay picture: image (or a grey canvas for preprocessed input) + heatmap + points + box."""
        if self.image is not None and getattr(self.resolved, "detections", None):
            from onnxfix.render_detect import render_detections  # every detection labelled, the explained one marked

            return render_detections(self, self.labels)
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
            "box_rule": maps.box_rule(self.points),
        }
        if self.step is not None:
            d["target"]["step"] = self.step
        if self.resolved is not None and self.resolved.kind not in ("class", "step"):
            d["target"]["kind"] = self.resolved.kind
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
                 memory_budget_mb: float | None = None, head: str | None = None,
                 inputs: dict[str, Any] | None = None, time_axis: int | None = None, class_axis: int | None = None,
                 base_dir: str | os.PathLike | None = None):
        #: the constructor's arguments: an Explainer pickles as these (a path-loaded one is rebuilt on unpickling,
        #: e.g. in a worker process) and never ships its sessions
        self._init_args = dict(model=model, provider=provider, labels=labels, output=output, preprocess=preprocess,
                               threads=threads, max_image_pixels=max_image_pixels, max_model_mb=max_model_mb,
                               memory_budget_mb=memory_budget_mb, head=head, inputs=inputs, time_axis=time_axis,
                               class_axis=class_axis, base_dir=base_dir)
        self.model = Model(model, provider=provider, output=output, labels_file=labels, threads=threads,
                           max_model_bytes=None if max_model_mb is None else int(max_model_mb * 1024**2),
                           head=head, inputs=inputs, time_axis=time_axis, class_axis=class_axis, base_dir=base_dir)
        self.max_image_pixels = max_image_pixels
        if memory_budget_mb is not None:
            self.model.runtime.memory_budget = int(memory_budget_mb * 1024**2)
        self._pre_overrides = dict(preprocess or {})
        self._spec: Preprocess | None = None
        self._applies: dict[str, str | None] = {}
        #: (height, width) → whether a dynamic-size model runs at that size (:meth:`_runs_at`)
        self._sizes: dict[tuple[int | None, int | None], bool] = {}

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
            m = METHODS[name]
            why = m.applies(self.model)
            if why is None and m.needs_batch and self.model.batch_model() is None:
                why = ("this model runs only one image at a time (no batch-dynamic copy reproduces it), and "
                       f"{name} needs batches of samples")
            if why is None and m.needs_map_layer:
                from onnxfix.methods.layers import resolve_layer

                try:
                    shape = self.model.graph.shape(resolve_layer(self.model, None)) or ()
                except InputError as exc:
                    shape, why = (), str(exc)
                if why is None and len(shape) != 4:
                    why = f"{name} masks a 4-D feature map, and this model's layer is a token layer {list(shape)}"
            self._applies[name] = why
        return self._applies[name]

    def _runs_at(self, h: int, w: int, dyn_h: bool, dyn_w: bool) -> bool:
        """Whether the model runs on an input of height ``h`` and width ``w`` (a forward of zeros, once per size;
        the answers are kept in ``self._sizes``)."""
        key = (h if dyn_h else None, w if dyn_w else None)
        if key not in self._sizes:
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in self.model.input_shape]
            hi, wi = (2, 3) if self.spec.layout == "nchw" else (1, 2)
            if dyn_h:
                shape[hi] = h
            if dyn_w:
                shape[wi] = w
            dt = self.model.graph.tensors[self.model.input].dtype or np.float32
            try:
                self.model.runtime.run({self.model.input: np.zeros(shape, dt)}, [self.model.head.logits])
                self._sizes[key] = True
            except Exception:  # noqa: BLE001 - any failure means "not at this size"
                self._sizes[key] = False
        return self._sizes[key]

    def _dynamic_hw(self) -> tuple[bool, bool]:
        """(height, width) of the model's image input that are dynamic and that no preprocessing override fixed."""
        shape = self.model.input_shape
        if len(shape) != 4:
            return False, False
        spec = self.spec
        h, w = (shape[2], shape[3]) if spec.layout == "nchw" else (shape[1], shape[2])
        given = {k for k in ("height", "width") if self._pre_overrides.get(k) is not None}
        return (not (isinstance(h, int) and h > 0) and "height" not in given,
                not (isinstance(w, int) and w > 0) and "width" not in given)

    def prepare(self, image: Any) -> tuple[np.ndarray, Frame, Image.Image | None]:
        """Decode and preprocess ``image`` into the model's input tensor.

        A model whose input height/width are dynamic and not given (``preprocess={"height": …}``, ``--size``) takes
        the image at its own size (long side ≤ :data:`~onnxfix.io.image.OWN_SIZE_MAX`, aspect kept): an OCR line
        stays 48 px high, a page keeps its shape."""
        spec = self.spec
        dyn_h, dyn_w = self._dynamic_hw()
        if (dyn_h or dyn_w) and not (isinstance(image, np.ndarray) and image.dtype != np.uint8
                                     and image.ndim == len(self.model.input_shape)):
            image = decode_image(image, self.max_image_pixels)
            h, w = own_size((image.height, image.width))
            if not self._runs_at(h, w, dyn_h, dyn_w):
                # detectors and DB text detectors need multiples of 32 (their FPN adds upsampled maps)
                up = (-(-h // 32) * 32 if dyn_h else h, -(-w // 32) * 32 if dyn_w else w)
                if self._runs_at(*up, dyn_h, dyn_w):
                    h, w = up
            spec = spec.with_overrides(height=h if dyn_h else None, width=w if dyn_w else None)
        return prepare(image, spec, self.model.input_shape, self.max_image_pixels,
                       memory_budget=self.model.runtime.memory_budget)

    def __getstate__(self) -> dict:
        return {"init_args": self._init_args}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state["init_args"])  # type: ignore[misc]

    def predict(self, image: Any, k: int = 5) -> list[dict]:
        """Top-``k`` classes for ``image`` (forward only)."""
        x, _, _ = self.prepare(image)
        values = self.model.runtime.run({self.model.input: x}, [self.model.head.logits])
        target = self.model.resolve_target(values[self.model.head.logits])
        return self.model.top(self.model.scores_at(values[self.model.head.logits], target.step), k)

    def _method(self, method: str):
        m = METHODS.get(method)
        if m is None:
            raise InputError(f"unknown method {str(method)[:80]!r}; choose from {', '.join(METHODS)}")
        why = self._why_not(method)
        if why:
            ok = [n for n, r in self.methods().items() if r is None]
            raise UnsupportedModel(f"{method} cannot explain this model: {why}; methods that work: "
                                   f"{', '.join(ok) or 'none'}")
        return m

    def _target(self, target: Any, step: int | None) -> Target | None:
        return self.model.as_target(target, step)

    def attribute(self, /, x: np.ndarray, method: str = "saliency", targets: list[Any] | Any = None,
                  layer: str | None = None, **options: Any):
        """Raw attributions for a preprocessed batch (Captum's ``attribute``): no images, no pictures.

        Parameters
        ----------
        x : ndarray
            A batch shaped like the model input (N, ...), already preprocessed.
        method : str
            A method name (:meth:`methods` tells which apply).
        targets : target or list of targets, optional
            One for all images or one per image (ints, labels, CLI strings or :mod:`onnxfix.targets` objects).
        layer : str, optional
            Layer for layer methods.

        Returns
        -------
        onnxfix.methods.base.Attribution
        """
        m = self._method(method)
        x = np.asarray(x)
        if x.ndim != len(self.model.input_shape):
            raise InputError(f"x has {x.ndim} dimensions; the model input {self.model.input!r} has "
                             f"{len(self.model.input_shape)}")
        n = x.shape[0]
        ts = list(targets) if isinstance(targets, list | tuple) else [targets] * n
        if len(ts) != n:
            raise InputError(f"{len(ts)} targets for a batch of {n} images")
        if layer is not None:
            options = {**options, "layer": layer}
        opts = m.parse_options(options)
        mdl = self.model if n == 1 else self.model.batch_model()
        if mdl is None:  # no batch-dynamic form reproduces the model: one image at a time
            parts = [m.attribute(self.model, x[i:i + 1], [self._target(ts[i], None)], opts) for i in range(n)]
            ax = self.model.head.batch_axis
            logits = np.concatenate([p.logits for p in parts], axis=ax if ax is not None else 0)
            return m.collect(self.model, logits, [p.targets[0].at_batch(i, ax) for i, p in enumerate(parts)],
                             [p.item(0) for p in parts])
        return m.attribute(mdl, x.astype(self.model.graph.tensors[self.model.input].dtype or np.float32, copy=False),
                           [self._target(t, None) for t in ts], opts)

    def explain(self, /, image: Any, method: str = "fixations", target: Any = None,
                layer: str | None = None, step: int | None = None, top_k: int = 5, batch_size: int = 8,
                **options: Any) -> Explanation | list[Explanation]:
        """Explain one image, or a list / iterator of images in batches.

        Parameters
        ----------
        image : path, PIL image, H×W×C uint8 array, a preprocessed float32 array shaped like the input — or a list
            / iterator of those (then a list of explanations comes back, in order)
        method : str
            One of :data:`onnxfix.methods.METHODS` (``Explainer.methods()`` tells which apply).
        target : int, str or Target, or a list of them (one per image), optional
            Class index, label, CLI target string (``"box:0"``, ``"region:3"``) or an :mod:`onnxfix.targets` object;
            default the top class (a dense output: its main predicted region).
        layer : str, optional
            Layer (tensor or node name) for layer methods.
        step : int, optional
            Time step for sequence outputs; default the most confident step.
        batch_size : int
            Images per ORT call for lists (models with a fixed batch of one run through a validated batch-dynamic
            copy; if none reproduces the model, one by one). Results equal the one-by-one ones.
        **options
            The method's typed options (``onnxfix methods``; an unknown or ill-typed one is an InputError).

        Returns
        -------
        Explanation, or a list of them for a list / iterator input
        """
        single = not isinstance(image, list | tuple | Iterator) and not (
            isinstance(image, Iterable) and not isinstance(image, str | bytes | os.PathLike | np.ndarray
                                                           | Image.Image))
        if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 0:
            raise InputError(f"top_k must be a non-negative integer, got {top_k!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or not 1 <= batch_size <= 4096:
            raise InputError(f"batch_size must be an integer in 1..4096, got {batch_size!r}")
        m = self._method(method)
        if layer is not None:
            options = {**options, "layer": layer}
        opts = m.parse_options(options)
        images = [image] if single else image
        if not single and isinstance(target, list | tuple):
            targets_in: Iterator[Any] | None = iter(target)
        else:
            targets_in = None
        out: list[Explanation] = []
        chunk: list[tuple[Any, Any]] = []
        for img in images:
            t = next(targets_in, None) if targets_in is not None else target
            chunk.append((img, self._target(t, step)))
            if len(chunk) >= batch_size:
                out.extend(self._explain_batch(m, chunk, opts, top_k))
                chunk = []
        if chunk:
            out.extend(self._explain_batch(m, chunk, opts, top_k))
        if targets_in is not None and next(targets_in, None) is not None:
            raise InputError(f"more targets than images ({len(out)} images)")
        return out[0] if single else out

    def _explain_batch(self, m, chunk: list[tuple[Any, Any]], opts: Any, top_k: int) -> list[Explanation]:
        t0 = time.perf_counter()
        prepared = [self.prepare(img) for img, _ in chunk]
        same = len({p[0].shape for p in prepared}) == 1  # images at their own sizes (a dynamic-size model) may differ
        x = np.concatenate([p[0] for p in prepared]) if len(prepared) > 1 and same else prepared[0][0]
        targets = [t for _, t in chunk]
        if not same:
            atts = [m.attribute(self.model, p[0], [t], opts) for p, t in zip(prepared, targets, strict=True)]
            seconds = (time.perf_counter() - t0) / len(chunk)
            return [self._explanation(m, a, 0, frame, img, seconds, top_k)
                    for a, (_x, frame, img) in zip(atts, prepared, strict=True)]
        mdl = self.model if len(chunk) == 1 else self.model.batch_model()
        if mdl is None:
            atts = [m.attribute(self.model, x[i:i + 1], [targets[i]], opts) for i in range(len(chunk))]
            items = [(a, 0) for a in atts]
        else:
            att = m.attribute(mdl, x, targets, opts)
            items = [(att, i) for i in range(len(chunk))]
        seconds = (time.perf_counter() - t0) / len(chunk)
        out = []
        for (att, i), (_x, frame, img) in zip(items, prepared, strict=True):
            out.append(self._explanation(m, att, i, frame, img, seconds, top_k))
        return out

    def _explanation(self, m, att, i: int, frame: Frame, img: Image.Image | None, seconds: float,
                     top_k: int) -> Explanation:
        mdl = self.model
        res = att.item(i)
        tgt: Resolved = att.targets[i]
        extras = dict(res.extras)
        if "textual" in extras:  # Grad-CAM §7: boxes and peaks to the image frame (onnxfix.methods.textual)
            from onnxfix.methods.textual import to_image_frame

            extras["textual"] = to_image_frame(extras["textual"], frame)
        pts = frame.to_image(res.points) if res.points is not None else None
        scores = mdl.scores_at(att.logits, tgt.step, tgt.coords[mdl.head.batch_axis]
                               if mdl.head.batch_axis is not None else 0)
        dets = getattr(tgt, "detections", None)
        if dets:  # a detector: the top-k are its detections (after NMS), not a class-score vector
            top = [{**d.as_dict(mdl.labels), "index": d.cls, "logit": d.score, "prediction": d.index}
                   for d in dets[:top_k]]
        else:
            top = mdl.top(scores, top_k)
        e = Explanation(method=m.name, target=tgt.index, label=tgt.label, step=tgt.step, score=tgt.score,
                        logit=tgt.logit, scores=scores, top=top, attribution=res.attribution,
                        frame=frame, map=res.map, points=pts, image=img, seconds=seconds, extras=extras,
                        resolved=tgt)
        e.labels = mdl.labels
        return e

    def export(self, path: str | os.PathLike, method: str = "gradcam", **kwargs: Any) -> Path:
        """Write the model with its explanation computed in-graph (``onnxfix export``; docs/export.md)."""
        from onnxfix.export import export_model

        return export_model(self, path, method=method, **kwargs).path

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

