"""VJP rules for the ops of detectors, segmenters, OCR and transformers (issues #11 item 4, #12 item 1), each against
central finite differences:

* ops that are linear in the differentiated input (Resize, ConvTranspose, Einsum/MatMul per operand, Tile, Expand,
  DepthToSpace, Gather, Concat) in float32 on ONNX Runtime with a step of 1 — exact up to float32 rounding — so the
  rule is checked as the adjoint of exactly what ORT computes forward;
* the others in float64: by ORT where it has double kernels, else by onnx's reference evaluator on a float64 copy
  of the model (``fd64``), step 1e-6.

Tolerance: relative error ‖ours − fd‖/‖fd‖ ≤ 1e-4 (as tests/test_autodiff.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxfix.autodiff import build_backward
from onnxfix.graph import Graph

try:  # tests/ may or may not be a package
    from . import autodiff_graphs as AG
except ImportError:
    import autodiff_graphs as AG

F32, F64 = np.float32, np.float64
TOL = 1e-4


def N(op, ins, outs, **attrs):
    return helper.make_node(op, ins, [outs] if isinstance(outs, str) else outs, **attrs)


def weighted_sum(nodes, outs, consts, r, shapes, dtype=F32):
    """Append Σ_k Σ(out_k · w_k) (random weights) so that every output contributes with its own seed."""
    parts = []
    for k, o in enumerate(outs):
        consts[f"w_{o}"] = r.standard_normal(shapes[k]).astype(dtype)
        nodes += [N("Mul", [o, f"w_{o}"], f"p_{o}"), N("ReduceSum", [f"p_{o}"], f"s_{o}", keepdims=0)]
        parts.append(f"s_{o}")
    nodes.append(N("Sum", parts, "out") if len(parts) > 1 else N("Identity", parts, "out"))


def out_shapes(nodes, inputs, consts, outs, opset, domains=()):
    m = AG.make_model(list(nodes), inputs, consts, outs, opset=opset, domains=domains)
    sess = AG.session(m, outs)
    return [v.shape for v in sess.run(outs, inputs)]


def build_case(nodes, inputs, consts, outs, opset=17, seed=0, domains=()):
    """A model computing Σ w·out over ``outs`` (shapes found by running the bare nodes once)."""
    r = np.random.default_rng(100 + seed)
    consts = dict(consts)
    nodes = list(nodes)
    dt = next(iter(inputs.values())).dtype
    shapes = out_shapes(nodes, inputs, consts, outs, opset, domains)
    weighted_sum(nodes, outs, consts, r, shapes, dt)
    return AG.make_model(nodes, inputs, consts, ["out"], opset=opset, domains=domains)


def our_grads(model, feeds, wrt, of="out", mode="gradient"):
    graph = Graph.from_model(model)
    bwd, seed_name, names = build_backward(graph, of, wrt, mode)
    sess = AG.session(bwd)
    seed_in = next(i for i in sess.get_inputs() if i.name == seed_name)
    dt = F64 if "double" in seed_in.type else F32
    seed = np.ones([int(d) for d in seed_in.shape], dt)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {**feeds, seed_name: seed}), strict=True))
    return {w: outs[names[w]] for w in wrt}


def fd64(model, feeds, wrt, of="out", h=1e-6, coords=None):
    """Central differences in float64 with onnx's reference evaluator (for ops ORT has no double kernel for)."""
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(AG.to_float64(model))

    def f(fd):
        return float(np.sum(ev.run([of], {k: np.asarray(v, F64) for k, v in fd.items()})[0]))

    out = {}
    for name in wrt:
        x = feeds[name].astype(F64)
        grad = np.full(x.size, np.nan)
        for i in (range(x.size) if coords is None else coords):
            xp, xm = x.copy().reshape(-1), x.copy().reshape(-1)
            xp[i] += h
            xm[i] -= h
            grad[i] = (f({**feeds, name: xp.reshape(x.shape)}) - f({**feeds, name: xm.reshape(x.shape)})) / (2 * h)
        out[name] = grad.reshape(x.shape)
    return out


def check(model, feeds, wrt, how="linear", tol=TOL, h=1e-6):
    """Our gradient vs finite differences: ``linear`` (ORT, float32, step 1), ``ort64`` (ORT, float64 model),
    ``ref64`` (reference evaluator, float64)."""
    got = our_grads(model, feeds, wrt)
    if how == "linear":
        ref = AG.fd_gradient(model, feeds, "out", wrt, np.ones((), F32), 1.0)
    elif how == "ort64":
        m64 = AG.to_float64(model)
        f64 = {k: v.astype(F64) for k, v in feeds.items()}
        ref = AG.fd_gradient(m64, f64, "out", wrt, np.ones((), F64), 1e-6)
    else:
        ref = fd64(model, feeds, wrt, h=h)
    for w in wrt:
        assert got[w].shape == feeds[w].shape
        err = AG.rel_err(got[w], ref[w])
        assert err <= tol, f"d/d{w}: relative error {err:.3g} > {tol}"
    return got


def rnd(r, *shape, lo=None, hi=None):
    if lo is not None:
        return r.uniform(lo, hi, shape).astype(F32)
    return r.standard_normal(shape).astype(F32)


# ---------------------------------------------------------------------------------------------------------------
# Resize / Upsample

NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
CTMS = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric"]


@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("scales", [(2.0, 1.5), (0.6, 0.75), (1.7, 0.5)])
def test_resize_nearest_every_mode(ctm, scales):
    r = np.random.default_rng(0)
    x = rnd(r, 1, 2, 5, 6)
    nodes, outs = [], []
    for k, nm in enumerate(NEAREST_MODES):
        nodes.append(N("Resize", ["x", "", "sc"], f"y{k}", mode="nearest", coordinate_transformation_mode=ctm,
                       nearest_mode=nm))
        outs.append(f"y{k}")
    nodes.append(N("Resize", ["x", "", "", "sz"], "ys", mode="nearest", coordinate_transformation_mode=ctm))
    outs.append("ys")
    consts = {"sc": np.array([1, 1, *scales], F32), "sz": np.array([1, 2, 7, 4], np.int64)}
    check(build_case(nodes, {"x": x}, consts, outs, opset=19), {"x": x}, ["x"])


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("ctm", CTMS + ["tf_crop_and_resize"])
def test_resize_linear_and_cubic(mode, ctm):
    r = np.random.default_rng(1)
    x = rnd(r, 1, 2, 5, 6)
    nodes = [N("Resize", ["x", "roi", "sc"], "up", mode=mode, coordinate_transformation_mode=ctm,
               extrapolation_value=0.5),
             N("Resize", ["x", "roi", "sc2"], "down", mode=mode, coordinate_transformation_mode=ctm),
             N("Resize", ["x", "roi", "", "sz"], "sized", mode=mode, coordinate_transformation_mode=ctm)]
    if mode == "cubic":
        nodes.append(N("Resize", ["x", "roi", "sc"], "cub", mode=mode, coordinate_transformation_mode=ctm,
                       cubic_coeff_a=-0.5, exclude_outside=1))
    consts = {"roi": np.array([0, 0, 0.1, 0.2, 1, 1, 0.9, 1.0], F32), "sc": np.array([1, 1, 2.0, 1.5], F32),
              "sc2": np.array([1, 1, 0.6, 0.5], F32), "sz": np.array([1, 2, 8, 3], np.int64)}
    outs = [n.output[0] for n in nodes]
    check(build_case(nodes, {"x": x}, consts, outs, opset=19), {"x": x}, ["x"])


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_antialias(mode):
    r = np.random.default_rng(2)
    x = rnd(r, 1, 2, 9, 8)
    nodes = [N("Resize", ["x", "", "sc"], "y", mode=mode, antialias=1)]
    check(build_case(nodes, {"x": x}, {"sc": np.array([1, 1, 0.5, 0.4], F32)}, ["y"], opset=18), {"x": x}, ["x"])


def test_resize_other_axes_and_axes_attribute():
    """Resizing the channel axis and the first of three axes (transposes in the backward); opset 18 ``axes``."""
    r = np.random.default_rng(3)
    x = rnd(r, 2, 3, 4, 5)
    nodes = [N("Resize", ["x", "", "sc"], "a", mode="nearest"),
             N("Resize", ["x", "", "sc2"], "b", mode="linear", axes=[2, 3]),
             N("Resize", ["x", "", "", "sz"], "c", mode="nearest", axes=[-1])]
    consts = {"sc": np.array([1, 2.0, 1, 1.5], F32), "sc2": np.array([1.5, 2.0], F32), "sz": np.array([9], np.int64)}
    check(build_case(nodes, {"x": x}, consts, ["a", "b", "c"], opset=18), {"x": x}, ["x"])


def test_upsample_opset9_is_upgraded():
    r = np.random.default_rng(4)
    x = rnd(r, 1, 2, 3, 4)
    nodes = [N("Upsample", ["x", "sc"], "y", mode="nearest")]
    m = build_case(nodes, {"x": x}, {"sc": np.array([1, 1, 2, 3], F32)}, ["y"], opset=9)
    check(m, {"x": x}, ["x"])


def test_resize_with_run_time_scales_is_refused():
    from onnxfix.errors import UnsupportedOp

    r = np.random.default_rng(4)
    feeds = {"x": rnd(r, 1, 2, 3, 4), "s": np.array([1, 1, 2, 2], F32)}
    m = AG.make_model([N("Resize", ["x", "", "s"], "y", mode="nearest")], feeds)
    with pytest.raises(UnsupportedOp, match="Resize.*scales/sizes computed at run time"):
        build_backward(Graph.from_model(m), "y", ["x"])


# ---------------------------------------------------------------------------------------------------------------
# ConvTranspose

CONVT = {
    "basic": dict(x=(1, 3, 4, 5), w=(3, 2, 3, 3)),
    "stride2_pads": dict(x=(2, 3, 4, 4), w=(3, 2, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1]),
    "output_padding": dict(x=(1, 2, 4, 3), w=(2, 3, 3, 3), strides=[2, 3], pads=[1, 0, 1, 1],
                           output_padding=[1, 2]),
    "groups_dilations": dict(x=(1, 4, 4, 5), w=(4, 3, 3, 2), group=2, dilations=[2, 1], strides=[1, 2],
                             pads=[0, 1, 2, 0]),
    "depthwise_s2_k4": dict(x=(1, 3, 5, 5), w=(3, 1, 4, 4), group=3, strides=[2, 2], pads=[1, 1, 1, 1]),
    "same_upper": dict(x=(1, 2, 4, 5), w=(2, 2, 3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(x=(1, 2, 4, 5), w=(2, 2, 4, 3), strides=[2, 2], auto_pad="SAME_LOWER"),
    "output_shape": dict(x=(1, 2, 3, 3), w=(2, 2, 3, 3), strides=[3, 2], output_shape=[10, 8]),
    "1d": dict(x=(2, 3, 6), w=(3, 2, 4), strides=[2], pads=[1, 2]),
    "3d": dict(x=(1, 2, 3, 3, 2), w=(2, 2, 2, 3, 2), strides=[2, 1, 2]),
}


@pytest.mark.parametrize("name", sorted(CONVT))
def test_conv_transpose(name):
    spec = dict(CONVT[name])
    r = np.random.default_rng(5)
    x, w = rnd(r, *spec.pop("x")), rnd(r, *spec.pop("w"))
    group = spec.get("group", 1)
    b = rnd(r, w.shape[1] * group)
    m = build_case([N("ConvTranspose", ["x", "w", "b"], "y", **spec)], {"x": x, "b": b}, {"w": w}, ["y"])
    check(m, {"x": x, "b": b}, ["x", "b"])


# ---------------------------------------------------------------------------------------------------------------
# Softmax over any axis, selections, piecewise and smooth unary ops


def test_softmax_and_log_softmax_on_any_axis():
    """YOLOv8's DFL: Softmax over the 16 bins of (N, 4, 16, A) → axis 2, and other axes."""
    r = np.random.default_rng(6)
    x = r.standard_normal((2, 4, 5, 3))
    nodes = [N("Softmax", ["x"], "a", axis=2), N("Softmax", ["x"], "b", axis=0), N("Softmax", ["x"], "c", axis=-3),
             N("LogSoftmax", ["x"], "d", axis=1), N("Softmax", ["x"], "e", axis=3)]
    check(build_case(nodes, {"x": x}, {}, ["a", "b", "c", "d", "e"]), {"x": x}, ["x"], how="ort64")


def test_where_max_min_abs_floor():
    r = np.random.default_rng(7)
    feeds = {"a": r.standard_normal((2, 3, 4)), "b": r.standard_normal((3, 1)), "c": r.standard_normal((4,))}
    consts = {"k": r.standard_normal((2, 1, 4)), "cond": r.random((2, 3, 1)) > 0.5}
    nodes = [N("Where", ["cond", "a", "b"], "w1"), N("Where", ["cond", "k", "c"], "w2"),
             N("Max", ["a", "b", "c"], "m1"), N("Min", ["a", "k"], "m2"), N("Max", ["c"], "m3"),
             N("Abs", ["a"], "ab"), N("Floor", ["a"], "fl"), N("Add", ["fl", "a"], "fa")]
    m = build_case(nodes, feeds, consts, ["w1", "w2", "m1", "m2", "m3", "ab", "fa"])
    check(m, feeds, ["a", "b", "c"], how="ort64")


def test_max_min_ties_share_the_gradient_as_torch():
    torch = pytest.importorskip("torch")
    a = np.array([1.0, 2.0, 3.0, 3.0], F32)
    b = np.array([1.0, 1.0, 3.0, 4.0], F32)
    m = AG.make_model([N("Max", ["a", "b"], "y")], {"a": a, "b": b})
    got = our_grads(m, {"a": a, "b": b}, ["a", "b"], of="y")
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    torch.maximum(ta, tb).sum().backward()
    np.testing.assert_allclose(got["a"], ta.grad.numpy())
    np.testing.assert_allclose(got["b"], tb.grad.numpy())


def test_reduce_max_min_global_max_pool():
    r = np.random.default_rng(8)
    x = rnd(r, 2, 3, 4, 5)
    nodes = [N("ReduceMax", ["x", "ax"], "a", keepdims=0), N("ReduceMin", ["x"], "b", keepdims=1),
             N("ReduceMax", ["x", "ax2"], "c", keepdims=1), N("GlobalMaxPool", ["x"], "d")]
    m = build_case(nodes, {"x": x}, {"ax": np.array([1, -1]), "ax2": np.array([2])}, ["a", "b", "c", "d"],
                   opset=18)
    check(m, {"x": x}, ["x"], how="ref64")


def test_smooth_unary_ops():
    r = np.random.default_rng(9)
    x = rnd(r, 3, 8) * 2
    p = rnd(r, 3, 8, lo=0.5, hi=2.0)
    nodes = [N("Elu", ["x"], "elu", alpha=0.7), N("Selu", ["x"], "selu"), N("Softplus", ["x"], "sp"),
             N("Mish", ["x"], "mish"), N("Gelu", ["x"], "gelut", approximate="tanh"), N("Pow", ["x", "two"], "sq"),
             N("Pow", ["x", "three"], "cu"), N("Pow", ["p", "x"], "px"), N("Pow", ["p", "half"], "ph")]
    consts = {"two": np.array(2.0, F32), "three": np.array(3.0, F32), "half": np.array([0.5], F32)}
    m = build_case(nodes, {"x": x, "p": p}, consts, [n.output[0] for n in nodes], opset=20)
    check(m, {"x": x, "p": p}, ["x", "p"], how="ref64")


def test_erf_and_exact_gelu():
    """onnx's reference Erf is an approximation (~2e-8 absolute), not smooth at a 1e-6 step: step 1e-3 here
    (truncation ~4e-7, approximation ~1e-5 on the quotient); and torch autograd in float64."""
    r = np.random.default_rng(9)
    x = rnd(r, 3, 8) * 2
    nodes = [N("Erf", ["x"], "erf"), N("Gelu", ["x"], "gelu")]
    m = build_case(nodes, {"x": x}, {}, ["erf", "gelu"], opset=20)
    got = check(m, {"x": x}, ["x"], how="ref64", h=1e-3)
    torch = pytest.importorskip("torch")
    w = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    xt = torch.tensor(x.astype(F64), requires_grad=True)
    f = (torch.erf(xt) * torch.tensor(w["w_erf"], dtype=torch.float64)).sum() + (
        torch.nn.functional.gelu(xt) * torch.tensor(w["w_gelu"], dtype=torch.float64)).sum()
    f.backward()
    assert AG.rel_err(got["x"], xt.grad.numpy()) <= TOL


def test_normalisations():
    r = np.random.default_rng(10)
    feeds = {"x": rnd(r, 2, 3, 4, 5), "t": rnd(r, 2, 6, 8), "g": rnd(r, 8), "bb": rnd(r, 8)}
    consts = {"sc": rnd(r, 3), "bi": rnd(r, 3), "g2": rnd(r, 6, 8), "b2": rnd(r, 6, 8)}
    nodes = [N("InstanceNormalization", ["x", "sc", "bi"], "inorm", epsilon=1e-3),
             N("LayerNormalization", ["t", "g", "bb"], "ln"),
             N("LayerNormalization", ["t", "g2", "b2"], "ln2", axis=1, epsilon=1e-4),
             N("LayerNormalization", ["x", "g5"], "ln3", axis=-1)]
    consts["g5"] = rnd(r, 5)
    m = build_case(nodes, feeds, consts, ["inorm", "ln", "ln2", "ln3"])
    check(m, feeds, ["x", "t", "g", "bb"], how="ref64")


# ---------------------------------------------------------------------------------------------------------------
# Attention-shaped linear ops and index maps (linear in each input: float32, step 1)


def test_einsum_common_forms():
    r = np.random.default_rng(11)
    feeds = {"q": rnd(r, 2, 3, 4, 5), "k": rnd(r, 2, 3, 6, 5), "a": rnd(r, 3, 4), "v": rnd(r, 4), "m": rnd(r, 2, 4, 3)}
    nodes = [N("Einsum", ["q", "k"], "s", equation="bhqd,bhkd->bhqk"),
             N("Einsum", ["a", "v"], "av", equation="ij,j->i"),
             N("Einsum", ["m", "a"], "bmm", equation="bij,jk->bik"),
             N("Einsum", ["a"], "tr", equation="ij->ji"),
             N("Einsum", ["a"], "rs", equation="ij->i"),
             N("Einsum", ["q", "k"], "ell", equation="...qd,...kd->...qk"),
             N("Einsum", ["a", "v"], "imp", equation="ij,j")]
    m = build_case(nodes, feeds, {}, [n.output[0] for n in nodes])
    check(m, feeds, list(feeds))


def test_einsum_diagonal_is_refused():
    from onnxfix.errors import UnsupportedOp

    feeds = {"a": np.ones((3, 3), F32)}
    m = AG.make_model([N("Einsum", ["a"], "d", equation="ii->i")], feeds)
    with pytest.raises(UnsupportedOp, match="Einsum.*diagonal"):
        build_backward(Graph.from_model(m), "d", ["a"])


def test_attention_shapes():
    """Q·Kᵀ as a 4-D batched MatMul, Expand/Tile of a class token, Concat on the token axis, Gather of token 0."""
    r = np.random.default_rng(12)
    feeds = {"q": rnd(r, 2, 3, 4, 5), "k": rnd(r, 2, 3, 5, 6), "cls": rnd(r, 1, 1, 5), "tok": rnd(r, 2, 4, 5)}
    consts = {"shp": np.array([2, 1, 5]), "rep": np.array([2, 4, 1]), "zero": np.array(0), "rep2": np.array([1, 2, 3])}
    nodes = [N("MatMul", ["q", "k"], "att"),
             N("Expand", ["cls", "shp"], "ce"), N("Tile", ["cls", "rep"], "ct"),
             N("Concat", ["ce", "tok"], "cat", axis=1), N("Concat", ["tok", "ct"], "cat0", axis=0),
             N("Concat", ["tok", "ct"], "cat2", axis=-2),
             N("Gather", ["cat", "zero"], "first", axis=1), N("Tile", ["tok", "rep2"], "tt")]
    m = build_case(nodes, feeds, consts, ["att", "cat0", "cat2", "first", "tt"])
    check(m, feeds, list(feeds))


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_and_back(mode):
    r = np.random.default_rng(13)
    feeds = {"x": rnd(r, 2, 8, 3, 2), "z": rnd(r, 1, 2, 4, 6)}
    nodes = [N("DepthToSpace", ["x"], "d", blocksize=2, mode=mode), N("SpaceToDepth", ["z"], "s", blocksize=2)]
    check(build_case(nodes, feeds, {}, ["d", "s"]), feeds, ["x", "z"])


# ---------------------------------------------------------------------------------------------------------------
# Recurrent ops: GRU, RNN, LSTM with sequence_lens, every layout (lowered; checked against ORT's own ops)


def rnn_model(op, seed=0, direction="forward", layout=0, bias=True, init=False, seq=None, lbr=0, dtype=F64,
              T=4, N_=3, I=3, H=4, seq_input=False):
    r = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    consts = {"W": r.standard_normal((D, G * H, I)) * 0.6, "R": r.standard_normal((D, G * H, H)) * 0.6}
    ins = ["x", "W", "R", "B" if bias else ""]
    if bias:
        consts["B"] = r.standard_normal((D, 2 * G * H)) * 0.3
    inputs = {"x": r.standard_normal((N_, T, I) if layout else (T, N_, I))}
    if seq is not None:
        if seq_input:
            inputs["seq"] = np.array(seq, np.int32)
        else:
            consts["seq"] = np.array(seq, np.int32)
        ins.append("seq")
    else:
        ins.append("")
    if init:
        sh = (N_, D, H) if layout else (D, N_, H)
        inputs["h0"] = r.standard_normal(sh) * 0.5
        ins.append("h0")
        if op == "LSTM":
            inputs["c0"] = r.standard_normal(sh) * 0.5
            ins.append("c0")
    while ins and not ins[-1]:
        ins.pop()
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    attrs = dict(hidden_size=H, direction=direction, layout=layout)
    if op == "GRU":
        attrs["linear_before_reset"] = lbr
    consts = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in consts.items()}
    inputs = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in inputs.items()}
    node = N(op, ins, outs, **attrs)
    shapes = {"Y": (N_, T, D, H) if layout else (T, D, N_, H), "Y_h": (N_, D, H) if layout else (D, N_, H)}
    shapes["Y_c"] = shapes["Y_h"]
    nodes = [node]
    weighted_sum(nodes, outs, consts, r, [shapes[o] for o in outs], dtype)
    return AG.make_model(nodes, inputs, consts, ["out"]), inputs


RNN_VARIANTS = {
    "gru_forward": dict(op="GRU"),
    "gru_lbr_reverse_init": dict(op="GRU", direction="reverse", lbr=1, init=True),
    "gru_bidir_layout1": dict(op="GRU", direction="bidirectional", layout=1, init=True),
    "gru_no_bias_lbr": dict(op="GRU", bias=False, lbr=1),
    "rnn_forward": dict(op="RNN"),
    "rnn_bidir_init_layout1": dict(op="RNN", direction="bidirectional", init=True, layout=1),
    "lstm_seq_lens": dict(op="LSTM", seq=[4, 2, 3]),
    "lstm_seq_lens_bidir": dict(op="LSTM", direction="bidirectional", seq=[1, 4, 2], init=True),
    "lstm_seq_lens_bidir_layout1": dict(op="LSTM", direction="bidirectional", seq=[3, 4, 2], layout=1),
    "lstm_seq_lens_run_time": dict(op="LSTM", direction="reverse", seq=[2, 4, 3], seq_input=True),
    "gru_seq_lens_bidir": dict(op="GRU", direction="bidirectional", seq=[2, 3, 4], lbr=1),
    "rnn_seq_lens_reverse": dict(op="RNN", direction="reverse", seq=[3, 1, 4], init=True),
}


def _ort_reference(model, feeds, layout):
    """ORT's own op (layout 0 only in ORT: layout-1 models run with transposed inputs and outputs)."""
    node = next(n for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN"))
    node = onnx.NodeProto.FromString(node.SerializeToString())
    for a in node.attribute:
        if a.name == "layout":
            a.i = 0
    f = dict(feeds)
    if layout:
        f = {k: (v.transpose(1, 0, 2) if v.ndim == 3 else v) for k, v in f.items()}
    outs = [o for o in node.output if o]
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
              for k, v in f.items()]
    inits = [i for i in model.graph.initializer if i.name in node.input]
    g = helper.make_graph([node], "ref", inputs, [helper.make_tensor_value_info(o, 1, None) for o in outs],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    res = AG.session(m, outs).run(outs, f)
    if layout:
        res = [v.transpose(2, 0, 1, 3) if v.ndim == 4 else v.transpose(1, 0, 2) for v in res]
    return dict(zip(outs, res, strict=True))


@pytest.mark.parametrize("variant", sorted(RNN_VARIANTS))
def test_lowered_recurrent_equals_ort(variant):
    from onnxfix.autodiff import lowering as L

    spec = dict(RNN_VARIANTS[variant])
    model, feeds = rnn_model(dtype=F32, **spec)
    graph = Graph.from_model(model)
    node = next(n for n in graph.nodes if n.op_type == spec["op"])
    low = L.lower(graph, [node])
    assert spec["op"] not in {n.op_type for n in low.nodes}
    ref = _ort_reference(model, feeds, spec.get("layout", 0))
    got = AG.session(low.model, list(ref)).run(list(ref), feeds)
    for (name, want), have in zip(ref.items(), got, strict=True):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("variant", sorted(RNN_VARIANTS))
def test_recurrent_gradient_against_finite_differences(variant):
    """float64: the lowered graph in ORT (all its ops have double kernels), as test_autodiff does for the LSTM."""
    from onnxfix.autodiff import lowering as L

    spec = dict(RNN_VARIANTS[variant])
    model, feeds = rnn_model(dtype=F64, **spec)
    graph = Graph.from_model(model)
    low = L.lower(graph, [n for n in graph.nodes if n.op_type == spec["op"]]).model
    wrt = [k for k, v in feeds.items() if v.dtype.kind == "f"]
    ref = AG.fd_gradient(low, feeds, "out", wrt, np.ones((), F64), 1e-6)
    got = our_grads(model, feeds, wrt)
    for w in wrt:
        assert AG.rel_err(got[w], ref[w]) <= TOL, w


def _backend_cases(kinds=("lstm", "gru", "rnn")):
    from onnx.backend.test.case.node import collect_testcases

    out = []
    for op in ("LSTM", "GRU", "RNN"):
        for c in collect_testcases(op):
            if any(k in c.name for k in kinds):
                out.append(c)
    return out


def test_lowerings_on_the_onnx_backend_test_cases():
    """The forward semantics of every lowering against the ONNX backend test cases (their expected outputs) and
    against ORT's own op on the same inputs."""
    from onnxfix.autodiff import lowering as L

    cases = _backend_cases()
    assert len(cases) >= 15
    for c in cases:
        inputs, expected = c.data_sets[0]
        model = _weights_as_initializers(c.model, inputs)
        graph = Graph.from_model(model)
        rec = [n for n in graph.nodes if n.op_type in ("LSTM", "GRU", "RNN")]
        assert len(rec) == 1, c.name
        assert L.why_not_lowerable(graph, rec[0]) is None, (c.name, L.why_not_lowerable(graph, rec[0]))
        low = L.lower(graph, rec)
        feeds = {vi.name: v for vi, v in zip(c.model.graph.input, inputs, strict=False)
                 if vi.name in {i.name for i in model.graph.input}}
        outs = [o.name for o in c.model.graph.output]
        got = AG.session(low.model, outs).run(outs, feeds)
        ort_own = AG.session(model, outs).run(outs, feeds) if "batchwise" not in c.name else expected
        for name, g, e, o in zip(outs, got, expected, ort_own, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6, err_msg=f"{c.name} {name} vs expected")
            np.testing.assert_allclose(g, o, rtol=1e-5, atol=1e-6, err_msg=f"{c.name} {name} vs ORT")


def _weights_as_initializers(model: onnx.ModelProto, inputs: list) -> onnx.ModelProto:
    """The backend case's model with W, R, B (graph inputs there) as initializers holding the case's values."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    node = next(n for n in m.graph.node if n.op_type in ("LSTM", "GRU", "RNN"))
    weights = {node.input[i] for i in (1, 2, 3, 7) if i < len(node.input) and node.input[i]}
    keep = []
    for vi, v in zip(model.graph.input, inputs, strict=False):
        if vi.name in weights:
            m.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(v), vi.name))
        else:
            keep.append(vi)
    del m.graph.input[:]
    m.graph.input.extend(keep)
    return m


# ---------------------------------------------------------------------------------------------------------------
# com.microsoft fused ops (ORT's transformer optimiser): lowered, forward checked against ORT's fused kernels


def test_com_microsoft_fused_ops():
    from onnxfix.autodiff import lowering as L

    r = np.random.default_rng(14)
    feeds = {"x": rnd(r, 2, 3, 8), "s": rnd(r, 2, 3, 8)}
    consts = {"bias": rnd(r, 8), "gamma": rnd(r, 8), "beta": rnd(r, 8), "b2": rnd(r, 8)}
    ms = "com.microsoft"
    nodes = [helper.make_node("FastGelu", ["x", "bias"], ["fg"], domain=ms),
             helper.make_node("BiasGelu", ["x", "bias"], ["bg"], domain=ms),
             helper.make_node("FastGelu", ["s"], ["fg2"], domain=ms),
             helper.make_node("SkipLayerNormalization", ["x", "s", "gamma", "beta", "b2"], ["sln", "", "", "sum"],
                              domain=ms, epsilon=1e-5),
             helper.make_node("SkipSimplifiedLayerNormalization", ["x", "s", "gamma"], ["ssln"], domain=ms,
                              epsilon=1e-5)]
    outs = ["fg", "bg", "fg2", "sln", "sum", "ssln"]
    model = build_case(nodes, feeds, consts, outs, domains=(ms,))
    graph = Graph.from_model(model)
    fused = [n for n in graph.nodes if n.domain == ms]
    low = L.lower(graph, fused)
    assert not [n for n in low.nodes if n.domain == ms]
    want = AG.session(model, outs).run(outs, feeds)
    have = AG.session(low.model, outs).run(outs, feeds)
    for name, w, h in zip(outs, want, have, strict=True):
        np.testing.assert_allclose(h, w, rtol=2e-5, atol=2e-5, err_msg=name)
    got = our_grads(model, feeds, ["x", "s"])
    ref = fd64(low.model, feeds, ["x", "s"], h=1e-3)  # BiasGelu: the reference Erf (see test_erf_and_exact_gelu)
    for w in ("x", "s"):
        assert AG.rel_err(got[w], ref[w]) <= TOL, w


def test_fused_attention_is_refused_by_name():
    from onnxfix.autodiff import missing_vjp_rules
    from onnxfix.errors import UnsupportedOp

    feeds = {"x": np.ones((1, 4, 8), F32)}
    node = helper.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft", num_heads=2)
    m = AG.make_model([node], feeds, {"w": np.ones((8, 24), F32), "b": np.zeros(24, F32)}, domains=("com.microsoft",))
    graph = Graph(m)
    assert [n.op_type for n in missing_vjp_rules(graph, ["x"], "y")] == ["Attention"]
    with pytest.raises(UnsupportedOp, match="Attention.*transformer optimiser"):
        build_backward(graph, "y", ["x"])


def _unused():  # keep TensorProto imported for readers extending the cases
    return TensorProto.FLOAT
