"""Transformers (issue #12): the auto layer, the attention finder, the attention methods' options and refusals,
and CNN Fixations through attention against the slow literal reference on the torch model
(tests/fixation_reference_attention.py). Parity with pytorch-grad-cam / Captum / torch: tests/test_attention_parity.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnxfix  # noqa: E402
from onnxfix.errors import InputError  # noqa: E402
from onnxfix.methods import METHODS  # noqa: E402
from onnxfix.methods.attention import attention_tensors, chefer, rollout  # noqa: E402
from onnxfix.methods.layers import auto_layer, feature_maps  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixation_reference_attention as fra  # noqa: E402
import vit_models as vm  # noqa: E402

SIZE = 32
SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


@pytest.fixture(scope="module")
def vits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vits")
    torch.set_num_threads(1)
    cache: dict = {}

    def get(exporter: str = "legacy", depth: int = 2):
        key = (exporter, depth)
        if key not in cache:
            net = vm.tiny_vit(depth=depth)
            path = vm.export(net, SIZE, folder / f"vit_{exporter}_{depth}.onnx", exporter)
            cache[key] = (net, onnxfix.Explainer(str(path), threads=1))
        return cache[key]

    return get


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_auto_layer_is_last_norm1(vits, exporter):
    net, ex = vits(exporter, depth=3)
    m = ex.model
    attns = attention_tensors(m)
    assert len(attns) == 3  # one Softmax per block
    layer = auto_layer(m)
    node = m.graph.producer(layer)
    assert node.op_type == "LayerNormalization"
    # the last block's norm1: it feeds the last attention, and no other LayerNorm lies between it and that Softmax
    between = m.graph.nodes_between([layer], attns[-1])
    assert between and not any(n.op_type == "LayerNormalization" for n in between)
    assert attns[-2] not in {t for n in m.graph.nodes_between([layer], m.head.logits) for t in n.outputs}
    if exporter == "legacy":
        assert layer == "/blocks.2/norm1/LayerNormalization_output_0"
    e = ex.explain(vm.image(SIZE), method="gradcam")
    assert e.extras["layer"] == layer and e.attribution.shape == (net.grid, net.grid)
    assert e.attribution.max() > 0


def test_cnn_auto_layer_unchanged():
    """A CNN has no attention: the auto layer stays the last feature map."""
    path = SAMPLES / "resnet_shapes.onnx"
    if not path.exists():
        pytest.skip("sample model missing")
    m = onnxfix.Explainer(str(path)).model
    assert attention_tensors(m) == []
    assert auto_layer(m) == feature_maps(m)[-1]
    why = METHODS["attention-rollout"].applies(m)
    assert why is not None and "not a transformer" in why
    assert METHODS["attention-gradient"].applies(m) is not None


def test_attention_methods_refuse_cnn():
    path = SAMPLES / "resnet_shapes.onnx"
    if not path.exists():
        pytest.skip("sample model missing")
    ex = onnxfix.Explainer(str(path))
    img = np.zeros((64, 64, 3), np.uint8)
    for method in ("attention-rollout", "attention-gradient"):
        with pytest.raises(onnxfix.errors.OnnxfixError):
            ex.explain(img, method=method)


def test_options_checked(vits):
    _, ex = vits()
    x = vm.image(SIZE)
    with pytest.raises(InputError, match="head_fusion"):
        ex.explain(x, method="attention-rollout", head_fusion="median")
    with pytest.raises(InputError, match="discard_ratio"):
        ex.explain(x, method="attention-rollout", discard_ratio=1.0)
    with pytest.raises(InputError):
        ex.explain(x, method="attention-gradient", layer="x")
    e = ex.explain(x, method="attention-rollout", head_fusion="min", discard_ratio="0.5")
    assert e.heatmap.shape == (SIZE, SIZE) and np.isfinite(e.heatmap).all()


def test_rollout_and_chefer_numpy_properties():
    """Rollout rows stay distributions; Chefer with zero gradients is the identity (R = I)."""
    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 5, 5))
    a /= a.sum(-1, keepdims=True)
    R = rollout([a, a], "mean", 0.0)
    np.testing.assert_allclose(R.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(chefer([a], [np.zeros_like(a)]), np.broadcast_to(np.eye(5), (2, 5, 5)))
    # one block, head fusion "max": rownorm(0.5 max_h A + 0.5 I)
    m = 0.5 * a.max(1) + 0.5 * np.eye(5)
    np.testing.assert_allclose(rollout([a], "max"), m / m.sum(-1, keepdims=True))


def test_rollout_batch_equals_single(vits):
    _, ex = vits()
    xs = [vm.image(SIZE, seed=s) for s in (1, 2, 3)]
    batch = ex.explain(xs, method="attention-rollout")
    for x, e in zip(xs, batch, strict=True):
        np.testing.assert_allclose(e.attribution, ex.explain(x, method="attention-rollout").attribution, rtol=1e-6)


# ------------------------------------------------------------------------------------- fixations through attention


def _ours(ex, x, target, attention="argmax", k=3):
    e = ex.explain(x, method="fixations", target=target, attention=attention, attention_k=k)
    return e, {tuple(int(v) for v in r) for r in e.extras["input_locations"]}


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("target", [None, 3])
@pytest.mark.parametrize("attention", ["positive", "argmax"])
def test_fixations_through_attention_vs_reference(vits, exporter, seed, target, attention):
    net, ex = vits(exporter)
    x = vm.image(SIZE, seed=seed)
    e, ours = _ours(ex, x, target, attention)
    ref = fra.fixations_ref(net, x, e.target, attention)
    assert ref, "the reference found no pixel: the case tests nothing"
    assert ours == ref, f"{len(ours ^ ref)} pixels differ ({len(ours)} ours, {len(ref)} reference)"
    assert len(e.points) == len({(p[3], p[2]) for p in ref})


@pytest.mark.parametrize("k", [1, 2, 4])
def test_fixations_topk_attention_vs_reference(vits, k):
    net, ex = vits("legacy", depth=3)
    x = vm.image(SIZE, seed=6)
    e, ours = _ours(ex, x, None, "topk", k)
    ref = fra.fixations_ref(net, x, e.target, "topk", k)
    assert ref and ours == ref
    if k == 1:
        assert ours == _ours(ex, x, None, "argmax")[1]


def test_selective_attention_is_a_subset_and_narrower(vits):
    """argmax ⊆ top-2 ⊆ positive on the value path, and the default (argmax) selects fewer tokens than positive."""
    _, ex = vits("legacy", depth=3)
    x = vm.image(SIZE, seed=3)
    got = {m: _ours(ex, x, None, m, 2)[0] for m in ("positive", "argmax", "topk")}
    g = ex.model.graph
    for a in attention_tensors(ex.model):
        v = next(n for n in g.consumers(a) if n.op_type == "MatMul").inputs[1]
        sets = {m: {tuple(r) for r in e.extras["trace"].at(v)} for m, e in got.items()}
        assert sets["argmax"] <= sets["topk"] <= sets["positive"]
    assert ex.explain(x, method="fixations").extras["input_locations"].shape == \
        got["argmax"].extras["input_locations"].shape
    assert len(got["argmax"].extras["input_locations"]) < len(got["positive"].extras["input_locations"])


def test_attention_option_checked_and_ignored_by_cnns(vits):
    _, ex = vits()
    x = vm.image(SIZE)
    with pytest.raises(InputError, match="attention"):
        ex.explain(x, method="fixations", attention="mean")
    with pytest.raises(InputError, match="attention_k"):
        ex.explain(x, method="fixations", attention="topk", attention_k=0)
    path = SAMPLES / "resnet_shapes.onnx"
    if path.exists():
        cnn = onnxfix.Explainer(str(path), threads=1)
        img = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
        a = cnn.explain(img, method="fixations", attention="argmax")
        b = cnn.explain(img, method="fixations", attention="positive")
        np.testing.assert_array_equal(a.points, b.points)


def test_fixations_never_enter_query_key(vits):
    """Attention weights are not backtracked: no location reaches the q / k operands of QKᵀ."""
    _, ex = vits()
    e, _ = _ours(ex, vm.image(SIZE), None)
    t = e.extras["trace"]
    g = ex.model.graph
    for a in attention_tensors(ex.model):
        assert a not in t.locations or len(t.at(a)) == 0
        qk = g.producer(a)
        while qk.op_type != "MatMul":
            qk = g.producer(qk.inputs[0])
        for operand in qk.inputs:
            assert operand not in t.locations or len(t.at(operand)) == 0


def test_fixations_batch_equals_single(vits):
    _, ex = vits()
    xs = [vm.image(SIZE, seed=s) for s in (1, 4)]
    batch = ex.explain(xs, method="fixations", target=[0, 2])
    for x, t, e in zip(xs, [0, 2], batch, strict=True):
        one = ex.explain(x, method="fixations", target=t)
        np.testing.assert_array_equal(e.points, one.points)


def test_skip_layernorm_rule():
    """ORT's fused SkipLayerNormalization: the residual Add rule between input and skip, then pass-through."""
    from onnx import TensorProto, helper

    from onnxfix.fixations import rule_for
    from onnxfix.fixations.registry import Context
    from onnxfix.graph import Graph

    node = helper.make_node("SkipLayerNormalization", ["a", "b", "gamma", "beta"], ["y"], domain="com.microsoft")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 4]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])],
        [helper.make_tensor("gamma", TensorProto.FLOAT, [4], [1.0] * 4),
         helper.make_tensor("beta", TensorProto.FLOAT, [4], [0.0] * 4)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft",
                                                                                                        1)])
    g = Graph(model)  # as given: Graph.from_model would decompose the fused op (onnxfix/canonize_ms.py)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((1, 3, 4)).astype(np.float32), rng.standard_normal((1, 3, 4)).astype(np.float32)
    n = g.producer("y")
    ctx = Context(g, {"a": a, "b": b, "y": a + b})
    locs = np.array([[0, t, c] for t in range(3) for c in range(4)], np.int64)
    sent = rule_for("SkipLayerNormalization").backtrack(n, ctx, {"y": locs})
    got_a = {tuple(r) for r in sent.get("a", np.zeros((0, 3), np.int64))}
    got_b = {tuple(r) for r in sent.get("b", np.zeros((0, 3), np.int64))}
    for _, t, c in locs:
        assert ((0, t, c) in got_a) == (a[0, t, c] >= b[0, t, c])
        assert ((0, t, c) in got_b) == (b[0, t, c] > a[0, t, c])


def test_fixations_vs_reference_on_sample_vit():
    """The trained sample ViT (tools/build_models_v2.py) against the literal reference on its torch twin."""
    path = vm.SAMPLES / "vit_shapes.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not built yet (tools/build_models_v2.py)")
    net = vm.nets_v2().load_twin(path)
    ex = onnxfix.Explainer(str(path), threads=1)
    x = vm.image(64, seed=5)
    for attention in ("positive", "argmax", "topk"):
        e, ours = _ours(ex, x, None, attention, 2)
        assert ours == fra.fixations_ref(net, x, e.target, attention, 2), attention
