"""The ablation check of Oramas et al. (ICLR 2019): silence the relevant filters, measure the accuracy drop, and
compare with silencing as many random filters.

Decisions:

* **How a filter is silenced.** In an in-memory copy of the ONNX model every interpreted layer tensor ``T`` is
  replaced, for its consumers, by ``T · m`` with ``m`` an extra (1, C, 1, 1) graph input (1 = keep, 0 = zero the
  channel). One session then serves every ablation (the masks are fed, the model is built once). For a
  Conv → activation pair whose activation maps 0 to 0 (ReLU, ReLU6, HardSwish) this equals zeroing the filter's Conv
  weights and bias; it stays exact where a BatchNormalization or a residual Add sits between the Conv and the
  measured activation (zeroed Conv weights would leave BN's shift), and it silences exactly the response the lasso
  measured.
* **Random baselines.** (1) ``random``: the same number of filters *per layer* as the relevant set, drawn uniformly
  without replacement in each layer — the fair comparison, since silencing one of EfficientNet's 32 stem filters
  costs far more than one of its 1280 head filters; (2) ``random_pooled``: the same total number drawn uniformly
  over all filters of all interpreted layers. ``seeds`` draws each (default 5, seeds 0..4): mean ± standard deviation
  (ddof 0) of the accuracy. Random filters may include relevant ones, as a uniform draw does.
* **Selected filters**: the union over classes of each class's relevant filters (optionally the ``top`` per class).
* **Accuracy**: top-1 over the data set, an image counting as correct when the argmax is its label or in its
  ``accept`` list; also reported per class (relevant filters silenced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxfix.errors import InputError, UnsupportedModel
from onnxfix.model import Model
from onnxfix.sessions import make_session

MASK_PREFIX = "onnxfix_mask_"


def masked_model(model: Model, layers: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of the model with a channel-mask input multiplied into each of ``layers``.

    Returns
    -------
    (onnx.ModelProto, dict)
        The model and ``{layer tensor: mask input name}``.
    """
    g = model.graph
    proto = onnx.ModelProto()
    proto.CopyFrom(g.model)
    names: dict[str, str] = {}
    new_nodes = []
    for k, t in enumerate(layers):
        shape = g.shape(t)
        if shape is None or len(shape) != 4 or not isinstance(shape[1], int):
            raise UnsupportedModel(f"ablation: layer {t!r} has no static channel count")
        mask, masked = f"{MASK_PREFIX}{k}", f"{t}__onnxfix_masked"
        names[t] = mask
        dt = g.tensors[t].dtype
        elem = helper.np_dtype_to_tensor_dtype(dt) if dt is not None else onnx.TensorProto.FLOAT
        proto.graph.input.append(helper.make_tensor_value_info(mask, elem, [1, shape[1], 1, 1]))
        for node in proto.graph.node:
            for i, name in enumerate(node.input):
                if name == t:
                    node.input[i] = masked
        for out in proto.graph.output:
            if out.name == t:
                raise UnsupportedModel(f"ablation: layer {t!r} is a model output")
        new_nodes.append((t, helper.make_node("Mul", [t, mask], [masked], name=f"onnxfix_ablate_{k}")))
    # insert each Mul right after the producer of its tensor (keeps the node list topologically sorted)
    nodes = list(proto.graph.node)
    for t, mul in new_nodes:
        at = next((i for i, n in enumerate(nodes) if t in n.output), -1)
        nodes.insert(at + 1, mul)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto, names


@dataclass
class Ablator:
    """Accuracy of one model on a fixed set of preprocessed inputs, with chosen filters silenced."""

    model: Model
    layers: list[str]
    inputs: list[np.ndarray]
    labels: list[int]
    accept: list[list[int]]

    def __post_init__(self) -> None:
        proto, self.mask_names = masked_model(self.model, self.layers)
        try:
            self.session = make_session(proto, self.model.runtime.providers, self.model.runtime.threads)
        except Exception as exc:  # noqa: BLE001 - ORT raises many types
            raise UnsupportedModel(f"ablation: ONNX Runtime cannot load the masked model: {exc}") from None
        self.channels = {t: int(self.model.graph.shape(t)[1]) for t in self.layers}
        from onnxfix.interpret.relevant import batch_size

        self.bs = batch_size(self.model)

    def predictions(self, off: dict[str, Sequence[int]] | None = None) -> np.ndarray:
        """Top-1 class per image with the channels ``off[layer]`` zeroed."""
        masks = {}
        for t, name in self.mask_names.items():
            dt = self.model.graph.tensors[t].dtype or np.float32
            m = np.ones((1, self.channels[t], 1, 1), dt)
            for ch in (off or {}).get(t, ()):
                m[0, int(ch)] = 0
            masks[name] = m
        out = []
        head = self.model.head
        for s in range(0, len(self.inputs), self.bs):
            x = np.concatenate(self.inputs[s:s + self.bs], axis=0)
            # the explained output (a softmax, if any, keeps the argmax of its logits)
            logits = self.session.run([head.output], {self.model.input: x, **masks})[0]
            idx: list[Any] = [slice(None)] * logits.ndim
            if head.time_axis is not None:
                idx[head.time_axis] = 0
            sc = logits[tuple(idx)]
            cls_axis = head.class_axis - (1 if head.time_axis is not None and head.time_axis < head.class_axis else 0)
            pred = np.argmax(sc, axis=cls_axis).reshape(-1)
            out.extend(int(p) for p in pred)
        return np.asarray(out)

    def accuracy(self, off: dict[str, Sequence[int]] | None = None) -> tuple[float, np.ndarray]:
        """(accuracy, per-image correctness) with ``off`` silenced."""
        pred = self.predictions(off)
        ok = np.array([p == y or p in acc for p, y, acc in zip(pred, self.labels, self.accept, strict=True)])
        return float(ok.mean()) if len(ok) else float("nan"), ok


def selected_filters(relevant: dict[str, Any], top: int | None = None) -> dict[str, list[int]]:
    """Union over classes of the relevant filters (the ``top`` per class if given): ``{layer: [channels]}``."""
    from onnxfix.interpret.relevant import relevant_filters

    sel: dict[str, set[int]] = {}
    for c in relevant["classes"]:
        for e in relevant_filters(relevant, int(c), top):
            sel.setdefault(e["layer"], set()).add(int(e["filter"]))
    return {t: sorted(v) for t, v in sel.items()}


def random_like(selection: dict[str, list[int]], channels: dict[str, int], rng: np.random.Generator,
                ) -> dict[str, list[int]]:
    """As many random filters per layer as ``selection`` has."""
    return {t: sorted(int(c) for c in rng.choice(channels[t], size=len(chs), replace=False))
            for t, chs in selection.items()}


def random_pooled(count: int, channels: dict[str, int], rng: np.random.Generator) -> dict[str, list[int]]:
    """``count`` random filters drawn uniformly over all filters of the layers in ``channels``."""
    owners = [(t, j) for t, c in channels.items() for j in range(c)]
    out: dict[str, list[int]] = {}
    for i in sorted(rng.choice(len(owners), size=min(count, len(owners)), replace=False)):
        out.setdefault(owners[i][0], []).append(owners[i][1])
    return out


def ablation(model: Model, relevant: dict[str, Any], inputs: list[np.ndarray], labels: list[int],
             accept: list[list[int]] | None = None, seeds: int = 5, top: int | None = None) -> dict[str, Any]:
    """Accuracy with the relevant filters silenced vs as many random filters.

    Parameters
    ----------
    model : Model
    relevant : dict
        An interpretation (:func:`onnxfix.interpret.relevant.load_relevant`).
    inputs : list of preprocessed (1, ...) tensors
    labels : list of int
    accept : list of list of int, optional
        Further accepted classes per image.
    seeds : int
        Random draws.
    top : int, optional
        Use only the ``top`` relevant filters per class.

    Returns
    -------
    dict
        ``base``, ``relevant``, ``random_mean``, ``random_std``, ``random`` (per seed; per-layer matched draws),
        ``random_pooled*`` (draws over all interpreted filters), ``drop_relevant``, ``drop_random``, ``filters``
        (count silenced), ``filters_in_layers``, ``per_class`` ({class: {"images", "base", "relevant"}}).
    """
    if not inputs:
        raise InputError("ablation: no images")
    sel = selected_filters(relevant, top)
    layers = [t for t in relevant["layers"] if t in sel] or list(sel)
    unknown = [t for t in layers if t not in model.graph.tensors]
    if unknown:
        raise InputError(f"ablation: layers {', '.join(unknown[:3])} are not in this model (interpretation made for "
                         f"another model?)")
    acc = accept or [[] for _ in labels]
    if not layers:
        raise InputError("ablation: the interpretation has no relevant filters")
    ab = Ablator(model, layers, inputs, list(labels), acc)
    base, ok_base = ab.accuracy()
    rel, ok_rel = ab.accuracy(sel)
    n = sum(len(v) for v in sel.values())
    rand, pooled = [], []
    for s in range(seeds):
        rand.append(ab.accuracy(random_like(sel, ab.channels, np.random.default_rng(s)))[0])
    all_layers = [t for t in relevant["layers"] if t in model.graph.tensors]
    ab_all = Ablator(model, all_layers, inputs, list(labels), acc) if set(all_layers) != set(layers) else ab
    for s in range(seeds):
        pooled.append(ab_all.accuracy(random_pooled(n, ab_all.channels, np.random.default_rng(1000 + s)))[0])
    lab = np.asarray(labels)
    per_class = {str(int(c)): {"images": int((lab == c).sum()), "base": float(ok_base[lab == c].mean()),
                               "relevant": float(ok_rel[lab == c].mean())} for c in np.unique(lab)}
    total = sum(ab_all.channels.values())
    return {"images": len(inputs), "filters": n, "filters_in_layers": total, "seeds": seeds,
            "base": base, "relevant": rel, "random": rand,
            "random_mean": float(np.mean(rand)) if rand else float("nan"),
            "random_std": float(np.std(rand)) if rand else float("nan"),
            "drop_relevant": base - rel, "drop_random": base - float(np.mean(rand)) if rand else float("nan"),
            "random_pooled": pooled, "random_pooled_mean": float(np.mean(pooled)) if pooled else float("nan"),
            "random_pooled_std": float(np.std(pooled)) if pooled else float("nan"),
            "per_class": per_class}
