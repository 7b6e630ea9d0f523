"""The ONNX ``Attention`` op (opset 23) and the com.microsoft fused ops of ORT's transformer optimiser (issue #12 item
1), decomposed into plain ops by onnxfix/canonize_ms.py:

* each decomposition computes what ONNX Runtime's own kernel of the fused op computes (float32, rel. ≤ 1e-5);
* gradients through the decomposition equal central finite differences (float64 on ORT, rel. ≤ 1e-4) — together
  with the first point: the gradient of ORT's fused op;
* what is not decomposed stays in the graph and is named with the reason;
* a real fused ViT (ORT's optimiser on sample_models/vit_shapes.onnx: SkipLayerNormalization, BiasGelu) is explained
  by Grad-CAM, saliency, attention rollout, Chefer and fixations with the maps of the unfused model (rel. ≤ 1e-4).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import autodiff_graphs as AG  # noqa: E402

from onnxfix.canonize_ms import decompose_fused, kept_fused  # noqa: E402

MS = "com.microsoft"
SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
F32 = np.float32


def N(op, ins, outs, domain="", **attrs):
    return helper.make_node(op, ins, [outs] if isinstance(outs, str) else outs, domain=domain, **attrs)


def model(nodes, feeds, consts, outs, opset=17):
    domains = (MS,) if any(n.domain == MS for n in nodes) else ()
    m = AG.make_model(list(nodes), feeds, consts, outs, opset=opset, domains=domains)
    for o in m.graph.output:  # shape inference does not know the com.microsoft ops: float32, shape unknown
        if o.type.tensor_type.elem_type == 0:
            o.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return m


def run(m, feeds, outs=None):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(outs, feeds)


def rnd(r, *shape):
    return r.standard_normal(shape).astype(F32)


# --------------------------------------------------------------------------------------------------- the cases


def _cases():
    r = np.random.default_rng(23)
    B, S, H, d = 2, 5, 2, 4
    C = H * d
    cases = {}
    x = rnd(r, B, S, C)
    b = rnd(r, C)
    cases["FastGelu"] = ([N("FastGelu", ["x", "b"], "y", MS)], {"x": x}, {"b": b}, 17)
    cases["FastGelu_nobias"] = ([N("FastGelu", ["x"], "y", MS)], {"x": x}, {}, 17)
    cases["BiasGelu"] = ([N("BiasGelu", ["x", "b"], "y", MS)], {"x": x}, {"b": b}, 17)
    cases["Gelu_ms"] = ([N("Gelu", ["x"], "y", MS)], {"x": x}, {}, 17)
    cases["QuickGelu"] = ([N("QuickGelu", ["x"], "y", MS, alpha=1.5)], {"x": x}, {}, 17)
    ln = {"g": rnd(r, C), "be": rnd(r, C), "bias": rnd(r, C)}
    sk = {"x": x, "s": rnd(r, B, S, C)}
    cases["SkipLayerNorm_bias_sum"] = (
        [N("SkipLayerNormalization", ["x", "s", "g", "be", "bias"], ["y", "", "", "sum"], MS, epsilon=1e-5),
         N("Add", ["y", "sum"], "out2")], sk, ln, 17)
    cases["SkipLayerNorm_opset14"] = (
        [N("SkipLayerNormalization", ["x", "s", "g", "be"], "y", MS, epsilon=1e-5)], sk, ln, 14)
    cases["SkipSimplifiedLayerNorm"] = (
        [N("SkipSimplifiedLayerNormalization", ["x", "s", "g", "bias"], ["y", "", "", "sum"], MS, epsilon=1e-6),
         N("Mul", ["y", "sum"], "out2")], sk, ln, 17)
    q4, k4, v4 = rnd(r, B, H, S, d), rnd(r, B, H, S + 1, d), rnd(r, B, H, S + 1, d + 1)
    cases["Attention23_4d"] = ([N("Attention", ["q", "k", "v"], "y")], {"q": q4, "k": k4, "v": v4}, {}, 23)
    cases["Attention23_4d_scale_softcap"] = (
        [N("Attention", ["q", "k", "v"], "y", scale=0.3, softcap=2.0)], {"q": q4, "k": k4, "v": v4}, {}, 23)
    q3, k3, v3 = rnd(r, B, S, C), rnd(r, B, S, C), rnd(r, B, S, C)
    mask = r.random((S, S)) > 0.3
    mask[:, 0] = True
    cases["Attention23_3d_boolmask"] = (
        [N("Attention", ["q", "k", "v", "m"], "y", q_num_heads=H, kv_num_heads=H)],
        {"q": q3, "k": k3, "v": v3}, {"m": mask}, 23)
    cases["Attention23_3d_floatmask_causal"] = (
        [N("Attention", ["q", "k", "v", "m"], "y", q_num_heads=H, kv_num_heads=H, is_causal=1)],
        {"q": q3, "k": k3, "v": v3}, {"m": rnd(r, B, 1, S, S)}, 23)
    w = (rnd(r, C, 3 * C) * 0.5).astype(F32)
    bq = rnd(r, 3 * C)
    cases["MsAttention"] = ([N("Attention", ["x", "w", "bq"], "y", MS, num_heads=H)], {"x": x}, {"w": w, "bq": bq},
                            17)
    keep = np.ones((B, S), np.int32)
    keep[0, -2:] = 0
    cases["MsAttention_mask_scale"] = (
        [N("Attention", ["x", "w", "bq", "mi"], "y", MS, num_heads=H, scale=0.2)], {"x": x},
        {"w": w, "bq": bq, "mi": keep}, 17)
    cases["MsAttention_attention_bias"] = (
        [N("Attention", ["x", "w", "bq", "", "", "ab"], "y", MS, num_heads=H)], {"x": x},
        {"w": w, "bq": bq, "ab": rnd(r, 1, H, S, S)}, 17)
    kv = rnd(r, B, S + 2, C)
    cases["MultiHeadAttention"] = (
        [N("MultiHeadAttention", ["x", "k", "v", "bq"], "y", MS, num_heads=H)],
        {"x": x, "k": kv, "v": rnd(r, B, S + 2, C)}, {"bq": bq}, 17)
    cases["MultiHeadAttention_nobias_scale"] = (
        [N("MultiHeadAttention", ["x", "k", "v"], "y", MS, num_heads=H, scale=0.5)],
        {"x": x, "k": kv, "v": rnd(r, B, S + 2, C)}, {}, 17)
    return cases


CASES = _cases()


def _outs(nodes):
    return [nodes[-1].output[0]] + ([nodes[0].output[3]] if len(nodes) > 1 else [])


@pytest.mark.parametrize("name", sorted(CASES))
def test_decomposed_equals_ort_kernel(name):
    nodes, feeds, consts, opset = CASES[name]
    m = model(nodes, feeds, consts, _outs(nodes), opset)
    d = decompose_fused(m)
    assert d is not m and kept_fused(m) == []
    fused_types = {(n.domain, n.op_type) for n in nodes[:1]}
    assert not any((n.domain, n.op_type) in fused_types for n in d.graph.node), "the fused node is still there"
    for a, b in zip(run(m, feeds), run(d, feeds), strict=True):
        assert a.shape == b.shape
        err = np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)
        assert err <= 1e-5, f"{name}: decomposition differs from ORT's kernel by {err:.3g}"
    if "Attention" in name:  # the attention probabilities are a plain Softmax output now
        assert sum(n.op_type == "Softmax" for n in d.graph.node) == 1


def test_nothing_fused_is_the_same_object():
    nodes, feeds, consts, _ = CASES["FastGelu"]
    m = model([N("Relu", ["x"], "y")], feeds, {}, ["y"])
    assert decompose_fused(m) is m


@pytest.mark.parametrize("name", ["Attention23_4d", "Attention23_3d_boolmask", "Attention23_3d_floatmask_causal",
                                  "MsAttention", "MsAttention_mask_scale", "MultiHeadAttention",
                                  "SkipLayerNorm_bias_sum", "FastGelu", "BiasGelu", "QuickGelu"])
def test_gradient_through_decomposition_vs_finite_differences(name):
    """VJPs of the decomposed graph (MatMul, Softmax, Where, LayerNorm, Tanh, Erf… rules) against central
    differences in float64 on ORT; the forward equals ORT's fused kernel (above)."""
    from onnxfix.autodiff import build_backward
    from onnxfix.graph import Graph

    nodes, feeds, consts, opset = CASES[name]
    r = np.random.default_rng(7)
    m = model(nodes, feeds, consts, _outs(nodes), opset)
    shapes = [v.shape for v in run(m, feeds)]
    nodes = list(nodes)
    consts = dict(consts)
    parts = []
    for i, (o, s) in enumerate(zip(_outs(nodes), shapes, strict=True)):
        consts[f"w{i}"] = rnd(r, *s)
        nodes += [N("Mul", [o, f"w{i}"], f"p{i}"), N("ReduceSum", [f"p{i}"], f"s{i}", keepdims=0)]
        parts.append(f"s{i}")
    nodes.append(N("Sum", parts, "out"))
    d = decompose_fused(model(nodes, feeds, consts, ["out"], opset))
    wrt = list(feeds)
    graph = Graph.from_model(d)
    bwd, seed_name, names = build_backward(graph, "out", wrt, "gradient")
    sess = AG.session(bwd)
    got = dict(zip([o.name for o in sess.get_outputs()],
                   sess.run(None, {**feeds, seed_name: np.ones((), F32)}), strict=True))
    # onnx's reference Erf (the fallback where ORT has no float64 Erf) computes in float32: step 1e-3 there, as
    # tests/test_autodiff_ops.py::test_erf_and_exact_gelu does
    erf = any(n.op_type == "Erf" for n in d.graph.node)
    ref = _fd64(AG.to_float64(d), feeds, wrt, h=1e-3 if erf else 1e-6)
    for w in wrt:
        err = AG.rel_err(got[names[w]], ref[w])
        assert err <= 1e-4, f"{name}: d/d{w} relative error {err:.3g}"


def _fd64(m64: onnx.ModelProto, feeds: dict, wrt: list[str], h: float = 1e-6) -> dict:
    """Central differences of ``out`` in float64: ORT, or onnx's reference evaluator where ORT has no double kernel
    (Erf)."""
    try:
        sess = AG.session(m64, ["out"])

        def f(fd):
            return float(np.sum(sess.run(["out"], fd)[0]))
    except Exception:  # noqa: BLE001 - ORT has no float64 kernel for an op of the model
        from onnx.reference import ReferenceEvaluator

        ev = ReferenceEvaluator(m64)

        def f(fd):
            return float(np.sum(ev.run(["out"], fd)[0]))

    f64 = {k: v.astype(np.float64) for k, v in feeds.items()}
    out = {}
    for name in wrt:
        x = f64[name].reshape(-1)
        g = np.empty(x.size)
        for i in range(x.size):
            xp, xm = x.copy(), x.copy()
            xp[i] += h
            xm[i] -= h
            g[i] = (f({**f64, name: xp.reshape(f64[name].shape)}) - f({**f64, name: xm.reshape(f64[name].shape)})) \
                / (2 * h)
        out[name] = g.reshape(f64[name].shape)
    return out


def _kept_cases():
    r = np.random.default_rng(3)
    B, S, C, H = 1, 4, 8, 2
    x = rnd(r, B, S, C)
    w, bq = rnd(r, C, 3 * C), rnd(r, 3 * C)
    return {
        "unidirectional": ([N("Attention", ["x", "w", "bq"], "y", MS, num_heads=H, unidirectional=1)], {"x": x},
                           {"w": w, "bq": bq}, 17, "unidirectional"),
        "packed_kv": ([N("MultiHeadAttention", ["x", "kv"], "y", MS, num_heads=H)],
                      {"x": x, "kv": rnd(r, B, S, H, 2, C // H)}, {}, 17, "packed"),
        "gqa": ([N("Attention", ["q", "k", "v"], "y", q_num_heads=4, kv_num_heads=2)],
                {"q": rnd(r, B, S, 8), "k": rnd(r, B, S, 4), "v": rnd(r, B, S, 4)}, {}, 23, "grouped-query"),
    }


@pytest.mark.parametrize("case", ["unidirectional", "packed_kv", "gqa"])
def test_not_decomposed_is_kept_and_named(case):
    nodes, feeds, consts, opset, why = _kept_cases()[case]
    m = model(nodes, feeds, consts, ["y"], opset)
    kept = kept_fused(m)
    assert len(kept) == 1 and kept[0][0] == nodes[0].op_type and why in kept[0][2]
    assert decompose_fused(m) is m
    if case != "packed_kv":  # ORT 1.31's CPU provider: "Packed KV not implemented for CPU"
        run(m, feeds)  # the forward still runs on ORT (gradient-free methods work)


def test_kept_fused_op_refused_by_gradient_methods_naming_it():
    """A fused attention that stays fused: the autodiff engine refuses by the op's name (no traceback)."""
    import onnxfix
    from onnxfix.errors import UnsupportedModel

    m = _tiny_ms_vit(unidirectional=1)
    ex = onnxfix.Explainer(m, threads=1)
    img = np.random.default_rng(0).integers(0, 255, (16, 16, 3)).astype(np.uint8)
    with pytest.raises(UnsupportedModel, match="Attention"):
        ex.explain(img, method="saliency")
    with pytest.raises(UnsupportedModel, match="Attention"):
        ex.explain(img, method="fixations")
    assert np.isfinite(ex.explain(img, method="occlusion").attribution).all()


# --------------------------------------------------------------------------------- models with fused attention


def _tiny_ms_vit(unidirectional: int = 0, onnx_op: bool = False) -> onnx.ModelProto:
    """A one-block ViT on 16×16 images (patch 4, 16 tokens + class token, 8 channels, 2 heads) whose attention is
    one com.microsoft ``Attention`` (or the opset-23 ``Attention`` after a qkv projection); the class token's LN
    output feeds a Gemm head of 3 classes."""
    r = np.random.default_rng(11)
    C, H, P = 8, 2, 4
    c = {"wp": rnd(r, C, 3, P, P) * 0.3, "bp": rnd(r, C) * 0.1, "shp": np.array([1, C, 16], np.int64),
         "cls": rnd(r, 1, 1, C), "pos": rnd(r, 1, 17, C) * 0.1, "g1": 1 + 0.1 * rnd(r, C), "b1": 0.1 * rnd(r, C),
         "w": rnd(r, C, 3 * C) * 0.4, "bq": rnd(r, 3 * C) * 0.1, "wo": rnd(r, C, C) * 0.4, "bo": rnd(r, C) * 0.1,
         "g2": 1 + 0.1 * rnd(r, C), "b2": 0.1 * rnd(r, C), "wh": rnd(r, 3, C), "bh": rnd(r, 3) * 0.1,
         "zero": np.array(0, np.int64), "sizes": np.array([C, C, C], np.int64)}
    nodes = [N("Conv", ["x", "wp", "bp"], "pe", kernel_shape=[P, P], strides=[P, P]),
             N("Reshape", ["pe", "shp"], "pr"), N("Transpose", ["pr"], "tok", perm=[0, 2, 1]),
             N("Concat", ["cls", "tok"], "z0", axis=1), N("Add", ["z0", "pos"], "z"),
             N("LayerNormalization", ["z", "g1", "b1"], "n1", epsilon=1e-5)]
    if onnx_op:
        nodes += [N("MatMul", ["n1", "w"], "qkv0"), N("Add", ["qkv0", "bq"], "qkv"),
                  N("Split", ["qkv", "sizes"], ["q", "k", "v"], axis=-1),
                  N("Attention", ["q", "k", "v"], "att", q_num_heads=H, kv_num_heads=H)]
    else:
        nodes += [N("Attention", ["n1", "w", "bq"], "att", MS, num_heads=H, unidirectional=unidirectional)]
    nodes += [N("MatMul", ["att", "wo"], "proj0"), N("Add", ["proj0", "bo"], "proj"), N("Add", ["z", "proj"], "z1"),
              N("LayerNormalization", ["z1", "g2", "b2"], "n2", epsilon=1e-5),
              N("Gather", ["n2", "zero"], "first", axis=1), N("Gemm", ["first", "wh", "bh"], "logits", transB=1)]
    feeds = {"x": np.zeros((1, 3, 16, 16), F32)}
    return model(nodes, feeds, c, ["logits"], opset=23 if onnx_op else 17)


@pytest.mark.parametrize("onnx_op", [False, True], ids=["com.microsoft.Attention", "onnx.Attention23"])
def test_fused_attention_model_gradients_and_attention_methods(onnx_op):
    """A ViT block written with a fused Attention: saliency equals finite differences of ORT running the *fused*
    model; rollout sees the decomposition's Softmax; fixations trace to pixels."""
    import onnxfix

    m = _tiny_ms_vit(onnx_op=onnx_op)
    ex = onnxfix.Explainer(decompose_fused(m), threads=1)
    r = np.random.default_rng(1)
    x = r.standard_normal((1, 3, 16, 16)).astype(F32)
    e = ex.explain(x, method="saliency", target=1)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    fused_logits = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(e.logit, fused_logits[0, 1], rtol=1e-5, atol=1e-6)  # x is fed as it is
    coords = r.choice(x.size, 24, replace=False)
    h = 1e-2
    fd = []
    for i in coords:
        xp, xm = x.copy().reshape(-1), x.copy().reshape(-1)
        xp[i] += h
        xm[i] -= h
        fp = sess.run(None, {"x": xp.reshape(x.shape)})[0][0, 1].astype(np.float64)
        fm = sess.run(None, {"x": xm.reshape(x.shape)})[0][0, 1].astype(np.float64)
        fd.append((fp - fm) / (2 * h))
    got = np.asarray(e.attribution, np.float64).reshape(-1)[coords]
    assert AG.rel_err(got, np.asarray(fd)) <= 2e-3  # float32 model on ORT: central differences with h = 1e-2
    roll = ex.explain(x, method="attention-rollout")
    assert roll.attribution.shape == (4, 4) and np.isfinite(roll.attribution).all()
    for mode in ("positive", "argmax"):
        f = ex.explain(x, method="fixations", attention=mode)
        assert len(f.points) > 0


# ------------------------------------------------------------------------------------------- the real fused ViT


@pytest.fixture(scope="module")
def fused_vit(tmp_path_factory):
    path = SAMPLES / "vit_shapes.onnx"
    if not path.exists():
        pytest.skip("sample_models/vit_shapes.onnx is not built")
    pytest.importorskip("onnxruntime.transformers.optimizer")
    from onnxruntime.transformers.optimizer import optimize_model

    om = optimize_model(str(path), model_type="vit", num_heads=0, hidden_size=0, opt_level=0)
    out = tmp_path_factory.mktemp("fused") / "vit_fused.onnx"
    om.save_model_to_file(str(out))
    m = onnx.load(out)
    ops = {(n.domain, n.op_type) for n in m.graph.node}
    assert (MS, "SkipLayerNormalization") in ops and (MS, "BiasGelu") in ops, ops
    return path, out


METHODS = [("gradcam", {}), ("saliency", {}), ("attention-rollout", {}), ("attention-gradient", {}),
           ("fixations", {"attention": "positive"}), ("fixations", {"attention": "argmax"})]


def test_fused_vit_maps_equal_unfused(fused_vit):
    import onnxfix

    path, fused = fused_vit
    ex0 = onnxfix.Explainer(str(path), threads=1)
    ex = onnxfix.Explainer(decompose_fused(onnx.load(fused)), threads=1)
    assert not any(n.domain == MS for n in ex.model.graph.nodes)
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    for method, opts in METHODS:
        a, b = ex.explain(img, method=method, target=2, **opts), ex0.explain(img, method=method, target=2, **opts)
        assert a.extras.get("layer") == b.extras.get("layer")
        if a.points is not None:
            np.testing.assert_array_equal(a.points, b.points)
        A, Bm = np.asarray(a.attribution, np.float64), np.asarray(b.attribution, np.float64)
        err = np.abs(A - Bm).max() / max(np.abs(Bm).max(), 1e-12)
        assert err <= 1e-4, f"{method}: fused vs unfused {err:.3g}"


def test_fused_vit_through_the_graph_hook(fused_vit):
    """The same with the fused file as given: onnxfix/graph.py's Graph.from_model decomposes it."""
    import onnxfix
    from onnxfix.graph import Graph

    assert "decompose_fused" in inspect.getsource(Graph.from_model)
    path, fused = fused_vit
    ex0, ex = onnxfix.Explainer(str(path), threads=1), onnxfix.Explainer(str(fused), threads=1)
    img = np.random.default_rng(1).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    for method, opts in METHODS:
        a, b = ex.explain(img, method=method, **opts), ex0.explain(img, method=method, **opts)
        A, Bm = np.asarray(a.attribution, np.float64), np.asarray(b.attribution, np.float64)
        assert np.abs(A - Bm).max() <= 1e-4 * max(np.abs(Bm).max(), 1e-12), method


def test_onnx_attention_op_needs_opset_23_session():
    """ORT 1.31's CPU provider runs the opset-23 Attention op (what the cases above rely on)."""
    nodes, feeds, consts, opset = CASES["Attention23_4d"]
    y = run(model(nodes, feeds, consts, ["y"], opset), feeds)[0]
    assert y.shape == (2, 2, 5, 5) and np.isfinite(y).all()


def test_fused_skip_layernorm_fixation_rule_matches_decomposition():
    """Where SkipLayerNormalization stays fused, its fixation rule sends each location of output 0 and of the sum
    (output 3) to ``input + bias`` or ``skip`` — the Add rule on the decomposition ``Add(Add(input, bias), skip)``
    (the larger value; a tie to the first)."""
    from onnxfix.fixations import rule_for
    from onnxfix.fixations.registry import Context
    from onnxfix.graph import Graph

    nodes, feeds, consts, opset = CASES["SkipLayerNorm_bias_sum"]
    m = model(nodes, feeds, consts, ["y", "sum"], opset)
    g = Graph(m)
    x, s, bias = feeds["x"], feeds["s"], consts["bias"]
    vals = dict(zip(["y", "sum"], run(m, feeds, ["y", "sum"]), strict=True))
    ctx = Context(g, {**feeds, **vals})
    r = np.random.default_rng(4)
    loc_y = np.unique(np.stack([r.integers(0, n, 12) for n in x.shape], 1), axis=0)
    loc_s = np.unique(np.stack([r.integers(0, n, 12) for n in x.shape], 1), axis=0)
    sent = rule_for("SkipLayerNormalization").backtrack(g.producer("y"), ctx, {"y": loc_y, "sum": loc_s})
    got = {k: {tuple(v) for v in sent.get(k, np.zeros((0, 3), np.int64))} for k in ("x", "s")}
    for c in map(tuple, np.concatenate([loc_y, loc_s])):
        first = float(x[c] + bias[c[-1]]) >= float(s[c])
        assert (c in got["x"]) == first and (c in got["s"]) == (not first)
    assert len(got["x"]) + len(got["s"]) == len({*map(tuple, loc_y), *map(tuple, loc_s)})
