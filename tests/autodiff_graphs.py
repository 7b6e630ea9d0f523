"""Small random ONNX graphs for the autodiff tests, built with onnx.helper, and the finite-difference harness.

A :class:`Case` is one model with its feeds, the tensor ``of`` to differentiate, the ``wrt`` inputs, the
finite-difference step and the tolerance. ``CASES`` lists them by name; each VJP rule appears in at least one.
Cases run in float64 where ONNX Runtime's CPU provider has a double kernel for every op of the case; the ops it
lacks in double (Conv, ConvTranspose, AveragePool, GlobalAveragePool, HardSigmoid, HardSwish) are checked in
float32 instead. Every op whose float32 case is *linear* in the input (Conv, pools) uses a step of 1, for which a
central difference is exact up to float32 rounding (~1e-6 relative), so the tolerance stays 1e-4; HardSigmoid
and HardSwish are piecewise quadratic, checked with inputs kept 0.2 away from their kinks and a step of 0.05
(central differences are exact on quadratics); float32 rounding of f(x ± h) leaves ~1e-6, tolerance 1e-4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

F64, F32 = np.float64, np.float32
TOL64 = 1e-4  # relative error bound for float64 cases (observed: ~1e-9)
TOL32_LINEAR = 1e-4  # float32, linear in the input, step 1 (observed: ~1e-7)
TOL32_SMOOTH = 1e-4  # float32, piecewise quadratic, step 0.05 (observed: ~2e-6)


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    of: str
    wrt: list[str]
    h: float = 1e-6
    tol: float = TOL64
    conv_modes: tuple[str, ...] = ("auto",)
    ops: set[str] = field(default_factory=set)


def make_model(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray] | None = None,
               outputs: list[str] | None = None, opset: int = 17, domains: tuple[str, ...] = ()) -> onnx.ModelProto:
    consts = consts or {}
    for i, n in enumerate(nodes):
        if not n.name:
            n.name = f"{n.op_type.lower()}_{i}"
    outputs = outputs or [nodes[-1].output[0]]
    g = helper.make_graph(
        nodes, "autodiff_test",
        inputs=[helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
                for k, v in inputs.items()],
        outputs=[helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1)
                                                                               for d in domains])
    m.ir_version = 8 if opset <= 17 else (9 if opset <= 20 else 10)
    m = onnx.shape_inference.infer_shapes(m)
    return m


def session(model: onnx.ModelProto, outputs: list[str] | None = None) -> ort.InferenceSession:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if outputs is not None:
        del m.graph.output[:]
        types = {vi.name: vi.type.tensor_type.elem_type for vi in
                 list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
        for o in outputs:
            m.graph.output.append(helper.make_tensor_value_info(o, types.get(o) or 1, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def fd_gradient(model: onnx.ModelProto, feeds: dict[str, np.ndarray], of: str, wrt: list[str], seed: np.ndarray,
                h: float, coords: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Central differences of f = Σ seed·of (computed in float64) for every coordinate of each ``wrt`` input
    (or only ``coords[name]``, flat indices; the others are NaN)."""
    sess = session(model, [of])
    seed64 = seed.astype(np.float64)

    def f(fd):
        return float(np.sum(seed64 * sess.run([of], fd)[0].astype(np.float64)))

    out = {}
    for name in wrt:
        x = feeds[name]
        grad = np.full(x.size, np.nan)
        idx = range(x.size) if coords is None or name not in coords else coords[name]
        for i in idx:
            xp = x.copy().reshape(-1)
            xm = x.copy().reshape(-1)
            xp[i] += h
            xm[i] -= h
            grad[i] = (f({**feeds, name: xp.reshape(x.shape)}) - f({**feeds, name: xm.reshape(x.shape)})) / (2 * h)
        out[name] = grad.reshape(x.shape)
    return out


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a float32 model computing in float64 (initializers, value infos, Constant values, Cast targets)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    f32, f64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE
    for init in g.initializer:
        if init.data_type == f32:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == f32:
            vi.type.tensor_type.elem_type = f64
    for n in g.node:
        for a in n.attribute:
            if a.name == "to" and a.i == f32:
                a.i = f64
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == f32:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    return m


class Reference64:
    """f(x) = Σ seed·of evaluated in float64 by onnx's reference evaluator (ORT has no double Conv), for finite
    differences on float32 models: a step small enough never to cross a ReLU/MaxPool kink (1e-6 in norm) is
    then far above the rounding floor."""

    def __init__(self, model: onnx.ModelProto, of: str, seed: np.ndarray):
        from onnx.reference import ReferenceEvaluator

        self.ev = ReferenceEvaluator(to_float64(model))
        self.of, self.seed = of, seed.astype(np.float64)

    def __call__(self, feeds: dict[str, np.ndarray]) -> float:
        feeds = {k: np.asarray(v, np.float64) for k, v in feeds.items()}
        return float(np.sum(self.seed * self.ev.run([self.of], feeds)[0]))

    def check(self, feeds: dict[str, np.ndarray], wrt: str, grad: np.ndarray, rng: np.random.Generator,
              directions: int = 2, coords: int = 3, step: float = 1e-6) -> tuple[float, float]:
        """(worst directional error, worst coordinate error): central differences along random Gaussian
        directions v (unnormalised, so |fd − ⟨g, v⟩| / ‖g‖ estimates ‖error‖ / ‖g‖) and at coordinates drawn
        from the 300 largest |g|, relative to |g_i|."""
        x = feeds[wrt].astype(np.float64)
        g = grad.astype(np.float64)
        n = x.size
        d_err = 0.0
        for _ in range(directions):
            v = rng.standard_normal(x.shape)
            h = step / np.sqrt(n)
            fd = (self({**feeds, wrt: x + h * v}) - self({**feeds, wrt: x - h * v})) / (2 * h)
            d_err = max(d_err, abs(fd - float(np.sum(g * v))) / np.linalg.norm(g))
        c_err = 0.0
        flat = g.reshape(-1)
        for i in rng.choice(np.argsort(np.abs(flat))[-300:], coords, replace=False):
            e = np.zeros(n)
            e[i] = step
            e = e.reshape(x.shape)
            fd = (self({**feeds, wrt: x + e}) - self({**feeds, wrt: x - e})) / (2 * step)
            c_err = max(c_err, abs(fd - flat[i]) / abs(flat[i]))
        return d_err, c_err


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / ‖b‖ (with a floor so that an all-zero reference needs an all-zero answer)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


# ---------------------------------------------------------------------------------------------------------------
# The catalogue

CASES: dict[str, Callable[[int], Case]] = {}


def case(name: str):
    def deco(fn):
        CASES[name] = fn
        return fn

    return deco


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def N(op: str, ins: list[str], outs: list[str] | str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, ins, [outs] if isinstance(outs, str) else outs, **attrs)


def simple(name: str, nodes, inputs, consts=None, of=None, wrt=None, h=1e-6, tol=TOL64, opset=17,
           conv_modes=("auto",)) -> Case:
    m = make_model(nodes, inputs, consts, [of] if of else None, opset=opset)
    of = of or nodes[-1].output[0]
    return Case(name, m, dict(inputs), of, list(wrt or inputs), h, tol, conv_modes,
                {n.op_type for n in nodes})


# -- linear algebra ---------------------------------------------------------------------------------------------

@case("gemm")
def _gemm(seed):
    r = _rng(seed)
    nodes, inputs = [], {}
    outs = []
    k = 0
    for ta in (0, 1):
        for tb in (0, 1):
            for alpha, beta, cshape in ((1.0, 1.0, (5,)), (0.7, -1.3, (3, 5)), (2.0, 0.5, (1, 5)), (1.0, 2.0, ())):
                a = r.standard_normal((4, 3) if ta else (3, 4))
                b = r.standard_normal((5, 4) if tb else (4, 5))
                c = r.standard_normal(cshape)
                inputs.update({f"a{k}": a, f"b{k}": b, f"c{k}": c})
                nodes.append(N("Gemm", [f"a{k}", f"b{k}", f"c{k}"], f"y{k}", alpha=alpha, beta=beta, transA=ta,
                               transB=tb))
                outs.append(f"y{k}")
                k += 1
    nodes.append(N("Sum", outs, "out"))
    return simple("gemm", nodes, inputs)


@case("gemm_no_c")
def _gemm_no_c(seed):
    r = _rng(seed)
    return simple("gemm_no_c", [N("Gemm", ["a", "w"], "y", transB=1)], {"a": r.standard_normal((2, 6))},
                  {"w": r.standard_normal((3, 6))})


@case("matmul")
def _matmul(seed):
    r = _rng(seed)
    shapes = [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 5)), ((2, 3, 4), (4,)), ((4,), (4,)),
              ((2, 1, 3, 4), (3, 4, 2)), ((3, 4), (2, 4, 5)), ((1, 3, 4), (2, 4, 3))]
    nodes, inputs, outs = [], {}, []
    for k, (sa, sb) in enumerate(shapes):
        inputs[f"a{k}"], inputs[f"b{k}"] = r.standard_normal(sa), r.standard_normal(sb)
        nodes.append(N("MatMul", [f"a{k}", f"b{k}"], f"m{k}"))
        nodes.append(N("ReduceSum", [f"m{k}"], f"s{k}", keepdims=0))
        outs.append(f"s{k}")
    nodes.append(N("Sum", outs, "out"))
    return simple("matmul", nodes, inputs)


@case("matmul_const_weight")
def _matmul_const(seed):
    r = _rng(seed)
    return simple("matmul_const_weight", [N("MatMul", ["x", "w"], "y"), N("Add", ["y", "b"], "z")],
                  {"x": r.standard_normal((2, 3, 4))}, {"w": r.standard_normal((4, 5)), "b": r.standard_normal(5)})


# -- convolution (float32: ORT has no double Conv) ---------------------------------------------------------------

CONV_CASES = {
    "conv_basic": dict(x=(1, 3, 7, 7), w=(4, 3, 3, 3), pads=[1, 1, 1, 1]),
    "conv_stride2": dict(x=(2, 3, 9, 8), w=(4, 3, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1]),
    "conv_stride2_nopad_odd": dict(x=(1, 2, 10, 9), w=(3, 2, 3, 3), strides=[2, 2]),
    "conv_stride3_k2": dict(x=(1, 2, 11, 10), w=(3, 2, 2, 2), strides=[3, 3], pads=[0, 1, 1, 0]),
    "conv_dilated": dict(x=(1, 2, 9, 9), w=(3, 2, 3, 3), dilations=[2, 2], pads=[2, 2, 2, 2]),
    "conv_dilated_strided": dict(x=(1, 2, 12, 11), w=(3, 2, 3, 2), dilations=[2, 3], strides=[2, 1],
                                 pads=[1, 0, 2, 1]),
    "conv_grouped": dict(x=(1, 4, 6, 6), w=(6, 2, 3, 3), group=2, pads=[1, 1, 1, 1]),
    "conv_depthwise": dict(x=(1, 4, 7, 7), w=(4, 1, 3, 3), group=4, pads=[1, 1, 1, 1]),
    "conv_depthwise_s2": dict(x=(1, 4, 9, 9), w=(4, 1, 5, 5), group=4, strides=[2, 2], pads=[2, 2, 2, 2]),
    "conv_depthwise_s2_even": dict(x=(2, 3, 8, 8), w=(3, 1, 3, 3), group=3, strides=[2, 2], pads=[0, 0, 1, 1]),
    "conv_depthwise_mult2": dict(x=(1, 3, 6, 6), w=(6, 1, 3, 3), group=3, strides=[2, 2], pads=[1, 1, 1, 1]),
    "conv_asym_pads": dict(x=(1, 2, 6, 7), w=(3, 2, 3, 3), pads=[0, 2, 1, 0]),
    "conv_big_pads": dict(x=(1, 2, 5, 5), w=(3, 2, 3, 3), pads=[3, 3, 3, 3]),
    "conv_same_upper_s2": dict(x=(1, 2, 9, 8), w=(3, 2, 3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
    "conv_same_lower_s2": dict(x=(1, 2, 9, 8), w=(3, 2, 4, 4), strides=[2, 2], auto_pad="SAME_LOWER"),
    "conv_valid_s2": dict(x=(1, 2, 9, 8), w=(3, 2, 3, 3), strides=[2, 2], auto_pad="VALID"),
    "conv_1d": dict(x=(2, 3, 11), w=(4, 3, 3), strides=[2], pads=[1, 2]),
    "conv_3d": dict(x=(1, 2, 5, 6, 5), w=(2, 2, 3, 3, 3), pads=[1, 1, 1, 1, 1, 1]),
    "conv_1x1_s2": dict(x=(1, 4, 7, 7), w=(5, 4, 1, 1), strides=[2, 2]),
    "conv_pointwise": dict(x=(2, 5, 4, 3), w=(6, 5, 1, 1)),
    "conv_pointwise_1d": dict(x=(2, 5, 7), w=(3, 5, 1)),
}


def conv_case(name: str, seed: int) -> Case:
    spec = dict(CONV_CASES[name])
    r = _rng(seed)
    x = r.standard_normal(spec.pop("x")).astype(F32)
    w = r.standard_normal(spec.pop("w")).astype(F32)
    b = r.standard_normal(w.shape[0]).astype(F32)
    return simple(name, [N("Conv", ["x", "w", "b"], "y", **spec)], {"x": x}, {"w": w, "b": b}, h=1.0,
                  tol=TOL32_LINEAR, conv_modes=("auto", "conv", "transpose"))


for _name in CONV_CASES:
    CASES[_name] = (lambda n: lambda seed: conv_case(n, seed))(_name)


@case("conv_bias_input")
def _conv_bias_input(seed):
    r = _rng(seed)
    return simple("conv_bias_input", [N("Conv", ["x", "w", "bias"], "y", pads=[1, 1], strides=[2])],
                  {"x": r.standard_normal((1, 2, 9)).astype(F32), "bias": r.standard_normal(3).astype(F32)},
                  {"w": r.standard_normal((3, 2, 3)).astype(F32)}, h=1.0, tol=TOL32_LINEAR)


# -- pooling --------------------------------------------------------------------------------------------------------

MAXPOOL_CASES = {
    "maxpool_k2s2": dict(x=(1, 2, 6, 6), kernel_shape=[2, 2], strides=[2, 2]),
    "maxpool_k3s2p1": dict(x=(2, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "maxpool_ceil": dict(x=(1, 2, 7, 8), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "maxpool_dilated": dict(x=(1, 2, 8, 8), kernel_shape=[2, 2], strides=[1, 1], dilations=[2, 2]),
    "maxpool_same_upper": dict(x=(1, 2, 7, 6), kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    "maxpool_1d": dict(x=(2, 3, 9), kernel_shape=[3], strides=[2], pads=[1, 0]),
}


def maxpool_case(name: str, seed: int) -> Case:
    spec = dict(MAXPOOL_CASES[name])
    r = _rng(seed)
    x = r.standard_normal(spec.pop("x"))
    return simple(name, [N("MaxPool", ["x"], "y", **spec)], {"x": x})


for _name in MAXPOOL_CASES:
    CASES[_name] = (lambda n: lambda seed: maxpool_case(n, seed))(_name)


@case("maxpool_with_indices")
def _maxpool_idx(seed):
    r = _rng(seed)
    return simple("maxpool_with_indices", [N("MaxPool", ["x"], ["y", "idx"], kernel_shape=[3, 3], strides=[2, 2],
                                             pads=[1, 1, 1, 1])], {"x": r.standard_normal((1, 2, 7, 7))}, of="y")


AVGPOOL_CASES = {
    "avgpool_k2s2": dict(x=(1, 2, 6, 6), kernel_shape=[2, 2], strides=[2, 2]),
    "avgpool_pad_exclude": dict(x=(2, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "avgpool_pad_include": dict(x=(1, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                count_include_pad=1),
    "avgpool_ceil": dict(x=(1, 2, 8, 7), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "avgpool_ceil_pad_include": dict(x=(1, 2, 8, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1],
                                     ceil_mode=1, count_include_pad=1),
    "avgpool_ceil_pad_exclude": dict(x=(1, 2, 9, 9), kernel_shape=[3, 2], strides=[2, 3], pads=[1, 1, 0, 0],
                                     ceil_mode=1),
    "avgpool_s1_same": dict(x=(1, 2, 6, 5), kernel_shape=[3, 3], strides=[1, 1], auto_pad="SAME_UPPER"),
    "avgpool_1d": dict(x=(2, 2, 9), kernel_shape=[4], strides=[3], pads=[2, 1]),
}


def avgpool_case(name: str, seed: int) -> Case:
    spec = dict(AVGPOOL_CASES[name])
    r = _rng(seed)
    x = r.standard_normal(spec.pop("x")).astype(F32)
    return simple(name, [N("AveragePool", ["x"], "y", **spec)], {"x": x}, h=1.0, tol=TOL32_LINEAR)


for _name in AVGPOOL_CASES:
    CASES[_name] = (lambda n: lambda seed: avgpool_case(n, seed))(_name)


@case("global_average_pool")
def _gap(seed):
    r = _rng(seed)
    return simple("global_average_pool", [N("GlobalAveragePool", ["x"], "y")],
                  {"x": r.standard_normal((2, 3, 5, 4)).astype(F32)}, h=1.0, tol=TOL32_LINEAR)


@case("reduce")
def _reduce(seed):
    r = _rng(seed)
    x = r.standard_normal((2, 3, 4, 5))
    nodes = [
        N("ReduceMean", ["x"], "m1", axes=[2, 3], keepdims=1),
        N("ReduceMean", ["x"], "m2", axes=[-1], keepdims=0),
        N("ReduceMean", ["x"], "m3", keepdims=0),
        N("ReduceSum", ["x", "ax1"], "s1", keepdims=0),
        N("ReduceSum", ["x"], "s2", keepdims=1),
        N("ReduceSum", ["x", "empty"], "s3", keepdims=1, noop_with_empty_axes=1),
        N("ReduceSum", ["x", "ax2"], "s4", keepdims=1),
        N("Mul", ["m1", "m2b"], "p1"), N("ReduceSum", ["p1"], "q1", keepdims=0),
        N("Mul", ["m2", "m2w"], "p2"), N("ReduceSum", ["p2"], "q2", keepdims=0),
        N("Mul", ["s1", "s1w"], "p3"), N("ReduceSum", ["p3"], "q3", keepdims=0),
        N("Mul", ["s3", "s3w"], "p4"), N("ReduceSum", ["p4"], "q4", keepdims=0),
        N("Mul", ["s4", "s4w"], "p5"), N("ReduceSum", ["p5"], "q5", keepdims=0),
        N("Sum", ["q1", "q2", "m3", "q3", "s2", "q4", "q5"], "out"),
    ]
    consts = {"ax1": np.array([0, -2]), "empty": np.zeros(0, np.int64), "ax2": np.array([1]),
              "m2b": r.standard_normal((2, 3, 1, 1)), "m2w": r.standard_normal((2, 3, 4)),
              "s1w": r.standard_normal((3, 5)), "s3w": r.standard_normal((2, 3, 4, 5)),
              "s4w": r.standard_normal((2, 1, 4, 5))}
    return simple("reduce", nodes, {"x": x}, consts, of="out")


@case("reduce_mean_opset18")
def _reduce18(seed):
    r = _rng(seed)
    nodes = [N("ReduceMean", ["x", "ax"], "m", keepdims=0), N("Mul", ["m", "w"], "y")]
    return simple("reduce_mean_opset18", nodes, {"x": r.standard_normal((2, 3, 4))},
                  {"ax": np.array([-1, 0]), "w": r.standard_normal(3)}, opset=18)


# -- elementwise with broadcasting ---------------------------------------------------------------------------------

@case("broadcast_arith")
def _arith(seed):
    r = _rng(seed)
    inputs = {"a": r.standard_normal((2, 3, 4, 5)), "b": r.standard_normal((3, 1, 1)),
              "c": r.standard_normal((1, 3, 1, 5)), "d": r.uniform(1.0, 2.0, (4, 5)) * r.choice([-1, 1], (4, 5)),
              "e": r.standard_normal((2, 1, 4, 1)), "s": r.standard_normal(())}
    nodes = [N("Add", ["a", "b"], "t1"), N("Mul", ["t1", "c"], "t2"), N("Div", ["t2", "d"], "t3"),
             N("Sub", ["e", "t3"], "t4"), N("Mul", ["t4", "s"], "t5"), N("Div", ["b", "d"], "t6"),
             N("Add", ["t5", "t6"], "t7"), N("Sub", ["t7", "k"], "t8"), N("Mul", ["k", "t8"], "t9")]
    return simple("broadcast_arith", nodes, inputs, {"k": r.standard_normal((5,))})


@case("same_input_twice")
def _twice(seed):
    r = _rng(seed)
    nodes = [N("Mul", ["x", "x"], "sq"), N("Add", ["sq", "x"], "t"), N("Div", ["t", "x"], "y")]
    return simple("same_input_twice", nodes, {"x": r.uniform(0.5, 2.0, (3, 4))})


# -- index maps ------------------------------------------------------------------------------------------------------

@case("concat_split")
def _concat_split(seed):
    r = _rng(seed)
    inputs = {"a": r.standard_normal((2, 3, 4)), "b": r.standard_normal((2, 2, 4)), "c": r.standard_normal((2, 1, 4))}
    nodes = [N("Concat", ["a", "b", "k", "c"], "cat", axis=-2),
             N("Split", ["cat", "sizes"], ["s0", "s1", "s2"], axis=1),
             N("Mul", ["s0", "w0"], "p0"), N("Mul", ["s2", "w2"], "p2"),
             N("Concat", ["p2", "p0"], "cat2", axis=-2),
             N("Split", ["cat2"], ["u0", "u1"], axis=0), N("Add", ["u1", "u0"], "y")]
    consts = {"k": r.standard_normal((2, 2, 4)), "sizes": np.array([2, 3, 3]), "w0": r.standard_normal((2, 2, 4)),
              "w2": r.standard_normal((2, 3, 4))}
    return simple("concat_split", nodes, inputs, consts)


@case("slice")
def _slice(seed):
    r = _rng(seed)
    nodes = [N("Slice", ["x", "st1", "en1", "ax1"], "a"),
             N("Slice", ["x", "st2", "en2", "ax2", "sp2"], "b"),
             N("Slice", ["x", "st3", "en3", "ax3", "sp3"], "c"),
             N("Slice", ["x", "st4", "en4"], "d"),
             N("ReduceSum", ["a"], "ra", keepdims=0), N("Mul", ["b", "wb"], "pb"), N("ReduceSum", ["pb"], "rb",
                                                                                       keepdims=0),
             N("Mul", ["c", "wc"], "pc"), N("ReduceSum", ["pc"], "rc", keepdims=0),
             N("Mul", ["d", "wd"], "pd"), N("ReduceSum", ["pd"], "rd", keepdims=0),
             N("Sum", ["ra", "rb", "rc", "rd"], "y")]
    consts = {"st1": np.array([1, -3]), "en1": np.array([3, 100]), "ax1": np.array([1, -1]),
              "st2": np.array([0, 1]), "en2": np.array([100, 5]), "ax2": np.array([2, 3]), "sp2": np.array([2, 3]),
              "st3": np.array([-1, 4]), "en3": np.array([-100, 0]), "ax3": np.array([1, 2]), "sp3": np.array([-1, -2]),
              "st4": np.array([1, 0, 1]), "en4": np.array([2, 2, 4]),
              "wb": r.standard_normal((2, 4, 3, 2)), "wc": r.standard_normal((2, 4, 2, 6)),
              "wd": r.standard_normal((1, 2, 3, 6))}
    return simple("slice", nodes, {"x": r.standard_normal((2, 4, 5, 6))}, consts)


@case("pad")
def _pad(seed):
    r = _rng(seed)
    nodes = [N("Pad", ["x", "p1", "v"], "a"), N("Pad", ["x", "p2"], "b", mode="reflect"),
             N("Pad", ["x", "p3"], "c", mode="edge"), N("Pad", ["x", "p4"], "d"),
             N("Mul", ["a", "wa"], "qa"), N("Mul", ["b", "wb"], "qb"), N("Mul", ["c", "wc"], "qc"),
             N("Mul", ["d", "wd"], "qd"),
             *[N("ReduceSum", [q], f"r{q}", keepdims=0) for q in ("qa", "qb", "qc", "qd")],
             N("Sum", ["rqa", "rqb", "rqc", "rqd"], "y")]
    consts = {"p1": np.array([0, 1, 2, 0, 0, 0, 1, 3]), "v": np.array(0.5), "p2": np.array([0, 0, 2, 1, 0, 0, 1, 2]),
              "p3": np.array([0, 1, 1, 0, 0, 0, 2, 1]), "p4": np.array([0, 0, -1, 2, 0, 1, 1, -2])}
    x = r.standard_normal((2, 3, 4, 5))
    shapes = {"wa": (2, 4, 7, 8), "wb": (2, 3, 7, 8), "wc": (2, 4, 7, 6), "wd": (2, 4, 4, 5)}
    consts.update({k: r.standard_normal(s) for k, s in shapes.items()})
    return simple("pad", nodes, {"x": x}, consts)


@case("opset18_pad_axes_split")
def _pad18(seed):
    r = _rng(seed)
    nodes = [N("Pad", ["x", "p", "", "ax"], "a"), N("Split", ["a"], ["s0", "s1"], axis=1, num_outputs=2),
             N("Mul", ["s1", "w"], "y")]
    return simple("opset18_pad_axes_split", nodes, {"x": r.standard_normal((2, 3, 5))},
                  {"p": np.array([2, 1, -1, 0]), "ax": np.array([-1, 1]), "w": r.standard_normal((2, 2, 6))}, opset=18)


@case("gather")
def _gather(seed):
    r = _rng(seed)
    nodes = [N("Gather", ["x", "i1"], "a", axis=1), N("Gather", ["x", "i2"], "b", axis=-1),
             N("Gather", ["x", "i3"], "c", axis=0),
             N("Mul", ["a", "wa"], "qa"), N("Mul", ["b", "wb"], "qb"), N("Mul", ["c", "wc"], "qc"),
             *[N("ReduceSum", [q], f"r{q}", keepdims=0) for q in ("qa", "qb", "qc")],
             N("Sum", ["rqa", "rqb", "rqc"], "y")]
    consts = {"i1": np.array([[0, 2], [2, -1]]), "i2": np.array([3, 0, 3]), "i3": np.array(1),
              "wa": r.standard_normal((2, 2, 2, 4)), "wb": r.standard_normal((2, 3, 3)),
              "wc": r.standard_normal((3, 4))}
    return simple("gather", nodes, {"x": r.standard_normal((2, 3, 4))}, consts)


@case("reshapes")
def _reshapes(seed):
    r = _rng(seed)
    nodes = [N("Flatten", ["x"], "f", axis=2), N("Reshape", ["f", "shp"], "rs"), N("Transpose", ["rs"], "t",
                                                                                   perm=[2, 0, 1]),
             N("Unsqueeze", ["t", "ax0"], "u"), N("Squeeze", ["u", "ax0"], "s"), N("Transpose", ["s"], "t2"),
             N("Mul", ["t2", "w"], "y")]
    return simple("reshapes", nodes, {"x": r.standard_normal((2, 3, 4, 2))},
                  {"shp": np.array([3, -1, 4]), "ax0": np.array([-1]), "w": r.standard_normal((4, 3, 4))})


# -- activations -----------------------------------------------------------------------------------------------------

def _away_from(r, shape, kinks, margin, lo=-5.0, hi=5.0):
    x = r.uniform(lo, hi, shape)
    for k in kinks:
        near = np.abs(x - k) < margin
        x[near] = k + margin * np.sign(x[near] - k + 1e-12) * 1.5
    return x


@case("activations")
def _acts(seed):
    r = _rng(seed)
    x = _away_from(r, (2, 3, 4), [0.0, 6.0, -1.0, 2.0], 1e-3, -8, 8)
    nodes = [N("Relu", ["x"], "a1"), N("LeakyRelu", ["x"], "a2", alpha=0.1), N("PRelu", ["x", "slope"], "a3"),
             N("Clip", ["x", "zero", "six"], "a4"), N("Clip", ["x", "", "two"], "a5"),
             N("Clip", ["x", "m1"], "a6"), N("Sigmoid", ["x"], "a7"), N("Tanh", ["x"], "a8"),
             N("Softmax", ["x"], "a9", axis=1), N("LogSoftmax", ["x"], "a10", axis=-1),
             N("Identity", ["x"], "a11"), N("Dropout", ["x"], "a12"), N("Softmax", ["x"], "a13"),
             N("PRelu", ["x", "slope_in"], "a14")]
    ws = {f"w{i}": r.standard_normal((2, 3, 4)) for i in range(len(nodes))}
    prods = [N("Mul", [n.output[0], f"w{i}"], f"p{i}") for i, n in enumerate(nodes)]
    total = [N("Sum", [p.output[0] for p in prods], "y")]
    consts = {"slope": r.uniform(0.05, 0.5, (3, 1)), "zero": np.array(0.0), "six": np.array(6.0),
              "two": np.array(2.0), "m1": np.array(-1.0), **ws}
    inputs = {"x": x, "slope_in": r.uniform(0.05, 0.5, (4,))}
    return simple("activations", nodes + prods + total, inputs, consts, of="y")


@case("batchnorm")
def _bn(seed):
    r = _rng(seed)
    c = 3
    nodes = [N("BatchNormalization", ["x", "sc", "bi", "mu", "var"], "y", epsilon=1e-3)]
    return simple("batchnorm", nodes, {"x": r.standard_normal((2, c, 4, 3))},
                  {"sc": r.standard_normal(c), "bi": r.standard_normal(c), "mu": r.standard_normal(c),
                   "var": r.uniform(0.5, 2, c)})


@case("batchnorm_2d")
def _bn2(seed):
    r = _rng(seed)
    nodes = [N("BatchNormalization", ["x", "sc", "bi", "mu", "var"], "y")]
    return simple("batchnorm_2d", nodes, {"x": r.standard_normal((4, 5))},
                  {"sc": r.standard_normal(5), "bi": r.standard_normal(5), "mu": r.standard_normal(5),
                   "var": r.uniform(0.5, 2, 5)})


@case("hard_activations")
def _hard(seed):
    r = _rng(seed)
    x = _away_from(r, (2, 3, 5), [-3.0, 3.0, -2.5, 2.5], 0.2, -6, 6).astype(F32)
    nodes = [N("HardSwish", ["x"], "a"), N("HardSigmoid", ["x"], "b", alpha=0.2, beta=0.5),
             N("Mul", ["a", "wa"], "p"), N("Mul", ["b", "wb"], "q"), N("Add", ["p", "q"], "y")]
    consts = {"wa": r.standard_normal((2, 3, 5)).astype(F32), "wb": r.standard_normal((2, 3, 5)).astype(F32)}
    return simple("hard_activations", nodes, {"x": x}, consts, h=0.05, tol=TOL32_SMOOTH)


@case("cast")
def _cast(seed):
    r = _rng(seed)
    x = r.standard_normal((2, 3)).astype(F32)
    nodes = [N("Cast", ["x"], "d", to=onnx.TensorProto.DOUBLE), N("Mul", ["d", "w"], "p"),
             N("Cast", ["p"], "f", to=onnx.TensorProto.FLOAT), N("Cast", ["f"], "y", to=onnx.TensorProto.FLOAT)]
    return simple("cast", nodes, {"x": x}, {"w": r.standard_normal((2, 3))}, h=1.0, tol=TOL32_LINEAR)


@case("misc_unary")
def _misc(seed):
    r = _rng(seed)
    x = r.uniform(0.5, 2.0, (3, 4))
    nodes = [N("Exp", ["x"], "a"), N("Log", ["x"], "b"), N("Sqrt", ["x"], "c"), N("Neg", ["x"], "d"),
             N("Expand", ["v", "shp"], "e"), N("Sum", ["a", "b", "c", "d", "e"], "s"), N("Mul", ["s", "w"], "y")]
    return simple("misc_unary", nodes, {"x": x, "v": r.standard_normal((1, 4))},
                  {"shp": np.array([3, 4]), "w": r.standard_normal((3, 4))})


# -- LSTM ------------------------------------------------------------------------------------------------------------

def lstm_model(seed: int, direction: str = "forward", layout: int = 0, bias: bool = True, peep: bool = False,
               init: bool = False, dtype=F64, T: int = 3, N_: int = 2, I: int = 3, H: int = 4,
               outputs: tuple[str, ...] = ("Y", "Y_h", "Y_c")) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    r = _rng(seed)
    D = 2 if direction == "bidirectional" else 1
    consts = {"W": r.standard_normal((D, 4 * H, I)) * 0.6, "R": r.standard_normal((D, 4 * H, H)) * 0.6}
    ins = ["x", "W", "R"]
    if bias or peep or init:
        consts["B"] = r.standard_normal((D, 8 * H)) * 0.3 if bias else np.zeros((D, 8 * H))
        ins.append("B")
    inputs = {"x": r.standard_normal((N_, T, I) if layout else (T, N_, I))}
    if init or peep:
        ins.append("")
        if init:
            sh = (N_, D, H) if layout else (D, N_, H)
            inputs["h0"], inputs["c0"] = r.standard_normal(sh) * 0.5, r.standard_normal(sh) * 0.5
            ins += ["h0", "c0"]
        else:
            ins += ["", ""]
    if peep:
        consts["P"] = r.standard_normal((D, 3 * H)) * 0.5
        ins.append("P")
    consts = {k: v.astype(dtype) for k, v in consts.items()}
    inputs = {k: v.astype(dtype) for k, v in inputs.items()}
    outs = [o if o in outputs else "" for o in ("Y", "Y_h", "Y_c")]
    while outs and not outs[-1]:
        outs.pop()
    node = N("LSTM", ins, outs, hidden_size=H, direction=direction, layout=layout)
    nodes = [node]
    summands = []
    for o in outs:
        if not o:
            continue
        w = f"w_{o}"
        shape = {"Y": (N_, T, D, H) if layout else (T, D, N_, H), "Y_h": (N_, D, H) if layout else (D, N_, H),
                 "Y_c": (N_, D, H) if layout else (D, N_, H)}[o]
        consts[w] = r.standard_normal(shape).astype(dtype)
        nodes += [N("Mul", [o, w], f"p_{o}"), N("ReduceSum", [f"p_{o}"], f"s_{o}", keepdims=0)]
        summands.append(f"s_{o}")
    nodes.append(N("Sum", summands, "out"))
    return make_model(nodes, inputs, consts, ["out"]), inputs


LSTM_VARIANTS = {
    "lstm_forward": dict(direction="forward"),
    "lstm_reverse_peep": dict(direction="reverse", peep=True),
    "lstm_bidirectional": dict(direction="bidirectional", init=True),
    "lstm_bidir_layout1_peep": dict(direction="bidirectional", layout=1, peep=True, init=True),
    "lstm_no_bias_y_only": dict(direction="forward", bias=False, outputs=("Y",)),
}


def lstm_case(name: str, seed: int) -> Case:
    model, inputs = lstm_model(seed, **LSTM_VARIANTS[name])
    return Case(name, model, inputs, "out", list(inputs), 1e-6, TOL64, ("auto",), {"LSTM"})


for _name in LSTM_VARIANTS:
    CASES[_name] = (lambda n: lambda seed: lstm_case(n, seed))(_name)


# -- opset < 13 ------------------------------------------------------------------------------------------------------

@case("opset11_model")
def _old(seed):
    r = _rng(seed)
    nodes = [N("Unsqueeze", ["x"], "u", axes=[0]), N("Squeeze", ["u"], "s", axes=[0]),
             N("Softmax", ["s"], "sm", axis=1), N("Mul", ["sm", "w"], "p"), N("ReduceSum", ["p"], "y", axes=[1, 2],
                                                                               keepdims=0)]
    return simple("opset11_model", nodes, {"x": r.standard_normal((2, 3, 4))}, {"w": r.standard_normal((2, 3, 4))},
                  opset=11)


@case("opset13_maxpool")
def _old13(seed):
    """ScatterElements(reduction=add) needs opset 16: the model is upgraded after a first build."""
    r = _rng(seed)
    nodes = [N("MaxPool", ["x"], "p", kernel_shape=[2, 2], strides=[2, 2]), N("Mul", ["p", "w"], "y")]
    return simple("opset13_maxpool", nodes, {"x": r.standard_normal((1, 2, 4, 4))}, {"w": r.standard_normal((2, 2))},
                  opset=13)


# -- random DAGs -----------------------------------------------------------------------------------------------------

def random_dag(seed: int, steps: int = 10) -> Case:
    """A random DAG of broadcasting binary ops and smooth/piecewise unary ops on (2, 3, 4) tensors, with fan-out
    (tensors reused by several later nodes, so gradients accumulate) and constants of broadcastable shapes."""
    r = _rng(seed)
    inputs = {"x": r.standard_normal((2, 3, 4)), "y": r.standard_normal((3, 1))}
    consts: dict[str, np.ndarray] = {}
    tensors = ["x", "y", "x"]
    nodes = []
    unary = ["Relu", "Sigmoid", "Tanh", "LeakyRelu", "Neg", "Softmax", "Identity", "Clip", "Transpose2"]
    binary = ["Add", "Sub", "Mul"]
    for i in range(steps):
        out = f"t{i}"
        if r.random() < 0.5:
            op = unary[int(r.integers(len(unary)))]
            a = tensors[int(r.integers(len(tensors)))]
            if op == "Softmax":
                nodes.append(N(op, [a], out, axis=int(r.integers(-2, 0))))
            elif op == "Clip":
                consts[f"lo{i}"], consts[f"hi{i}"] = np.array(-0.5), np.array(0.8)
                nodes.append(N(op, [a, f"lo{i}", f"hi{i}"], out))
            elif op == "Transpose2":
                nodes.append(N("Transpose", [a], f"tt{i}"))
                nodes.append(N("Transpose", [f"tt{i}"], out))
            else:
                nodes.append(N(op, [a], out))
        else:
            op = binary[int(r.integers(len(binary)))]
            a = tensors[int(r.integers(len(tensors)))]
            if r.random() < 0.3:
                shape = [(4,), (3, 1), (1, 3, 4), (2, 1, 1), ()][int(r.integers(5))]
                consts[f"k{i}"] = r.standard_normal(shape)
                b = f"k{i}"
            else:
                b = tensors[int(r.integers(len(tensors)))]
            nodes.append(N(op, [a, b] if r.random() < 0.5 else [b, a], out))
        tensors.append(out)
    used = {i for n in nodes for i in n.input}
    leaves = [t for t in tensors[3:] if t not in used] or [tensors[-1]]
    nodes.append(N("Sum", leaves + ["x"], "sum"))
    nodes.append(N("Mul", ["sum", "wout"], "out"))
    consts["wout"] = r.standard_normal((2, 3, 4))
    m = make_model(nodes, inputs, consts, ["out"])
    return Case(f"random_dag_{seed}", m, inputs, "out", ["x", "y"], 1e-6, TOL64, ("auto",),
                {n.op_type for n in nodes})
