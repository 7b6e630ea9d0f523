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


class LayerCAM(Method):
    """Base of Grad-CAM-style methods: gradient of the target score at a feature map → channel weights → map.

    A subclass sets :meth:`weights` (the per-channel α, Grad-CAM §3) or overrides :meth:`cam` (the whole combination
    of gradients and activations, for element-wise variants)."""

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

    def cam(self, grads: np.ndarray, acts: np.ndarray) -> tuple[np.ndarray, dict]:
        """One image's map (h, w) from gradients and activations (C, h, w), float64, and extras."""
        w = self.weights(grads, acts)
        return np.maximum(np.tensordot(w, acts, axes=(0, 0)), 0.0), {"weights": w.astype(np.float32)}

    def forward_tensors(self, model, layer=None, **options):
        return [model.head.logits] + tail(model, resolve_layer(model, layer))[1]

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

    def attribute_resolved(self, model, x, values, targets, opts):
        name, g, a = self.layer_gradients(model, x, values, targets, opts.layer)
        cams, extras = [], []
        for n in range(x.shape[0]):
            cam, extra = self.cam(g[n], a[n])
            cams.append(cam.astype(np.float32))
            extras.append({"layer": name, **extra})
        cams_arr = np.stack(cams)
        check_finite(cams_arr, f"{self.name}'s map")
        return Attribution(self.name, "layer", cams_arr, list(cams_arr), targets, values[model.head.logits], extras)

    def explain(self, model, x, values, target, layer=None, **options):
        """One image through the batch path (kept for callers of the per-image form)."""
        att = self.attribute_resolved(model, x, values, [target], self.parse_options({"layer": layer}))
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


__all__ = ["InputGradient", "LayerCAM", "LayerOptions", "Target", "missing_rules_reason", "nearest_upsample",
           "run_gradients", "saliency_map", "seed_for", "tail"]
