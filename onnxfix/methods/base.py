"""What every method is: a tiny subclass of :class:`Method` registered by name (pytorch-grad-cam's ``BaseCAM``,
Captum's ``attribute``).

The template::

    @register_method
    class MyMethod(Method):
        name = "my-method"
        summary = "one line for `onnxfix methods`"
        engine = "autodiff"            # "fixations", "autodiff" or "forward"
        kind = "map"                   # what Attribution.values holds: "input", "layer", "map" or "points"

        @dataclass
        class Options:                 # typed options: unknown or ill-typed ones are an InputError naming these
            steps: int = 50
            def check(self): ...       # ranges (optional)

        def attribute_resolved(self, model, x, values, targets, opts) -> Attribution: ...

:meth:`Method.attribute` is the one entry point: ``attribute(model, x, targets, opts)`` over a batch ``x`` (N, ...) with
one target per image. It runs the forward the method declares (:meth:`forward_tensors`), resolves each image's
target against its logits, refuses NaN/Inf, and hands over to :meth:`attribute_resolved`. A method that has only a
per-image :meth:`explain` (the older form) is run image by image by the default :meth:`attribute_resolved` — correct
for any method; the batchable ones (gradients, CAMs, fixations) override it.

Shape contract of :class:`Attribution` (per ``kind``): ``"input"``: ``values`` shaped like ``x`` (N, C, H, W) or
(N, H, W, C); ``"layer"``: (N, h, w) at the layer; ``"map"``: (N, h, w) at any resolution covering the input plane
(or a list of 2-D arrays when items differ); ``"points"``: a list of (K, 2) x, y arrays in model-input pixels. ``maps``
holds the display maps (N of them; the input kind's is max_c |g|), ``None`` entries for points. Methods never see the
user's image frame: display work (resize to the image, normalise, density, box) happens in
:mod:`onnxfix.api` / :mod:`onnxfix.maps`, only when asked.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from onnxfix.errors import InputError
from onnxfix.model import Model
from onnxfix.targets import Resolved, Target


@dataclass
class Result:
    """One image's result of the per-image :meth:`Method.explain` form."""

    attribution: np.ndarray
    points: np.ndarray | None = None  # (N, 2) x, y in model-input pixels
    map: np.ndarray | None = None  # 2-D map (any resolution covering the input plane)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Attribution:
    """A batch's raw attributions (see the module docstring for the shape contract per ``kind``)."""

    method: str
    kind: str
    values: Any  # ndarray (N, ...) or a list of N arrays
    maps: list[np.ndarray | None]
    targets: list[Resolved]
    logits: np.ndarray
    extras: list[dict[str, Any]]
    points: list[np.ndarray | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def item(self, n: int) -> Result:
        """Image ``n`` as a :class:`Result`."""
        pts = self.points[n] if self.points else None
        att = self.values[n:n + 1] if self.kind == "input" and isinstance(self.values, np.ndarray) else self.values[n]
        return Result(attribution=att, points=pts, map=self.maps[n], extras=self.extras[n])


@dataclass
class NoOptions:
    """A method without options."""


def _split_union(tp: Any) -> list[Any]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return list(typing.get_args(tp))
    return [tp]


_INT = re.compile(r"[+-]?[0-9]{1,9}")
_FLOAT = re.compile(r"[+-]?([0-9]{1,30}(\.[0-9]{0,30})?|\.[0-9]{1,30})([eE][+-]?[0-9]{1,3})?")


def _coerce_one(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` or raise ValueError (strings from the CLI are parsed strictly)."""
    origin = typing.get_origin(tp)
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        raise ValueError
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, str):
            value = value.strip()
        if value in choices:
            return value
        raise ValueError
    if tp is bool:
        if isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.strip().lower() in ("true", "1", "yes", "on")
        raise ValueError
    if tp is int:
        if isinstance(value, bool | np.bool_):
            raise ValueError
        if isinstance(value, int | np.integer):
            if abs(int(value)) > 10**9:
                raise ValueError
            return int(value)
        if isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value) \
                and abs(value) <= 10**9:
            return int(value)
        if isinstance(value, str) and _INT.fullmatch(value.strip()):
            return int(value.strip())
        raise ValueError
    if tp is float:
        if isinstance(value, bool | np.bool_):
            raise ValueError
        if isinstance(value, int | np.integer | float | np.floating):
            v = float(value)
        elif isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            v = float(value.strip())
        else:
            raise ValueError
        if not math.isfinite(v):
            raise ValueError
        return v
    if tp is str:
        if isinstance(value, str) and len(value) <= 1000:
            return value
        raise ValueError
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip().strip("()[]")
            value = [p for p in (s.strip() for s in text.split(",")) if p]
        if not isinstance(value, list | tuple | np.ndarray) or len(value) > 64:
            raise ValueError
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce_one(v, args[0]) for v in value)
        if len(value) != len(args):
            raise ValueError
        return tuple(_coerce_one(v, a) for v, a in zip(value, args, strict=True))
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ValueError


def _describe(tp: Any) -> str:
    parts = []
    for t in _split_union(tp):
        if t is type(None):
            parts.append("none")
        elif typing.get_origin(t) is Literal:
            parts.append(" | ".join(repr(c) for c in typing.get_args(t)))
        elif typing.get_origin(t) is tuple:
            parts.append("(" + ", ".join("..." if a is Ellipsis else getattr(a, "__name__", str(a))
                                         for a in typing.get_args(t)) + ")")
        else:
            parts.append(getattr(t, "__name__", str(t)))
    return " or ".join(parts)


def _short(value: Any) -> str:
    """A bounded, escaped repr of an untrusted value (a 5000-digit int, a long string)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return "<an integer of more than 30 digits>"
    try:
        text = repr(value[:80] if isinstance(value, str) else value)
    except Exception:  # noqa: BLE001 - a hostile __repr__
        text = f"<{type(value).__name__}>"
    return text[:100]


def coerce(value: Any, tp: Any) -> Any:
    """``value`` as the declared option type ``tp`` (a union tries each member; str last), else ValueError."""
    members = _split_union(tp)
    ordered = [m for m in members if m is not str] + [m for m in members if m is str]
    for m in ordered:
        try:
            return _coerce_one(value, m)
        except (ValueError, TypeError, OverflowError):
            continue
    raise ValueError


@functools.cache
def _type_hints(options_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(options_cls)


def option_fields(options_cls: type) -> dict[str, tuple[Any, Any]]:
    """{name: (type, default)} of an Options dataclass."""
    hints = _type_hints(options_cls)
    out = {}
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        out[f.name] = (hints[f.name], default)
    return out


class Method:
    """Base class; subclasses set ``name``/``summary``/``kind``, declare ``Options`` and implement
    :meth:`attribute_resolved` (batch) or :meth:`explain` (one image)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    engine: ClassVar[str] = "forward"  # "fixations", "autodiff" or "forward"
    kind: ClassVar[str] = "map"
    Options: ClassVar[type] = NoOptions
    #: runs many rows per image (samples, masks, steps) through the model's batch-dynamic form; where the model has
    #: none (:meth:`Model.batch_model` is None) the method does not apply
    needs_batch: ClassVar[bool] = False
    #: masks or ablates a 4-D feature map and runs the tail on it: does not apply where the (auto) layer is a token
    #: layer (N, T, C)
    needs_map_layer: ClassVar[bool] = False
    #: a method whose ``explain`` takes free-form ``**options`` and validates them itself (older methods); new
    #: methods declare ``Options`` instead
    free_options: ClassVar[bool] = False

    # -- options ------------------------------------------------------------------------------------------------
    def parse_options(self, options: dict[str, Any]) -> Any:
        """Typed options from ``options`` (values may be CLI strings); InputError naming the method's options for
        an unknown, ill-typed or out-of-range one."""
        if self.free_options and self.Options is NoOptions:
            return dict(options)
        fields = option_fields(self.Options)
        allowed = ", ".join(f"{k} ({_describe(t)})" for k, (t, _) in fields.items()) or "none"
        vals: dict[str, Any] = {}
        for key, value in options.items():
            if key not in fields:
                if key == "layer":
                    raise InputError(f"{self.name} takes no layer (--layer applies to layer methods such as gradcam); "
                                     f"its options: {allowed}")
                raise InputError(f"{self.name} has no option {str(key)[:80]!r}; its options: {allowed}")
            tp, _ = fields[key]
            try:
                vals[key] = coerce(value, tp)
            except ValueError:
                raise InputError(f"{self.name} option {key}={_short(value)} is not {_describe(tp)}") from None
        opts = self.Options(**vals)
        check = getattr(opts, "check", None)
        if check is not None:
            try:
                check()
            except ValueError as exc:
                raise InputError(f"{self.name}: {exc}") from None
        return opts

    @staticmethod
    def options_dict(opts: Any) -> dict[str, Any]:
        if isinstance(opts, dict):
            return dict(opts)
        return {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}

    # -- applicability and forward ----------------------------------------------------------------------------
    def applies(self, model: Model) -> str | None:
        """``None`` when the method can explain ``model``, else the reason it cannot."""
        return None

    def forward_tensors(self, model: Model, **options: Any) -> list[str]:
        """Tensors the forward pass must expose (besides the outputs), given its options."""
        return [model.head.logits]

    def native_tensors(self, model: Model, **options: Any) -> list[str]:
        """Of :meth:`forward_tensors`, those the method reads in ONNX Runtime's blocked layout
        (:class:`onnxfix.nchwc.Blocked`; default none: every value is an NCHW ndarray)."""
        return []

    def forward(self, model: Model, x: np.ndarray, **options: Any) -> dict[str, np.ndarray]:
        """The forward pass :meth:`attribute` runs: the outputs and :meth:`forward_tensors`."""
        return model.runtime.run({model.input: x}, self.forward_tensors(model, **options),
                                 native=self.native_tensors(model, **options))

    # -- the batch entry point --------------------------------------------------------------------------------
    def attribute(self, model: Model, x: np.ndarray, targets: list[Target], opts: Any = None) -> Attribution:
        """Attributions for a batch ``x`` (N, ...) with one target per image (``None`` entries: the default target).

        Parameters
        ----------
        model : Model
            The analysed model (for N > 1 it must run batches: :meth:`Model.batch_model`).
        x : ndarray
            Preprocessed batch shaped like the model input.
        targets : list of Target or None
            One per image.
        opts : Options, optional
            From :meth:`parse_options` (default: the declared defaults).
        """
        if opts is None:
            opts = self.parse_options({})
        if len(targets) != x.shape[0]:
            raise InputError(f"{len(targets)} targets for a batch of {x.shape[0]} images")
        one = self.one_pass(model, x, targets, opts)
        if one is not None:
            return one
        kw = self.options_dict(opts)
        values = self.forward(model, x, **kw)
        logits = values[model.head.logits]
        check_scores(logits)
        resolved = [model.resolve_target(logits, t, None, n) for n, t in enumerate(targets)]
        return self.attribute_resolved(model, x, values, resolved, opts)

    def one_pass(self, model: Model, x: np.ndarray, targets: list[Target], opts: Any) -> Attribution | None:
        """Forward, seed and explanation in one ORT call when the method can (``None``: forward first)."""
        return None

    def explain_in_one_pass(self, model: Model, x: np.ndarray, target: Any, step: int | None,
                            **options: Any) -> tuple[np.ndarray, Resolved, Result] | None:
        """The per-image form of :meth:`one_pass`: ``(logits, resolved target, result)`` or ``None``."""
        att = self.one_pass(model, x, [model.as_target(target, step)], self.parse_options(options))
        if att is None:
            return None
        return att.logits, att.targets[0], att.item(0)

    def attribute_resolved(self, model: Model, x: np.ndarray, values: dict[str, np.ndarray],
                           targets: list[Resolved], opts: Any) -> Attribution:
        """The batch's attributions from its forward ``values`` and resolved targets. Default: image by image
        through :meth:`explain` (each with its own batch-one forward when N > 1)."""
        kw = self.options_dict(opts)
        kw = {k: v for k, v in kw.items() if not (k == "layer" and v is None)}
        N = x.shape[0]
        results: list[Result] = []
        h = model.head
        for n in range(N):
            if N == 1:
                xi, vals, t = x, values, targets[0]
            else:
                xi = x[n:n + 1]
                vals = self.forward(model, xi, **kw)
                t = targets[n].at_batch(0, h.batch_axis)
            results.append(self.explain(model, xi, vals, t, **kw))
        return self.collect(model, values[h.logits], targets, results)

    def collect(self, model: Model, logits: np.ndarray, targets: list[Resolved], results: list[Result]
                ) -> Attribution:
        """An :class:`Attribution` from per-image results; NaN/Inf anywhere is refused."""
        for r in results:
            check_finite(r.attribution, f"{self.name}'s attribution")
            if r.map is not None:
                check_finite(r.map, f"{self.name}'s map")
        values: Any = [np.asarray(r.attribution) for r in results]
        if self.kind != "points" and len({v.shape for v in values}) == 1:
            values = np.concatenate(values) if self.kind == "input" else np.stack(values)
        return Attribution(self.name, self.kind, values, [r.map for r in results], list(targets), logits,
                           [r.extras for r in results], [r.points for r in results])

    # -- the per-image form -----------------------------------------------------------------------------------
    def explain(self, model: Model, x: np.ndarray, values: dict[str, np.ndarray], target: Resolved,
                **options: Any) -> Result:
        """One image (``x`` of batch one, ``target`` at batch index 0)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither attribute_resolved nor explain")


def check_finite(a: Any, what: str) -> None:
    """Refuse NaN/Inf: an explanation of broken numbers is never a picture."""
    arr = np.asarray(a)
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        raise InputError(f"{what} contains NaN or Inf for this input; refusing to render it (check the input and "
                         "the preprocessing)")


def check_scores(logits: np.ndarray) -> None:
    """Refuse a forward whose explained scores are NaN/Inf."""
    if not np.isfinite(logits).all():
        raise InputError("the model produced NaN or Inf scores for this input; nothing to explain")


METHODS: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: file an instance under ``cls.name``."""
    METHODS[cls.name] = cls()
    return cls


def takes_option(method: Method, name: str) -> bool:
    """Whether ``method`` declares option ``name``."""
    if method.free_options and method.Options is NoOptions:
        return "options" in inspect.signature(method.explain).parameters
    return name in option_fields(method.Options)


def input_points(model: Model, coords: np.ndarray) -> np.ndarray:
    """Unique (x, y) model-input pixels of index rows into the image input tensor (NCHW or NHWC)."""
    nhwc = model.layout == "nhwc"
    if coords.size == 0:
        return np.zeros((0, 2), np.float64)
    ys, xs = (coords[:, 1], coords[:, 2]) if nhwc else (coords[:, 2], coords[:, 3])
    xy = np.unique(np.stack([xs, ys], axis=1), axis=0)
    return xy.astype(np.float64)
