"""Property-based tests (issue #5): random small valid CNN graphs built from DESIGN §3's ops.

Hypothesis draws a network — Conv (kernel, stride, padding, dilation, groups/depthwise), activations (Relu,
LeakyRelu, PRelu, Clip/ReLU6, Sigmoid, HardSigmoid, HardSwish, Tanh), BatchNormalization, MaxPool/AveragePool,
residual Add, squeeze-excitation Mul, Concat, then a Flatten or GlobalAveragePool head, Gemm and an optional
Softmax — and checks for each one:

* ONNX Runtime runs it and gives finite scores;
* both engines (fixations, autodiff via saliency) explain it or refuse with an onnxfix error — never a crash;
* every fixation lies inside the input plane;
* the autodiff input gradient matches central finite differences along a random direction.

Deterministic in CI: ``derandomize=True``, a modest ``max_examples``, no deadline.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxfix.errors import OnnxfixError

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

BLOCKS = ["conv", "act", "bn", "pool", "residual", "se", "concat"]
ACTS = ["Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh"]


class Net:
    """Accumulates nodes and initializers while tracking the current tensor's (C, H, W)."""

    def __init__(self, rng: np.random.Generator, c: int, h: int, w: int):
        self.rng, self.nodes, self.inits = rng, [], []
        self.c, self.h, self.w = c, h, w
        self.cur, self.k = "x", 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    def weight(self, shape, scale=None) -> str:
        n = self.name("W")
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        a = self.rng.normal(scale=scale if scale is not None else 1.0 / np.sqrt(max(fan, 1)), size=shape)
        self.inits.append(numpy_helper.from_array(a.astype(np.float32), n))
        return n

    def node(self, op, inputs, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name("n_" + op), **attrs))
        return out

    def conv(self, src, cin, cout, k, s, p, d, group) -> tuple[str, int, int]:
        w = self.weight((cout, cin // group, k, k))
        b = self.weight((cout,), 0.1)
        out = self.node("Conv", [src, w, b], kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p],
                        dilations=[d, d], group=group)
        ek = d * (k - 1) + 1
        return out, (self.h + 2 * p - ek) // s + 1, (self.w + 2 * p - ek) // s + 1


@st.composite
def networks(draw):
    c = draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(6, 16)), draw(st.integers(6, 16))
    net = Net(np.random.default_rng(draw(st.integers(0, 2**31 - 1))), c, h, w)
    for block in draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5)):
        if block == "conv":
            k = draw(st.integers(1, 3))
            d = draw(st.integers(1, 2)) if k > 1 else 1
            s = draw(st.integers(1, 2))
            p = draw(st.integers(0, (d * (k - 1)) // 2 + 1))
            depthwise = draw(st.booleans()) and net.c > 1
            cout = net.c if depthwise else draw(st.integers(2, 6))
            if (net.h + 2 * p - d * (k - 1) - 1) // s + 1 < 1 or (net.w + 2 * p - d * (k - 1) - 1) // s + 1 < 1:
                continue
            net.cur, net.h, net.w = net.conv(net.cur, net.c, cout, k, s, p, d, net.c if depthwise else 1)
            net.c = cout
        elif block == "act":
            op = draw(st.sampled_from(ACTS))
            if op == "LeakyRelu":
                net.cur = net.node(op, [net.cur], alpha=draw(st.floats(0.01, 0.5)))
            elif op == "PRelu":
                net.cur = net.node(op, [net.cur, net.weight((net.c, 1, 1), 0.2)])
            elif op == "Clip":
                lo, hi = net.weight((), 0.0), net.name("hi")
                net.inits.append(numpy_helper.from_array(np.array(6.0, np.float32), hi))
                net.cur = net.node(op, [net.cur, lo, hi])
            else:
                net.cur = net.node(op, [net.cur])
        elif block == "bn":
            scale, bias, mean = (net.weight((net.c,), 0.5) for _ in range(3))
            var = net.name("var")
            net.inits.append(numpy_helper.from_array(net.rng.uniform(0.5, 2, net.c).astype(np.float32), var))
            net.cur = net.node("BatchNormalization", [net.cur, scale, bias, mean, var], epsilon=1e-5)
        elif block == "pool":
            if min(net.h, net.w) < 2:
                continue
            op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
            s = draw(st.integers(1, 2))
            net.cur = net.node(op, [net.cur], kernel_shape=[2, 2], strides=[s, s])
            net.h, net.w = (net.h - 2) // s + 1, (net.w - 2) // s + 1
        elif block == "residual":
            branch, _, _ = net.conv(net.cur, net.c, net.c, 3, 1, 1, 1, 1)
            net.cur = net.node("Add", [net.cur, net.node("Relu", [branch])])
        elif block == "se":
            g = net.node("GlobalAveragePool", [net.cur])
            z, _, _ = (net.conv(g, net.c, net.c, 1, 1, 0, 1, 1))
            net.cur = net.node("Mul", [net.cur, net.node("Sigmoid", [z])])
        elif block == "concat":
            branch, _, _ = net.conv(net.cur, net.c, 2, 1, 1, 0, 1, 1)
            net.cur = net.node("Concat", [net.cur, net.node("Relu", [branch])], axis=1)
            net.c += 2
    classes = draw(st.integers(2, 6))
    if draw(st.booleans()):
        feat = net.node("Flatten", [net.node("GlobalAveragePool", [net.cur])])
        nfeat = net.c
    else:
        feat = net.node("Flatten", [net.cur])
        nfeat = net.c * net.h * net.w
    logits = net.node("Gemm", [feat, net.weight((classes, nfeat)), net.weight((classes,), 0.1)], transB=1)
    out = net.node("Softmax", [logits], axis=1) if draw(st.booleans()) else logits
    graph = helper.make_graph(net.nodes, "random_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, classes])],
                              initializer=net.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    x = np.random.default_rng(draw(st.integers(0, 1000))).normal(size=(1, c, h, w)).astype(np.float32)
    return model, x


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@SETTINGS
@given(networks())
def test_random_cnn_runs_explains_or_refuses(case):
    from onnxfix import Explainer

    model, x = case
    assert np.isfinite(_ort(model, x)).all()
    ex = Explainer(model, threads=1)
    h, w = x.shape[2:]
    for method in ("fixations", "saliency"):
        try:
            e = ex.explain(x, method=method)
        except OnnxfixError:
            continue  # a clean refusal is allowed; any other exception fails the test
        assert e.heatmap.shape == (h, w) and np.isfinite(e.heatmap).all()
        if method == "fixations":
            pts = e.points  # may be empty: no input with a positive contribution to the logit (the paper's rule)
            assert (pts[:, 0] >= 0).all() and (pts[:, 0] <= w - 1).all(), pts
            assert (pts[:, 1] >= 0).all() and (pts[:, 1] <= h - 1).all(), pts


@SETTINGS
@given(networks())
def test_random_cnn_gradient_matches_finite_differences(case):
    from onnxfix import Explainer

    model, x = case
    ex = Explainer(model, threads=1)
    mdl = ex.model
    logits = mdl.runtime.run({mdl.input: x}, [mdl.head.logits])[mdl.head.logits]
    target = int(np.argmax(logits[0]))
    try:
        g = ex.gradient(x)[mdl.input]
    except OnnxfixError as exc:  # only a missing rule may stop the autodiff engine on these ops
        pytest.fail(f"autodiff refused a DESIGN §3 network: {exc}")

    def f(z: np.ndarray) -> float:
        return float(mdl.runtime.run({mdl.input: z.astype(np.float32)}, [mdl.head.logits])[mdl.head.logits][0,
                                                                                                          target])

    v = np.random.default_rng(1).normal(size=x.shape)
    v /= np.linalg.norm(v)
    want = float((g.astype(np.float64) * v).sum())
    errors = []
    for eps in (1e-2, 3e-3):  # two steps: a ReLU/MaxPool kink inside one step rarely sits inside both
        fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
        errors.append(abs(fd - want))
        if errors[-1] <= 2e-2 * max(1.0, abs(want)):
            return
    pytest.fail(f"gradient·v = {want:.6f}, finite differences differ by {errors}")
