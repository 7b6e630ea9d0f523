"""pytorch-grad-cam 1.5.7's whole outputs (issue #15, item 2) on an ONNX export vs the torch net with the same
weights: FullGrad, ``aug_smooth`` (Grad-CAM, LayerCAM) and several target layers fused (LayerCAM, Grad-CAM).

These compare pytorch-grad-cam's ``__call__`` result itself — min-max scaled, resized with OpenCV to the input,
averaged over layers / augmentations — not the raw map at the layer (tests/test_methods_peers.py does that for one
layer). Every case: max |ours − ref| / max |ref| ≤ 1e-4.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import import_peer

torch = pytest.importorskip("torch")
pytest.importorskip("ttach")
cv2 = pytest.importorskip("cv2")

import onnxfix  # noqa: E402
from onnxfix.methods.fullgrad import fullgrad_maps  # noqa: E402
from onnxfix.methods.gradients import resize_bilinear  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import parity_models as pm  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]

RTOL = 1e-4


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    scale = float(np.abs(ref).max())
    assert scale > 0, "the reference is identically zero: the case tests nothing"
    return float(np.abs(ours - ref).max()) / scale


def _pgc():
    return import_peer("pytorch_grad_cam")


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("peers2")
    cache: dict[str, tuple] = {}
    torch.set_num_threads(1)

    def get(name: str):
        if name not in cache:
            exp = pm.build(name, folder)
            ex = onnxfix.Explainer(str(exp.path), threads=1)
            with torch.no_grad():
                c = int(exp.net(torch.from_numpy(exp.x)).argmax())
            cache[name] = (exp, ex, c)
        return cache[name]

    return get


def peer(exp, c: int, cls_name: str, modules: list[str], x: np.ndarray | None = None, **call) -> np.ndarray:
    """pytorch-grad-cam's ``cls_name`` output for ``x`` (default: the net's input), target class ``c``."""
    pgc = _pgc()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = exp.x if x is None else x
    cls = getattr(pgc, cls_name)
    with cls(model=exp.net, target_layers=[exp.module(m) for m in modules]) as cam:
        return np.asarray(cam(input_tensor=torch.from_numpy(x.copy()), targets=[ClassifierOutputTarget(c)] * len(x),
                              **call))


def test_resize_is_opencvs():
    rng = np.random.default_rng(0)
    for hw, to in [((4, 4), (32, 32)), ((3, 5), (17, 11)), ((8, 8), (8, 8)), ((16, 12), (7, 9))]:
        a = rng.random(hw).astype(np.float32)
        assert np.abs(resize_bilinear(a.astype(np.float64), to) - cv2.resize(a, to[::-1])).max() < 1e-6


# ----------------------------------------------------------------------------------------------- aug_smooth


@pytest.mark.parametrize("name", ["plain", "resnet"])
@pytest.mark.parametrize("method,cls_name", [("gradcam", "GradCAM"), ("layercam", "LayerCAM"),
                                             ("eigen-gradcam", "EigenGradCAM")])
def test_aug_smooth(nets, name, method, cls_name):
    exp, ex, c = nets(name)
    ref = peer(exp, c, cls_name, [exp.layer], aug_smooth=True)[0]
    e = ex.explain(exp.x, method=method, target=c, layer=exp.tensor, aug_smooth=True)
    assert e.attribution.shape == exp.x.shape[2:]
    assert rel_err(e.attribution, ref) <= RTOL
    plain = peer(exp, c, cls_name, [exp.layer])[0]
    assert rel_err(plain, ref) > 1e-2  # the augmentations change the map: the case tests them


def test_aug_smooth_eigen_and_batch(nets):
    exp, ex, c = nets("resnet")
    ref = peer(exp, c, "XGradCAM", [exp.layer], aug_smooth=True, eigen_smooth=True)[0]
    e = ex.explain(exp.x, method="xgradcam", target=c, layer=exp.tensor, aug_smooth=True, eigen_smooth=True)
    assert rel_err(e.attribution, ref) <= RTOL
    # a batch of two: each image's map as alone (targets resolved per image)
    x2 = np.concatenate([exp.x, exp.x[..., ::-1] * np.float32(0.7)])
    ref2 = peer(exp, c, "LayerCAM", [exp.layer], x=x2, aug_smooth=True)
    es = ex.explain(list(x2[:, None]), method="layercam", target=c, layer=exp.tensor, aug_smooth=True)
    for n in range(2):
        assert rel_err(es[n].attribution, ref2[n]) <= RTOL


# ----------------------------------------------------------------------------------------------- several layers


@pytest.mark.parametrize("name", ["plain", "resnet", "mobile"])
def test_multi_layer_layercam(nets, name):
    exp, ex, c = nets(name)
    paths = [exp.layer, *exp.spec.extra_layers]
    tensors = [exp.tensor, *(exp.extra[p][0] for p in exp.spec.extra_layers)]
    ref = peer(exp, c, "LayerCAM", paths)[0]
    e = ex.explain(exp.x, method="layercam", target=c, layer=",".join(tensors))
    assert e.extras["layers"] == tensors
    assert rel_err(e.attribution, ref) <= RTOL
    one = peer(exp, c, "LayerCAM", [exp.layer])[0]
    assert rel_err(one, ref) > 1e-2  # the shallower layers change the fused map


def test_multi_layer_with_aug_smooth(nets):
    exp, ex, c = nets("resnet")
    paths = [exp.layer, exp.spec.extra_layers[0]]
    ref = peer(exp, c, "GradCAM", paths, aug_smooth=True)[0]
    layer = ",".join([exp.tensor, exp.extra[paths[1]][0]])
    e = ex.explain(exp.x, method="gradcam", target=c, layer=layer, aug_smooth=True)
    assert rel_err(e.attribution, ref) <= RTOL


def test_bad_layer_list(nets):
    exp, ex, c = nets("plain")
    with pytest.raises(onnxfix.InputError, match="nope"):
        ex.explain(exp.x, method="layercam", target=c, layer=f"{exp.tensor},nope")


# ----------------------------------------------------------------------------------------------- FullGrad


def _folded(net):
    """A copy of ``net`` with every BatchNorm2d folded into the Conv2d before it (what the ONNX exporter does): the
    bias layers FullGrad sees in torch are then the ones of the ONNX graph."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(net)
    mods = dict(net.named_modules())
    prev: tuple[str, torch.nn.Module] | None = None
    for name, m in list(net.named_modules()):
        if isinstance(m, torch.nn.BatchNorm2d) and prev is not None and isinstance(prev[1], torch.nn.Conv2d):
            parent, _, conv_attr = prev[0].rpartition(".")
            bn_parent, _, bn_attr = name.rpartition(".")
            setattr(mods[parent] if parent else net, conv_attr, fuse_conv_bn_eval(prev[1], m))
            setattr(mods[bn_parent] if bn_parent else net, bn_attr, torch.nn.Identity())
        if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d)):
            prev = (name, m)
    return net.eval()


def peer_fullgrad(net, x: np.ndarray, c: int, **call) -> np.ndarray:
    _pgc()
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with FullGrad(model=net, target_layers=[]) as cam:
        return np.asarray(cam(input_tensor=torch.from_numpy(x.copy()), targets=[ClassifierOutputTarget(c)] * len(x),
                              **call))


@pytest.mark.parametrize("name", ["plain", "resnet", "mobile", "senet"])
def test_fullgrad(nets, name):
    exp, ex, c = nets(name)
    net = _folded(exp.net)
    with torch.no_grad():  # the fold is exact up to rounding
        assert np.allclose(net(torch.from_numpy(exp.x)).numpy(), exp.net(torch.from_numpy(exp.x)).numpy(),
                           atol=1e-4)
    ref = peer_fullgrad(net, exp.x, c)[0]
    e = ex.explain(exp.x, method="fullgrad", target=c)
    assert e.attribution.shape == exp.x.shape[2:]
    assert e.extras["bias_layers"] > 0
    assert rel_err(e.attribution, ref) <= RTOL
    ixg = np.asarray(ex.explain(exp.x, method="input-x-gradient", target=c).attribution)
    only_input = fullgrad_maps(np.ones_like(ixg), ixg, [], nhwc=False)[0]
    assert rel_err(only_input, ref) > 1e-2  # the bias-gradient terms matter: the case tests them


def test_fullgrad_aug_smooth_and_batch(nets):
    exp, ex, c = nets("resnet")
    net = _folded(exp.net)
    ref = peer_fullgrad(net, exp.x, c, aug_smooth=True)[0]
    assert rel_err(ex.explain(exp.x, method="fullgrad", target=c, aug_smooth=True).attribution, ref) <= RTOL
    x2 = np.concatenate([exp.x, exp.x[..., ::-1] * np.float32(0.7)])
    ref2 = peer_fullgrad(net, x2, c)
    es = ex.explain(list(x2[:, None]), method="fullgrad", target=c)
    for n in range(2):
        assert rel_err(es[n].attribution, ref2[n]) <= RTOL
