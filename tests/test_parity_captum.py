"""Reference parity of the gradient methods: onnxfix on an ONNX export vs Captum / pytorch-grad-cam / torch autograd
on the very same torch weights (docs/parity.md).

The matrix is models × (method, reference) × targets, in pytorch-grad-cam's test-suite style; every case asserts
``max |ours − ref| / max |ref| ≤ 1e-4`` and the exact attribution shape of the contract (DESIGN §2).

Set ``ONNXFIX_PARITY_REPORT=path.json`` to dump every case's relative error (used for docs/parity.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import import_peer

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

import onnx  # noqa: E402

import onnxfix  # noqa: E402
from onnxfix.errors import UnsupportedModel  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity_models as pm  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients:UserWarning"),
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations:UserWarning"),
]

RTOL = 1e-4
MODELS = list(pm.SPECS)  # plain, resnet, mobile, senet
TARGETS = ["top", "alt"]  # the top class; NetSpec.alt_target, a class with a mixed-sign Grad-CAM sum
OCC_WINDOW, OCC_STRIDE = 8, 4  # 7×7 windows on 32×32
_REPORT: list[dict] = []


# ----------------------------------------------------------------------------------------------- helpers


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    scale = float(np.abs(ref).max())
    assert scale > 0, "the reference is identically zero: the case tests nothing"
    return float(np.abs(ours - ref).max()) / scale


def check(case: str, ours: np.ndarray, ref: np.ndarray, rtol: float = RTOL) -> float:
    if ref.shape == ours.shape and not np.any(ref):
        # ReLU(Σ α_k A_k) ≡ 0 (e.g. the counterfactual of a class whose sum is positive everywhere): ours must be
        # exactly zero too
        _REPORT.append({"case": case, "rel_err": 0.0 if not np.any(ours) else float("inf"), "ref_max": 0.0})
        assert not np.any(ours), f"{case}: the reference is identically 0, ours has max |·| {np.abs(ours).max():.3g}"
        return 0.0
    err = rel_err(ours, ref)
    _REPORT.append({"case": case, "rel_err": err, "ref_max": float(np.abs(ref).max())})
    assert err <= rtol, f"{case}: relative error {err:.3e} > {rtol:g} (max |ref| = {np.abs(ref).max():.4g})"
    return err


@pytest.fixture(scope="module", autouse=True)
def _report():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: one thread is fastest and never oversubscribes a busy runner
    yield
    torch.set_num_threads(threads)
    path = os.environ.get("ONNXFIX_PARITY_REPORT")
    if path:
        Path(path).write_text(json.dumps(_REPORT, indent=1))


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """{model name: (pm.Exported, onnxfix.Explainer)}, built lazily once per module."""
    folder = tmp_path_factory.mktemp("parity")
    cache: dict[str, tuple[pm.Exported, onnxfix.Explainer]] = {}

    def get(name: str):
        if name not in cache:
            ex = pm.build(name, folder)
            cache[name] = (ex, onnxfix.Explainer(str(ex.path), threads=2))
        return cache[name]

    return get


def _target(exp: pm.Exported, target) -> tuple[int | None, int]:
    """(what onnxfix gets, the class index the reference uses)."""
    if target == "top":
        with torch.no_grad():
            top = int(exp.net(torch.from_numpy(exp.x)).argmax())
        return None, top
    c = exp.spec.alt_target if target == "alt" else int(target)
    return c, c


def _xt(exp: pm.Exported) -> torch.Tensor:
    return torch.from_numpy(exp.x.copy())


def _np(t) -> np.ndarray:
    return t.detach().numpy()


def pytorch_grad_cam():
    """pytorch_grad_cam, importing it with the torchvision stand-in when no torchvision is installed."""
    return import_peer("pytorch_grad_cam")


# ----------------------------------------------------------------------------------------------- references


def ref_layer_gradcam(exp: pm.Exported, c: int, layer: str | None = None, sign: float = 1.0) -> np.ndarray:
    """Captum LayerGradCam(relu_attributions=True) of the logit c (sign −1: of −logit c, i.e. counterfactual)."""
    net = exp.net if sign > 0 else _Negated(exp.net)
    module = exp.net.get_submodule(layer or exp.layer)
    lgc = captum_attr.LayerGradCam(net, module)
    a = lgc.attribute(_xt(exp), target=c, relu_attributions=True, attribute_to_layer_input=False)
    return _np(a)[0, 0]


class _Negated(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return -self.net(x)


def ref_pgc(exp: pm.Exported, c: int, kind: str) -> np.ndarray:
    """pytorch-grad-cam's raw map: ReLU(get_cam_image(...)) at the layer, before scale_cam_image's min-max/resize."""
    pgc = pytorch_grad_cam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus}[kind]
    raw: list[np.ndarray] = []
    with cls(model=exp.net, target_layers=[exp.module()]) as cam:
        orig = cam.get_cam_image

        def record(*args, **kwargs):
            out = orig(*args, **kwargs)
            raw.append(np.asarray(out))
            return out

        cam.get_cam_image = record
        cam(input_tensor=_xt(exp), targets=[ClassifierOutputTarget(c)])
    assert len(raw) == 1
    return np.maximum(raw[0], 0)[0]  # BaseCAM.compute_cam_per_layer: np.maximum(cam, 0) then scale_cam_image


def _patched(exp: pm.Exported, mode: str) -> torch.nn.Module:
    """The net with ReLU6 given the guided / deconvnet backward rule (Captum hooks nn.ReLU only)."""
    if not exp.spec.has_relu6:
        return exp.net
    return pm.replace_relu6(exp.net, pm.GuidedReLU6 if mode == "guided" else pm.DeconvReLU6)


def ref_saliency(exp, c):
    return _np(captum_attr.Saliency(exp.net).attribute(_xt(exp), target=c, abs=False))


def ref_guided(exp, c):
    return _np(captum_attr.GuidedBackprop(_patched(exp, "guided")).attribute(_xt(exp), target=c))


def ref_deconv(exp, c):
    return _np(captum_attr.Deconvolution(_patched(exp, "deconvnet")).attribute(_xt(exp), target=c))


def ref_guided_gradcam(exp, c, interpolate_mode: str = "nearest"):
    if not exp.spec.has_relu6:
        ggc = captum_attr.GuidedGradCam(exp.net, exp.module())
        return _np(ggc.attribute(_xt(exp), target=c, interpolate_mode=interpolate_mode))
    # Captum's GuidedGradCam = GuidedBackprop(net) × interpolate(LayerGradCam(net)); its GuidedBackprop treats
    # ReLU6 as linear, so the guided factor comes from the ReLU6-patched net (the Grad-CAM factor from the plain one).
    cam = torch.from_numpy(ref_layer_gradcam(exp, c))[None, None]
    up = captum_attr.LayerAttribution.interpolate(cam, tuple(exp.x.shape[2:]), interpolate_mode=interpolate_mode)
    return ref_guided(exp, c) * _np(up)


def ref_occlusion(exp, c, window=OCC_WINDOW, stride=OCC_STRIDE, baseline=0.0):
    occ = captum_attr.Occlusion(exp.net)
    ch = exp.x.shape[1]
    a = occ.attribute(_xt(exp), sliding_window_shapes=(ch, window, window), strides=(ch, stride, stride),
                      baselines=baseline, target=c, perturbations_per_eval=64)
    return _np(a)[0, 0]


# (onnxfix method, reference name, reference function, expected attribution shape kind)
CHECKS = {
    "gradcam[captum]": ("gradcam", lambda e, c: ref_layer_gradcam(e, c), "layer"),
    "gradcam[pgc]": ("gradcam", lambda e, c: ref_pgc(e, c, "gradcam"), "layer"),
    "gradcam++[pgc]": ("gradcam++", lambda e, c: ref_pgc(e, c, "gradcam++"), "layer"),
    "counterfactual[captum]": ("counterfactual", lambda e, c: ref_layer_gradcam(e, c, sign=-1.0), "layer"),
    "saliency[captum]": ("saliency", ref_saliency, "input"),
    "guided-backprop[captum]": ("guided-backprop", ref_guided, "input"),
    "deconvnet[captum]": ("deconvnet", ref_deconv, "input"),
    "guided-gradcam[captum]": ("guided-gradcam", ref_guided_gradcam, "input"),
    "occlusion[captum]": ("occlusion", ref_occlusion, "plane"),
}


def _explain(ex: onnxfix.Explainer, exp: pm.Exported, method: str, target, **kw):
    opts = dict(kw)
    if method in ("gradcam", "gradcam++", "counterfactual", "guided-gradcam"):
        opts.setdefault("layer", exp.tensor)
    if method == "occlusion":
        opts.update(window=(OCC_WINDOW, OCC_WINDOW), stride=(OCC_STRIDE, OCC_STRIDE), baseline=0.0)
    return ex.explain(exp.x.copy(), method=method, target=target, **opts)


def _expected_shape(exp: pm.Exported, kind: str) -> tuple[int, ...]:
    if kind == "input":
        return tuple(exp.x.shape)
    if kind == "plane":
        return tuple(exp.x.shape[2:])
    shape = onnx.shape_inference.infer_shapes(exp.proto)
    vi = {v.name: v for v in shape.graph.value_info}[exp.tensor]
    return tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)[2:]


# ----------------------------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"target-{t}")
@pytest.mark.parametrize("check_name", list(CHECKS))
@pytest.mark.parametrize("model", MODELS)
def test_parity(nets, model, check_name, target):
    exp, ex = nets(model)
    method, ref_fn, kind = CHECKS[check_name]
    ours_target, c = _target(exp, target)
    e = _explain(ex, exp, method, ours_target)
    assert e.target == c
    assert e.attribution.shape == _expected_shape(exp, kind)
    check(f"{model}/{check_name}/{target}", e.attribution, ref_fn(exp, c))


# ----------------------------------------------------------------------------------------------- more layers


@pytest.mark.parametrize("model", MODELS)
def test_gradcam_other_layers(nets, model):
    """Grad-CAM at earlier layers (ReLU/Clip outputs, a strided block's inner ReLU) vs Captum, tensor and node name."""
    exp, ex = nets(model)
    _, c = _target(exp, "top")
    for path, (tensor, node) in exp.extra.items():
        ref = ref_layer_gradcam(exp, c, layer=path)
        by_tensor = ex.explain(exp.x.copy(), method="gradcam", target=c, layer=tensor).attribution
        by_node = ex.explain(exp.x.copy(), method="gradcam", target=c, layer=node).attribution
        check(f"{model}/gradcam@{path}[captum]", by_tensor, ref)
        np.testing.assert_array_equal(by_node, by_tensor)


@pytest.mark.parametrize("model", MODELS)
def test_gradcam_default_layer_is_last_block(nets, model):
    """layer=None: onnxfix picks the last conv block's output (pytorch-grad-cam's advice), equal to Captum there."""
    exp, ex = nets(model)
    _, c = _target(exp, "top")
    e = ex.explain(exp.x.copy(), method="gradcam", target=c)
    check(f"{model}/gradcam@auto[captum]", e.attribution, ref_layer_gradcam(exp, c, layer=exp.spec.last_block))


def test_layer_mapping_is_exact(nets):
    """The module → ONNX tensor mapping the matrix relies on holds numerically (forward hook vs ORT)."""
    for model in MODELS:
        exp, _ = nets(model)
        for path, tensor in [(exp.layer, exp.tensor), *((p, t) for p, (t, _) in exp.extra.items())]:
            assert pm.check_layer_tensor(exp.proto, exp.net, path, tensor, exp.x) < 1e-4, (model, path)


def test_gradcam_uses_logit_before_softmax(nets, tmp_path):
    """A model ending in Softmax: Grad-CAM still differentiates the logit (Selvaraju et al. §3; Captum on logits)."""
    exp, _ = nets("plain")
    m = onnx.ModelProto()
    m.CopyFrom(exp.proto)
    m.graph.output[0].name = "probs"
    m.graph.node.append(onnx.helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"))
    path = tmp_path / "plain_softmax.onnx"
    onnx.save(m, path)
    ex = onnxfix.Explainer(str(path), threads=2)
    for target in TARGETS:
        ours_target, c = _target(exp, target)
        e = ex.explain(exp.x.copy(), method="gradcam", target=ours_target, layer=exp.tensor)
        check(f"plain+softmax/gradcam[captum]/{target}", e.attribution, ref_layer_gradcam(exp, c))


# ----------------------------------------------------------------------------------------------- CAM


@pytest.mark.parametrize("model", [m for m in MODELS if m != "plain"])
def test_cam_matches_classifier_weights(nets, model):
    """CAM (Zhou et al.) = Σ_k w_ck A_k at the tensor the GAP reads; computed in torch from fc.weight."""
    exp, ex = nets(model)
    feats = {}
    h = exp.net.pool.register_forward_hook(lambda _m, i, _o: feats.update(a=i[0].detach()))
    try:
        with torch.no_grad():
            exp.net(_xt(exp))
    finally:
        h.remove()
    for target in TARGETS:
        ours_target, c = _target(exp, target)
        e = ex.explain(exp.x.copy(), method="cam", target=ours_target)
        ref = torch.einsum("k,khw->hw", exp.net.fc.weight[c].detach(), feats["a"][0]).numpy()
        check(f"{model}/cam[torch]/{target}", e.attribution, ref)


def test_cam_refused_without_gap(nets):
    exp, ex = nets("plain")
    assert ex.methods()["cam"] is not None
    with pytest.raises(UnsupportedModel):
        ex.explain(exp.x.copy(), method="cam")


# ----------------------------------------------------------------------------------------------- ReLU6


def test_captum_guided_backprop_treats_relu6_as_linear(nets):
    """Captum's GuidedBackprop hooks nn.ReLU only: on a ReLU6 net its answer is not guided backprop. onnxfix
    (checked equal to the ReLU6-patched reference in the matrix) therefore differs from stock Captum here."""
    exp, ex = nets("mobile")
    _, c = _target(exp, "top")
    stock = _np(captum_attr.GuidedBackprop(exp.net).attribute(_xt(exp), target=c))
    plain_grad = ref_saliency(exp, c)
    guided = ref_guided(exp, c)
    assert rel_err(stock, plain_grad) < 1e-6  # no nn.ReLU in the net: Captum's "guided" is the plain gradient
    assert rel_err(stock, guided) > 0.05
    ours = ex.explain(exp.x.copy(), method="guided-backprop", target=c).attribution
    assert rel_err(ours, stock) > 0.05
    check("mobile/guided-backprop[guided-relu6]/top", ours, guided)
    # the same holds for Deconvolution (ReLU6 backward = ReLU(grad_out), like Zeiler's ReLU rule)
    stock = _np(captum_attr.Deconvolution(exp.net).attribute(_xt(exp), target=c))
    assert rel_err(stock, plain_grad) < 1e-6
    ours = ex.explain(exp.x.copy(), method="deconvnet", target=c).attribution
    assert rel_err(ours, stock) > 0.05
    check("mobile/deconvnet[deconv-relu6]/top", ours, ref_deconv(exp, c))


def test_mobile_relu6_saturates():
    """The ReLU6 net is scaled so that the upper clip is exercised (else the ReLU6 tests prove nothing)."""
    shares = pm.relu6_saturation(pm.build_torch("mobile"), pm.make_input("mobile"))
    assert min(shares) > 0.02, shares


# ----------------------------------------------------------------------------------------------- occlusion extras


@pytest.mark.parametrize("window,stride,baseline", [(4, 4, 0.0), (16, 8, 0.0), (6, 4, 0.0), (5, 3, 0.0),
                                                    (12, 7, 0.0), (8, 4, 0.5)])
def test_occlusion_window_stride(nets, window, stride, baseline):
    """Other windows/strides/baselines. When (H − k) is not a multiple of s, Captum places ceil((H − k)/s) + 1
    windows, the last one clipped at the border, so every pixel is covered: (6, 4) and (12, 7) on 32 px check that."""
    exp, ex = nets("mobile")  # the net with the largest score drops: float32 cancellation stays far below 1e-4
    _, c = _target(exp, "top")
    e = ex.explain(exp.x.copy(), method="occlusion", target=c, window=(window, window), stride=(stride, stride),
                   baseline=baseline)
    check(f"mobile/occlusion[captum]/w{window}s{stride}b{baseline}", e.attribution,
          ref_occlusion(exp, c, window, stride, baseline))


# ----------------------------------------------------------------------------------------------- Explainer.gradient


@pytest.mark.parametrize("model", MODELS)
def test_gradient_matches_autograd(nets, model):
    """ex.gradient: default seed (one-hot of the top class) and a random seed, w.r.t. the input and the layer."""
    exp, ex = nets(model)
    rng = np.random.default_rng(5)
    xt = _xt(exp).requires_grad_(True)
    acts = {}

    def keep(_m, _i, o):  # a forward hook must return None, or it replaces the output
        o.retain_grad()
        acts["a"] = o

    h = exp.module().register_forward_hook(keep)
    try:
        out = exp.net(xt)
    finally:
        h.remove()
    top = int(out.argmax())
    seeds = {"default": None, "random": rng.standard_normal(out.shape).astype(np.float32)}
    for key, seed in seeds.items():
        s = torch.zeros_like(out)
        if seed is None:
            s[0, top] = 1.0
        else:
            s = torch.from_numpy(seed)
        xt.grad = None
        acts["a"].grad = None
        out.backward(s, retain_graph=True)
        got = ex.gradient(exp.x.copy(), of="logits", wrt=["image", exp.tensor], seed=seed)
        check(f"{model}/gradient[autograd]/{key}/image", got["image"], _np(xt.grad))
        check(f"{model}/gradient[autograd]/{key}/layer", got[exp.tensor], _np(acts["a"].grad))
