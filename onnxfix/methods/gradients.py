"""What the gradient methods share: the seed, one autodiff run, NaN checks, CAM arithmetic, upsampling.

Every gradient method seeds the explained score (before softmax): each image's target seed at its own batch index
(a one-hot of the target's coordinates in the logits, or a region's weights; :func:`onnxfix.targets.seed_batch`), so
``d(y_c)/d(tensor)`` comes back for every image of the batch in one ORT call (Grad-CAM §3; Captum's ``target``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from onnxfix.errors import InputError
from onnxfix.graph import Graph
from onnxfix.methods.base import Attribution, Method, check_finite, check_scores, register_method  # noqa: F401
from onnxfix.methods.layers import layer_view, resolve_layer
from onnxfix.model import Model
from onnxfix.targets import Resolved, Target, seed_batch


def seed_for(logits: np.ndarray, target: Resolved | list[Resolved], sign: float = 1.0,
             batch_axis: int | None = 0) -> np.ndarray:
    targets = target if isinstance(target, list) else [target]
    return seed_batch(logits.shape, targets, batch_axis, sign, logits.dtype)


def tail(model: Model, layer: str) -> tuple[Graph, list[str]]:
    """The part of the graph between ``layer`` and the logits as a model of its own, and its inputs: ``layer`` and
    every other non-constant tensor the tail reads (a skip connection, say), all taken from the first forward.

    Grad-CAM then differentiates only the tail — the forward is not run a second time (DESIGN §1: "Grad-CAM needs
    only the tail"). Built once per (model, layer) in ``model.cache``."""

    def build() -> tuple[Graph, list[str]]:
        g = model.graph
        sub = g.submodel([layer], [model.head.logits], name="tail")
        return Graph.from_model(sub), [i.name for i in sub.graph.input]

    return model.cache.get(("tail", layer), build)


def run_gradients(model: Model, x: np.ndarray, logits: np.ndarray, target: Resolved | list[Resolved],
                  wrt: list[str], mode: str = "gradient", activations: tuple[str, ...] = (), sign: float = 1.0,
                  graph: Graph | None = None,
                  feeds: dict[str, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({tensor: gradient of each image's target score}, {tensor: activation}) for a batch; NaN/Inf is an error,
    never a picture. ``graph``/``feeds`` run a sub-model (a tail) instead of the whole model on ``x``."""
    from onnxfix.autodiff import GradientProgram

    prog = GradientProgram(graph or model.graph, of=model.head.logits, wrt=list(wrt), mode=mode,
                           activations=list(activations), provider=model.provider, threads=model.runtime.threads)
    seed = seed_for(logits, target, sign, model.head.batch_axis)
    out = prog.run(feeds if feeds is not None else {model.input: x}, seed)
    grads = {name: out["grad:" + name] for name in wrt}
    acts = {a: out[a] for a in activations}
    for kind, d in (("gradient", grads), ("activation", acts)):
        for name, v in d.items():
            if not np.isfinite(v).all():
                raise InputError(f"the {kind} at {name!r} contains NaN or Inf; refusing to render it")
    return grads, acts


def quantised_reason(model: Model) -> str | None:
    """Why gradient methods do not apply to a quantised graph (integer ops on the path), naming the ops."""
    from onnxfix.ops import QUANTISED

    q = sorted({n.op_type for n in model.graph.nodes_between([model.input], model.head.logits)
                if n.op_type in QUANTISED})
    if not q:
        return None
    return (f"the graph is quantised ({', '.join(q)}): integer ops have no gradient; gradient-free methods "
            "(occlusion, muting-pixels, rise, d-rise) still work")


def missing_rules_reason(model: Model, source: str) -> str | None:
    quantised = quantised_reason(model)
    if quantised:
        return quantised
    try:
        from onnxfix.autodiff import missing_vjp_rules
    except ImportError as exc:  # pragma: no cover - the engine ships with the package
        return f"autodiff engine unavailable ({exc})"
    miss = missing_vjp_rules(model.graph, [source], model.head.logits)
    if miss:
        kinds = sorted({n.op_type for n in miss})
        return f"no gradient rule for {', '.join(kinds)} (node {miss[0].name})"
    return None


def saliency_map(grad: np.ndarray, model: Model) -> np.ndarray:
    """(H, W) display map of one image's input-shaped gradient (a leading batch axis of 1 allowed): max over
    channels of |g| (Simonyan et al.)."""
    g = np.abs(grad[0] if grad.ndim == 4 else grad)
    return g.max(axis=-1) if model.layout == "nhwc" else g.max(axis=0)


def nearest_upsample(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """torch.nn.functional.interpolate(mode="nearest") on a 2-D map: src index = floor(dst · in / out)."""
    h, w = m.shape
    iy = np.minimum((np.arange(hw[0]) * (h / hw[0])).astype(np.int64), h - 1)
    ix = np.minimum((np.arange(hw[1]) * (w / hw[1])).astype(np.int64), w - 1)
    return m[iy][:, ix]


@dataclass
class LayerOptions:
    """Options of layer methods: the layer (tensor or node name; None: automatic)."""

    layer: str | None = None


@dataclass
class CAMOptions:
    """Options of the pytorch-grad-cam CAMs: the layer (tensor or node name, or a comma list of them: the maps of
    several layers fused; None: automatic), ``eigen_smooth`` (first-component projection instead of Σ_k) and
    ``aug_smooth`` (the mean over 6 test-time augmentations)."""

    layer: str | None = None
    eigen_smooth: bool = False
    aug_smooth: bool = False


#: pytorch-grad-cam's test-time augmentations (ttach ``Compose([HorizontalFlip(), Multiply([0.9, 1, 1.1])])``):
#: (flip horizontally, factor), in ttach's product order
AUGMENTATIONS: tuple[tuple[bool, float], ...] = tuple((f, m) for f in (False, True) for m in (0.9, 1.0, 1.1))


def resize_bilinear(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (..., h, w) to (..., H, W) with half-pixel centres and clamped edges — OpenCV's
    ``cv2.resize(INTER_LINEAR)`` (no antialiasing), which pytorch-grad-cam uses to scale its maps."""
    h, w = a.shape[-2:]
    if (h, w) == tuple(hw):
        return a.copy()

    def axis(n_in: int, n_out: int):
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        i0 = np.floor(pos).astype(np.int64)
        return i0, np.minimum(i0 + 1, n_in - 1), pos - i0

    y0, y1, fy = axis(h, hw[0])
    x0, x1, fx = axis(w, hw[1])
    top = a[..., y0, :] * (1 - fy)[:, None] + a[..., y1, :] * fy[:, None]
    return top[..., x0] * (1 - fx) + top[..., x1] * fx


def scale_cam(cam: np.ndarray, hw: tuple[int, int] | None = None) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image`` on (N, h, w) maps: each minus its minimum, divided by 1e-7 + the new
    maximum, then resized bilinearly to ``hw``."""
    cam = cam - cam.min(axis=(-2, -1), keepdims=True)
    cam = cam / (1e-7 + cam.max(axis=(-2, -1), keepdims=True))
    return cam if hw is None else resize_bilinear(cam, hw)


def input_hw(model: Model, x: np.ndarray) -> tuple[int, int]:
    """(H, W) of the model input batch ``x``."""
    return (x.shape[1], x.shape[2]) if model.layout == "nhwc" else (x.shape[-2], x.shape[-1])


def augment(model: Model, x: np.ndarray, flip: bool, factor: float) -> np.ndarray:
    """One of :data:`AUGMENTATIONS` applied to the batch (ttach: flip, then multiply)."""
    if flip:
        x = x[:, :, ::-1] if model.layout == "nhwc" else x[..., ::-1]
    return np.ascontiguousarray(x * np.asarray(factor, x.dtype))


def batch_gradients(model: Model, rows: np.ndarray, targets: list[Resolved], logits: np.ndarray, wrt: list[str],
                    activations: tuple[str, ...] = (), sign: float = 1.0,
                    batch: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Gradients of each row's target score at the tensors ``wrt`` (and the ``activations``) for ``rows`` (M, ...)
    through the whole model, one resolved target per row (resolved on the original images: their batch index is
    moved to the row's place), in ORT calls of at most the internal batch size (the model's batch-dynamic copy; one
    row per call where there is none)."""
    from onnxfix.autodiff import GradientProgram
    from onnxfix.methods.sampling import _logits_shape, internal_batch

    m = len(rows)
    bm = model.batch_model() if m > 1 else model
    b = internal_batch(model, m, 3.0, batch) if bm is not None else 1
    bm = bm or model
    bax = model.head.batch_axis
    prog = GradientProgram(bm.graph, of=bm.head.logits, wrt=list(wrt), activations=list(activations),
                           provider=bm.provider, threads=bm.runtime.threads)
    grads: dict[str, list[np.ndarray]] = {w: [] for w in wrt}
    acts: dict[str, list[np.ndarray]] = {a: [] for a in activations}
    for s in range(0, m, b):
        chunk = np.ascontiguousarray(rows[s:s + b])
        ts = [targets[s + j].at_batch(j, bax) for j in range(len(chunk))]
        out = prog.run({bm.input: chunk}, seed_batch(_logits_shape(model, logits, len(chunk)), ts, bax, sign,
                                                     logits.dtype))
        for w in wrt:
            grads[w].append(out["grad:" + w])
        for a in activations:
            acts[a].append(out[a])
    res = ({w: np.concatenate(v) for w, v in grads.items()}, {a: np.concatenate(v) for a, v in acts.items()})
    for kind, d in zip(("gradient", "activation"), res, strict=True):
        for name, v in d.items():
            if not np.isfinite(v).all():
                raise InputError(f"the {kind} at {name!r} contains NaN or Inf; refusing to render it")
    return res


class LayerCAM(Method):
    """Base of Grad-CAM-style methods: gradient of the target score at a feature map → channel weights → map.

    A subclass sets :meth:`weights` (the per-channel α, Grad-CAM §3), :meth:`weighted` (the (C, h, w) terms summed
    over channels, for element-wise variants) or overrides :meth:`cam` (the whole combination).

    With one layer and no ``aug_smooth`` the map is the raw ReLU'd CAM at the layer (kind ``"layer"``): the tail from
    the layer is differentiated on the forward's values. With several layers (``layer="a,b"``) or ``aug_smooth`` it
    is pytorch-grad-cam 1.5.7's ``BaseCAM.__call__`` output at the input's resolution (kind ``"map"``): each layer's
    map min-max scaled and resized bilinearly to the input, max(0), mean over the layers, scaled again
    (``aggregate_multi_layers``); with ``aug_smooth`` that for each of the 6 augmentations of
    :data:`AUGMENTATIONS`, flipped back and averaged (``forward_augmentation_smoothing``). All layers' gradients
    (and all augmentations) come from one backward through the whole model (one ORT call per internal batch). The
    target is resolved once on the original image and kept for its augmentations (pytorch-grad-cam re-takes the
    top class per augmented copy when given no target)."""

    engine = "autodiff"
    kind = "layer"
    sign: ClassVar[float] = 1.0
    Options = LayerOptions

    def applies(self, model):
        quantised = quantised_reason(model)
        if quantised:
            return quantised
        try:
            layer = resolve_layer(model, None)
        except InputError as exc:
            return str(exc)
        return missing_rules_reason(model, layer)

    def weights(self, grads: np.ndarray, acts: np.ndarray) -> np.ndarray:
        """(C,) channel weights from gradients and activations shaped (C, h, w)."""
        return grads.mean(axis=(1, 2))

    def weighted(self, grads: np.ndarray, acts: np.ndarray) -> np.ndarray:
        """(C, h, w) terms whose sum over channels is the map (pytorch-grad-cam's weighted activations)."""
        return self.weights(grads, acts)[:, None, None] * acts

    def cam(self, grads: np.ndarray, acts: np.ndarray, eigen_smooth: bool = False) -> tuple[np.ndarray, dict]:
        """One image's map (h, w) from gradients and activations (C, h, w), float64, and extras: ReLU of Σ_k of
        :meth:`weighted`, or of its first-component projection with ``eigen_smooth`` (pytorch-grad-cam)."""
        if eigen_smooth:
            from onnxfix.methods.eigencam import projection_2d

            return np.maximum(projection_2d(self.weighted(grads, acts)), 0.0), {}
        if type(self).weighted is not LayerCAM.weighted:
            return np.maximum(self.weighted(grads, acts).sum(axis=0), 0.0), {}
        w = self.weights(grads, acts)
        return np.maximum(np.tensordot(w, acts, axes=(0, 0)), 0.0), {"weights": w.astype(np.float32)}

    @staticmethod
    def layers(model: Model, layer: str | None) -> list[str]:
        """The tensor names of ``layer``: one tensor or node name, or a comma list of them (None: automatic)."""
        if layer is None or "," not in layer:
            return [resolve_layer(model, layer)]
        try:
            return [resolve_layer(model, layer)]
        except InputError:
            pass
        names = [resolve_layer(model, part.strip()) for part in layer.split(",") if part.strip()]
        if not names:
            raise InputError(f"layer {layer!r} names no layer")
        return list(dict.fromkeys(names))

    @staticmethod
    def fused(opts) -> bool:
        """Whether ``opts`` ask for pytorch-grad-cam's input-resolution output (several layers or aug_smooth)."""
        layer = getattr(opts, "layer", None)
        return bool(getattr(opts, "aug_smooth", False)) or (layer is not None and "," in layer)

    def forward_tensors(self, model, layer=None, aug_smooth=False, **options):
        names = self.layers(model, layer)
        if aug_smooth or len(names) > 1:
            return [model.head.logits]
        return [model.head.logits] + tail(model, names[0])[1]

    def layer_gradients(self, model: Model, x: np.ndarray, values: dict[str, np.ndarray], targets: list[Resolved],
                        layer: str | None) -> tuple[str, np.ndarray, np.ndarray]:
        """(layer name, gradients, activations) of the batch at the layer, both as (N, C, h, w) float64."""
        name = resolve_layer(model, layer)
        sub, ins = tail(model, name)
        if any(i not in values for i in ins):  # called from another method's forward (guided Grad-CAM)
            values = {**values, **model.runtime.run({model.input: x}, ins)}
        grads, _ = run_gradients(model, x, values[model.head.logits], targets, [name], sign=self.sign, graph=sub,
                                 feeds={i: values[i] for i in ins})
        view = layer_view(model, name)
        return name, view(grads[name]).astype(np.float64), view(values[name]).astype(np.float64)

    def fused_maps(self, model: Model, x: np.ndarray, logits: np.ndarray, targets: list[Resolved], names: list[str],
                   eigen_smooth: bool, aug_smooth: bool) -> np.ndarray:
        """(N, H, W) float32: pytorch-grad-cam's multi-layer / augmentation-smoothed map (see the class doc)."""
        n, hw = x.shape[0], input_hw(model, x)
        augs = AUGMENTATIONS if aug_smooth else ((False, 1.0),)
        rows = np.concatenate([augment(model, x, f, m) for f, m in augs]) if aug_smooth else x
        grads, acts = batch_gradients(model, rows, [t for _ in augs for t in targets], logits, names, tuple(names),
                                      sign=self.sign)
        per_layer = []
        for name in names:
            view = layer_view(model, name)
            g, a = view(grads[name]).astype(np.float64), view(acts[name]).astype(np.float64)
            cams = np.stack([self.cam(g[r], a[r], eigen_smooth)[0] for r in range(len(rows))])
            per_layer.append(scale_cam(np.maximum(cams, 0.0), hw))
        out = scale_cam(np.maximum(np.stack(per_layer), 0.0).mean(axis=0)).astype(np.float32)
        if not aug_smooth:
            return out
        out = out.reshape(len(augs), n, *hw)
        out = np.stack([o[..., ::-1] if f else o for o, (f, _) in zip(out, augs, strict=True)])
        return out.mean(axis=0, dtype=np.float32)

    def attribute_resolved(self, model, x, values, targets, opts):
        smooth = bool(getattr(opts, "eigen_smooth", False))
        logits = values[model.head.logits]
        if self.fused(opts):
            names = self.layers(model, opts.layer)
            maps = self.fused_maps(model, x, logits, targets, names, smooth, bool(getattr(opts, "aug_smooth", False)))
            check_finite(maps, f"{self.name}'s map")
            extras = [{"layers": names, "aug_smooth": bool(getattr(opts, "aug_smooth", False))} for _ in targets]
            return Attribution(self.name, "map", maps, list(maps), targets, logits, extras)
        name, g, a = self.layer_gradients(model, x, values, targets, opts.layer)
        cams, extras = [], []
        for n in range(x.shape[0]):
            cam, extra = self.cam(g[n], a[n], smooth)
            cams.append(cam.astype(np.float32))
            extras.append({"layer": name, **extra})
        cams_arr = np.stack(cams)
        check_finite(cams_arr, f"{self.name}'s map")
        return Attribution(self.name, "layer", cams_arr, list(cams_arr), targets, logits, extras)

    def explain(self, model, x, values, target, layer=None, **options):
        """One image through the batch path (kept for callers of the per-image form)."""
        att = self.attribute_resolved(model, x, values, [target], self.parse_options({"layer": layer, **options}))
        return att.item(0)


class InputGradient(Method):
    """Base of input-gradient methods; ``mode`` picks the ReLU backward rule."""

    engine = "autodiff"
    kind = "input"
    mode: ClassVar[str] = "gradient"

    def applies(self, model):
        return missing_rules_reason(model, model.input)

    def input_gradient(self, model: Model, x: np.ndarray, values: dict, target: Resolved | list[Resolved]
                       ) -> np.ndarray:
        grads, _ = run_gradients(model, x, values[model.head.logits], target, [model.input], mode=self.mode)
        return grads[model.input].astype(np.float32)

    def finish(self, model: Model, x: np.ndarray, values: dict, targets: list[Resolved], g: np.ndarray,
               opts) -> Attribution:
        """The Attribution of a batch's input gradients ``g`` (subclasses post-process here)."""
        maps = [saliency_map(g[n], model) for n in range(g.shape[0])]
        return Attribution(self.name, "input", g, maps, targets, values[model.head.logits],
                           [{} for _ in targets])

    def attribute_resolved(self, model, x, values, targets, opts):
        g = self.input_gradient(model, x, values, targets)
        return self.finish(model, x, values, targets, g, opts)

    def explain(self, model, x, values, target, **options):
        return self.attribute_resolved(model, x, values, [target], self.parse_options(options)).item(0)

    def one_pass(self, model, x, targets, opts):
        """For one score vector (a batch-1 classifier), the seed needs no forward: a given class is a fixed
        one-hot, the top class is a one-hot of the in-graph ArgMax of the logits. Forward, seed and backward are
        then one ORT call, not a forward to find the class followed by forward + backward."""
        from onnxfix.autodiff import GradientProgram
        from onnxfix.targets import Class

        h = model.head
        if x.shape[0] > 1:  # a batch of top-class targets: one per-item ArgMax seed in the graph, one ORT call
            top = all(t is None or (isinstance(t, Class) and t.index_or_label is None) for t in targets)
            if not top or h.kind != "classifier" or h.time_axis is not None or h.batch_axis is None:
                return None
            prog = GradientProgram(model.graph, of=h.logits, wrt=[model.input], mode=self.mode,
                                   provider=model.provider, threads=model.runtime.threads, seed="argmax",
                                   argmax_axis=h.class_axis)
            out = prog.run({model.input: x})
            logits = out[h.logits]
            check_scores(logits)
            resolved = [model.resolve_target(logits, None, None, n) for n in range(x.shape[0])]
            g = out["grad:" + model.input]
            check_finite(g, f"the gradient at {model.input!r}")
            return self.finish(model, x, {h.logits: logits}, resolved, g.astype(np.float32), opts)
        shape = model.single_logits_shape()
        t = targets[0] if len(targets) == 1 else None
        if shape is None or x.shape[:1] != (1,) or not (t is None or isinstance(t, Class)):
            return None
        target = None if t is None else t.index_or_label
        logits_name = model.head.logits
        if target is None:
            prog = GradientProgram(model.graph, of=logits_name, wrt=[model.input], mode=self.mode,
                                   provider=model.provider, threads=model.runtime.threads, seed="argmax")
            out = prog.run({model.input: x})
        else:
            index = model.class_index(target, shape[model.head.class_axis])
            seed = np.zeros(shape, np.float32)
            seed.reshape(-1)[index] = 1.0
            prog = GradientProgram(model.graph, of=logits_name, wrt=[model.input], mode=self.mode,
                                   provider=model.provider, threads=model.runtime.threads)
            out = prog.run({model.input: x}, seed)
        logits = out[logits_name]
        check_scores(logits)
        tgt = model.resolve_target(logits, t)
        g = out["grad:" + model.input]
        if not np.isfinite(g).all():
            raise InputError(f"the gradient at {model.input!r} contains NaN or Inf; refusing to render it")
        g = g.astype(np.float32)
        return self.finish(model, x, {logits_name: logits}, [tgt], g, opts)


__all__ = ["AUGMENTATIONS", "CAMOptions", "InputGradient", "LayerCAM", "LayerOptions", "Target", "augment",
           "batch_gradients", "input_hw", "missing_rules_reason", "nearest_upsample", "resize_bilinear",
           "run_gradients", "saliency_map", "scale_cam", "seed_for", "tail"]
