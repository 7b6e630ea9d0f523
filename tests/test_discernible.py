"""Layer-wise discernible neurons: Ω by hand, against a slow loop re-implementation, whole traces on tiny nets,
the policy hook leaving fixations unchanged, and the method's options and errors."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnxfix
from onnxfix.errors import InputError
from onnxfix.fixations import trace
from onnxfix.fixations.discernible import DEFAULTS, DiscerniblePolicy, conv_omega, conv_select, fc_omega, fc_select
from onnxfix.fixations.registry import SelectionPolicy
from tests import discernible_reference as dref
from tests import graphs as G
from tests.conftest import SAMPLES, run_cli, tiny_cnn

RESNET = SAMPLES / "resnet_shapes.onnx"


def _rows(arr) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in r) for r in np.asarray(arr, np.int64).reshape(len(arr), -1)}


# ------------------------------------------------------------------------------------------------ by hand


def test_fc_scores_by_hand():
    """a = [2, 1, 0, -1]; W[:, 0] = [1, 3, 5, -2], W[:, 1] = [1, -1, 1, 1]; both outputs selected.

    contributions: col 0 [2, 3, 0, 2], col 1 [2, -1, 0, -1]
    Z_cur col 0 = [2/3, 1, 0, 2/3]; Z_pre = |a| / 2 = [1, .5, 0, .5]; Z_suc = [4, 3, 0, 2] / 4 = [1, .75, 0, .5]
    Ω col 0 (α = 1, .5, 1) = [1·(2/3 + .5), .75·(1 + .25), 0, .5·(2/3 + .25)] = [7/6, 15/16, 0, 11/24]
    Ω col 1 = [1·(1 + .5), .75·(0 + .25), 0, .5·(0 + .25)] = [3/2, 3/16, 0, 1/8]
    k = 1 keeps input 0 for output 0 although input 1 has the larger contribution (fixations' choice): input 0
    also feeds output 1 and is the stronger neuron.
    """
    a = np.array([2.0, 1.0, 0.0, -1.0])
    w = np.array([[1.0, 1.0], [3.0, -1.0], [5.0, 1.0], [-2.0, 1.0]])
    omega, contrib = fc_omega(a, w, np.array([0, 1]), 1.0, 0.5, 1.0)
    np.testing.assert_allclose(contrib, [[2, 3, 0, 2], [2, -1, 0, -1]])
    np.testing.assert_allclose(omega, [[7 / 6, 15 / 16, 0, 11 / 24], [3 / 2, 3 / 16, 0, 1 / 8]])
    locs = np.array([[0, 0], [0, 1]])
    assert _rows(fc_select(a[None], w, locs, 1.0, 0.5, 1.0, 1)) == {(0, 0)}
    assert _rows(fc_select(a[None], w, locs, 1.0, 0.5, 1.0, 2)) == {(0, 0), (0, 1)}
    # only positive contributions are eligible: output 1 alone never takes inputs 1 or 3, even with k = 4
    assert _rows(fc_select(a[None], w, np.array([[0, 1]]), 1.0, 0.5, 1.0, 4)) == {(0, 0)}
    # α_pre = 0 ranks by Z_suc·Z_cur: input 0: 1·2/3, input 1: .75·1 → input 1
    assert _rows(fc_select(a[None], w, np.array([[0, 0], [0, 1]]), 1.0, 0.0, 1.0, 1)) == {(0, 1), (0, 0)}
    assert _rows(fc_select(a[None], w, np.array([[0, 0]]), 1.0, 0.0, 1.0, 1)) == {(0, 1)}


def test_slow_reference_agrees_with_the_hand_numbers():
    a = np.array([[2.0, 1.0, 0.0, -1.0]])
    w = np.array([[1.0, 1.0], [3.0, -1.0], [5.0, 1.0], [-2.0, 1.0]])
    scores, chosen = dref.fc_ref(a, w, [(0, 0), (0, 1)], (1.0, 0.5, 1.0), 1)
    np.testing.assert_allclose([o for _, o in scores[0]], [7 / 6, 15 / 16, 0, 11 / 24])
    assert chosen == {(0, 0)}


def test_conv_scores_by_hand():
    """One input channel 1×3 (x = [1, 2, -1]), filter [1, 1] (pad 0): outputs y0 = 3, y1 = 1, both selected.
    contributions: y0 [1, 2], y1 [2, -1]; Z_suc: x0 1, x1 2+2 = 4, x2 0 → [.25, 1, 0]; Z_pre = [.5, 1, .5]
    Ω(y0) = [.25·(.5 + .5·.5), 1·(1 + .5)] = [.1875, 1.5]; Ω(y1) = [1·(1 + .5), 0·(…)] = [1.5, 0]."""
    x3 = np.array([[[1.0, 2.0, -1.0]]], np.float32)
    w4 = np.ones((1, 1, 1, 2), np.float32)
    rows = np.array([[0, 0, 0], [0, 0, 1]])
    omega, contrib, valid = conv_omega(x3, w4, rows, (1, 1), (0, 0), (1, 1), 1, 1.0, 0.5, 1.0)
    np.testing.assert_allclose(contrib.reshape(2, 2), [[1, 2], [2, -1]])
    np.testing.assert_allclose(omega.reshape(2, 2), [[0.1875, 1.5], [1.5, 0.0]])
    assert valid.all()
    assert _rows(conv_select(x3, w4, rows, (1, 1), (0, 0), (1, 1), 1, 1.0, 0.5, 1.0, 1)) == {(0, 0, 1)}
    assert _rows(conv_select(x3, w4, rows, (1, 1), (0, 0), (1, 1), 1, 1.0, 0.5, 1.0, 2)) == {(0, 0, 1), (0, 0, 0)}


def test_no_positive_contribution_keeps_the_largest_and_never_padding():
    x3 = -np.ones((1, 2, 2), np.float32)
    w4 = np.ones((1, 1, 3, 3), np.float32)
    w4[0, 0, 2, 2] = 0.5  # the least negative term inside the input: x[1, 1]·0.5 for output (0, 0)
    got = conv_select(x3, w4, np.array([[0, 0, 0]]), (1, 1), (1, 1), (1, 1), 1, 1.0, 0.5, 1.0, 3)
    assert _rows(got) == {(0, 1, 1)}
    # a zero input (an explicit Pad's border, a dead ReLU) carries nothing: the nonzero contributor wins even when
    # it is negative — after a Pad node the zero would end the trace
    x0 = np.array([[[0.0, -1.0]]], np.float32)
    got = conv_select(x0, np.ones((1, 1, 1, 2), np.float32), np.array([[0, 0, 0]]), (1, 1), (0, 0), (1, 1), 1,
                      1.0, 0.5, 1.0, 2)
    assert _rows(got) == {(0, 0, 1)}
    got = fc_select(np.zeros((1, 3)), np.ones((3, 1)), np.array([[0, 0]]), 1.0, 0.5, 1.0, 2)
    assert _rows(got) == {(0, 0)}  # all zero: the first
    # a dead field (all zero): the centre tap, which lies inside the image where a corner tap may be padding
    got = conv_select(np.zeros((2, 4, 4), np.float32), np.ones((1, 2, 3, 3), np.float32),
                      np.array([[0, 0, 0], [0, 2, 1]]), (1, 1), (1, 1), (1, 1), 1, 1.0, 0.5, 1.0, 2)
    assert _rows(got) == {(0, 0, 0), (0, 2, 1)}


# ------------------------------------------------------------------------------- against the slow loops


@pytest.mark.parametrize("seed", range(6))
def test_conv_omega_and_choice_match_the_slow_loops(seed):
    rng = np.random.default_rng(seed)
    group = [1, 2, 1, 4, 1, 2][seed]
    c_in, c_out = 4, 4 if group > 1 else int(rng.integers(2, 5))
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    st = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    dl = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    pd = (int(rng.integers(0, 2)), int(rng.integers(0, 2)))
    x = G.values(rng, (1, c_in, 6, 7), mode=[3, 0, 4, 3, 2, 3][seed])
    w = G.values(rng, (c_out, c_in // group, kh, kw), mode=3)
    oh = (6 + 2 * pd[0] - dl[0] * (kh - 1) - 1) // st[0] + 1
    ow = (7 + 2 * pd[1] - dl[1] * (kw - 1) - 1) // st[1] + 1
    locs = G.random_locs(rng, (1, c_out, oh, ow), 6)
    alphas = tuple(float(v) for v in rng.uniform(0.1, 2.0, 3))
    k = int(rng.integers(1, 4))
    omega, _, valid = conv_omega(x[0], w, locs[:, 1:], st, pd, dl, group, *alphas)
    scores, chosen = dref.conv_ref(x, w, locs, st, pd, dl, group, alphas, k)
    for s, per in enumerate(scores):  # the reference lists in-bounds candidates in (channel, ky, kx) order
        np.testing.assert_allclose(omega[s][valid[s]], [o for _, o in per], rtol=1e-12, atol=1e-12)
    got = conv_select(x[0], w, locs[:, 1:], st, pd, dl, group, *alphas, k)
    assert {(0, *r) for r in _rows(got)} == chosen


@pytest.mark.parametrize("seed", range(4))
def test_fc_choice_matches_the_slow_loops(seed):
    rng = np.random.default_rng(10 + seed)
    a = G.values(rng, (1, 9), mode=seed)
    w = G.values(rng, (9, 5), mode=3)
    locs = G.random_locs(rng, (1, 5), 4)
    alphas, k = (1.0, float(rng.uniform(0, 2)), 1.0), int(rng.integers(1, 5))
    omega, _ = fc_omega(a[0], w, locs[:, 1], *alphas)
    scores, chosen = dref.fc_ref(a, w, locs, alphas, k)
    np.testing.assert_allclose(omega, [[o for _, o in per] for per in scores], rtol=1e-12, atol=1e-12)
    assert _rows(fc_select(a, w, locs, *alphas, k)) == chosen


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
    """Conv → Relu → MaxPool → Conv(stride 2, dilation) → Relu → Flatten → Gemm → Relu → MatMul (fc on conv)."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[2, 2, 2, 2], dilations=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("MatMul", ["hr", "mw"], ["y"])]
    consts = {"w1": G.values(rng, (4, 3, 3, 3), 3), "w2": G.values(rng, (3, 4, 3, 3), 3),
              "fw": G.values(rng, (6, 48), 3), "mw": G.values(rng, (6, 5), 3)}
    x = G.values(rng, (1, 3, 8, 8), 3)
    return G.build(nodes, {"x": x}, consts), {"x": x}


@pytest.mark.parametrize("net", [_tiny_resnet, _tiny_vgg])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_whole_trace_matches_the_slow_reference(net, k):
    rng = np.random.default_rng(k)
    model, feeds = net(rng)
    graph, vals = G.run(model, feeds)
    y = vals["y"]
    start = np.array([[0, int(np.argmax(y))]], np.int64)
    alphas = (1.0, 0.5, 1.0) if k != 2 else (0.3, 1.7, 2.0)
    got = trace(graph, vals, "x", "y", start, policy=DiscerniblePolicy(*alphas, k=k))
    want = dref.trace_ref(model, vals, "x", "y", start, alphas, k)
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


def test_method_options_and_scale_invariance():
    ex = onnxfix.Explainer(RESNET)
    img = SAMPLES / "resnet_shapes.png"
    fx = ex.explain(img, method="fixations")
    d = ex.explain(img, method="discernible")
    assert d.target == fx.target and d.points is not None and len(d.points) > 0
    assert d.extras["policy"] == DiscerniblePolicy(**DEFAULTS)
    assert d.heatmap.shape == fx.heatmap.shape and 0 <= d.heatmap.min() and d.heatmap.max() == pytest.approx(1)
    # α_suc scales every score alike, α_cur/α_pre only count as a ratio: same points (powers of two: exact scaling)
    same = ex.explain(img, method="discernible", alpha_suc=2 * DEFAULTS["alpha_suc"],
                      alpha_cur=4 * DEFAULTS["alpha_cur"], alpha_pre=4 * DEFAULTS["alpha_pre"])
    np.testing.assert_array_equal(np.unique(same.points, axis=0), np.unique(d.points, axis=0))
    # a larger k never selects fewer input pixels on this net (the union grows)
    k1 = ex.explain(img, method="discernible", k=1)
    k4 = ex.explain(img, method="discernible", k=4)
    assert len(k1.points) <= len(d.points) <= len(k4.points) and len(k1.points) < len(k4.points)


@pytest.mark.parametrize("opts, msg", [({"k": 0}, "k must be"), ({"k": 1.5}, "k must be"),
                                       ({"alpha_pre": "x"}, "alpha_pre must be a number"),
                                       ({"alpha_cur": -1}, "alpha_cur must be"),
                                       ({"alpha_suc": 0}, "alpha_suc"),
                                       ({"alpha_cur": 0, "alpha_pre": 0}, "alpha_cur \\+ alpha_pre")])
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


class _FakeScorer:
    """Arm ``k`` hits image ``i`` when ``i % 10 < quality[k]``."""

    quality = {1: 3, 2: 9, 3: 6}

    def hit(self, i, method, params):
        return float(i % 10 < self.quality[params["k"]])

    def score(self, idx, method, params, kind=None):
        return float(np.mean([self.hit(i, method, params) for i in idx]))


def test_ucb1_finds_the_best_arm_and_spends_most_pulls_on_it():
    td = _tuner()
    cands = [{"alpha_cur": 1.0, "alpha_pre": 0.0, "alpha_suc": 1.0, "k": k} for k in (1, 2, 3)]
    best, table = td.ucb1(_FakeScorer(), list(range(100)), cands, 300, np.random.default_rng(0))
    assert best["k"] == 2
    pulls = {r["arm"]["k"]: r["pulls"] for r in table}
    assert pulls[2] > pulls[3] > pulls[1] and sum(pulls.values()) == 300


def test_pointing_and_regions():
    td = _tuner()
    heat = np.zeros((10, 10))
    heat[2, 7] = 1.0
    item = td.Item(SAMPLES / "x.png", 0, [[6, 1, 9, 4]])
    assert td.pointing(heat, td.region(item, heat.shape)) == 1.0  # (x 7, y 2) inside x0 6..9, y0 1..4
    item.boxes = [[0, 0, 7, 10]]  # x1 exclusive: x = 7 is outside
    assert td.pointing(heat, td.region(item, heat.shape)) == 0.0
    assert td.box_iou([0, 0, 2, 2], [[1, 1, 3, 3], [10, 10, 11, 11]]) == pytest.approx(1 / 7)
