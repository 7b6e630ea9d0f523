"""Layer-wise relevance propagation: Zennit's rules and composites as override tables of the autodiff engine.

LRP (Bach et al. 2015, PLoS ONE 10(7); Montavon et al. 2019, "Layer-wise relevance propagation: an overview", §10.2
and Table 10.1) is a modified backward pass: the relevance R at a layer's output goes back to its input by a rule
of the layer. Zennit (Anders et al. 2021) writes every rule as one template (``zennit.core.BasicHook``) — modify
the input (``in_i``) and the parameters (``p_i``), run the layer forward ``z_i = layer(in_i; p_i)``, map the relevance
to ``s_i = R / stab(z)`` (the gradient mapper), take the gradient of the layer at ``s_i`` and reduce
``R_x = Σ c_i · in_i · ∇z_i(s_i)``. Here the same template is emitted as ONNX nodes: the modified forwards are
``Conv``/``Gemm``/``MatMul`` nodes with constant modified weights, the gradients are the engine's own VJP rules of
those nodes (rules_conv.py, rules_linear.py) called with the modified weight. So an LRP explanation is one
ONNX Runtime call, like a gradient.

Rules (x⁺ = max(x, 0), x⁻ = min(x, 0), W⁺/W⁻ likewise; b the bias; stab(z) = z + ε·(1 where z ≥ 0 else −1),
Zennit's ``Stabilizer``):

==============  ================================================================================================
Epsilon(ε)      R_x = x · ∇(R / stab_ε(z)), z the layer's own output (Zennit ``rules.Epsilon``)
ZPlus           z = layer(x⁺; W⁺, b⁺) + layer(x⁻; W⁻, 0); R_x = x⁺·∇_{W⁺}(R/stab z) + x⁻·∇_{W⁻}(R/stab z)
AlphaBeta(α,β)  z_p = layer(x⁺; W⁺, b⁺) + layer(x⁻; W⁻, 0), z_n = layer(x⁺; W⁻, b⁻) + layer(x⁻; W⁺, 0);
                R_x = α(x⁺∇_{W⁺} + x⁻∇_{W⁻})(R/stab z_p) − β(x⁺∇_{W⁻} + x⁻∇_{W⁺})(R/stab z_n)
Gamma(γ)        W_p = W + γW⁺ (bias b + γb⁺), W_n = W + γW⁻ (bias b + γb⁻); s_p = [z > 0]·R/stab(layer(x⁺; W_p,
                b_p) + layer(x⁻; W_n, 0)), s_n = [z < 0]·R/stab(layer(x⁺; W_n, b_n) + layer(x⁻; W_p, 0));
                R_x = x⁺(∇_{W_p}s_p + ∇_{W_n}s_n) + x⁻(∇_{W_n}s_p + ∇_{W_p}s_n)  (Zennit's generalised Gamma)
ZBox(l, h)      z = layer(x; W, b) − layer(l; W⁺, b⁺) − layer(h; W⁻, b⁻), s = R/stab(z);
                R_x = x∇_W s − l∇_{W⁺}s − h∇_{W⁻}s
Norm            R_i = x_i · ∇_i(R / stab(z)) on Add/Sum (of data tensors), AveragePool, GlobalAveragePool
Pass            R_x = R on activations (Relu, Clip/ReLU6, HardSwish, Sigmoid, …) and on an unfolded BatchNormalization
==============  ================================================================================================

Everything else keeps its gradient (MaxPool: winner takes all; Reshape/Flatten/Concat/Pad: moved as is), as in
Zennit, where modules without a rule are differentiated by autograd. Where x ≥ 0 is known from the graph (the
input of the layer comes from a ReLU, a ReLU6, a max-pool of one, …) the x⁻ terms are exactly zero and are not
emitted.

A layer is a ``Conv``/``ConvTranspose``/``Gemm``/``MatMul`` with a constant weight; a bias that the exporter wrote as a
separate ``Add`` of a constant (``MatMul`` + ``Add``) belongs to the layer: that ``Add`` passes the relevance on and
the layer's rule uses the ``Add``'s output as its z. A ``Gemm``/``MatMul`` of two run-time tensors is not a layer (it
keeps its gradient).

Composites (Zennit's ``composites.py``; ``layer_map_base``: Pass on activations, Norm on sums and average pools,
Pass on BatchNorm):

* ``epsilon-plus``: ZPlus on convolutions, Epsilon on fully connected layers (``EpsilonPlus``);
* ``epsilon-gamma-box``: ZBox on the first convolution (bounds ``low``/``high``), Gamma(γ) on the others, Epsilon on
  fully connected layers (``EpsilonGammaBox``);
* ``epsilon-alpha2-beta1``: AlphaBeta(2, 1) on convolutions, Epsilon on fully connected layers
  (``EpsilonAlpha2Beta1``).

Zennit's canonizer ``SequentialMergeBatchNorm`` is :func:`onnxfix.autodiff.canonize.fold_batchnorm`, run on the
graph before the build (methods/lrp.py). :func:`lrp_mode` files a composite with its parameters as a mode of the
engine and returns the mode's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxfix.autodiff.emitter import Builder
from onnxfix.autodiff.registry import MODE_TABLES, VJP_RULES, Rule, register_mode
from onnxfix.autodiff.ruletools import in_, mask, none
from onnxfix.graph import Node

#: The composites, as Zennit names them (``EpsilonPlus``, ``EpsilonGammaBox``, ``EpsilonAlpha2Beta1``).
COMPOSITES = ("epsilon-plus", "epsilon-gamma-box", "epsilon-alpha2-beta1")
CONV_OPS = ("Conv", "ConvTranspose")
FC_OPS = ("Gemm", "MatMul")
#: Element-wise activations: Zennit's ``types.Activation`` modules get the Pass rule.
PASS_OPS = ("Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
            "Tanh", "Softplus", "Softsign", "Gelu", "ThresholdedRelu", "Mish", "Shrink")
NORM_OPS = ("Add", "Sum", "AveragePool", "GlobalAveragePool")


@dataclass(frozen=True)
class LRPParams:
    """One composite with its parameters (Zennit's composite arguments)."""

    composite: str = "epsilon-plus"
    epsilon: float = 1e-6  # the Epsilon rule's ε (fully connected layers)
    stabilizer: float = 1e-6  # every other rule's stabiliser
    gamma: float = 0.25
    low: tuple[float, ...] | None = None  # ZBox bounds: one value, or one per channel of the first conv's input
    high: tuple[float, ...] | None = None

    @property
    def mode(self) -> str:
        return (f"lrp:{self.composite}:eps={self.epsilon!r}:stab={self.stabilizer!r}:gamma={self.gamma!r}"
                f":low={self.low!r}:high={self.high!r}")


def lrp_mode(params: LRPParams) -> str:
    """File the override table of ``params`` (once) and return its mode name for ``GradientProgram(mode=...)``."""
    if params.composite not in COMPOSITES:
        raise ValueError(f"unknown LRP composite {params.composite!r}; choose one of {', '.join(COMPOSITES)}")
    if params.composite == "epsilon-gamma-box" and (params.low is None or params.high is None):
        raise ValueError("the epsilon-gamma-box composite needs the input bounds low and high")
    name = params.mode
    if name not in MODE_TABLES:
        register_mode(name, composite_table(params))
    return name


def composite_table(p: LRPParams) -> dict[str, Rule]:
    """``{op_type: rule}`` of composite ``p``."""
    table: dict[str, Rule] = {op: pass_rule for op in PASS_OPS}
    table["BatchNormalization"] = pass_rule
    norm = _norm_rule(p.stabilizer)
    for op in NORM_OPS:
        table[op] = norm
    eps = _layer_rule(lambda b, node, L, R: epsilon(b, L, R, p.epsilon))
    for op in FC_OPS:
        table[op] = eps
    if p.composite == "epsilon-plus":
        conv = _layer_rule(lambda b, node, L, R: zplus(b, L, R, p.stabilizer))
    elif p.composite == "epsilon-alpha2-beta1":
        conv = _layer_rule(lambda b, node, L, R: alpha_beta(b, L, R, 2.0, 1.0, p.stabilizer))
    else:
        def conv_gamma_box(b, node, L, R):
            if node.name == first_conv(b):
                return zbox(b, L, R, p.low, p.high, p.stabilizer)
            return gamma(b, L, R, p.gamma, p.stabilizer)

        conv = _layer_rule(conv_gamma_box)
    for op in CONV_OPS:
        table[op] = conv
    return table


# ---------------------------------------------------------------------------------------------------------------
# the layer a rule works on


@dataclass
class Layer:
    """A Conv/ConvTranspose/Gemm/MatMul with a constant weight, seen as one LRP layer."""

    node: Node
    x: str  # the data input
    w: np.ndarray  # the weight (constant)
    bias: np.ndarray | None  # the node's own bias input (Conv B, Gemm C), None when absent
    z: str  # the layer's output: the node's, or the output of the Add of its separate bias
    extra: np.ndarray | None = None  # a bias added by a separate Add (MatMul + Add)


def _weight_layer(b: Builder, node: Node) -> bool:
    """Whether ``node`` is a layer: data input 0, constant weight input 1 (and a constant bias if any)."""
    if node.op_type not in CONV_OPS + FC_OPS or len(node.inputs) < 2:
        return False
    x, w = node.inputs[0], node.inputs[1]
    if b.is_const(x) or not b.is_const(w):
        return False
    bias = in_(node, 2)
    return not bias or b.is_const(bias)


def bias_add(b: Builder, node: Node) -> tuple[Node, str] | None:
    """(the Add, its constant input) when the output of layer ``node`` (without a bias of its own) goes only into
    an Add of a constant: the exporter's separate bias of a ``MatMul`` (or a ``Conv``)."""
    if not _weight_layer(b, node) or in_(node, 2):
        return None
    readers = b.graph.consumers(node.outputs[0])
    if len(readers) != 1 or readers[0].op_type != "Add" or len(readers[0].inputs) != 2:
        return None
    add = readers[0]
    other = [i for i in add.inputs if i != node.outputs[0]]
    if len(other) != 1 or not b.is_const(other[0]):
        return None
    return add, other[0]


def _layer(b: Builder, node: Node) -> Layer | None:
    if not _weight_layer(b, node):
        return None
    bias = in_(node, 2)
    bv = np.asarray(b.value(bias)) if bias else None
    if node.op_type == "Gemm" and bv is not None and float(node.attrs.get("beta", 1.0)) != 1.0:
        bv = bv * np.asarray(node.attrs.get("beta", 1.0), bv.dtype)
    fused = bias_add(b, node)
    if fused is not None:
        add, c = fused
        return Layer(node, node.inputs[0], np.asarray(b.value(node.inputs[1])), None, add.outputs[0],
                     np.asarray(b.value(c)))
    return Layer(node, node.inputs[0], np.asarray(b.value(node.inputs[1])), bv, node.outputs[0])


def _layer_rule(fn: Callable) -> Rule:
    """A rule that applies ``fn(b, node, layer, R)`` to layers and the gradient (the rule below) to the rest."""

    def rule(b: Builder, node: Node, gy):
        L = _layer(b, node)
        if L is None:
            return b.defer(node, gy)
        out = none(node)
        if b.needs(L.x):
            out[0] = fn(b, node, L, gy[0])
        return out

    return rule


# ---------------------------------------------------------------------------------------------------------------
# emitting modified forwards and their gradients


class _WithConsts:
    """The builder, plus constants it does not know yet (modified weights): what a base VJP rule sees when it is
    asked for the input gradient of a layer with another weight."""

    def __init__(self, b: Builder, consts: dict[str, np.ndarray]):
        self._b = b
        self._consts = consts

    def __getattr__(self, name):
        return getattr(self._b, name)

    def is_const(self, name: str) -> bool:
        return name in self._consts or self._b.is_const(name)

    def value(self, name: str) -> np.ndarray:
        return self._consts[name] if name in self._consts else self._b.value(name)

    def sym(self, name: str):
        return tuple(int(d) for d in self._consts[name].shape) if name in self._consts else self._b.sym(name)

    def shape(self, name: str):
        return self.sym(name) if name in self._consts else self._b.shape(name)

    def static_shape(self, name: str):
        return self.sym(name) if name in self._consts else self._b.static_shape(name)

    def rank(self, name: str):
        return self._consts[name].ndim if name in self._consts else self._b.rank(name)


def _attrs(b: Builder, node: Node) -> dict:
    """The ONNX attributes of the forward node as written in the model (for re-emitting it)."""
    from onnx import helper

    cache = b.__dict__.setdefault("_lrp_protos", None)
    if cache is None:
        cache = b.__dict__["_lrp_protos"] = {pn.output[0]: pn for pn in b.graph.model.graph.node if pn.output}
    pn = cache.get(node.outputs[0])
    if pn is None:  # pragma: no cover - every node of the graph is in its model
        raise b.unsupported(node, "forward node not found in the model")
    return {a.name: helper.get_attribute_value(a) for a in pn.attribute}


def _wconst(b: Builder, L: Layer, w: np.ndarray) -> str:
    return b.const(np.ascontiguousarray(w, dtype=L.w.dtype), dtype=L.w.dtype)


def forward(b: Builder, L: Layer, x: str, w: np.ndarray, bias: np.ndarray | None, extra: np.ndarray | None) -> str:
    """The layer run on ``x`` with weight ``w`` and biases ``bias`` (the node's own) / ``extra`` (a separate Add)."""
    node = L.node
    ins = [x, _wconst(b, L, w)]
    attrs = _attrs(b, node)
    if bias is not None:
        ins.append(b.const(np.ascontiguousarray(bias), dtype=bias.dtype))
        if node.op_type == "Gemm":
            attrs["beta"] = 1.0  # the bias above has beta folded in
    y = b.op(node.op_type, ins, hint=f"lrp_{node.op_type.lower()}", **attrs)
    if extra is not None:
        y = b.op("Add", [y, b.const(np.ascontiguousarray(extra), dtype=extra.dtype)])
    return y


def grad(b: Builder, L: Layer, w: np.ndarray, s: str) -> str:
    """∇_x of ⟨layer(x; w), s⟩: the engine's VJP rule of the node with weight ``w`` in place of its own."""
    node = L.node
    name = _wconst(b, L, w)
    twin = Node(name=node.name, op_type=node.op_type, inputs=(node.inputs[0], name), outputs=node.outputs[:1],
                attrs=node.attrs, domain=node.domain)
    out = VJP_RULES[node.op_type](_WithConsts(b, {name: np.asarray(w, L.w.dtype)}), twin, [s])
    if not out or out[0] is None:  # pragma: no cover - the data input always needs its gradient here
        raise b.unsupported(node, "no input gradient for the modified layer")
    return out[0]


def stabilise(b: Builder, z: str, eps: float) -> str:
    """Zennit's ``stabilize``: z + ε where z ≥ 0, z − ε where z < 0."""
    e = b.scalar(float(eps), like=z)
    return b.op("Where", [b.op("Less", [z, b.scalar(0.0, like=z)]), b.op("Sub", [z, e]), b.op("Add", [z, e])],
                hint="stab")


def _div(b: Builder, R: str, z: str, eps: float) -> str:
    return b.op("Div", [R, stabilise(b, z, eps)], hint="lrp_s")


def _pos(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.maximum(a, 0).astype(a.dtype)


def _neg(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.minimum(a, 0).astype(a.dtype)


def _split(b: Builder, L: Layer) -> tuple[str, str | None]:
    """(x⁺, x⁻); x⁻ is None where x ≥ 0 is known (its terms are exactly zero)."""
    xp = b.op("Relu", [L.x], hint="xpos")
    if nonneg(b, L.x):
        return xp, None
    return xp, b.op("Min", [L.x, b.scalar(0.0, like=L.x)], hint="xneg")


def _sum(b: Builder, terms: list[str | None]) -> str:
    t = [v for v in terms if v is not None]
    out = t[0]
    for v in t[1:]:
        out = b.op("Add", [out, v])
    return out


# ---------------------------------------------------------------------------------------------------------------
# the rules on layers (Zennit's rules.py)


def epsilon(b: Builder, L: Layer, R: str, eps: float) -> str:
    """LRP-ε (Bach et al. 2015, eq. 58; Montavon et al. 2019, §10.2.2): R_x = x · ∇(R / stab_ε(z))."""
    s = _div(b, R, L.z, eps)
    return b.mul(L.x, grad(b, L, L.w, s))


def zplus(b: Builder, L: Layer, R: str, stab: float) -> str:
    """LRP-z⁺ (Montavon et al. 2017, Deep Taylor Decomposition §4; Zennit's ``ZPlus``: α1β0 with negative inputs)."""
    xp, xn = _split(b, L)
    wp, wn = _pos(L.w), _neg(L.w)
    z = forward(b, L, xp, wp, _pos(L.bias), _pos(L.extra))
    if xn is not None:
        z = b.op("Add", [z, forward(b, L, xn, wn, None, None)])
    s = _div(b, R, z, stab)
    terms = [b.mul(xp, grad(b, L, wp, s))]
    if xn is not None:
        terms.append(b.mul(xn, grad(b, L, wn, s)))
    return _sum(b, terms)


def alpha_beta(b: Builder, L: Layer, R: str, alpha: float, beta: float, stab: float) -> str:
    """LRP-αβ (Bach et al. 2015, eq. 60; Montavon et al. 2019, §10.2.3), Zennit's ``AlphaBeta`` (biases: b⁺ in the
    positive, b⁻ in the negative part)."""
    xp, xn = _split(b, L)
    wp, wn = _pos(L.w), _neg(L.w)
    zp = forward(b, L, xp, wp, _pos(L.bias), _pos(L.extra))
    zn = forward(b, L, xp, wn, _neg(L.bias), _neg(L.extra))
    if xn is not None:
        zp = b.op("Add", [zp, forward(b, L, xn, wn, None, None)])
        zn = b.op("Add", [zn, forward(b, L, xn, wp, None, None)])
    sp, sn = _div(b, R, zp, stab), _div(b, R, zn, stab)
    pos = [b.mul(xp, grad(b, L, wp, sp))] + ([b.mul(xn, grad(b, L, wn, sp))] if xn is not None else [])
    neg = [b.mul(xp, grad(b, L, wn, sn))] + ([b.mul(xn, grad(b, L, wp, sn))] if xn is not None else [])
    a = b.mul(_sum(b, pos), b.scalar(alpha, like=L.x))
    return b.op("Sub", [a, b.mul(_sum(b, neg), b.scalar(beta, like=L.x))])


def gamma(b: Builder, L: Layer, R: str, g: float, stab: float) -> str:
    """LRP-γ (Montavon et al. 2019, §10.2.3), Zennit's generalised ``Gamma`` (Andéol et al. 2021) for inputs of
    both signs."""
    xp, xn = _split(b, L)

    def mod(a, part):
        return None if a is None else (a + np.asarray(g, a.dtype) * part(a)).astype(a.dtype)

    w_p, w_n = mod(L.w, _pos), mod(L.w, _neg)
    zp = forward(b, L, xp, w_p, mod(L.bias, _pos), mod(L.extra, _pos))
    zn = forward(b, L, xp, w_n, mod(L.bias, _neg), mod(L.extra, _neg))
    if xn is not None:
        zp = b.op("Add", [zp, forward(b, L, xn, w_n, None, None)])
        zn = b.op("Add", [zn, forward(b, L, xn, w_p, None, None)])
    zero = b.scalar(0.0, like=L.z)
    sp = b.mul(mask(b, b.op("Greater", [L.z, zero]), like=L.z), _div(b, R, zp, stab))
    sn = b.mul(mask(b, b.op("Less", [L.z, zero]), like=L.z), _div(b, R, zn, stab))
    terms = [b.mul(xp, b.op("Add", [grad(b, L, w_p, sp), grad(b, L, w_n, sn)]))]
    if xn is not None:
        terms.append(b.mul(xn, b.op("Add", [grad(b, L, w_n, sp), grad(b, L, w_p, sn)])))
    return _sum(b, terms)


def zbox(b: Builder, L: Layer, R: str, low, high, stab: float) -> str:
    """LRP-z^B (Montavon et al. 2017, Deep Taylor Decomposition §4.3; Zennit's ``ZBox``) for inputs bounded by
    ``low`` ≤ x ≤ ``high`` (one value, or one per channel)."""
    lo, hi = _bound(b, L, low), _bound(b, L, high)
    wp, wn = _pos(L.w), _neg(L.w)
    z = b.op("Sub", [L.z, b.op("Add", [forward(b, L, lo, wp, _pos(L.bias), _pos(L.extra)),
                                        forward(b, L, hi, wn, _neg(L.bias), _neg(L.extra))])])
    s = _div(b, R, z, stab)
    neg = b.op("Add", [b.mul(lo, grad(b, L, wp, s)), b.mul(hi, grad(b, L, wn, s))])
    return b.op("Sub", [b.mul(L.x, grad(b, L, L.w, s)), neg])


def _bound(b: Builder, L: Layer, v) -> str:
    """A bound expanded to the shape of the layer's input (per channel on axis 1 when there are several)."""
    arr = np.asarray(v, dtype=b.float_dtype(L.x)).reshape(-1)
    r = b.rank(L.x) or 4
    if arr.size > 1:
        arr = arr.reshape([1, arr.size] + [1] * (r - 2))
    else:
        arr = arr.reshape([])
    return b.op("Expand", [b.const(arr, like=L.x), b.shape_tensor(L.x)], hint="bound")


# ---------------------------------------------------------------------------------------------------------------
# the rules on other ops


def pass_rule(b: Builder, node: Node, gy):
    """Zennit's ``Pass``: the relevance goes through unchanged (activations, an unfolded BatchNormalization)."""
    out = none(node)
    out[0] = gy[0]
    return out


def _norm_rule(stab: float) -> Rule:
    def norm_rule(b: Builder, node: Node, gy):
        """Zennit's ``Norm`` (relevance split in proportion to the contributions, R_i = x_i·∇_i(R/stab z)); the Add
        of a layer's separate bias passes the relevance to the layer; an Add of another constant keeps its
        gradient."""
        data = [i for i in node.inputs if i and not b.is_const(i)]
        if node.op_type in ("Add", "Sum") and len(data) < 2:
            if node.op_type == "Add" and len(data) == 1:
                p = b.graph.producer(data[0])
                hit = bias_add(b, p) if p is not None else None
                if hit is not None and hit[0].name == node.name:
                    out = none(node)
                    out[node.inputs.index(data[0])] = gy[0]
                    return out
            return b.defer(node, gy)
        s = _div(b, gy[0], node.outputs[0], stab)
        g = b.defer(node, [s])
        return [None if gi is None else b.mul(xi, gi) for xi, gi in zip(node.inputs, g, strict=False)]

    return norm_rule


# ---------------------------------------------------------------------------------------------------------------
# graph facts


def first_conv(b: Builder) -> str | None:
    """The name of the first Conv/ConvTranspose (topological order) on the data path: ZBox's layer."""
    if "_lrp_first" not in b.__dict__:
        b.__dict__["_lrp_first"] = next((n.name for n in b.graph.nodes if n.op_type in CONV_OPS and n.inputs
                                         and n.inputs[0] in b.reach), None)
    return b.__dict__["_lrp_first"]


_NONNEG_SOURCES = ("Relu", "Sigmoid", "HardSigmoid", "Softmax", "Exp", "Abs")
_NONNEG_KEEPERS = ("MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool", "Reshape", "Flatten",
                   "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Resize", "Slice", "Gather")


def nonneg(b: Builder, name: str) -> bool:
    """Whether tensor ``name`` is ≥ 0 by construction (a ReLU/ReLU6 output, pooled or reshaped, …)."""
    memo = b.__dict__.setdefault("_lrp_nonneg", {})
    if name in memo:
        return memo[name]
    memo[name] = False  # cycles are impossible, but be safe
    res = False
    if b.is_const(name):
        res = bool((np.asarray(b.value(name)) >= 0).all())
    else:
        p = b.graph.producer(name)
        if p is None:
            res = False
        elif p.op_type in _NONNEG_SOURCES:
            res = True
        elif p.op_type == "Clip":
            lo_name = in_(p, 1)
            lo = b.value(lo_name) if lo_name and b.is_const(lo_name) else p.attrs.get("min")
            res = lo is not None and (not lo_name or b.is_const(lo_name)) and float(np.asarray(lo)) >= 0
        elif p.op_type in _NONNEG_KEEPERS:
            res = nonneg(b, p.inputs[0])
        elif p.op_type == "Pad":
            res = nonneg(b, p.inputs[0]) and float(p.attrs.get("value", 0.0) or 0.0) >= 0 and (
                p.attrs.get("mode", "constant") in ("constant", b"constant"))
        elif p.op_type in ("Concat", "Max", "Mul"):
            res = all(nonneg(b, i) for i in p.inputs if i)
    memo[name] = res
    return res


__all__ = ["COMPOSITES", "LRPParams", "alpha_beta", "bias_add", "composite_table", "epsilon", "first_conv", "gamma",
           "lrp_mode", "nonneg", "pass_rule", "zbox", "zplus"]
