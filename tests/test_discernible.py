"""Layer-wise discernible neurons as written (§3.1 Eq. 1–5, Alg. 1, §3.2): supports by hand, the engine against a
slow literal re-implementation on random conv/fc layers and whole traces, the policy hook leaving fixations
unchanged, the method's options and errors, and the §3.2 bandit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

import onnxfix
from onnxfix.errors import InputError
from onnxfix.fixations import trace
from onnxfix.fixations.discernible import (
    DEFAULTS,
    DiscerniblePolicy,
    conv_current,
    conv_select,
    fc_select,
    select,
    z_pre,
)
from onnxfix.fixations.registry import Context, SelectionPolicy
from onnxfix.methods.discernible import start_set
from tests import discernible_reference as dref
from tests import graphs as G
from tests.conftest import SAMPLES, run_cli, tiny_cnn

RESNET = SAMPLES / "resnet_shapes.onnx"


def _rows(arr) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in r) for r in np.asarray(arr, np.int64).reshape(len(arr), -1)}


# ------------------------------------------------------------------------------------------------ by hand


def test_fc_scores_by_hand():
    """a = [2, 1, 0, -1]; W[:, 0] = [1, 3, 5, -2], W[:, 1] = [1, -1, 1, 1], W[:, 2] = [0, 2, 0, 0]; all selected.

    Z_cur (Eq. 2, raw A·W): θ0 [2, 3, 0, 2], θ1 [2, -1, 0, -1], θ2 [0, 2, 0, 0]
    highest Z_cur: θ0 → input 1, θ1 → input 0, θ2 → input 1  ⇒  Z_suc = [1, 2, 1, 1] (counter; 1 when none)
    Ω (α = 1, 0, 1; no preceding layer): θ0 [2, 6, 0, 2], θ1 [2, -2, 0, -1], θ2 [0, 4, 0, 0]
    k = 1 → {1, 0, 1}; k = 2 → θ0 {1, 0}, θ1 {0, 2} (0 beats −1), θ2 {1, 0} (ties: the first)."""
    a = np.array([[2.0, 1.0, 0.0, -1.0]])
    w = np.array([[1.0, 1.0, 0.0], [3.0, -1.0, 2.0], [5.0, 1.0, 0.0], [-2.0, 1.0, 0.0]])
    z = a[0][None, :] * w.T
    omega, chosen = select(z, np.zeros_like(z), np.broadcast_to(np.arange(4), z.shape), (1.0, 0.0, 1.0), 1)
    np.testing.assert_array_equal(omega, [[2, 6, 0, 2], [2, -2, 0, -1], [0, 4, 0, 0]])
    assert chosen[:, 0].tolist() == [1, 0, 1]
    locs = np.array([[0, 0], [0, 1], [0, 2]])
    assert _rows(fc_select(None, "a", a, w, locs, (1.0, 0.0, 1.0), 1)) == {(0, 1), (0, 0)}
    assert _rows(fc_select(None, "a", a, w, locs, (1.0, 0.0, 1.0), 2)) == {(0, 0), (0, 1), (0, 2)}
    # the counter only counts selected succeeding neurons: θ1 alone gives input 0 Z_suc 1 and input 1 Z_suc 1
    assert _rows(fc_select(None, "a", a, w, np.array([[0, 1]]), (1.0, 0.0, 1.0), 1)) == {(0, 0)}
    # the slow reference gives the same numbers
    scores, ch = dref.fc_ref(None, "a", a, w, locs, (1.0, 0.0, 1.0), 1)
    np.testing.assert_array_equal(scores, [[2, 6, 0, 2], [2, -2, 0, -1], [0, 4, 0, 0]])
    assert ch == {(0, 1), (0, 0)}


def test_z_pre_is_the_strongest_connected_contribution():
    """Gemm p = u @ V then Relu then the fc layer under test: Z_pre(a_i) = max_j u_j·V[j, i] (Eq. 3), not a_i.

    u = [1, 2]; V = [[3, -1, 0], [-1, 1, 0.5]] → contributions per a_i: [[3, -2], [-1, 2], [0, 1]] → Z_pre
    = [3, 2, 1] while a = relu(u @ V) = [1, 1, 1]."""
    nodes = [helper.make_node("Gemm", ["u", "V"], ["p"]), helper.make_node("Relu", ["p"], ["a"]),
             helper.make_node("Gemm", ["a", "W"], ["y"])]
    u = np.array([[1.0, 2.0]], np.float32)
    consts = {"V": np.array([[3, -1, 0], [-1, 1, 0.5]], np.float32), "W": np.ones((3, 2), np.float32)}
    graph, vals = G.run(G.build(nodes, {"u": u}, consts), {"u": u})
    ctx = Context(graph, vals)
    np.testing.assert_allclose(vals["a"], [[1, 1, 1]])
    np.testing.assert_array_equal(z_pre(ctx, "a", np.arange(3)), [3, 2, 1])
    np.testing.assert_array_equal(z_pre(ctx, "u", np.arange(2)), [0, 0])  # the input has no preceding layer
    # W = 1: Z_cur ties at 1 for every input; α_pre breaks the tie towards the best-supported neuron
    locs = np.array([[0, 0]])
    assert _rows(fc_select(ctx, "a", vals["a"], consts["W"], locs, (1.0, 0.0, 1.0), 1)) == {(0, 0)}
    consts["W"][0, 0] = 0.9  # a_0 now contributes least; Z_pre still wins with α_pre = 1 (0.9 + 3 > 1 + 2)
    assert _rows(fc_select(ctx, "a", vals["a"], consts["W"], locs, (1.0, 1.0, 1.0), 1)) == {(0, 0)}
    assert _rows(fc_select(ctx, "a", vals["a"], consts["W"], locs, (1.0, 0.0, 1.0), 1)) == {(0, 1)}


def test_conv_scores_by_hand():
    """Two input channels 1×3: x0 = [1, 2, -1], x1 = [0, 1, 3]; filter (1 output) 1×2 with w0 = [1, 1],
    w1 = [2, -1]; outputs y(x=0), y(x=1) both selected.

    Z_cur per channel (window sum): θ0 (taps 0, 1): c0 1+2 = 3, c1 0·2+1·(−1) = −1; θ1 (taps 1, 2): c0 2−1 = 1,
    c1 1·2 − 3 = −1. Centre tap (kw // 2 = 1): θ0 at x = 1, θ1 at x = 2; argmax location: θ0 c0 → x = 1
    (2 > 1), c1 → x = 0 (0 > −1); θ1 c0 → x = 1, c1 → x = 1."""
    x3 = np.array([[[1.0, 2.0, -1.0]], [[0.0, 1.0, 3.0]]], np.float32)
    w4 = np.array([[[[1.0, 1.0]], [[2.0, -1.0]]]], np.float32)
    rows = np.array([[0, 0, 0], [0, 0, 1]])
    z, chan, ly, lx = conv_current(x3, w4, rows, (1, 1), (0, 0), (1, 1), 1, "centre")
    np.testing.assert_array_equal(z, [[3, -1], [1, -1]])
    assert chan.tolist() == [[0, 1], [0, 1]] and lx.tolist() == [[1, 1], [2, 2]] and ly.max() == 0
    _, _, _, lx = conv_current(x3, w4, rows, (1, 1), (0, 0), (1, 1), 1, "argmax")
    assert lx.tolist() == [[1, 0], [1, 1]]
    assert _rows(conv_select(None, "x", x3, w4, rows, (1, 1), (0, 0), (1, 1), 1, (1, 0, 1), 1)) == \
        {(0, 0, 1), (0, 0, 2)}
    assert _rows(conv_select(None, "x", x3, w4, rows, (1, 1), (0, 0), (1, 1), 1, (1, 0, 1), 2, "argmax")) == \
        {(0, 0, 1), (1, 0, 0), (1, 0, 1)}


# ------------------------------------------------------------------------------- against the slow loops


def _conv_case(seed: int):
    """x → Conv(w0) → Relu → a → Conv(w) under test; returns (model, values, w, geometry, locs)."""
    rng = np.random.default_rng(seed)
    group = [1, 2, 1, 4, 1, 2, 1, 1][seed]
    c_in, c_out = 4, 4 if group > 1 else int(rng.integers(2, 5))
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    st = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    dl = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    pd = (int(rng.integers(0, 2)), int(rng.integers(0, 2)))
    mode = [3, 0, 4, 3, 2, 3, 1, 3][seed]
    x = G.values(rng, (1, 3, 6, 7), mode=mode)
    w0 = G.values(rng, (c_in, 3, 3, 3), mode=mode)
    w = G.values(rng, (c_out, c_in // group, kh, kw), mode=3)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["p"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["p"], ["a"]),
             helper.make_node("Conv", ["a", "w"], ["y"], strides=list(st), dilations=list(dl), group=group,
                              pads=[pd[0], pd[1], pd[0], pd[1]])]
    model = G.build(nodes, {"x": x}, {"w0": w0, "w": w})
    graph, vals = G.run(model, {"x": x})
    locs = G.random_locs(rng, vals["y"].shape, 6)
    return rng, model, graph, vals, w, (st, pd, dl, group), locs


@pytest.mark.parametrize("location", ["centre", "argmax"])
@pytest.mark.parametrize("seed", range(8))
def test_conv_layer_matches_the_literal_loops(seed, location):
    rng, model, graph, vals, w, (st, pd, dl, group), locs = _conv_case(seed)
    alphas = tuple(float(v) for v in rng.uniform(0.1, 2.0, 3))
    k = int(rng.integers(1, 4))
    got = conv_select(Context(graph, vals), "a", vals["a"][0], w, locs[:, 1:], st, pd, dl, group, alphas, k,
                      location)
    net = dref.Net(model, vals)
    _, want = dref.conv_ref(net, "a", vals["a"], w, locs, st, pd, dl, group, alphas, k, location)
    assert {(0, *r) for r in _rows(got)} == want
    # Z_pre of every neuron of a, against the loops (Eq. 3 through the ReLU onto the first conv)
    flat = np.arange(vals["a"].size)
    want_pre = [dref.zpre_ref(net, "a", tuple(int(v) for v in np.unravel_index(f, vals["a"].shape))) for f in flat]
    np.testing.assert_allclose(z_pre(Context(graph, vals), "a", flat), want_pre, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_fc_layer_matches_the_literal_loops(seed):
    rng = np.random.default_rng(10 + seed)
    u = G.values(rng, (1, 6), mode=seed % 5)
    consts = {"V": G.values(rng, (6, 9), mode=3), "W": G.values(rng, (9, 5), mode=seed % 3)}
    nodes = [helper.make_node("MatMul", ["u", "V"], ["p"]), helper.make_node("Relu", ["p"], ["a"]),
             helper.make_node("MatMul", ["a", "W"], ["y"])]
    model = G.build(nodes, {"u": u}, consts)
    graph, vals = G.run(model, {"u": u})
    locs = G.random_locs(rng, (1, 5), 4)
    alphas, k = (float(rng.uniform(0.2, 2)), float(rng.uniform(0, 2)), 1.0), int(rng.integers(1, 5))
    got = fc_select(Context(graph, vals), "a", vals["a"], consts["W"], locs, alphas, k)
    _, want = dref.fc_ref(dref.Net(model, vals), "a", vals["a"], consts["W"], locs, alphas, k)
    assert _rows(got) == want


def _tiny_resnet(rng):
    """Conv → Relu → [depthwise strided Conv ‖ 1×1 strided Conv] → Add → Relu → GAP → Flatten → Gemm."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=4),
             helper.make_node("Conv", ["r1", "w3"], ["c3"], strides=[2, 2]),
             helper.make_node("Add", ["c2", "c3"], ["s"]),
             helper.make_node("Relu", ["s"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1)]
    consts = {"w1": G.values(rng, (4, 3, 3, 3), 3), "w2": G.values(rng, (4, 1, 3, 3), 3),
              "w3": G.values(rng, (4, 4, 1, 1), 3), "fw": G.values(rng, (5, 4), 3)}
    x = G.values(rng, (1, 3, 8, 8), 3)
    return G.build(nodes, {"x": x}, consts), {"x": x}


def _tiny_vgg(rng):
    """Conv → Relu → MaxPool → Conv(dilation) → Relu → AveragePool → Flatten → Gemm → Relu → MatMul."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[2, 2, 2, 2], dilations=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("AveragePool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[1, 1]),
             helper.make_node("Flatten", ["p2"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("MatMul", ["hr", "mw"], ["y"])]
    consts = {"w1": G.values(rng, (4, 3, 3, 3), 3), "w2": G.values(rng, (3, 4, 3, 3), 3),
              "fw": G.values(rng, (6, 27), 3), "mw": G.values(rng, (6, 5), 3)}
    x = G.values(rng, (1, 3, 8, 8), 3)
    return G.build(nodes, {"x": x}, consts), {"x": x}


@pytest.mark.parametrize("net", [_tiny_resnet, _tiny_vgg])
@pytest.mark.parametrize("k, location", [(1, "centre"), (2, "argmax"), (3, "centre"), (3, "argmax")])
def test_whole_trace_matches_the_literal_reference(net, k, location):
    rng = np.random.default_rng(k + (location == "argmax"))
    model, feeds = net(rng)
    graph, vals = G.run(model, feeds)
    y = vals["y"]
    start = np.array([[0, int(np.argmax(y))], [0, int(np.argsort(y[0])[-2])]], np.int64)  # top-2 classes
    alphas = (1.0, 0.5, 1.0) if k != 2 else (0.3, 1.7, 2.0)
    layers = {graph.nodes[0].name: (2.0, 0.25, 1.0), graph.nodes[-1].name: (1.0, 4.0, 0.5)}
    policy = DiscerniblePolicy.with_layers(layers, alpha_cur=alphas[0], alpha_pre=alphas[1], alpha_suc=alphas[2],
                                           k=k, location=location)
    got = trace(graph, vals, "x", "y", start, policy=policy)
    want = dref.trace_ref(model, vals, "x", "y", start, alphas, k, location, layers)
    got_d = {n: _rows(v) for n, v in got.locations.items() if len(v)}
    want_d = {n: v for n, v in want.items() if v}
    assert got_d == want_d
    assert got_d["x"]  # the trace reaches the image


# ------------------------------------------------------------------------------------------ hook, method


def test_default_policy_is_fixations_exactly():
    ex = onnxfix.Explainer(RESNET)
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    from onnxfix.fixations import needed_tensors
    vals = ex.model.runtime.run({ex.model.input: x}, needed_tensors(ex.model.graph, ex.model.input,
                                                                    ex.model.head.logits))
    vals[ex.model.input] = x
    start = np.array([[0, 2]], np.int64)
    plain = trace(ex.model.graph, vals, ex.model.input, ex.model.head.logits, start)
    hooked = trace(ex.model.graph, vals, ex.model.input, ex.model.head.logits, start, policy=SelectionPolicy())
    assert plain.locations.keys() == hooked.locations.keys()
    for n in plain.locations:
        np.testing.assert_array_equal(plain.locations[n], hooked.locations[n])


def test_start_set_is_the_top_n_classes():
    logits = np.array([[0.5, 3.0, -1.0, 2.0, 2.0]])
    assert start_set(logits, (0, 1), 1).tolist() == [[0, 1]]
    assert start_set(logits, (0, 1), 3).tolist() == [[0, 1], [0, 3], [0, 4]]
    assert start_set(logits, (0, 2), 2).tolist() == [[0, 2], [0, 1]]  # an explicit target, then the top class


def test_method_options_and_scale_invariance(tmp_path):
    ex = onnxfix.Explainer(RESNET)
    img = SAMPLES / "resnet_shapes.png"
    fx = ex.explain(img, method="fixations")
    d = ex.explain(img, method="discernible")
    assert d.target == fx.target and d.points is not None and len(d.points) > 0
    assert d.extras["policy"] == DiscerniblePolicy(**DEFAULTS)
    assert d.heatmap.shape == fx.heatmap.shape and 0 <= d.heatmap.min() and d.heatmap.max() == pytest.approx(1)
    # Eq. 1 scaled as a whole (powers of two: exact) ranks the same
    same = ex.explain(img, method="discernible", alpha_suc=2 * DEFAULTS["alpha_suc"],
                      alpha_cur=4 * DEFAULTS["alpha_cur"], alpha_pre=4 * DEFAULTS["alpha_pre"])
    np.testing.assert_array_equal(np.unique(same.points, axis=0), np.unique(d.points, axis=0))
    # a larger k never selects fewer input pixels (the union grows); so does a larger starting set
    k1 = ex.explain(img, method="discernible", k=1)
    k4 = ex.explain(img, method="discernible", k=int(DEFAULTS["k"]) + 3)
    assert len(k1.points) <= len(d.points) <= len(k4.points) and len(k1.points) < len(k4.points)
    top3 = ex.explain(img, method="discernible", top_n=3)
    assert top3.extras["start"].shape == (3, 2) and len(top3.points) >= len(d.points)
    # per-layer α from a file (§3.2) — naming every layer with the global α changes nothing
    layers = [n.name for n in ex.model.graph.nodes if n.op_type in ("Conv", "Gemm")]
    f = tmp_path / "alphas.json"
    f.write_text(json.dumps({"layers": {n: [DEFAULTS["alpha_cur"], DEFAULTS["alpha_pre"], DEFAULTS["alpha_suc"]]
                                        for n in layers}}))
    e = ex.explain(img, method="discernible", alphas=str(f))
    np.testing.assert_array_equal(e.points, d.points)
    assert len(e.extras["policy"].layers) == len(layers)


@pytest.mark.parametrize("opts, msg", [({"k": 0}, "k must be"), ({"k": 1.5}, "k must be"),
                                       ({"alpha_pre": "x"}, "alpha_pre must be a number"),
                                       ({"alpha_cur": -1}, "alpha_cur must be"),
                                       ({"alpha_suc": 0}, "alpha_suc"),
                                       ({"alpha_cur": 0, "alpha_pre": 0}, "alpha_cur \\+ alpha_pre"),
                                       ({"location": "middle"}, "location must be"),
                                       ({"top_n": 0}, "top_n must be"),
                                       ({"alphas": "/nonexistent/a.json"}, "cannot be read"),
                                       ({"beta": 1}, "has no option")])
def test_bad_options_are_input_errors(opts, msg):
    ex = onnxfix.Explainer(tiny_cnn(softmax=False))
    x = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    with pytest.raises(InputError, match=msg):
        ex.explain(x, method="discernible", **opts)


def test_cli_runs_discernible(tmp_path):
    r = run_cli(RESNET, SAMPLES / "resnet_shapes.png", "--method", "discernible", "--json", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "resnet_shapes.discernible.png").is_file()
    assert '"method": "discernible"' in r.stdout


# ------------------------------------------------------------------------------------------------ the tuner


def _tuner():
    import importlib.util
    import sys

    name = "_onnxfix_tools_tune_discernible"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SAMPLES.parent / "tools" / "tune_discernible.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def test_ucb1_finds_the_best_arm_and_spends_most_pulls_on_it():
    td = _tuner()
    quality = [0.3, 0.9, 0.6]
    rng = np.random.default_rng(0)
    best, stats = td.ucb1(lambda a, i: float(i % 10 < 10 * quality[a]), 3, 300, lambda: int(rng.integers(100)))
    assert best == 1
    pulls = [s["pulls"] for s in stats]
    assert pulls[1] > pulls[2] > pulls[0] and sum(pulls) == 300


def test_bandit_learns_each_layers_weight():
    """A fake scorer rewards α_pre = 2 on layer "b" only and α_cur = 0.5 on layer "a": the per-layer bandits find
    both and leave the indifferent weights at their first best arm."""
    td = _tuner()

    class Fake:
        def hit(self, i, method, params):
            al = params["alphas"]
            good = (al["b"][1] == 2.0) + (al["a"][0] == 0.5)
            return float(i % 4 < 2 * good)

    rng = np.random.default_rng(1)
    alphas, hist = td.learn_layer_alphas(Fake(), list(range(40)), {"k": 3}, 80, rng, ["b", "a"], log=lambda s: 0)
    assert alphas["b"][1] == 2.0 and alphas["a"][0] == 0.5
    assert [h["layer"] for h in hist] == ["b"] * 3 + ["a"] * 3
