"""The fixation rules of onnxfix/fixations/rules_more.py against the slow reference (tests/fixation_reference.py).

Every case is one random ONNX node run by ONNX Runtime. Two checks: the reference's own forward (its per-axis
Resize weights, its ConvTranspose terms, its index maps) must reproduce ORT's output on that node, so the reference
means what ORT computes; then the engine's rule must give the reference's locations (as sets of rows) for random
output locations.
"""

from __future__ import annotations

import functools
import itertools
from fractions import Fraction

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnxfix.fixations import RULES, Context

try:  # tests/ may or may not be a package
    from . import fixation_reference as ref
    from . import graphs as G
except ImportError:
    import fixation_reference as ref
    import graphs as G


def _rows(locs) -> set[tuple[int, ...]]:
    arr = np.asarray(locs, np.int64)
    if arr.size == 0:
        return set()
    return {tuple(int(v) for v in r) for r in arr.reshape(len(arr), -1)}


def _nonempty(d: dict) -> dict:
    return {k: _rows(v) if not isinstance(v, set) else v for k, v in d.items() if len(v)}


def _model(nodes, feeds, consts=None, opset: int = G.OPSET):
    m = G.build(nodes, feeds, consts)
    m.opset_import[0].version = opset
    m.ir_version = 9 if opset >= 19 else 8 if opset >= 9 else 3
    return m


def check(model, feeds, rng, k: int | None = None, forward=None):
    """The engine's rule = the reference's, on random locations of the node's output; returns (vals, consts).
    ``forward(vals)`` checks the reference's forward against ORT's first."""
    graph, vals = G.run(model, feeds)
    if forward is not None:
        forward(vals)
    proto = model.graph.node[-1]
    node = G.node_of(graph, proto.output[0])
    y = proto.output[0]
    seeds = {y: G.random_locs(rng, vals[y].shape, k if k is not None else int(rng.integers(1, 12)))}
    got = RULES[node.op_type].backtrack(node, Context(graph, vals), seeds)
    got = {n: v for n, v in got.items() if n not in graph.constants}
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    want = ref.backtrack_ref(proto, lambda n: vals[n] if n in vals else consts[n], consts,
                             {o: _rows(v) for o, v in seeds.items()})
    assert _nonempty(got) == _nonempty(want), (seeds, got, want)
    return vals, consts


# ----------------------------------------------------------------------------------------------------------------
# Resize / Upsample

CTMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
        "half_pixel_symmetric")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _knife_edge(x_shape, y_shape, scales, attrs: dict) -> bool:
    """Whether a nearest half_pixel_symmetric Resize has a source coordinate within 1e-5 of its rounding boundary
    (an integer for floor/ceil, .5 for the round modes): there ONNX Runtime's float32 arithmetic of that mode's
    four-step formula decides by one ulp (3 → 11: ORT 0.99999994 where the formula gives 1), which the reference
    does not reproduce bit for bit."""
    if attrs.get("mode", "nearest") != "nearest" or attrs.get("coordinate_transformation_mode") != \
            "half_pixel_symmetric":  # the other modes' one or two float32 steps are reproduced exactly
        return False
    half = attrs.get("nearest_mode", "round_prefer_floor").startswith("round")
    for n_in, n_out, sc in zip(x_shape, y_shape, scales or [None] * len(x_shape), strict=True):
        s = Fraction(float(sc)) if sc is not None else Fraction(n_out, n_in)
        if n_in == n_out and s == 1:
            continue
        f32 = Fraction(float(np.float32(float(s))))
        adj = Fraction(n_out) / (s * n_in)
        for o in range(n_out):
            v = n_in / Fraction(2) * (1 - adj) + (o + Fraction(1, 2)) / s - Fraction(1, 2)  # exact
            d = v - Fraction(1, 2) if half else v
            gap = abs(d - round(d))
            if 0 <= v <= n_in - 1 and (0 < gap < Fraction(1, 10**5) or (gap == 0 and f32 != s)):
                return True
    return False


def _resize_case(rng, attrs: dict, opset: int = 19, use_sizes: bool | None = None):
    for _ in range(50):
        model, feeds, consts = _resize_try(rng, attrs, opset, use_sizes)
        x = feeds["x"]
        sizes, sc = consts.get("sizes"), consts.get("scales")
        y_shape = [int(v) for v in sizes] if sizes is not None else [int(np.floor(d * float(s))) for d, s in
                                                                      zip(x.shape, sc, strict=True)]
        if not _knife_edge(x.shape, y_shape, None if sc is None else [float(v) for v in sc], attrs):
            return model, feeds, consts
    raise AssertionError("no case away from the rounding boundaries")


def _resize_try(rng, attrs: dict, opset: int = 19, use_sizes: bool | None = None):
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    h, w = (int(v) for v in rng.integers(1, 6, 2))
    if use_sizes is None:
        use_sizes = bool(rng.random() < 0.4)
    x = G.values(rng, (n, c, h, w), 3 if attrs.get("mode", "nearest") != "nearest" else None)
    if use_sizes:
        sizes = np.array([n, c, int(rng.integers(1, 3 * h + 2)), int(rng.integers(1, 3 * w + 2))], np.int64)
        ins = ["x", "", "", "sizes"]
        consts = {"sizes": sizes}
    else:
        scales = np.array([1.0, 1.0, rng.choice([0.5, 1.0, 1.5, 2.0, 2.5, 3.0]),
                           rng.choice([0.6, 1.0, 1.75, 2.0, 3.0])], np.float32)
        if scales[2] * h < 1 or scales[3] * w < 1:
            scales[2:] = 2.0
        ins = ["x", "", "scales"]
        consts = {"scales": scales}
    model = _model([helper.make_node("Resize", ins, ["y"], **attrs)], {"x": x}, consts, opset)
    return model, {"x": x}, consts


def _check_resize_forward(model, feeds, consts, vals):
    node = model.graph.node[-1]
    a = ref._attrs(node)
    sc = consts.get("scales")
    sc = None if sc is None or not sc.size else [float(v) for v in sc]
    tables = ref.resize_tables(feeds["x"].shape, vals["y"].shape, sc, a)
    np.testing.assert_allclose(ref.resize_forward_ref(feeds["x"], vals["y"].shape, tables), vals["y"],
                               rtol=1e-5, atol=1e-5, err_msg=str(a))


@pytest.mark.parametrize("ctm,nearest_mode", list(itertools.product(CTMS, NEAREST)))
def test_resize_nearest(ctm, nearest_mode):
    rng = np.random.default_rng(CTMS.index(ctm) * 10 + NEAREST.index(nearest_mode))
    for _ in range(8):
        model, feeds, consts = _resize_case(rng, {"mode": "nearest", "coordinate_transformation_mode": ctm,
                                                  "nearest_mode": nearest_mode})
        check(model, feeds, rng, forward=functools.partial(_check_resize_forward, model, feeds, consts))


@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("seed", range(3))
def test_resize_linear(ctm, seed):
    rng = np.random.default_rng(500 + seed * 17 + CTMS.index(ctm))
    model, feeds, consts = _resize_case(rng, {"mode": "linear", "coordinate_transformation_mode": ctm})
    check(model, feeds, rng, forward=lambda v: _check_resize_forward(model, feeds, consts, v))


@pytest.mark.parametrize("ctm", ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"])
@pytest.mark.parametrize("exclude_outside", [0, 1])
@pytest.mark.parametrize("seed", range(2))
def test_resize_cubic(ctm, exclude_outside, seed):
    rng = np.random.default_rng(700 + seed * 31 + exclude_outside * 7 + len(ctm))
    a = float(rng.choice([-0.75, -0.5]))
    model, feeds, consts = _resize_case(rng, {"mode": "cubic", "coordinate_transformation_mode": ctm,
                                              "cubic_coeff_a": a, "exclude_outside": exclude_outside})
    check(model, feeds, rng, forward=lambda v: _check_resize_forward(model, feeds, consts, v))


def test_resize_axes_opset18():
    """Scales given for the spatial axes only (``axes``, opset 18)."""
    rng = np.random.default_rng(9)
    x = G.values(rng, (1, 2, 3, 4), 3)
    consts = {"scales": np.array([2.0, 1.5], np.float32)}
    model = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", axes=[2, 3])],
                   {"x": x}, consts, 18)
    check(model, {"x": x}, rng, 20)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("seed", range(3))
def test_upsample_opset9(mode, seed):
    """Upsample (opset 7-9): asymmetric coordinates, nearest rounds down."""
    rng = np.random.default_rng(900 + seed)
    x = G.values(rng, (1, 2, int(rng.integers(1, 5)), int(rng.integers(1, 5))), 3 if mode == "linear" else None)
    scales = np.array([1.0, 1.0, rng.choice([1.0, 2.0, 2.5, 3.0]), rng.choice([2.0, 1.5])], np.float32)
    model = _model([helper.make_node("Upsample", ["x", "scales"], ["y"], mode=mode)], {"x": x},
                   {"scales": scales}, 9)
    vals, _ = check(model, {"x": x}, rng)
    tables = ref.resize_tables(x.shape, vals["y"].shape, [float(v) for v in scales],
                               {"mode": mode, "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"})
    np.testing.assert_allclose(ref.resize_forward_ref(x, vals["y"].shape, tables), vals["y"], rtol=1e-5, atol=1e-5)


def test_resize_hand_bilinear():
    """2 → 4 half_pixel linear: output 1 = 0.25 x0 + 0.75 x1 → x1 wins unless 0.25 x0 > 0.75 x1."""
    x = np.array([[[[3.0, 1.0]]]], np.float32)  # 1×1×1×2
    consts = {"scales": np.array([1, 1, 1, 2], np.float32)}
    model = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")], {"x": x}, consts)
    graph, vals = G.run(model, {"x": x})
    node = G.node_of(graph, "y")
    got = RULES["Resize"].backtrack(node, Context(graph, vals), {"y": np.array([[0, 0, 0, 1], [0, 0, 0, 2]])})
    # output 1: 0.75·3 + 0.25·1 → x0; output 2: 0.25·3 = 0.75 vs 0.75·1 = 0.75 tie → the first (x0)
    assert _rows(got["x"]) == {(0, 0, 0, 0)}


# ----------------------------------------------------------------------------------------------------------------
# ConvTranspose


def _convt_case(rng):
    g = int(rng.choice([1, 1, 2]))
    cin, cout_g = g * int(rng.integers(1, 3)), int(rng.integers(1, 3))
    k = [int(v) for v in rng.integers(1, 4, 2)]
    st = [int(v) for v in rng.integers(1, 4, 2)]
    dl = [int(v) for v in rng.integers(1, 3, 2)]
    h, w = (int(v) for v in rng.integers(1, 5, 2))
    x = G.values(rng, (int(rng.integers(1, 3)), cin, h, w))
    wt = G.values(rng, (cin, cout_g) + tuple(k))
    attrs: dict = {"strides": st, "dilations": dl, "group": g}
    kind = int(rng.integers(0, 4))
    if kind == 0:
        attrs["pads"] = [int(rng.integers(0, k[0])), int(rng.integers(0, k[1])),
                         int(rng.integers(0, k[0])), int(rng.integers(0, k[1]))]
    elif kind == 1:
        attrs["output_padding"] = [int(rng.integers(0, st[0])), int(rng.integers(0, st[1]))]
        attrs["pads"] = [0, int(rng.integers(0, k[1])), int(rng.integers(0, k[0])), 0]
    elif kind == 2:
        attrs["auto_pad"] = str(rng.choice(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    else:
        attrs["output_shape"] = [h * st[0] + int(rng.integers(0, 2)), w * st[1]]
        if rng.random() < 0.5:  # ignored next to output_shape (ONNX spec)
            attrs["pads"] = [1, 0, 0, 1]
    consts = {"w": wt}
    ins = ["x", "w"]
    if rng.random() < 0.5:
        consts["b"] = G.values(rng, (cout_g * g,))
        ins.append("b")
    model = G.build([helper.make_node("ConvTranspose", ins, ["y"], **attrs)], {"x": x}, consts)
    return model, {"x": x}, consts


@pytest.mark.parametrize("seed", range(40))
def test_conv_transpose(seed):
    rng = np.random.default_rng(1000 + seed)
    model, feeds, consts = _convt_case(rng)
    try:
        graph, vals = G.run(model, feeds)
    except Exception as exc:  # noqa: BLE001 - an attribute mix ORT refuses (e.g. a negative output size)
        pytest.skip(f"ORT refuses this case: {str(exc)[:80]}")
    a = ref._attrs(model.graph.node[-1])
    np.testing.assert_allclose(ref.conv_transpose_forward_ref(feeds["x"], consts["w"], consts.get("b"),
                                                              vals["y"].shape, a), vals["y"], rtol=1e-5, atol=1e-4,
                               err_msg=str(a))
    check(model, feeds, rng)


def test_conv_transpose_hand():
    """1 channel → 1, kernel 2, stride 2: output (0, 0, 2y + ky, 2x + kx) reads input (y, x) alone; with two input
    channels the channel with the larger x · w wins."""
    x = np.array([[[[1.0, 2.0]], [[3.0, -1.0]]]], np.float32)  # 1×2×1×2
    wt = np.ones((2, 1, 2, 2), np.float32)
    wt[1] *= 0.5
    model = G.build([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])], {"x": x}, {"w": wt})
    graph, vals = G.run(model, {"x": x})
    got = RULES["ConvTranspose"].backtrack(G.node_of(graph, "y"), Context(graph, vals),
                                           {"y": np.array([[0, 0, 1, 1], [0, 0, 0, 3]])})
    # (1, 1): input (0, 0): channel 0 gives 1, channel 1 gives 1.5 → channel 1; (0, 3): input (0, 1): 2 vs -0.5
    assert _rows(got["x"]) == {(0, 1, 0, 0), (0, 0, 0, 1)}


# ----------------------------------------------------------------------------------------------------------------
# index ops


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("seed", range(4))
def test_depth_to_space(mode, seed):
    rng = np.random.default_rng(1100 + seed)
    b = int(rng.integers(1, 4))
    x = G.values(rng, (int(rng.integers(1, 3)), b * b * int(rng.integers(1, 3)), int(rng.integers(1, 4)),
                       int(rng.integers(1, 4))), 3)
    model = G.build([helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=b, mode=mode)], {"x": x})
    vals, _ = check(model, {"x": x}, rng)
    fwd = ref.index_forward_ref("DepthToSpace", x.shape, {"blocksize": b, "mode": mode})
    np.testing.assert_array_equal(x.reshape(-1)[fwd], vals["y"])


@pytest.mark.parametrize("seed", range(4))
def test_space_to_depth(seed):
    rng = np.random.default_rng(1200 + seed)
    b = int(rng.integers(1, 4))
    x = G.values(rng, (int(rng.integers(1, 3)), int(rng.integers(1, 3)), b * int(rng.integers(1, 3)),
                       b * int(rng.integers(1, 3))), 3)
    model = G.build([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=b)], {"x": x})
    vals, _ = check(model, {"x": x}, rng)
    np.testing.assert_array_equal(x.reshape(-1)[ref.index_forward_ref("SpaceToDepth", x.shape, {"blocksize": b})],
                                  vals["y"])


@pytest.mark.parametrize("seed", range(6))
def test_tile(seed):
    rng = np.random.default_rng(1300 + seed)
    shape = tuple(int(v) for v in rng.integers(1, 4, int(rng.integers(1, 5))))
    x = G.values(rng, shape, 3)
    reps = np.array([int(v) for v in rng.integers(1, 4, len(shape))], np.int64)
    model = G.build([helper.make_node("Tile", ["x", "reps"], ["y"])], {"x": x}, {"reps": reps})
    vals, _ = check(model, {"x": x}, rng)
    np.testing.assert_array_equal(x.reshape(-1)[ref.index_forward_ref("Tile", shape, {}, reps)], vals["y"])


@pytest.mark.parametrize("seed", range(6))
def test_expand(seed):
    rng = np.random.default_rng(1400 + seed)
    shape = tuple(int(v) for v in rng.choice([1, 1, 2, 3], int(rng.integers(1, 4))))
    target = tuple([int(rng.integers(1, 3))] * int(rng.integers(0, 2))) + tuple(
        int(rng.integers(2, 4)) if d == 1 and rng.random() < 0.7 else d for d in shape)
    x = G.values(rng, shape, 3)
    model = G.build([helper.make_node("Expand", ["x", "s"], ["y"])], {"x": x}, {"s": np.array(target, np.int64)})
    vals, _ = check(model, {"x": x}, rng)
    np.testing.assert_array_equal(x.reshape(-1)[ref.index_forward_ref("Expand", shape, {}, vals["y"].shape)],
                                  vals["y"])


# ----------------------------------------------------------------------------------------------------------------
# elementwise


@pytest.mark.parametrize("seed", range(6))
def test_where(seed):
    rng = np.random.default_rng(1500 + seed)
    shape = (2, 3, 4)
    cs = shape if rng.random() < 0.5 else (1, 3, 1)
    feeds = {"a": G.values(rng, shape, 3), "b": G.values(rng, shape if rng.random() < 0.6 else (4,), 3)}
    cond = rng.random(cs) < 0.5
    consts = {"c": cond}
    model = G.build([helper.make_node("Where", ["c", "a", "b"], ["y"])], feeds, consts)
    check(model, feeds, rng)


@pytest.mark.parametrize("op", ["Min", "Max"])
@pytest.mark.parametrize("seed", range(6))
def test_min_max(op, seed):
    """Min follows the smallest input, Max the largest (ties: the first input)."""
    rng = np.random.default_rng(1600 + seed)
    feeds = {"a": G.values(rng, (2, 3, 4)), "b": G.values(rng, (3, 4) if seed % 2 else (2, 3, 4))}
    ins = ["a", "b"]
    if seed % 3 == 0:
        feeds["c"] = G.values(rng, (2, 1, 4))
        ins.append("c")
    model = G.build([helper.make_node(op, ins, ["y"])], feeds)
    check(model, feeds, rng)


def test_min_hand():
    a = np.array([[1.0, 5.0, 2.0]], np.float32)
    b = np.array([[3.0, 4.0, 2.0]], np.float32)
    model = G.build([helper.make_node("Min", ["a", "b"], ["y"])], {"a": a, "b": b})
    graph, vals = G.run(model, {"a": a, "b": b})
    got = RULES["Min"].backtrack(G.node_of(graph, "y"), Context(graph, vals),
                                 {"y": np.array([[0, 0], [0, 1], [0, 2]])})
    assert _rows(got.get("a", [])) == {(0, 0), (0, 2)} and _rows(got.get("b", [])) == {(0, 1)}


@pytest.mark.parametrize("op", sorted(ref.PASS_MORE))
def test_elementwise_more(op):
    rng = np.random.default_rng(len(op))
    x = np.abs(G.values(rng, (2, 3, 4), 3)) + 0.5
    ins, consts = ["x"], {}
    if op == "Pow":
        ins.append("e")
        consts["e"] = np.array(2.0, np.float32)
    model = G.build([helper.make_node(op, ins, ["y"])], {"x": x}, consts)
    check(model, {"x": x}, rng)
