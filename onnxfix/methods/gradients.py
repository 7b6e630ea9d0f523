"""What the gradient methods share: the seed, one autodiff run, NaN checks, CAM arithmetic, upsampling.

Every gradient method seeds the explained logit (before softmax): a one-hot of the target's coordinates in the
logits tensor, so ``d(y_c)/d(tensor)`` is what comes back (Grad-CAM §3; Captum's ``target``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx
from onnx import helper

from onnxfix.errors import InputError
from onnxfix.graph import Graph
from onnxfix.methods.base import Method, Result
from onnxfix.methods.layers import resolve_layer
from onnxfix.model import Model, Target


def seed_for(logits: np.ndarray, target: Target, sign: float = 1.0) -> np.ndarray:
    seed = np.zeros(logits.shape, dtype=logits.dtype)
    seed[target.coords] = sign
    return seed


def tail(model: Model, layer: str) -> tuple[Graph, list[str]]:
    """The part of the graph between ``layer`` and the logits as a model of its own, and its inputs: ``layer`` and
    every other non-constant tensor the tail reads (a skip connection, say), all taken from the first forward.

    Grad-CAM then differentiates only the tail — the forward is not run a second time (DESIGN §1: "Grad-CAM needs
    only the tail")."""
    cache = model.__dict__.setdefault("_tails", {})
    if layer in cache:
        return cache[layer]
    g = model.graph
    nodes = g.nodes_between([layer], model.head.logits)
    produced = {o for n in nodes for o in n.outputs if o}
    ins = [layer] + sorted({i for n in nodes for i in n.inputs
                            if i and i not in produced and i not in g.constants and i != layer})
    protos = {o: pn for pn in g.model.graph.node for o in pn.output}
    pnodes = list({id(protos[n.outputs[0]]): protos[n.outputs[0]] for n in nodes}.values())
    used = {i for pn in pnodes for i in pn.input}

    def info(name: str) -> onnx.ValueInfoProto:
        t = g.tensors[name]
        elem = helper.np_dtype_to_tensor_dtype(t.dtype) if t.dtype is not None else onnx.TensorProto.FLOAT
        dims = None if t.shape is None else [d if isinstance(d, int) and d > 0 else None for d in t.shape]
        return helper.make_tensor_value_info(name, elem, dims)

    sub = helper.make_graph(pnodes, "tail", [info(i) for i in ins], [info(model.head.logits)],
                            initializer=[t for t in g.model.graph.initializer if t.name in used])
    # IR ≥ 4: the tail's initializers are not graph inputs (IR 3 requires them to be; the converter then fails)
    m = helper.make_model(sub, opset_imports=list(g.model.opset_import), ir_version=max(g.model.ir_version, 4))
    cache[layer] = (Graph.from_model(m), ins)
    return cache[layer]


def run_gradients(model: Model, x: np.ndarray, logits: np.ndarray, target: Target, wrt: list[str],
                  mode: str = "gradient", activations: tuple[str, ...] = (), sign: float = 1.0,
                  graph: Graph | None = None,
                  feeds: dict[str, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({tensor: gradient of the target logit}, {tensor: activation}); NaN/Inf is an error, never a picture.

    ``graph``/``feeds`` run a sub-model (a tail) instead of the whole model on ``x``."""
    from onnxfix.autodiff import GradientProgram

    prog = GradientProgram(graph or model.graph, of=model.head.logits, wrt=list(wrt), mode=mode,
                           activations=list(activations), provider=model.provider, threads=model.runtime.threads)
    out = prog.run(feeds if feeds is not None else {model.input: x}, seed_for(logits, target, sign))
    grads = {name: out["grad:" + name] for name in wrt}
    acts = {a: out[a] for a in activations}
    for kind, d in (("gradient", grads), ("activation", acts)):
        for name, v in d.items():
            if not np.isfinite(v).all():
                raise InputError(f"the {kind} at {name!r} contains NaN or Inf; refusing to render it")
    return grads, acts


def missing_rules_reason(model: Model, source: str) -> str | None:
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
    """(H, W) display map of an input-shaped gradient: max over channels of |g| (Simonyan et al.)."""
    g = np.abs(grad[0])
    return g.max(axis=-1) if model.layout == "nhwc" else g.max(axis=0)


def nearest_upsample(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """torch.nn.functional.interpolate(mode="nearest") on a 2-D map: src index = floor(dst · in / out)."""
    h, w = m.shape
    iy = np.minimum((np.arange(hw[0]) * (h / hw[0])).astype(np.int64), h - 1)
    ix = np.minimum((np.arange(hw[1]) * (w / hw[1])).astype(np.int64), w - 1)
    return m[iy][:, ix]


class LayerCAM(Method):
    """Base of Grad-CAM-style methods: gradient of the target logit at a feature map → channel weights → map."""

    engine = "autodiff"
    sign: ClassVar[float] = 1.0

    def applies(self, model):
        try:
            layer = resolve_layer(model, None)
        except InputError as exc:
            return str(exc)
        return missing_rules_reason(model, layer)

    def weights(self, grads: np.ndarray, acts: np.ndarray) -> np.ndarray:
        """(C,) channel weights from gradients and activations shaped (C, h, w)."""
        return grads.mean(axis=(1, 2))

    def forward_tensors(self, model, layer=None, **options):
        return [model.head.logits] + tail(model, resolve_layer(model, layer))[1]

    def explain(self, model, x, values, target, layer=None, **options):
        name = resolve_layer(model, layer)
        sub, ins = tail(model, name)
        if any(i not in values for i in ins):  # called from another method's forward (guided Grad-CAM)
            values = {**values, **model.runtime.run({model.input: x}, ins)}
        grads, _ = run_gradients(model, x, values[model.head.logits], target, [name], sign=self.sign, graph=sub,
                                 feeds={i: values[i] for i in ins})
        g, a = grads[name][0].astype(np.float64), values[name][0].astype(np.float64)
        w = self.weights(g, a)
        cam = np.maximum(np.tensordot(w, a, axes=(0, 0)), 0.0).astype(np.float32)
        return Result(attribution=cam, map=cam, extras={"layer": name, "weights": w.astype(np.float32)})


class InputGradient(Method):
    """Base of input-gradient methods; ``mode`` picks the ReLU backward rule."""

    engine = "autodiff"
    mode: ClassVar[str] = "gradient"

    def applies(self, model):
        return missing_rules_reason(model, model.input)

    def input_gradient(self, model: Model, x: np.ndarray, values: dict, target: Target) -> np.ndarray:
        grads, _ = run_gradients(model, x, values[model.head.logits], target, [model.input], mode=self.mode)
        return grads[model.input].astype(np.float32)

    def explain(self, model, x, values, target, **options):
        g = self.input_gradient(model, x, values, target)
        return Result(attribution=g, map=saliency_map(g, model))

    def explain_in_one_pass(self, model, x, target, step, **options):
        """For one score vector (a batch-1 classifier), the seed needs no forward: a given class is a fixed
        one-hot, the top class is a one-hot of the in-graph ArgMax of the logits. Forward, seed and backward are
        then one ORT call, not a forward to find the class followed by forward + backward."""
        from onnxfix.autodiff import GradientProgram

        shape = model.single_logits_shape()
        if shape is None or step is not None or x.shape[:1] != (1,):
            return None
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
        if not np.isfinite(logits).all():
            raise InputError("the model produced NaN or Inf scores for this input; nothing to explain")
        tgt = model.resolve_target(logits, target)
        g = out["grad:" + model.input]
        if not np.isfinite(g).all():
            raise InputError(f"the gradient at {model.input!r} contains NaN or Inf; refusing to render it")
        g = g.astype(np.float32)
        return logits, tgt, Result(attribution=g, map=saliency_map(g, model))
