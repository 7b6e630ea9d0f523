"""LRP (methods/lrp.py, autodiff/rules_lrp.py): Zennit 0.5.1's composites on the same weights, a literal numpy
re-implementation of each rule (tests/lrp_reference.py), conservation, the BatchNormalization canonizer, options.

Zennit side: the torch twins of tests/parity_models.py in float64 (the ONNX side runs in float32), attr_output =
output × one-hot of the target (what onnxfix seeds), canonizers ``SequentialMergeBatchNorm`` (Zennit's own; its
merged BatchNorm still divides by √(1 + ε), see docs/decisions.md, hence also an exact variant) and a Sum canonizer
that routes the residual additions through ``zennit.layer.Sum`` (as Zennit's ResNet canonizer does), so that
Zennit applies Norm to them as onnxfix does to ONNX ``Add``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import import_peer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import lrp_reference as ref  # noqa: E402

from onnxfix.autodiff import GradientProgram  # noqa: E402
from onnxfix.autodiff.canonize import fold_batchnorm  # noqa: E402
from onnxfix.autodiff.rules_lrp import COMPOSITES, LRPParams, lrp_mode  # noqa: E402
from onnxfix.errors import InputError  # noqa: E402
from onnxfix.graph import Graph  # noqa: E402

BOUNDS = ((-3.0, -2.5, -2.0), (3.0, 2.5, 2.0))


def engine_lrp(graph: Graph, x: np.ndarray, target: int, composite: str, of: str = "logits", wrt: str = "x",
               **kw) -> tuple[np.ndarray, np.ndarray]:
    """(input relevance, logits) from the autodiff engine in the LRP mode, seed = logit × one-hot."""
    if composite == "epsilon-gamma-box":
        kw.setdefault("low", BOUNDS[0])
        kw.setdefault("high", BOUNDS[1])
    mode = lrp_mode(LRPParams(composite, **kw))
    prog = GradientProgram(graph, of=of, wrt=[wrt], mode=mode)
    shape = graph.shape(of)
    logits = prog.run({wrt: x}, np.zeros(shape, np.float32))[of]
    seed = np.zeros_like(logits)
    seed[0, target] = logits[0, target]
    return prog.run({wrt: x}, seed)["grad:" + wrt], logits


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


# ------------------------------------------------------------------------------- the literal numpy reference


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("bn,matmul_bias", [(False, False), (True, False), (False, True)])
def test_engine_equals_literal_reference(composite, bn, matmul_bias):
    """The engine's LRP equals the rules written as sums over contributions (float64), with BatchNormalization
    folded by the canonizer and a Linear exported as MatMul + a separate bias Add."""
    p = ref.params(0)
    x = np.random.default_rng(1).standard_normal(ref.SHAPE).astype(np.float32)
    graph = fold_batchnorm(Graph.from_model(ref.onnx_model(p, bn=bn, matmul_bias=matmul_bias)), keep=["x", "logits"])
    if bn:
        assert "BatchNormalization" not in {n.op_type for n in graph.nodes}
    got, logits = engine_lrp(graph, x, 2, composite)
    want, want_logits = ref.lrp(ref.folded(p) if bn else p, x, 2, composite, low=BOUNDS[0], high=BOUNDS[1])
    assert np.allclose(logits[0], want_logits, rtol=1e-5, atol=1e-5)
    assert rel_err(got, want) <= 1e-5
    # different composites give different maps (the override really runs)
    other = "epsilon-plus" if composite != "epsilon-plus" else "epsilon-alpha2-beta1"
    want_other, _ = ref.lrp(p if not bn else ref.folded(p), x, 2, other, low=BOUNDS[0], high=BOUNDS[1])
    assert rel_err(got, want_other) > 1e-2


def test_parameters_reach_the_rules():
    """epsilon, stabilizer and gamma change the result exactly as the reference says."""
    p = ref.params(3)
    x = np.random.default_rng(4).standard_normal(ref.SHAPE).astype(np.float32)
    graph = Graph.from_model(ref.onnx_model(p))
    got, _ = engine_lrp(graph, x, 1, "epsilon-gamma-box", epsilon=0.5, stabilizer=1e-3, gamma=1.0)
    want, _ = ref.lrp(p, x, 1, "epsilon-gamma-box", epsilon=0.5, stabilizer=1e-3, gamma=1.0, low=BOUNDS[0],
                      high=BOUNDS[1])
    assert rel_err(got, want) <= 1e-5
    default, _ = ref.lrp(p, x, 1, "epsilon-gamma-box", low=BOUNDS[0], high=BOUNDS[1])
    assert rel_err(got, default) > 1e-3


@pytest.mark.parametrize("composite", ["epsilon-plus", "epsilon-alpha2-beta1", "epsilon-gamma-box"])
def test_conservation_without_biases(composite):
    """Without biases every rule conserves: Σ input relevance = the relevance put in (the target's logit)."""
    p = ref.params(5, zero_bias=True)
    x = np.random.default_rng(6).standard_normal(ref.SHAPE).astype(np.float32)
    graph = Graph.from_model(ref.onnx_model(p))
    rel, logits = engine_lrp(graph, x, 0, composite)
    assert abs(logits[0, 0]) > 1e-2
    # αβ divides by the (small) sums of negative contributions too, where the stabiliser weighs more
    tol = 1e-3 if composite == "epsilon-alpha2-beta1" else 1e-4
    assert rel.astype(np.float64).sum() == pytest.approx(float(logits[0, 0]), rel=tol)
    # with biases, relevance is absorbed by them: not conserved
    p_b = ref.params(5)
    rel_b, logits_b = engine_lrp(Graph.from_model(ref.onnx_model(p_b)), x, 0, composite)
    assert abs(rel_b.astype(np.float64).sum() - float(logits_b[0, 0])) > 1e-3


def test_batchnorm_canonizer_is_exact_and_keeps_names():
    p = ref.params(7)
    g = Graph.from_model(ref.onnx_model(p, bn=True))
    f = fold_batchnorm(g, keep=["x", "logits"])
    assert f is fold_batchnorm(g, keep=["x", "logits"])  # cached
    assert "c1n" in f.tensors and "c1" not in f.tensors
    x = np.random.default_rng(8).standard_normal(ref.SHAPE).astype(np.float32)
    from onnxfix.sessions import make_session

    a = make_session(g.model).run(["logits"], {"x": x})[0]
    b = make_session(f.model).run(["logits"], {"x": x})[0]
    assert np.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert fold_batchnorm(g, keep=["x", "logits", "c1"]).nodes[1].op_type == "BatchNormalization"  # kept tensor


# ------------------------------------------------------------------------------- Zennit parity


def _zennit():
    pytest.importorskip("torch")
    # zennit.torchvision imports two ResNet block classes only: tests/stubs stands in for them
    return import_peer("zennit")


def _canonizers(exact: bool, sum_forwards: dict):
    import torch
    from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
    from zennit.layer import Sum

    class ExactMergeBatchNorm(SequentialMergeBatchNorm):
        """Zennit's merge, plus ε = 0 on the BatchNorm it leaves behind: the folded layer exactly."""

        def register(self, linears, batch_norm):
            super().register(linears, batch_norm)
            self._eps, batch_norm.eps = batch_norm.eps, 0.0

        def remove(self):
            super().remove()
            self.batch_norm.eps = self._eps

    class SumCanonizer(AttributeCanonizer):
        def __init__(self):
            super().__init__(self._map)

        @staticmethod
        def _map(name, module):
            fwd = next((f for cls, f in sum_forwards.items() if isinstance(module, cls)), None)
            if fwd is None:
                return None
            return {"forward": fwd.__get__(module), "canonizer_sum": Sum()}

    del torch
    return [ExactMergeBatchNorm() if exact else SequentialMergeBatchNorm(), SumCanonizer()]


def _parity_sum_forwards():
    import parity_models as pm
    import torch

    def basic(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        s = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(self.canonizer_sum(torch.stack([y, s], dim=-1)))

    def inverted(self, x):
        return self.canonizer_sum(torch.stack([x, self.project(self.dw(self.expand(x)))], dim=-1))

    return {pm.BasicBlock: basic, pm.InvertedResidual: inverted}


def zennit_lrp(net, x: np.ndarray, target: int, composite: str, canonizers, low=None, high=None,
               epsilon: float = 1e-6) -> np.ndarray:
    import torch
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus

    if composite == "epsilon-gamma-box":
        shape = (1, -1, 1, 1)
        comp = EpsilonGammaBox(low=torch.tensor(low, dtype=torch.float64).reshape(shape),
                               high=torch.tensor(high, dtype=torch.float64).reshape(shape), epsilon=epsilon,
                               canonizers=canonizers)
    else:
        comp = {"epsilon-plus": EpsilonPlus, "epsilon-alpha2-beta1": EpsilonAlpha2Beta1}[composite](
            epsilon=epsilon, canonizers=canonizers)
    xt = torch.from_numpy(x).double().requires_grad_()
    with Gradient(model=net, composite=comp) as attributor:
        out = net(xt)
        onehot = torch.zeros_like(out)
        onehot[0, target] = 1.0
        _, rel = attributor(xt, out.detach() * onehot)
    return rel.detach().numpy()


@pytest.fixture(scope="module")
def parity_nets(tmp_path_factory):
    pytest.importorskip("torch")
    import parity_models as pm

    folder = tmp_path_factory.mktemp("lrp_parity")
    return {name: pm.build(name, folder) for name in ("plain", "resnet", "mobile", "senet")}


@pytest.mark.parametrize("name", ["plain", "resnet", "mobile", "senet"])
@pytest.mark.parametrize("composite", COMPOSITES)
def test_zennit_parity_on_torch_twins(parity_nets, name, composite):
    """Each composite against Zennit 0.5.1 on the same weights: ≤ 1e-4 with Zennit's own BatchNorm merge,
    ≤ 5e-6 with the exact merge (the rest is float32 on the ONNX side)."""
    _zennit()
    from onnxfix import Explainer
    from onnxfix.methods import METHODS
    from onnxfix.targets import Class

    ex = parity_nets[name]
    model = Explainer(str(ex.path)).model
    m = METHODS["lrp"]
    opts = {"composite": composite}
    low = high = None
    if composite == "epsilon-gamma-box":
        low, high = -3.0 * ex.spec.input_scale, 3.0 * ex.spec.input_scale
        opts.update(low=low, high=high)
        low, high = (low,) * 3, (high,) * 3
    logits = model.runtime.run({model.input: ex.x}, [model.head.logits])[model.head.logits]
    target = int(np.argsort(logits[0])[-2])  # the runner-up class: not only the top one
    att = m.attribute(model, ex.x, [Class(target)], m.parse_options(opts))
    net = copy.deepcopy(ex.net).double()
    for exact, tol in ((False, 1e-4), (True, 5e-6)):
        want = zennit_lrp(net, ex.x, target, composite, _canonizers(exact, _parity_sum_forwards()), low, high)
        assert rel_err(att.values, want) <= tol, (exact, rel_err(att.values, want))
    # the method's outputs: relevance map = channel sum, relevance in = logit of the target
    assert np.allclose(att.maps[0], att.values[0].sum(0))
    assert att.extras[0]["logit"] == pytest.approx(float(logits[0, target]), rel=1e-6)
    assert att.extras[0]["relevance"] == pytest.approx(float(want.sum()), rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------------------- the method


def test_gamma_box_bounds_default_from_metadata_or_required(tmp_path):
    from onnxfix import Explainer
    from onnxfix.methods import METHODS
    from onnxfix.methods.lrp import default_bounds

    root = HERE.parent / "sample_models"
    ex = Explainer(str(root / "resnet_shapes.onnx"))
    low, high = default_bounds(ex.model)
    spec = ex.model.preprocess()
    assert low[0] == pytest.approx(-spec.mean[0] / spec.std[0])
    assert high[0] == pytest.approx((255 * spec.scale - spec.mean[0]) / spec.std[0])
    e = ex.explain(str(root / "resnet_shapes.png"), method="lrp", composite="epsilon-gamma-box")
    assert np.isfinite(e.attribution).all() and e.attribution.shape[1:] == tuple(ex.model.input_shape)[1:]
    # a model without preprocessing metadata: the bounds are required, with a one-line reason
    m = ref.onnx_model(ref.params(0))
    path = tmp_path / "tiny.onnx"
    import onnx

    onnx.save(m, str(path))
    ex2 = Explainer(str(path))
    x = np.zeros(ref.SHAPE, np.float32)
    lrp = METHODS["lrp"]
    with pytest.raises(InputError, match="low=.*high="):
        lrp.attribute(ex2.model, x, [None], lrp.parse_options({"composite": "epsilon-gamma-box"}))
    with pytest.raises(InputError, match="both low and high"):
        lrp.parse_options({"composite": "epsilon-gamma-box", "low": "-1"})
    with pytest.raises(InputError):
        lrp.parse_options({"composite": "zplus"})
    a = lrp.attribute(ex2.model, x + 0.5, [None], lrp.parse_options({"composite": "epsilon-gamma-box",
                                                                          "low": "-1", "high": "1"}))
    assert np.isfinite(a.values).all()


@pytest.mark.parametrize("name", ["mobile_shapes", "inception_shapes", "digits_cnn"])
def test_runs_on_sample_models(name):
    """Every composite runs on the sample CNNs (HardSwish, SE gates, depthwise convs, Concat, unfolded BN)."""
    from onnxfix import Explainer

    root = HERE.parent / "sample_models"
    ex = Explainer(str(root / f"{name}.onnx"))
    for composite in COMPOSITES:
        e = ex.explain(str(root / f"{name}.png") if (root / f"{name}.png").exists() else
                       np.zeros(ex.model.input_shape, np.float32), method="lrp", composite=composite)
        assert np.isfinite(e.attribution).all()
        assert np.abs(e.attribution).sum() > 0


# ------------------------------------------------------------------------------- EfficientNet-Lite0

REAL = HERE.parent / ".cache" / "real_models" / "models"


def effnet_twin():
    """(torch EfficientNet-Lite0 from the same sources and weights as the ONNX export, its canonizers for Zennit:
    the exact BatchNorm merge by name — its convs are not leaves (a padding child), so Zennit's sequential merge
    would skip them — and Sum on the skip connections)."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("bench_main", HERE.parent / "tools" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    net = bench.torch_efficientnet_lite0(bench._real_models())
    from efficientnet_lite_pytorch.model import MBConvBlock
    from zennit.canonizers import NamedMergeBatchNorm

    class ExactNamedMergeBatchNorm(NamedMergeBatchNorm):
        def register(self, linears, batch_norm):
            super().register(linears, batch_norm)
            self._eps, batch_norm.eps = batch_norm.eps, 0.0

        def remove(self):
            super().remove()
            self.batch_norm.eps = self._eps

    pairs = [(["_conv_stem"], "_bn0"), (["_conv_head"], "_bn1")]
    for i, blk in enumerate(net._blocks):
        if hasattr(blk, "_expand_conv"):
            pairs.append(([f"_blocks.{i}._expand_conv"], f"_blocks.{i}._bn0"))
        pairs += [([f"_blocks.{i}._depthwise_conv"], f"_blocks.{i}._bn1"),
                  ([f"_blocks.{i}._project_conv"], f"_blocks.{i}._bn2")]

    def mbconv(self, inputs, drop_connect_rate=None):
        x = inputs
        if self._block_args.expand_ratio != 1:
            x = self._swish(self._bn0(self._expand_conv(inputs)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        a = self._block_args
        if self.id_skip and a.stride == 1 and a.input_filters == a.output_filters:
            x = self.canonizer_sum(torch.stack([x, inputs], dim=-1))
        return x

    sums = _canonizers(True, {MBConvBlock: mbconv})[1]
    return net.double().eval(), [ExactNamedMergeBatchNorm(pairs), sums]


@pytest.mark.slow
@pytest.mark.parametrize("composite", COMPOSITES)
def test_zennit_parity_efficientnet_lite0(composite):
    """EfficientNet-Lite0 (ReLU6 = Hardtanh: Pass in Zennit as here; depthwise convs, skip Adds, GAP, Gemm)."""
    path = REAL / "efficientnet_lite0.onnx"
    if not path.exists():
        pytest.skip("EfficientNet-Lite0 not obtained (tools/real_models.py)")
    _zennit()
    try:
        net, canonizers = effnet_twin()
    except Exception as exc:  # noqa: BLE001 - the torch sources come with tools/real_models.py
        pytest.skip(f"the torch EfficientNet-Lite0 is not available: {exc}")
    from onnxfix import Explainer
    from onnxfix.io.image import IMAGENET_MEAN, IMAGENET_STD
    from onnxfix.methods import METHODS
    from onnxfix.targets import Class

    model = Explainer(str(path)).model
    x = (np.random.default_rng(0).standard_normal((1, 3, 224, 224)) * 0.8).astype(np.float32)
    mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
    low, high = tuple(-mean / std), tuple((1 - mean) / std)
    m = METHODS["lrp"]
    opts = {"composite": composite}
    logits = model.runtime.run({model.input: x}, [model.head.logits])[model.head.logits]
    target = int(np.argmax(logits[0]))
    if composite == "epsilon-gamma-box":  # per-channel bounds: through the parameters (options take one value)
        from onnxfix.autodiff.rules_lrp import LRPParams, lrp_mode

        g = m.graph(model)
        mode = lrp_mode(LRPParams(composite, low=low, high=high))
        seed = np.zeros_like(logits)
        seed[0, target] = logits[0, target]
        got = GradientProgram(g, of=model.head.logits, wrt=[model.input], mode=mode).run(
            {model.input: x}, seed)["grad:" + model.input]
    else:
        got = m.attribute(model, x, [Class(target)], m.parse_options(opts)).values
    want = zennit_lrp(net, x, target, composite, canonizers, low, high)
    assert rel_err(got, want) <= 1e-4, rel_err(got, want)
