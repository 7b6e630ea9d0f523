"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, §3): the projection of a layer's activations on their first principal
component — no gradient, no class (pytorch-grad-cam 1.5.7's ``EigenCAM``: the (h·w, C) activations centred per
channel, ``np.linalg.svd``, projection on the first right-singular vector, then ReLU). Also the shared
``eigen_smooth`` projection of the other CAMs (pytorch-grad-cam's ``get_2d_projection``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfix.methods.base import register_method
from onnxfix.methods.gradients import LayerCAM


def projection_2d(a: np.ndarray) -> np.ndarray:
    """First-principal-component projection (h, w) of (C, h, w) (pytorch-grad-cam's ``get_2d_projection``)."""
    a = np.where(np.isnan(a), 0, a)
    r = a.reshape(a.shape[0], -1).T
    r = r - r.mean(axis=0)
    _, _, vt = np.linalg.svd(r, full_matrices=False)
    return (r @ vt[0]).reshape(a.shape[1:])


@dataclass
class EigenOptions:
    """Options of the CAMs with pytorch-grad-cam's ``eigen_smooth``."""

    layer: str | None = None
    eigen_smooth: bool = False


def combine(weighted: np.ndarray, eigen_smooth: bool) -> np.ndarray:
    """Σ_k over channels, or the first-component projection with ``eigen_smooth`` (pytorch-grad-cam)."""
    return projection_2d(weighted) if eigen_smooth else weighted.sum(axis=0)


class SmoothableCAM(LayerCAM):
    """A CAM whose map is ReLU(combine(w_k·A_k)) with optional ``eigen_smooth``."""

    Options = EigenOptions

    def weighted(self, grads: np.ndarray, acts: np.ndarray) -> np.ndarray:
        return self.weights(grads, acts)[:, None, None] * acts

    def cam(self, grads, acts, eigen_smooth: bool = False):
        return np.maximum(combine(self.weighted(grads, acts), eigen_smooth), 0.0), {}

    def attribute_resolved(self, model, x, values, targets, opts):
        from onnxfix.methods.base import Attribution, check_finite

        name, g, a = self.layer_gradients(model, x, values, targets, opts.layer)
        smooth = getattr(opts, "eigen_smooth", False)
        cams = np.stack([self.cam(g[n], a[n], smooth)[0] for n in range(x.shape[0])]).astype(np.float32)
        check_finite(cams, f"{self.name}'s map")
        return Attribution(self.name, "layer", cams, list(cams), targets, values[model.head.logits],
                           [{"layer": name} for _ in targets])


@register_method
class EigenCAM(SmoothableCAM):
    name = "eigencam"
    summary = "Eigen-CAM: first principal component of a layer's activations (class-agnostic, no gradient)"

    @dataclass
    class Options:
        layer: str | None = None

    def applies(self, model):
        from onnxfix.errors import InputError
        from onnxfix.methods.layers import resolve_layer

        try:
            resolve_layer(model, None)
        except InputError as exc:
            return str(exc)
        return None

    def attribute_resolved(self, model, x, values, targets, opts):
        from onnxfix.methods.base import Attribution, check_finite
        from onnxfix.methods.layers import layer_view, resolve_layer

        name = resolve_layer(model, opts.layer)
        if name not in values:
            values = {**values, **model.runtime.run({model.input: x}, [name])}
        a = layer_view(model, name)(values[name]).astype(np.float64)
        cams = np.stack([np.maximum(projection_2d(a[n]), 0.0) for n in range(x.shape[0])]).astype(np.float32)
        check_finite(cams, f"{self.name}'s map")
        return Attribution(self.name, "layer", cams, list(cams), targets, values[model.head.logits],
                           [{"layer": name} for _ in targets])


class MaskedTailCAM(EigenCAM):
    """Base of the gradient-free CAMs that run the tail (layer → logits) on a batch of masked or ablated copies of
    the layer's map (Ablation-CAM, Recipro-CAM): they need the batch-dynamic model and a 4-D map layer, and the
    forward exposes the tail's inputs."""

    needs_batch = True  # many rows per image: refused (applies) where no batch-dynamic form exists
    needs_map_layer = True

    def forward_tensors(self, model, layer=None, **options):
        from onnxfix.methods.layers import resolve_layer
        from onnxfix.methods.sampling import tail_runtime

        return [model.head.logits] + tail_runtime(model, resolve_layer(model, layer))[1]
