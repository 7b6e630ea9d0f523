"""Relevant filters per class by μ-lasso (Oramas, Wang, Tuytelaars, "Visual Explanation by Interpretation", ICLR 2019).

For every image *i*, every chosen layer *l* and every filter (channel) *j* of it, the response is the L2 norm of the
filter's activation map, ``x_lj = ||A_lj||_2``; each layer's vector is L1-normalised (it sums to 1; an all-zero layer
stays zero) and the layers are concatenated into one row ``x_i`` of ``X`` (N images × F filters). For every class *c*
a sparse weight vector ``w_c`` is fitted so that ``X w_c`` reproduces the class indicator ``y_c``; the *relevant*
filters of class *c* are those with ``w_c > 0`` (the paper keeps positive weights), sorted by weight.

Decisions (the paper and the issue leave them open):

* **Indicator**: ``y_c`` is 0/1 (1 for the images labelled *c*), the paper's label matrix ``L ∈ {0, 1}^{C×N}``. No
  intercept and no centring, as in the paper.
* **Formulation**: the paper's "μ-lasso" is SPAMS' constrained lasso, ``min ||X w − y||² s.t. ||w||₁ ≤ μ``
  (``form="constraint"``, the default). Its μ = 10 does not depend on the number of images nor on the layer
  widths, which matters because the L1-normalised responses are ~1/C each: the *penalised* form
  ``min ||X w − y||² + μ ||w||₁`` (``form="penalty"``, also available) with μ = 10 selects nothing on ImageNet
  models unless the data set has thousands of images per class.
* **Solver**: FISTA (accelerated proximal/projected gradient, step 1/L with L = 2 σ_max(X)²) on all classes at once,
  with per-class gradient-based restart; the proximal step is soft-thresholding (penalty) or the exact Euclidean
  projection onto the ℓ1 ball (constraint). With many more filters than images (EfficientNet: 19,200 filters) it
  runs on a working set of filters, grown by the ones that violate the optimality conditions until none does.
  FISTA stops when no weight moves by more than ``tol`` times the largest weight of its class between iterations
  (and reports whether it converged). Both forms reduce to closed forms for an
  orthonormal ``X`` — soft-thresholding of ``Xᵀy`` at μ/2, and the ℓ1-ball projection of ``Xᵀy`` — which the tests
  check.
* **Layers**: by default every activation output (Relu, Clip, HardSwish, LeakyRelu, …) that is a 4-D feature map
  with spatial extent on the data path from the image to the logits — "Conv outputs after their activation"; a
  linear projection conv (no activation, e.g. EfficientNet's ``project_conv``) is not a layer. When the model has no
  such activation the Conv outputs are used. ``layers=`` overrides (tensor or node names, or ``last:K``).
* Responses are computed by exposing exactly those tensors through :class:`onnxfix.runtime.Runtime`: one forward per
  image, or per batch of 16 when the model's batch axis is dynamic.

The JSON written by :func:`save_relevant` (``<model stem>.interpret.json`` next to the model by default)::

    {"model": "m.onnx", "mu": 10.0, "layers": [...], "dataset": "...", "images": N,
     "classes": {"3": [{"layer": "t", "filter": 7, "weight": 0.41}, ...]}, ...}

with each class's list sorted by weight, descending; further keys (``form``, ``indicator``, ``converged``, ``seconds``,
``ablation``) are informative only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxfix.errors import InputError
from onnxfix.io.atomic import write_atomic
from onnxfix.methods.layers import feature_maps
from onnxfix.model import Model

#: Activations whose output is a "filter response" layer.
ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "PRelu", "HardSwish", "Elu", "Selu", "Celu", "Gelu", "Mish", "Softplus",
               "ThresholdedRelu", "Sigmoid", "HardSigmoid", "Tanh"}
FORMS = ("constraint", "penalty")


# ---------------------------------------------------------------------------------------------------------- layers
def default_layers(model: Model) -> list[str]:
    """Activation outputs that are spatial NCHW feature maps on the data path (else Conv outputs), topological order.

    Parameters
    ----------
    model : Model

    Returns
    -------
    list of str
        Tensor names.
    """
    g = model.graph
    maps = feature_maps(model)
    acts = [t for t in maps if (p := g.producer(t)) is not None and p.op_type in ACTIVATIONS]
    if acts:
        return acts
    convs = [t for t in maps if (p := g.producer(t)) is not None and p.op_type == "Conv"]
    if not convs:
        raise InputError("the model has no convolutional feature maps between its input and its output; "
                         "pass --layers explicitly")
    return convs


def resolve_layers(model: Model, layers: Sequence[str] | None) -> list[str]:
    """Tensor names for ``layers`` (tensor or node names; ``None`` = :func:`default_layers`; ``["last:K"]`` = the
    last K default layers), each a 4-D map."""
    if not layers:
        return default_layers(model)
    if len(layers) == 1 and layers[0].startswith("last:"):
        k = layers[0][5:]
        if not k.isdigit() or int(k) < 1:
            raise InputError(f"--layers {layers[0]!r}: expected last:K with K >= 1")
        return default_layers(model)[-int(k):]
    g = model.graph
    on_path = {o for n in g.nodes_between([model.input], model.head.logits) for o in n.outputs}
    out: list[str] = []
    for layer in layers:
        name = layer
        if name not in g.tensors and name in g.node_by_name:
            name = g.node_by_name[name].outputs[0]
        if name not in g.tensors:
            near = [t for t in default_layers(model) if layer.lower() in t.lower()][:3]
            raise InputError(f"layer {layer!r} is neither a tensor nor a node of this model"
                             + (f"; did you mean {', '.join(near)}" if near else ""))
        shape = g.shape(name)
        if shape is None or len(shape) != 4:
            raise InputError(f"layer {layer!r} has shape {list(shape) if shape else 'unknown'}; a 4-D (N, C, H, W) "
                             "feature map is needed")
        if name not in on_path:
            raise InputError(f"layer {layer!r} does not lie between the input and the explained output")
        if name not in out:
            out.append(name)
    return out


# ------------------------------------------------------------------------------------------------------ responses
def channel_responses(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Per image, the L2 norm of every channel's map, L1-normalised within each layer, layers concatenated.

    Parameters
    ----------
    maps : sequence of arrays shaped (N, C_l, H_l, W_l)
        One array per layer, the same N images in each.

    Returns
    -------
    numpy.ndarray
        ``X``, float64 (N, Σ C_l).
    """
    cols = []
    for a in maps:
        a = np.asarray(a, np.float64)
        if a.ndim != 4:
            raise InputError(f"a layer response has shape {list(a.shape)}; expected (N, C, H, W)")
        norms = np.sqrt(np.einsum("nchw,nchw->nc", a, a))
        s = norms.sum(axis=1, keepdims=True)
        cols.append(np.divide(norms, s, out=np.zeros_like(norms), where=s > 0))
    return np.concatenate(cols, axis=1)


def batch_size(model: Model, wanted: int = 16) -> int:
    """``wanted`` when the image input's batch axis is dynamic, else 1."""
    shape = model.input_shape
    return wanted if shape and not isinstance(shape[0], int) else 1


def forward_batches(model: Model, tensors: Sequence[str], inputs: Iterable[np.ndarray], bs: int,
                    feeds_extra: dict[str, np.ndarray] | None = None,
                    ) -> Iterable[dict[str, np.ndarray]]:
    """Run the model on batches of (1, ...) input tensors; yield ``{tensor: array with the batch axis}``."""
    buf: list[np.ndarray] = []

    def flush() -> dict[str, np.ndarray]:
        x = np.concatenate(buf, axis=0)
        buf.clear()
        feeds = {model.input: x, **(feeds_extra or {})}
        return model.runtime.run(feeds, list(tensors))

    for x in inputs:
        buf.append(x)
        if len(buf) >= bs:
            yield flush()
    if buf:
        yield flush()


def compute_responses(model: Model, inputs: Iterable[np.ndarray], layers: Sequence[str],
                      progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``X`` for images given as preprocessed (1, ...) input tensors: one forward per image or batch.

    Parameters
    ----------
    model : Model
    inputs : iterable of numpy arrays
        Preprocessed input tensors (batch of one each).
    layers : sequence of str
        Tensor names (4-D feature maps).
    progress : callable, optional
        Called with the number of images done after every batch.

    Returns
    -------
    numpy.ndarray
        (N, Σ C_l) float64.
    """
    rows = []
    done = 0
    for values in forward_batches(model, layers, inputs, batch_size(model)):
        rows.append(channel_responses([values[t] for t in layers]))
        done += rows[-1].shape[0]
        if progress:
            progress(done)
    if not rows:
        raise InputError("no images to interpret")
    return np.concatenate(rows, axis=0)


# ---------------------------------------------------------------------------------------------------------- lasso
def soft_threshold(v: np.ndarray, t: float) -> np.ndarray:
    """``sign(v) · max(|v| − t, 0)``, elementwise."""
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


def project_l1_ball(v: np.ndarray, radius: float) -> np.ndarray:
    """Euclidean projection of every column of ``v`` (or of a vector) onto ``{w : ||w||₁ ≤ radius}``.

    Exact: soft-thresholding at the θ found by Michelot's fixed point (θ = (Σ_S |v| − r)/|S| over the support S,
    S shrinking monotonically until it stops changing; finite, and O(F) per step instead of a sort).
    """
    v = np.asarray(v, np.float64)
    vec = v.ndim == 1
    m = v[:, None] if vec else v
    a = np.abs(m)
    theta = np.zeros(m.shape[1])
    over = a.sum(axis=0) > radius
    if over.any():
        ao = a[:, over]
        support = np.ones(ao.shape, bool)
        th = (ao.sum(axis=0) - radius) / ao.shape[0]
        for _ in range(ao.shape[0] + 1):
            new = ao > th[None, :]
            if np.array_equal(new, support):
                break
            support = new
            th = ((ao * support).sum(axis=0) - radius) / np.maximum(support.sum(axis=0), 1)
        theta[over] = th
    out = np.sign(m) * np.maximum(a - theta[None, :], 0.0)
    return out[:, 0] if vec else out


def lasso(X: np.ndarray, Y: np.ndarray, mu: float = 10.0, form: str = "constraint", tol: float = 1e-6,
          max_iter: int = 20000) -> tuple[np.ndarray, dict[str, Any]]:
    """Solve the μ-lasso for every column of ``Y`` by FISTA.

    ``form="constraint"``: ``min_w ||X w − y||² s.t. ||w||₁ ≤ μ`` (the paper's μ-lasso);
    ``form="penalty"``: ``min_w ||X w − y||² + μ ||w||₁``.

    Parameters
    ----------
    X : (N, F) array
    Y : (N,) or (N, K) array
        Targets; one problem per column.
    mu : float
        The ℓ1 radius (constraint) or penalty weight (penalty); > 0.
    form : {"constraint", "penalty"}
    tol : float
        Stop when no weight changes by more than ``tol · max(1e-12, max |w|)`` in one iteration.
    max_iter : int

    Returns
    -------
    W : (F,) or (F, K) float64 array
    info : dict
        ``iterations`` (FISTA steps in all), ``converged`` (bool), ``working_set_rounds`` (0 when the whole
        problem was solved at once), ``objective`` (per column).
    """
    if form not in FORMS:
        raise InputError(f"unknown lasso form {form!r}; choose {' or '.join(FORMS)}")
    if not (mu > 0 and np.isfinite(mu)):
        raise InputError(f"mu must be a positive number, got {mu}")
    X = np.asarray(X, np.float64)
    Yin = np.asarray(Y, np.float64)
    vec = Yin.ndim == 1
    Ym = Yin[:, None] if vec else Yin
    if X.ndim != 2 or Ym.shape[0] != X.shape[0]:
        raise InputError(f"lasso: X is {list(X.shape)} but Y is {list(Yin.shape)}")
    N, F = X.shape
    K = Ym.shape[1]
    if F <= max(512, 4 * N):
        W, it, ok = _fista(X, Ym, mu, form, tol, max_iter, np.zeros((F, K)))
        rounds = 0
    else:
        W, it, ok, rounds = _working_set(X, Ym, mu, form, tol, max_iter)
    info = {"iterations": it, "converged": ok, "working_set_rounds": rounds,
            "objective": _objective(X, Ym, W, mu, form)}
    return (W[:, 0] if vec else W), info


def _fista(X: np.ndarray, Y: np.ndarray, mu: float, form: str, tol: float, max_iter: int,
           W: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """FISTA from ``W`` with per-column gradient restart; returns (W, iterations, converged)."""
    F = X.shape[1]
    lip = 2.0 * (np.linalg.norm(X, 2) ** 2) if X.size else 0.0
    if lip == 0.0:
        return np.zeros_like(W), 0, True
    step = 1.0 / lip
    gram = X.T @ X if F <= 4096 else None
    XtY = X.T @ Y

    def grad(Z: np.ndarray) -> np.ndarray:
        g = gram @ Z if gram is not None else X.T @ (X @ Z)
        return 2.0 * (g - XtY)

    def prox(Z: np.ndarray) -> np.ndarray:
        return soft_threshold(Z, mu * step) if form == "penalty" else project_l1_ball(Z, mu)

    W = prox(W)
    Z, t = W.copy(), np.ones(W.shape[1])
    converged, it = False, 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        W_new = prox(Z - step * grad(Z))
        delta = np.abs(W_new - W).max(axis=0)
        scale = np.maximum(1e-12, np.abs(W_new).max(axis=0))
        uphill = np.sum((Z - W_new) * (W_new - W), axis=0) > 0  # restart (O'Donoghue & Candès 2015)
        t = np.where(uphill, 1.0, t)
        t_new = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        Z = W_new + ((t - 1.0) / t_new)[None, :] * (W_new - W)
        W, t = W_new, t_new
        if (delta <= tol * scale).all():
            converged = True
            break
    return W, it, converged


def _working_set(X: np.ndarray, Y: np.ndarray, mu: float, form: str, tol: float,
                 max_iter: int) -> tuple[np.ndarray, int, bool, int]:
    """Many more filters than images: solve on a working set of filters, add those violating the optimality
    conditions (a zero weight needs |gradient| ≤ μ (penalty) or ≤ the largest |gradient| over the support
    (constraint, when ||w||₁ = μ; 0 when the constraint is slack)), until none does. Exact at convergence."""
    N, F = X.shape
    K = Y.shape[1]
    m = min(F, max(256, 4 * N))
    score = np.abs(X.T @ Y).max(axis=1)
    ws = np.sort(np.argsort(-score, kind="stable")[:m])
    W = np.zeros((F, K))
    total_it, ok, rounds = 0, False, 0
    for rounds in range(1, 51):  # noqa: B007 - the count is reported
        Wsub, it, ok = _fista(X[:, ws], Y, mu, form, tol, max_iter, W[ws])
        total_it += it
        W = np.zeros((F, K))
        W[ws] = Wsub
        G = np.abs(2.0 * (X.T @ (X @ W - Y)))  # (F, K)
        outside = np.ones(F, bool)
        outside[ws] = False
        viol = np.zeros(F, bool)
        for k in range(K):
            if form == "penalty":
                lam = mu
            else:
                active = np.abs(W[:, k]) > 0
                slack = np.abs(W[:, k]).sum() < mu * (1 - 1e-6)
                lam = 0.0 if slack or not active.any() else float(G[active, k].max())
            limit = lam * (1 + 1e-4) + 1e-10 * max(1.0, float(G[:, k].max()))
            viol |= outside & (G[:, k] > limit)
        if not viol.any():
            return W, total_it, ok, rounds
        add = np.flatnonzero(viol)
        add = add[np.argsort(-G[add].max(axis=1), kind="stable")[:m]]
        ws = np.sort(np.concatenate([ws, add]))
    return W, total_it, False, rounds


def _objective(X: np.ndarray, Y: np.ndarray, W: np.ndarray, mu: float, form: str) -> list[float]:
    r = ((X @ W - Y) ** 2).sum(axis=0)
    if form == "penalty":
        r = r + mu * np.abs(W).sum(axis=0)
    return [float(v) for v in r]


def indicator(labels: Sequence[int], classes: Sequence[int]) -> np.ndarray:
    """The 0/1 matrix ``Y`` (N images × K classes): ``Y[i, k] = 1`` iff image i is labelled ``classes[k]``."""
    lab = np.asarray(labels)
    return (lab[:, None] == np.asarray(classes)[None, :]).astype(np.float64)


def relevant_from_weights(W: np.ndarray, classes: Sequence[int], layers: Sequence[str],
                          channels: Sequence[int]) -> dict[str, list[dict[str, Any]]]:
    """Positive weights of each class column → ``{"c": [{"layer", "filter", "weight"}, ...]}`` sorted descending."""
    owners = [(layer, j) for layer, c in zip(layers, channels, strict=True) for j in range(c)]
    if len(owners) != W.shape[0]:
        raise ValueError(f"{W.shape[0]} weights for {len(owners)} filters")
    out: dict[str, list[dict[str, Any]]] = {}
    for k, c in enumerate(classes):
        w = W[:, k]
        pos = np.flatnonzero(w > 0)
        pos = pos[np.argsort(-w[pos], kind="stable")]
        out[str(int(c))] = [{"layer": owners[i][0], "filter": int(owners[i][1]), "weight": float(w[i])} for i in pos]
    return out


def find_relevant(X: np.ndarray, labels: Sequence[int], classes: Sequence[int], layers: Sequence[str],
                  channels: Sequence[int], mu: float = 10.0, form: str = "constraint",
                  tol: float = 1e-6, max_iter: int = 20000) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The μ-lasso per class on responses ``X`` (see the module docstring); returns (classes dict, solver info)."""
    W, info = lasso(X, indicator(labels, classes), mu=mu, form=form, tol=tol, max_iter=max_iter)
    return relevant_from_weights(W, classes, layers, channels), info


# ------------------------------------------------------------------------------------------------------ save/load
def default_json_path(model_path: str | os.PathLike) -> Path:
    """``<model stem>.interpret.json`` next to the model."""
    p = Path(model_path)
    return p.with_name(f"{p.stem}.interpret.json")


def write_json_atomic(data: Any, path: str | os.PathLike, protect: Sequence[str | os.PathLike] = ()) -> Path:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same folder and ``os.replace``."""

    def write(fh: Any) -> None:
        json.dump(data, fh, indent=1)
        fh.write("\n")

    return write_atomic(path, write, binary=False, protect=protect)


def save_relevant(relevant: dict[str, Any], path: str | os.PathLike,
                  protect: Sequence[str | os.PathLike] = ()) -> Path:
    """Validate and write an interpretation dict (the format of the module docstring) atomically."""
    _validate(relevant, str(path))
    return write_json_atomic(relevant, path, protect)


def load_relevant(path: str | os.PathLike) -> dict[str, Any]:
    """Read an ``*.interpret.json`` file written by ``onnxfix interpret``.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    dict
        ``model``, ``mu``, ``layers``, ``dataset``, ``images``, ``classes`` (``{"c": [{"layer", "filter",
        "weight"}, ...]}``, each sorted by weight descending).

    Raises
    ------
    InputError
        When the file is missing, not JSON, or not in this format.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{p}: no such interpretation file (run 'onnxfix interpret MODEL DATASET' first)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    _validate(data, str(p))
    for k in data["classes"]:
        data["classes"][k] = sorted(data["classes"][k], key=lambda e: -e["weight"])
    return data


def _validate(d: Any, where: str) -> None:
    if not isinstance(d, dict):
        raise InputError(f"{where}: an interpretation must be a JSON object")
    for key in ("model", "mu", "layers", "classes"):
        if key not in d:
            raise InputError(f"{where}: missing key {key!r}")
    if not isinstance(d["classes"], dict) or not isinstance(d["layers"], list):
        raise InputError(f"{where}: 'classes' must be an object and 'layers' a list")
    for c, entries in d["classes"].items():
        if not str(c).lstrip("-").isdigit() or not isinstance(entries, list):
            raise InputError(f"{where}: class key {c!r} must be a class index with a list of filters")
        for e in entries:
            if not (isinstance(e, dict) and isinstance(e.get("layer"), str) and isinstance(e.get("filter"), int)
                    and isinstance(e.get("weight"), int | float)):
                raise InputError(f"{where}: class {c}: entries need 'layer' (str), 'filter' (int), 'weight' (number)")


def relevant_filters(relevant: dict[str, Any], class_index: int, top: int | None = None) -> list[dict[str, Any]]:
    """The relevant filters of ``class_index``, strongest weight first, at most ``top`` of them.

    Parameters
    ----------
    relevant : dict
        As returned by :func:`load_relevant`.
    class_index : int
    top : int, optional
        How many (default: all).

    Returns
    -------
    list of dict
        ``{"layer": tensor name, "filter": channel, "weight": float}``; empty when the class has none.
    """
    entries = sorted(relevant.get("classes", {}).get(str(int(class_index)), []), key=lambda e: -e["weight"])
    return entries if top is None else entries[: max(0, int(top))]


def contributions(entries: list[dict[str, Any]], acts: dict[str, np.ndarray], item: int = 0) -> np.ndarray:
    """``r = w ∘ x`` (§3.2) for relevant-filter entries ``{"layer", "filter", "weight"}``.

    Parameters
    ----------
    entries : list of dict
        Relevant filters of one class (``layer`` must be a key of ``acts``).
    acts : dict
        Layer tensor → activation (N, C, h, w) of the image.
    item : int
        The batch item.

    Returns
    -------
    numpy.ndarray
        One contribution per entry: its weight times its response, the response being the filter's L2 norm
        L1-normalised over its layer — the training-time ``x_i`` (:func:`relevant.channel_responses`).
    """
    x = {name: channel_responses([np.asarray(acts[name][item:item + 1])])[0]
         for name in dict.fromkeys(e["layer"] for e in entries)}
    return np.array([float(e["weight"]) * float(x[e["layer"]][int(e["filter"])]) for e in entries], np.float64)


def strongest(entries: list[dict[str, Any]], acts: dict[str, np.ndarray], k: int, item: int = 0
              ) -> list[dict[str, Any]]:
    """The ``k`` entries with the largest positive ``r = w ∘ x`` (§3.2), largest first (ties: file order); each
    returned dict gains ``contribution``."""
    r = contributions(entries, acts, item)
    order = [i for i in np.argsort(-r, kind="stable") if r[i] > 0][: max(0, int(k))]
    return [{**entries[i], "contribution": float(r[i])} for i in order]


def build_record(model_path: str, mu: float, form: str, layers: Sequence[str], dataset: str, n_images: int,
                 classes: dict[str, list[dict[str, Any]]], **extra: Any) -> dict[str, Any]:
    """The JSON object of the module docstring."""
    rec: dict[str, Any] = {"model": model_path, "mu": float(mu), "layers": list(layers), "dataset": dataset,
                           "images": int(n_images), "classes": classes, "form": form, "indicator": "0/1"}
    rec.update(extra)
    return rec
