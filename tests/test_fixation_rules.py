"""The CNN-Fixations rule table against the slow reference in ``fixation_reference.py``.

Every op: small random ONNX graphs (integer-valued weights and inputs in most cases so that ties really
happen), activations from ONNX Runtime, random start locations; the rule's output must equal the reference's as
sets of rows. Then whole traces through 2–6-op chains, and a few hand-computed cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnxfix.fixations import RULES, Context, trace
from onnxfix.graph import Graph

try:  # tests/ may or may not be a package
    from . import fixation_reference as ref
    from . import graphs as G
except ImportError:
    import fixation_reference as ref
    import graphs as G

# ----------------------------------------------------------------------------------------------------------------
# helpers


def _rows(locs) -> set[tuple[int, ...]]:
    arr = np.asarray(locs, np.int64)
    if arr.ndim == 2 and arr.shape[1] == 0:  # locations in a scalar
        return {()} if len(arr) else set()
    if arr.size == 0:
        return set()
    return {tuple(int(v) for v in r) for r in np.unique(arr.reshape(len(arr), -1), axis=0)}


def _nonempty(d: dict) -> dict:
    return {k: _rows(v) if not isinstance(v, set) else v for k, v in d.items() if len(v)}


def check_rule(model, feeds, seeds: dict[str, np.ndarray] | None = None, rng=None, k: int | None = None):
    """Run one-node ``model``; compare the rule with the reference on random (or given) output locations."""
    graph, vals = G.run(model, feeds)
    proto = model.graph.node[-1]
    node = G.node_of(graph, proto.output[0])
    if seeds is None:
        seeds = {proto.output[0]: G.random_locs(rng, vals[proto.output[0]].shape, k)}
    got = RULES[node.op_type].backtrack(node, Context(graph, vals), seeds)
    got = {n: v for n, v in got.items() if n not in graph.constants}
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    want = ref.backtrack_ref(proto, lambda n: vals[n] if n in vals else consts[n], consts,
                             {o: _rows(v) for o, v in seeds.items()})
    assert _nonempty(got) == _nonempty(want), (seeds, got, want)
    return graph, vals, want


def check_trace(model, feeds, source: str, start: str, rng, extra: int = 3):
    """Whole trace from the argmax (plus random) locations of ``start`` back to ``source``."""
    graph, vals = G.run(model, feeds)
    y = vals[start]
    first = np.array([np.unravel_index(int(np.argmax(y)), y.shape)], np.int64)
    for locs in (first, np.concatenate([first, G.random_locs(rng, y.shape, extra)])):
        got = trace(graph, vals, source, start, locs)
        want = ref.trace_ref(model, vals, source, start, locs)
        got_d = _nonempty(got.locations)
        want_d = _nonempty(want)
        assert got_d == want_d, {n: (got_d.get(n), want_d.get(n)) for n in set(got_d) | set(want_d)
                                 if got_d.get(n) != want_d.get(n)}
    return graph, vals, want_d


def _node(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs, **attrs)


def _conv_out(n, k, s, p0, p1, d):
    return (n + p0 + p1 - d * (k - 1) - 1) // s + 1


# ----------------------------------------------------------------------------------------------------------------
# fc


@pytest.mark.parametrize("seed", range(16))
def test_gemm(seed):
    rng = np.random.default_rng(seed)
    m, k, n = int(rng.integers(1, 3)), int(rng.integers(1, 8)), int(rng.integers(1, 7))
    ta, tb = int(rng.integers(0, 2)), int(rng.integers(0, 2))
    alpha = float(rng.choice([1.0, -1.0, 0.5, -2.0]))
    a = G.values(rng, (k, m) if ta else (m, k))
    b = G.values(rng, (n, k) if tb else (k, n))
    feeds, consts = {"a": a}, {"c": G.values(rng, (n,))}
    (feeds if rng.random() < 0.4 else consts)["b"] = b
    model = G.build([_node("Gemm", ["a", "b", "c"], ["y"], transA=ta, transB=tb, alpha=alpha)], feeds, consts)
    check_rule(model, feeds, rng=rng, k=int(rng.integers(1, 2 * m * n + 1)))


def _matmul_shapes(rng):
    kind = int(rng.integers(0, 5))
    m, k, n = (int(v) for v in rng.integers(1, 5, 3))
    if kind == 0:
        return (m, k), (k, n)
    if kind == 1:  # batched, broadcasting
        batch = tuple(int(v) for v in rng.integers(1, 4, int(rng.integers(1, 3))))
        ba = tuple(1 if rng.random() < 0.3 else d for d in batch)[int(rng.integers(0, len(batch) + 1)):]
        bb = tuple(1 if rng.random() < 0.3 else d for d in batch)[int(rng.integers(0, len(batch) + 1)):]
        return ba + (m, k), bb + (k, n)
    if kind == 2:  # 1-D left
        return (k,), tuple(int(v) for v in rng.integers(1, 3, int(rng.integers(0, 2)))) + (k, n)
    if kind == 3:  # 1-D right
        return tuple(int(v) for v in rng.integers(1, 3, int(rng.integers(0, 2)))) + (m, k), (k,)
    return (k,), (k,)


@pytest.mark.parametrize("seed", range(20))
def test_matmul(seed):
    rng = np.random.default_rng(100 + seed)
    sa, sb = _matmul_shapes(rng)
    a, b = G.values(rng, sa), G.values(rng, sb)
    feeds, consts = {"a": a}, {}
    (feeds if rng.random() < 0.5 else consts)["b"] = b
    model = G.build([_node("MatMul", ["a", "b"], ["y"])], feeds, consts)
    check_rule(model, feeds, rng=rng, k=int(rng.integers(1, 7)))


# ----------------------------------------------------------------------------------------------------------------
# Conv and pools


def _conv_case(rng):
    nsp = int(rng.integers(1, 3))
    kind = int(rng.integers(0, 3))  # plain, grouped, depthwise
    cin_g = 1 if kind == 2 else int(rng.integers(1, 4))
    group = 1 if kind == 0 else int(rng.integers(2, 4))
    c_in = cin_g * group
    c_out = group * int(rng.integers(1, 3))
    ks = [int(v) for v in rng.integers(1, 4, nsp)]
    st = [int(v) for v in rng.integers(1, 4, nsp)]
    dl = [int(v) for v in rng.integers(1, 3, nsp)]
    pads = [int(rng.integers(0, k)) for k in ks] + [int(rng.integers(0, k)) for k in ks]
    auto = str(rng.choice(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto.startswith("SAME"):  # ORT: no dilation with SAME_*, and negative pads when stride > kernel
        dl = [1] * nsp
        st = [min(s, k) for s, k in zip(st, ks, strict=True)]
    sp = [int(rng.integers((k - 1) * d + 1, 10)) for k, d in zip(ks, dl, strict=True)]
    attrs = dict(kernel_shape=ks, strides=st, dilations=dl, group=group)
    if auto == "NOTSET":
        attrs["pads"] = pads
    else:
        attrs["auto_pad"] = auto
    return (1, c_in, *sp), (c_out, cin_g, *ks), attrs


@pytest.mark.parametrize("seed", range(30))
def test_conv(seed):
    rng = np.random.default_rng(200 + seed)
    xs, ws, attrs = _conv_case(rng)
    mode = int(rng.integers(0, 4))
    x, w = G.values(rng, xs, mode), G.values(rng, ws, mode)
    model = G.build([_node("Conv", ["x", "w", "b"], ["y"], **attrs)], {"x": x},
                    {"w": w, "b": G.values(rng, ws[:1])})
    check_rule(model, {"x": x}, rng=rng, k=int(rng.integers(1, 12)))


def _pool_attrs(rng, dilations: bool):
    nsp = int(rng.integers(1, 3))
    ks = [int(v) for v in rng.integers(1, 4, nsp)]
    st = [int(v) for v in rng.integers(1, 4, nsp)]
    dl = [int(v) for v in rng.integers(1, 3, nsp)] if dilations else [1] * nsp
    auto = str(rng.choice(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto.startswith("SAME"):  # ORT: no dilation with SAME_*, and negative pads when stride > kernel
        dl = [1] * nsp
        st = [min(s, k) for s, k in zip(st, ks, strict=True)]
    sp = [int(rng.integers((k - 1) * d + 1, 10)) for k, d in zip(ks, dl, strict=True)]
    attrs = dict(kernel_shape=ks, strides=st)
    if dilations:
        attrs["dilations"] = dl
    if auto == "NOTSET":
        attrs["ceil_mode"] = int(rng.integers(0, 2))
        attrs["pads"] = [int(rng.integers(0, k)) for k in ks] + [int(rng.integers(0, k)) for k in ks]
    else:
        attrs["auto_pad"] = auto
    return (1, int(rng.integers(1, 5)), *sp), attrs


@pytest.mark.parametrize("seed", range(24))
def test_maxpool(seed):
    rng = np.random.default_rng(300 + seed)
    xs, attrs = _pool_attrs(rng, dilations=True)
    x = G.values(rng, xs)
    model = G.build([_node("MaxPool", ["x"], ["y"], **attrs)], {"x": x})
    check_rule(model, {"x": x}, rng=rng, k=int(rng.integers(1, 10)))


@pytest.mark.parametrize("seed", range(16))
def test_averagepool_local(seed):
    rng = np.random.default_rng(400 + seed)
    xs, attrs = _pool_attrs(rng, dilations=False)
    attrs["count_include_pad"] = int(rng.integers(0, 2))
    x = G.values(rng, xs)
    model = G.build([_node("AveragePool", ["x"], ["y"], **attrs)], {"x": x})
    check_rule(model, {"x": x}, rng=rng, k=int(rng.integers(1, 10)))


@pytest.mark.parametrize("seed", range(12))
def test_averagepool_global_window(seed):
    """One window covering the whole input (kernel ≥ input + begin pad): every positive position."""
    rng = np.random.default_rng(500 + seed)
    nsp = int(rng.integers(1, 3))
    sp = [int(v) for v in rng.integers(1, 7, nsp)]
    p0 = [int(v) for v in rng.integers(0, 2, nsp)]
    p1 = [int(v) for v in rng.integers(0, 2, nsp)] if seed % 2 else [0] * nsp
    ks = [d + a + int(rng.integers(0, b + 1)) for d, a, b in zip(sp, p0, p1, strict=True)]
    attrs = dict(kernel_shape=ks, strides=[k + 1 for k in ks], pads=p0 + p1,
                 count_include_pad=int(rng.integers(0, 2)))
    x = G.values(rng, (1, int(rng.integers(1, 5)), *sp), int(rng.integers(0, 4)))
    if seed % 3 == 0:
        x = -np.abs(x) - (x == 0)  # nothing positive: the argmax
    model = G.build([_node("AveragePool", ["x"], ["y"], **attrs)], {"x": x})
    _, vals, _ = check_rule(model, {"x": x}, rng=rng, k=4)
    assert all(d == 1 for d in vals["y"].shape[2:])


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("seed", range(8))
def test_global_pool(op, seed):
    rng = np.random.default_rng(600 + seed)
    nsp = int(rng.integers(1, 3))
    x = G.values(rng, (1, int(rng.integers(1, 6)), *rng.integers(1, 6, nsp)))
    if seed % 3 == 0:
        x[0, 0] = -np.abs(x[0, 0]) - 1  # channel 0 has nothing positive
    model = G.build([_node(op, ["x"], ["y"])], {"x": x})
    check_rule(model, {"x": x}, rng=rng, k=4)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("seed", range(12))
def test_reduce(op, seed):
    rng = np.random.default_rng(700 + seed)
    rank = int(rng.integers(2, 5))
    shape = (1, *rng.integers(1, 5, rank - 1))
    x = G.values(rng, shape, int(rng.integers(0, 4)))
    if seed % 4 == 0:
        x = -np.abs(x)
    attrs = {"keepdims": int(rng.integers(0, 2))}
    if seed % 5:
        axes = sorted(rng.choice(rank, size=int(rng.integers(1, rank + 1)), replace=False).tolist())
        attrs["axes"] = [a - rank if rng.random() < 0.3 else a for a in axes]
    model = G.build([_node(op, ["x"], ["y"], **attrs)], {"x": x})
    check_rule(model, {"x": x}, rng=rng, k=4)


def test_reduce_sum_axes_input():
    rng = np.random.default_rng(7)
    x = G.values(rng, (1, 3, 4, 2))
    model = G.build([_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], {"x": x},
                    {"axes": np.array([1, -1], np.int64)})
    check_rule(model, {"x": x}, rng=rng, k=4)


# ----------------------------------------------------------------------------------------------------------------
# index maps


@pytest.mark.parametrize("seed", range(12))
def test_concat(seed):
    rng = np.random.default_rng(800 + seed)
    rank = int(rng.integers(2, 5))
    base = [1, *rng.integers(1, 4, rank - 1)]
    axis = int(rng.integers(0, rank))
    n_in = int(rng.integers(2, 4))
    feeds, consts, names = {}, {}, []
    for i in range(n_in):
        s = list(base)
        s[axis] = int(rng.integers(1, 4)) if axis else 1
        arr = G.values(rng, s)
        (consts if i == 1 and rng.random() < 0.4 else feeds)[f"x{i}"] = arr
        names.append(f"x{i}")
    model = G.build([_node("Concat", names, ["y"], axis=axis - rank if rng.random() < 0.5 else axis)],
                    feeds, consts)
    check_rule(model, feeds, rng=rng, k=6)


@pytest.mark.parametrize("seed", range(10))
def test_split(seed):
    rng = np.random.default_rng(900 + seed)
    rank = int(rng.integers(2, 5))
    axis = int(rng.integers(1, rank))
    n_out = int(rng.integers(1, 4))
    consts = {}
    if seed % 2:
        sizes = [int(v) for v in rng.integers(1, 4, n_out)]
        consts["split"] = np.array(sizes, np.int64)
        ins = ["x", "split"]
    else:
        sizes = [int(rng.integers(1, 3))] * n_out
        ins = ["x"]
    shape = [1, *rng.integers(1, 4, rank - 1)]
    shape[axis] = sum(sizes)
    x = G.values(rng, shape)
    outs = [f"y{i}" for i in range(n_out)]
    model = G.build([_node("Split", ins, outs, axis=axis - rank if rng.random() < 0.5 else axis)], {"x": x}, consts)
    graph, vals = G.run(model, {"x": x})
    picked = [o for o in outs if rng.random() < 0.7] or outs[-1:]
    seeds = {o: G.random_locs(rng, vals[o].shape, 3) for o in picked}
    check_rule(model, {"x": x}, seeds=seeds)


def _onnx_slice_len(d, st, en, sp):
    st = st + d if st < 0 else st
    en = en + d if en < 0 else en
    if sp > 0:
        st, en = min(max(st, 0), d), min(max(en, 0), d)
    else:
        st, en = min(max(st, 0), d - 1), min(max(en, -1), d - 1)
    return max(0, math.ceil((en - st) / sp))


@pytest.mark.parametrize("seed", range(20))
def test_slice(seed):
    rng = np.random.default_rng(1000 + seed)
    rank = int(rng.integers(2, 5))
    shape = [1, *rng.integers(1, 7, rank - 1)]
    axes = sorted(rng.choice(np.arange(1, rank), size=int(rng.integers(1, rank)), replace=False).tolist())
    starts, ends, steps = [], [], []
    big = [2**63 - 1, -(2**63)]
    for ax in axes:
        d = shape[ax]
        while True:
            sp = int(rng.choice([1, 1, 2, 3, -1, -1, -2]))
            st = int(rng.choice([*range(-d - 2, d + 3), *big]))
            en = int(rng.choice([*range(-d - 2, d + 3), *big]))
            if _onnx_slice_len(d, st, en, sp) > 0:
                break
        starts.append(st)
        ends.append(en)
        steps.append(sp)
    x = G.values(rng, shape)
    consts = {"s": np.array(starts, np.int64), "e": np.array(ends, np.int64),
              "a": np.array([a - rank if rng.random() < 0.3 else a for a in axes], np.int64),
              "t": np.array(steps, np.int64)}
    model = G.build([_node("Slice", ["x", "s", "e", "a", "t"], ["y"])], {"x": x}, consts)
    _, vals, _ = check_rule(model, {"x": x}, rng=rng, k=5)
    assert vals["y"].shape[axes[0]] == _onnx_slice_len(shape[axes[0]], starts[0], ends[0], steps[0])


def test_slice_negative_step_start_below_range():
    """ONNX clamps a start < −dim to 0 for a negative step: Slice(start=−100, end=−∞, step=−1) reads x[0]."""
    x = np.arange(5, dtype=np.float32).reshape(1, 5)
    consts = {"s": np.array([-100], np.int64), "e": np.array([-(2**63)], np.int64),
              "a": np.array([1], np.int64), "t": np.array([-1], np.int64)}
    model = G.build([_node("Slice", ["x", "s", "e", "a", "t"], ["y"])], {"x": x}, consts)
    _, vals, want = check_rule(model, {"x": x}, seeds={"y": np.array([[0, 0]], np.int64)})
    assert vals["y"].shape == (1, 1) and want == {"x": {(0, 0)}}


@pytest.mark.parametrize("seed", range(15))
def test_pad(seed):
    rng = np.random.default_rng(1100 + seed)
    rank = int(rng.integers(2, 5))
    shape = [1, *rng.integers(1, 6, rank - 1)]
    mode = ["constant", "edge", "reflect"][seed % 3]
    pads = [0] * (2 * rank)
    for ax in range(1, rank):
        hi = shape[ax] if mode == "reflect" else 4
        pads[ax], pads[rank + ax] = int(rng.integers(0, hi)), int(rng.integers(0, hi))
    x = G.values(rng, shape)
    consts = {"p": np.array(pads, np.int64), "v": np.array(1.5, np.float32)}
    model = G.build([_node("Pad", ["x", "p", "v"], ["y"], mode=mode)], {"x": x}, consts)
    check_rule(model, {"x": x}, rng=rng, k=8)


@pytest.mark.parametrize("seed", range(14))
def test_gather(seed):
    rng = np.random.default_rng(1200 + seed)
    rank = int(rng.integers(2, 5))
    shape = [1, *rng.integers(1, 6, rank - 1)]
    axis = int(rng.integers(1, rank))
    d = shape[axis]
    ishape = [(), (int(rng.integers(1, 5)),), (2, int(rng.integers(1, 4)))][seed % 3]
    idx = rng.integers(-d, d, size=ishape).astype(np.int64)
    x = G.values(rng, shape)
    model = G.build([_node("Gather", ["x", "i"], ["y"], axis=axis - rank if rng.random() < 0.4 else axis)],
                    {"x": x}, {"i": idx})
    check_rule(model, {"x": x}, rng=rng, k=6)


@pytest.mark.parametrize("seed", range(10))
def test_transpose(seed):
    rng = np.random.default_rng(1300 + seed)
    rank = int(rng.integers(2, 6))
    x = G.values(rng, [1, *rng.integers(1, 5, rank - 1)])
    attrs = {"perm": rng.permutation(rank).tolist()} if seed % 4 else {}
    model = G.build([_node("Transpose", ["x"], ["y"], **attrs)], {"x": x})
    check_rule(model, {"x": x}, rng=rng, k=6)


@pytest.mark.parametrize("seed", range(16))
def test_reshape_family(seed):
    rng = np.random.default_rng(1400 + seed)
    op = ["Reshape", "Flatten", "Squeeze", "Unsqueeze"][seed % 4]
    shape = [1, *rng.integers(1, 4, int(rng.integers(1, 4)))]
    rank = len(shape)
    x = G.values(rng, shape)
    consts: dict = {}
    ins, attrs = ["x"], {}
    if op == "Reshape":
        size = int(np.prod(shape))
        target = [1, size] if seed % 8 == 0 else [size, 1, 1] if seed % 3 else [1, -1]
        for f in (2, 3):
            if size % f == 0 and rng.random() < 0.5:
                target = [1, f, -1]
        consts["s"] = np.array(target, np.int64)
        ins.append("s")
    elif op == "Flatten":
        attrs["axis"] = int(rng.integers(-rank, rank + 1))
    elif op == "Squeeze":
        x = x.reshape([1, 1, *shape[1:], 1])
        consts["s"] = np.array([1, -1], np.int64)
        ins.append("s")
    else:
        consts["s"] = np.array([0, -1, 2], np.int64)
        ins.append("s")
    model = G.build([_node(op, ins, ["y"], **attrs)], {"x": x}, consts)
    check_rule(model, {"x": x}, rng=rng, k=6)


# ----------------------------------------------------------------------------------------------------------------
# elementwise


def _broadcast_partner(rng, shape):
    choice = int(rng.integers(0, 6))
    if choice == 0:
        return list(shape)
    if choice == 1:
        return [shape[1], 1, 1]
    if choice == 2:
        return [1, shape[1], 1, 1]
    if choice == 3:
        return [shape[3]]
    if choice == 4:
        return [1]
    return [1, 1, shape[2], 1]


@pytest.mark.parametrize("op", ["Add", "Sub"])
@pytest.mark.parametrize("seed", range(12))
def test_add_sub(op, seed):
    rng = np.random.default_rng(1500 + seed)
    shape = [1, *rng.integers(1, 5, 3)]
    other = _broadcast_partner(rng, shape)
    a = G.values(rng, shape, int(rng.integers(0, 3)))
    b = G.values(rng, other, int(rng.integers(0, 3)))
    feeds, consts = {}, {}
    kind = seed % 4
    if kind == 3:  # the small one first
        feeds["b"] = b
        feeds["a"] = a
        ins = ["b", "a"]
    else:
        feeds["a"] = a
        (consts if kind == 2 else feeds)["b"] = b
        ins = ["a", "b"]
    if kind == 1 and seed % 8 == 1:  # all tied
        feeds["b"] = np.zeros(other, np.float32)
        feeds["a"] = np.zeros(shape, np.float32)
    model = G.build([_node(op, ins, ["y"])], feeds, consts)
    check_rule(model, feeds, rng=rng, k=8)


def test_add_same_tensor_twice():
    rng = np.random.default_rng(3)
    x = G.values(rng, (1, 2, 3, 3))
    model = G.build([_node("Add", ["x", "x"], ["y"])], {"x": x})
    seeds = {"y": G.random_locs(rng, x.shape, 5)}
    _, _, want = check_rule(model, {"x": x}, seeds=seeds)
    assert want == {"x": _rows(seeds["y"])}


@pytest.mark.parametrize("seed", range(8))
def test_mul_gate(seed):
    rng = np.random.default_rng(1600 + seed)
    shape = [1, *rng.integers(1, 5, 3)]
    x = G.values(rng, shape)
    gate = G.values(rng, _broadcast_partner(rng, shape))
    feeds, consts = {"x": x}, {}
    (feeds if seed % 3 else consts)["g"] = gate
    ins = ["g", "x"] if seed % 2 else ["x", "g"]
    model = G.build([_node("Mul", ins, ["y"])], feeds, consts)
    check_rule(model, feeds, rng=rng, k=8)


PASS_CASES = [
    ("Relu", {}, {}),
    ("LeakyRelu", {"alpha": 0.1}, {}),
    ("Sigmoid", {}, {}),
    ("Tanh", {}, {}),
    ("HardSigmoid", {}, {}),
    ("HardSwish", {}, {}),
    ("Softmax", {"axis": 1}, {}),
    ("Identity", {}, {}),
    ("Elu", {}, {}),
    ("Abs", {}, {}),
    ("Clip", {}, {"lo": np.array(-1, np.float32), "hi": np.array(1, np.float32)}),
    ("PRelu", {}, {"slope": np.array([[[0.5]], [[-1.0]], [[2.0]]], np.float32)}),
    ("BatchNormalization", {}, {k: np.array([1.0, 2.0, 0.5], np.float32) for k in ("s", "bb", "m", "v")}),
]


@pytest.mark.parametrize("op,attrs,consts", PASS_CASES, ids=[c[0] for c in PASS_CASES])
def test_pass_through(op, attrs, consts):
    rng = np.random.default_rng(len(op))
    x = G.values(rng, (1, 3, 4, 5))
    model = G.build([_node(op, ["x", *consts], ["y"], **attrs)], {"x": x}, consts)
    check_rule(model, {"x": x}, rng=rng, k=8)


# ----------------------------------------------------------------------------------------------------------------
# LSTM


def _lstm_model(rng, direction, t_len, i_len, h_len, h0_data: bool, bias: bool, mode: int):
    d = 2 if direction == "bidirectional" else 1
    x = G.values(rng, (t_len, 1, i_len), 3 if mode == 4 else mode)
    consts = {"W": G.values(rng, (d, 4 * h_len, i_len), mode), "R": G.values(rng, (d, 4 * h_len, h_len), mode)}
    feeds = {"x": x}
    ins = ["x", "W", "R"]
    if bias or h0_data:
        consts["B"] = G.values(rng, (d, 8 * h_len)) if bias else np.zeros((d, 8 * h_len), np.float32)
        ins.append("B")
    if h0_data:
        feeds["h0"] = G.values(rng, (d, 1, h_len))
        ins += ["", "h0"]
    node = _node("LSTM", ins, ["Y", "Yh", "Yc"], hidden_size=h_len, direction=direction)
    return G.build([node], feeds, consts), feeds


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("seed", range(12))
def test_lstm(direction, seed):
    rng = np.random.default_rng(1700 + seed)
    t_len, i_len, h_len = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(1, 5))
    model, feeds = _lstm_model(rng, direction, t_len, i_len, h_len, h0_data=seed % 2 == 1, bias=seed % 3 == 0,
                               mode=[0, 2, 3, 4, 4][seed % 5])
    graph, vals = G.run(model, feeds)
    seeds = {}
    if seed % 4 != 1:
        seeds["Y"] = G.random_locs(rng, vals["Y"].shape, int(rng.integers(1, 6)))
    if seed % 4 != 0:
        seeds["Yh"] = G.random_locs(rng, vals["Yh"].shape, int(rng.integers(1, 4)))
    check_rule(model, feeds, seeds=seeds)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("seed", range(3))
def test_lstm_layout1(direction, seed):
    """ORT runs no layout-1 LSTM: take a layout-0 run, transpose its tensors, give them to a layout-1 node."""
    rng = np.random.default_rng(1800 + seed)
    t_len, i_len, h_len = 3, 2, 3
    model, feeds = _lstm_model(rng, direction, t_len, i_len, h_len, h0_data=True, bias=False, mode=[3, 4, 4][seed])
    _, vals0 = G.run(model, feeds)
    vals = {"x1": vals0["x"].transpose(1, 0, 2), "h01": vals0["h0"].transpose(1, 0, 2),
            "Y1": vals0["Y"].transpose(2, 0, 1, 3), "Yh1": vals0["Yh"].transpose(1, 0, 2),
            "Yc1": vals0["Yc"].transpose(1, 0, 2)}
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node1 = _node("LSTM", ["x1", "W", "R", "B", "", "h01"], ["Y1", "Yh1", "Yc1"], hidden_size=h_len,
                  direction=direction, layout=1)
    m1 = G.build([node1], {"x1": vals["x1"], "h01": vals["h01"]}, consts)
    graph1 = Graph.from_model(m1)
    seeds = {"Y1": G.random_locs(rng, vals["Y1"].shape, 3), "Yh1": G.random_locs(rng, vals["Yh1"].shape, 2)}
    got = RULES["LSTM"].backtrack(G.node_of(graph1, "Y1"), Context(graph1, vals), seeds)
    want = ref.backtrack_ref(m1.graph.node[0], lambda n: vals[n] if n in vals else consts[n], consts,
                             {o: _rows(v) for o, v in seeds.items()})
    assert _nonempty(got) == _nonempty(want)
    # and it is the layout-0 answer, transposed
    seeds0 = {"Y": seeds["Y1"][:, [1, 2, 0, 3]], "Yh": seeds["Yh1"][:, [1, 0, 2]]}
    want0 = ref.backtrack_ref(model.graph.node[0], lambda n: vals0[n] if n in vals0 else consts[n], consts,
                              {o: _rows(v) for o, v in seeds0.items()})
    assert want.get("x1", set()) == {(n, t, k) for t, n, k in want0.get("x", set())}
    assert want.get("h01", set()) == {(n, d, k) for d, n, k in want0.get("h0", set())}


# ----------------------------------------------------------------------------------------------------------------
# whole traces through chains


def _w(rng, shape, mode):
    return G.values(rng, shape, mode)


@pytest.mark.parametrize("seed", range(8))
def test_trace_cnn(seed):
    """Conv → Relu → MaxPool → Flatten → Gemm."""
    rng = np.random.default_rng(2000 + seed)
    mode = seed % 4
    x = _w(rng, (1, 3, 9, 9), mode)
    consts = {"w": _w(rng, (4, 3, 3, 3), mode), "b": _w(rng, (4,), mode), "fw": _w(rng, (5, 64), mode),
              "fb": np.zeros(5, np.float32)}
    nodes = [_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1]),
             _node("Relu", ["c"], ["r"]),
             _node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             _node("Flatten", ["p"], ["f"]),
             _node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    check_trace(G.build(nodes, {"x": x}, consts, ["y"]), {"x": x}, "x", "y", rng)


@pytest.mark.parametrize("seed", range(6))
def test_trace_inception(seed):
    """Conv → {1×1 conv, 3×3 conv, MaxPool → 1×1 conv} → Concat → GlobalAveragePool → Flatten → Gemm."""
    rng = np.random.default_rng(2100 + seed)
    mode = seed % 4
    x = _w(rng, (1, 2, 8, 8), mode)
    consts = {"w0": _w(rng, (3, 2, 3, 3), mode), "w1": _w(rng, (2, 3, 1, 1), mode),
              "w2": _w(rng, (2, 3, 3, 3), mode), "w3": _w(rng, (1, 3, 1, 1), mode),
              "fw": _w(rng, (5, 3), mode), "fb": np.zeros(3, np.float32)}
    nodes = [_node("Conv", ["x", "w0"], ["c0"], strides=[2, 2], pads=[1, 1, 1, 1]),
             _node("Relu", ["c0"], ["r0"]),
             _node("Conv", ["r0", "w1"], ["b1"]),
             _node("Conv", ["r0", "w2"], ["b2"], auto_pad="SAME_UPPER"),
             _node("MaxPool", ["r0"], ["m3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             _node("Conv", ["m3", "w3"], ["b3"]),
             _node("Concat", ["b1", "b2", "b3"], ["cat"], axis=1),
             _node("GlobalAveragePool", ["cat"], ["gap"]),
             _node("Flatten", ["gap"], ["f"]),
             _node("Gemm", ["f", "fw", "fb"], ["y"])]
    check_trace(G.build(nodes, {"x": x}, consts, ["y"]), {"x": x}, "x", "y", rng)


@pytest.mark.parametrize("seed", range(6))
def test_trace_residual(seed):
    """Conv → Relu → Conv → Add(skip) → Relu → ReduceMean → MatMul, and a skip straight from the input."""
    rng = np.random.default_rng(2200 + seed)
    mode = seed % 4
    x = _w(rng, (1, 3, 6, 6), mode)
    consts = {"w1": _w(rng, (3, 3, 3, 3), mode), "w2": _w(rng, (3, 3, 3, 3), mode), "fw": _w(rng, (3, 4), mode)}
    nodes = [_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             _node("Relu", ["c1"], ["r1"]),
             _node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             _node("Add", ["c2", "r1" if seed % 2 else "x"], ["s"]),
             _node("Relu", ["s"], ["r2"]),
             _node("ReduceMean", ["r2"], ["m"], axes=[2, 3], keepdims=0),
             _node("MatMul", ["m", "fw"], ["y"])]
    check_trace(G.build(nodes, {"x": x}, consts, ["y"]), {"x": x}, "x", "y", rng)


@pytest.mark.parametrize("seed", range(6))
def test_trace_se_gate(seed):
    """Squeeze-and-excitation: Conv → Relu → (GAP → Gemm → Relu → Gemm → Sigmoid → Reshape) gate → Mul → GAP →
    Gemm."""
    rng = np.random.default_rng(2300 + seed)
    mode = seed % 4
    x = _w(rng, (1, 3, 5, 5), mode)
    consts = {"w": _w(rng, (4, 3, 3, 3), mode), "s1": _w(rng, (4, 2), mode), "s2": _w(rng, (2, 4), mode),
              "shape": np.array([1, 4, 1, 1], np.int64), "fw": _w(rng, (4, 3), mode)}
    nodes = [_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             _node("Relu", ["c"], ["f"]),
             _node("GlobalAveragePool", ["f"], ["g0"]),
             _node("Flatten", ["g0"], ["g1"]),
             _node("Gemm", ["g1", "s1"], ["g2"]),
             _node("Relu", ["g2"], ["g3"]),
             _node("Gemm", ["g3", "s2"], ["g4"]),
             _node("Sigmoid", ["g4"], ["g5"]),
             _node("Reshape", ["g5", "shape"], ["gate"]),
             _node("Mul", ["f", "gate"], ["se"]),
             _node("GlobalAveragePool", ["se"], ["p"]),
             _node("Flatten", ["p"], ["pf"]),
             _node("Gemm", ["pf", "fw"], ["y"])]
    check_trace(G.build(nodes, {"x": x}, consts, ["y"]), {"x": x}, "x", "y", rng)


@pytest.mark.parametrize("seed", range(6))
def test_trace_index_ops(seed):
    """Pad → Conv → Split → (Relu, Sigmoid) → Mul → Slice(reversed) → Transpose → Gather → Flatten → MatMul."""
    rng = np.random.default_rng(2400 + seed)
    mode = seed % 4
    x = _w(rng, (1, 2, 5, 6), mode)
    consts = {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "w": _w(rng, (4, 2, 3, 3), mode),
              "ss": np.array([4, 0], np.int64), "se": np.array([-100, 100], np.int64),
              "sa": np.array([2, 3], np.int64), "st": np.array([-1, 2], np.int64),
              "gi": np.array([2, 0, -1], np.int64), "fw": _w(rng, (2 * 3 * 5, 3), mode)}
    nodes = [_node("Pad", ["x", "p"], ["xp"], mode=["constant", "edge", "reflect"][seed % 3]),
             _node("Conv", ["xp", "w"], ["c"]),
             _node("Split", ["c"], ["s0", "s1"], axis=1),
             _node("Relu", ["s0"], ["a0"]),
             _node("Sigmoid", ["s1"], ["a1"]),
             _node("Mul", ["a0", "a1"], ["m"]),
             _node("Slice", ["m", "ss", "se", "sa", "st"], ["sl"]),
             _node("Transpose", ["sl"], ["tr"], perm=[0, 1, 3, 2]),
             _node("Gather", ["tr", "gi"], ["ga"], axis=2),
             _node("Flatten", ["ga"], ["fl"]),
             _node("MatMul", ["fl", "fw"], ["y"])]
    model = G.build(nodes, {"x": x}, consts, ["y"])
    graph, vals, _ = check_trace(model, {"x": x}, "x", "y", rng)
    assert vals["ga"].shape == (1, 2, 3, 5)


@pytest.mark.parametrize("seed", range(6))
def test_trace_misc(seed):
    """Conv(depthwise, stride 2) → AveragePool → Sub(two branches) → Concat(with a constant) → Unsqueeze →
    Squeeze → Softmax → Gemm(transA) on a vector (fc ← fc), and a MaxPool(ceil_mode) side branch added back."""
    rng = np.random.default_rng(2700 + seed)
    mode = seed % 5
    x = _w(rng, (1, 3, 7, 7), mode)
    consts = {"w1": _w(rng, (3, 1, 3, 3), mode), "w2": _w(rng, (2, 3, 1, 1), mode),
              "w3": _w(rng, (2, 3, 2, 2), mode), "k": _w(rng, (1, 2, 2, 2), mode),
              "ax": np.array([0], np.int64), "fw": _w(rng, (3, 2), mode)}
    nodes = [_node("Conv", ["x", "w1"], ["dw"], group=3, strides=[2, 2], pads=[1, 1, 1, 1]),
             _node("AveragePool", ["dw"], ["ap"], kernel_shape=[2, 2], strides=[1, 1]),
             _node("Conv", ["ap", "w2"], ["b1"]),
             _node("Conv", ["dw", "w3"], ["b2"]),
             _node("Sub", ["b1", "b2"], ["d"]),
             _node("MaxPool", ["d"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
             _node("Concat", ["mp", "k"], ["cat"], axis=0),
             _node("ReduceMax", ["cat"], ["rm"], axes=[0, 2, 3], keepdims=0),
             _node("Unsqueeze", ["rm", "ax"], ["u"]),
             _node("Squeeze", ["u", "ax"], ["sq"]),
             _node("Softmax", ["sq"], ["sm"]),
             _node("Unsqueeze", ["sm", "ax"], ["col"]),
             _node("Transpose", ["col"], ["row"], perm=[1, 0]),
             _node("Gemm", ["row", "fw"], ["y"], transA=1, transB=1)]
    model = G.build(nodes, {"x": x}, consts, ["y"])
    graph, vals, want = check_trace(model, {"x": x}, "x", "y", rng)
    assert vals["b1"].shape == vals["b2"].shape == (1, 2, 3, 3) and vals["cat"].shape == (2, 2, 2, 2)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("seed", range(3))
def test_trace_lstm(direction, seed):
    """Conv → Relu → Transpose → Reshape (columns as time steps) → LSTM → Y_h → Transpose → Reshape → Gemm."""
    rng = np.random.default_rng(2500 + seed)
    d = 2 if direction == "bidirectional" else 1
    mode = [0, 2, 3][seed]
    h_len = 3
    x = _w(rng, (1, 2, 3, 4), mode)
    consts = {"w": _w(rng, (2, 2, 3, 3), mode), "s1": np.array([4, 1, 6], np.int64),
              "W": _w(rng, (d, 4 * h_len, 6), mode), "R": _w(rng, (d, 4 * h_len, h_len), mode),
              "s2": np.array([1, d * h_len], np.int64), "fw": _w(rng, (d * h_len, 4), mode)}
    nodes = [_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             _node("Relu", ["c"], ["r"]),
             _node("Transpose", ["r"], ["t"], perm=[3, 0, 1, 2]),
             _node("Reshape", ["t", "s1"], ["seq"]),
             _node("LSTM", ["seq", "W", "R"], ["Y", "Yh"], hidden_size=h_len, direction=direction),
             _node("Transpose", ["Yh"], ["yt"], perm=[1, 0, 2]),
             _node("Reshape", ["yt", "s2"], ["emb"]),
             _node("Gemm", ["emb", "fw"], ["y"])]
    check_trace(G.build(nodes, {"x": x}, consts, ["y"]), {"x": x}, "x", "y", rng)


@pytest.mark.parametrize("seed", range(3))
def test_trace_lstm_all_steps(seed):
    """Every step of Y explained (Y → Reshape → Gemm): per step only the largest arriving unit is kept."""
    rng = np.random.default_rng(2600 + seed)
    t_len, i_len, h_len = 4, 3, 3
    x = _w(rng, (t_len, 1, i_len), 3)
    consts = {"W": _w(rng, (1, 4 * h_len, i_len), 0), "R": _w(rng, (1, 4 * h_len, h_len), 0),
              "s": np.array([1, t_len * h_len], np.int64), "fw": _w(rng, (t_len * h_len, 2), 0)}
    nodes = [_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=h_len),
             _node("Reshape", ["Y", "s"], ["f"]),
             _node("Gemm", ["f", "fw"], ["y"])]
    check_trace(G.build(nodes, {"x": x}, consts, ["y"]), {"x": x}, "x", "y", rng)


# ----------------------------------------------------------------------------------------------------------------
# hand-computed cases


def _one(op_type, model, feeds, seeds):
    graph, vals = G.run(model, feeds)
    node = G.node_of(graph, model.graph.node[-1].output[0])
    return {k: _rows(v) for k, v in RULES[op_type].backtrack(node, Context(graph, vals), seeds).items()
            if k not in graph.constants and len(v)}


def test_hand_conv_3x3_on_4x4():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    all_out = np.array([[0, 0, i, j] for i in range(2) for j in range(2)], np.int64)
    # two taps: top-left (+1) and bottom-right (+1) → the bottom-right input is larger everywhere
    w = np.zeros((1, 1, 3, 3), np.float32)
    w[0, 0, 0, 0] = w[0, 0, 2, 2] = 1
    model = G.build([_node("Conv", ["x", "w"], ["y"])], {"x": x}, {"w": w})
    got = _one("Conv", model, {"x": x}, {"y": all_out})
    assert got == {"x": {(0, 0, i + 2, j + 2) for i in range(2) for j in range(2)}}
    # bottom-right tap −1: the top-left input wins; at (0, 0) it is x=0 and every contribution but one is 0 →
    # the first position (0, 0) (a tie resolved row-major)
    w[0, 0, 2, 2] = -1
    model = G.build([_node("Conv", ["x", "w"], ["y"])], {"x": x}, {"w": w})
    got = _one("Conv", model, {"x": x}, {"y": np.array([[0, 0, 0, 0], [0, 0, 1, 1]], np.int64)})
    assert got == {"x": {(0, 0, 0, 0), (0, 0, 1, 1)}}
    # all-ones filter, stride 2, pad 1: output 2×2; the peak at (3, 3) only reaches output (1, 1)
    xp = np.ones((1, 1, 4, 4), np.float32)
    xp[0, 0, 3, 3] = 9
    xp[0, 0, 1, 0] = 5
    model = G.build([_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])], {"x": xp},
                    {"w": np.ones((1, 1, 3, 3), np.float32)})
    got = _one("Conv", model, {"x": xp}, {"y": all_out})
    assert got == {"x": {(0, 0, 1, 0), (0, 0, 0, 1), (0, 0, 3, 3)}}


def test_hand_conv_channel_choice():
    """Two input channels: channel 1 has the larger sum although channel 0 has the single largest term."""
    x = np.zeros((1, 2, 3, 3), np.float32)
    x[0, 0, 0, 0] = 5
    x[0, 1] = 1
    w = np.ones((1, 2, 3, 3), np.float32)
    w[0, 1, 2, 1] = 2
    model = G.build([_node("Conv", ["x", "w"], ["y"])], {"x": x}, {"w": w})
    got = _one("Conv", model, {"x": x}, {"y": np.array([[0, 0, 0, 0]], np.int64)})
    assert got == {"x": {(0, 1, 2, 1)}}


def test_hand_gemm_three_inputs():
    a = np.array([[1, -2, 3]], np.float32)
    w = np.array([[1, 1, -1], [-1, -1, -1]], np.float32)  # (N=2, K=3), transB
    model = G.build([_node("Gemm", ["a", "w"], ["y"], transB=1)], {"a": a}, {"w": w})
    assert _one("Gemm", model, {"a": a}, {"y": np.array([[0, 0]])}) == {"a": {(0, 0)}}
    assert _one("Gemm", model, {"a": a}, {"y": np.array([[0, 1]])}) == {"a": {(0, 1)}}
    assert _one("Gemm", model, {"a": a}, {"y": np.array([[0, 0], [0, 1]])}) == {"a": {(0, 0), (0, 1)}}
    # alpha < 0 flips every sign
    model = G.build([_node("Gemm", ["a", "w"], ["y"], transB=1, alpha=-1.0)], {"a": a}, {"w": w})
    assert _one("Gemm", model, {"a": a}, {"y": np.array([[0, 0]])}) == {"a": {(0, 1), (0, 2)}}
    # both operands data: W gets (n, k) rows of its own layout
    model = G.build([_node("Gemm", ["a", "w"], ["y"], transB=1)], {"a": a, "w": w})
    assert _one("Gemm", model, {"a": a, "w": w}, {"y": np.array([[0, 1]])}) == {"a": {(0, 1)}, "w": {(1, 1)}}


def test_hand_fc_on_feature_map_keeps_the_argmax():
    """An fc reading a flattened 2×2 map keeps, per output, only its largest term (first on ties); on a vector it
    keeps every positive term."""
    x = np.array([[[[1, 3], [2, 3]]]], np.float32)
    fw = np.array([[1, 1, 1, 1], [2, 0, 1, -1]], np.float32)  # (N=2, K=4), transB
    nodes = [_node("Flatten", ["x"], ["f"]), _node("Gemm", ["f", "fw"], ["y"], transB=1)]
    model = G.build(nodes, {"x": x}, {"fw": fw})
    graph, vals = G.run(model, {"x": x})
    got = trace(graph, vals, "x", "y", np.array([[0, 0], [0, 1]]))
    assert _rows(got.at("f")) == {(0, 1), (0, 0)}  # output 0: terms 1,3,2,3 → k=1; output 1: 2,0,2,−3 → k=0
    assert _rows(got.at("x")) == {(0, 0, 0, 1), (0, 0, 0, 0)}
    v = x.reshape(1, 4)
    model = G.build([_node("Gemm", ["v", "fw"], ["y"], transB=1)], {"v": v}, {"fw": fw})
    assert _one("Gemm", model, {"v": v}, {"y": np.array([[0, 1]])}) == {"v": {(0, 0), (0, 2)}}


def test_hand_pool_ties_and_add_ties():
    x = np.ones((1, 1, 2, 2), np.float32)
    model = G.build([_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2])], {"x": x})
    assert _one("MaxPool", model, {"x": x}, {"y": np.array([[0, 0, 0, 0]])}) == {"x": {(0, 0, 0, 0)}}
    a = np.array([[1, 2, 3]], np.float32)
    b = np.array([[1, 5, 0]], np.float32)
    model = G.build([_node("Add", ["a", "b"], ["y"])], {"a": a, "b": b})
    got = _one("Add", model, {"a": a, "b": b}, {"y": np.array([[0, 0], [0, 1], [0, 2]])})
    assert got == {"a": {(0, 0), (0, 2)}, "b": {(0, 1)}}
    model = G.build([_node("Sub", ["a", "b"], ["y"])], {"a": a, "b": b})
    got = _one("Sub", model, {"a": a, "b": b}, {"y": np.array([[0, 0], [0, 1], [0, 2]])})
    assert got == {"a": {(0, 0), (0, 1), (0, 2)}}


def test_hand_global_pool():
    x = np.array([[[[1, -1], [0, 2]], [[-3, -1], [-1, -2]]]], np.float32)
    model = G.build([_node("GlobalAveragePool", ["x"], ["y"])], {"x": x})
    got = _one("GlobalAveragePool", model, {"x": x}, {"y": np.array([[0, 0, 0, 0], [0, 1, 0, 0]])})
    assert got == {"x": {(0, 0, 1, 1), (0, 1, 0, 1)}}  # per channel the spatial argmax (first of the ties)


def test_hand_lstm_two_steps():
    """T=2, one input, one unit, all weights positive, x = [1, −1]: x_1 contributes negatively to every gate,
    h_0 > 0 is carried back, and x_0 = 1 is the answer."""
    x = np.array([[[1.0]], [[-1.0]]], np.float32)
    consts = {"W": np.ones((1, 4, 1), np.float32), "R": np.ones((1, 4, 1), np.float32)}
    model = G.build([_node("LSTM", ["x", "W", "R"], ["Y", "Yh"], hidden_size=1)], {"x": x}, consts)
    graph, vals = G.run(model, {"x": x})
    assert vals["Y"][0, 0, 0, 0] > 0
    node = G.node_of(graph, "Y")
    got = RULES["LSTM"].backtrack(node, Context(graph, vals), {"Yh": np.array([[0, 0, 0]])})
    assert _rows(got["x"]) == {(0, 0, 0)}
    # reverse direction: Y_h is h at t = 0 (x_0 = 1 is kept); its recurrent input is h at t = 1, which x_1 = −1
    # made negative, so nothing is carried
    model = G.build([_node("LSTM", ["x", "W", "R"], ["Y", "Yh"], hidden_size=1, direction="reverse")],
                    {"x": x}, consts)
    graph, vals = G.run(model, {"x": x})
    assert vals["Y"][1, 0, 0, 0] < 0
    got = RULES["LSTM"].backtrack(G.node_of(graph, "Y"), Context(graph, vals), {"Yh": np.array([[0, 0, 0]])})
    assert _rows(got["x"]) == {(0, 0, 0)}
    # reverse direction, x = [1, 1], explaining Y at t = 1: that is the reverse direction's first step, so only
    # x_1 is reached (a forward walk would carry on to x_0)
    x = np.ones((2, 1, 1), np.float32)
    graph, vals = G.run(model, {"x": x})
    got = RULES["LSTM"].backtrack(G.node_of(graph, "Y"), Context(graph, vals), {"Y": np.array([[1, 0, 0, 0]])})
    assert _rows(got["x"]) == {(1, 0, 0)}
