"""Transformer parity on the same weights (issue #12): onnxfix on ONNX exports of a ViT vs pytorch-grad-cam 1.5.7
(``target_layers=[net.blocks[-1].norm1]`` with the usual ``reshape_transform``), Captum Saliency, and
straightforward torch implementations of attention rollout (Abnar & Zuidema 2020) and attention-gradient (Chefer et
al. 2021) on the torch model's own attention probabilities and their autograd gradients.

Every case asserts ``max |ours − ref| / max |ref| ≤ 1e-4`` (docs/transformers.md). Models: a tiny random ViT
exported by the legacy exporter (opset 17, dynamic batch: Shape/Expand/Where around the class token) and by dynamo
(opset 18); the trained sample ``vit_shapes`` through its torch twin when it is committed.
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

import onnxfix  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vit_models as vm  # noqa: E402

RTOL = 1e-4
SIZE = 32


_REPORT: list[dict] = []


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    scale = float(np.abs(ref).max())
    assert scale > 0, "the reference is identically zero: the case tests nothing"
    err = float(np.abs(ours - ref).max()) / scale
    _REPORT.append({"case": os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0], "rel_err": err})
    return err


@pytest.fixture(scope="module", autouse=True)
def _report():
    """``ONNXFIX_PARITY_REPORT=path.json`` dumps every case's relative error (docs/transformers.md)."""
    yield
    path = os.environ.get("ONNXFIX_PARITY_REPORT")
    if path:
        Path(path).write_text(json.dumps(_REPORT, indent=1))


def pytorch_grad_cam():
    return import_peer("pytorch_grad_cam")


class Case:
    def __init__(self, net, path: Path, x: np.ndarray):
        self.net, self.path, self.x = net, path, x
        self.ex = onnxfix.Explainer(str(path), threads=1)
        self.grid = net.grid

    def xt(self):
        return torch.from_numpy(self.x.copy())

    def top(self) -> int:
        with torch.no_grad():
            return int(self.net(self.xt()).argmax())


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cache: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in cache:
            if name == "vit_shapes":
                path = vm.SAMPLES / "vit_shapes.onnx"
                if not path.exists():
                    pytest.skip(f"{path} is not built yet (tools/build_models_v2.py)")
                net = vm.nets_v2().load_twin(path)
                x = vm.image(64, seed=5)
            else:
                exporter = "dynamo" if name == "dynamo" else "legacy"
                net = vm.tiny_vit()
                path = vm.export(net, SIZE, folder / f"vit_{exporter}.onnx", exporter)
                x = vm.image(SIZE)
            cache[name] = Case(net, path, x)
        return cache[name]

    yield get
    torch.set_num_threads(threads)


def reshape_transform(grid: int):
    def f(t):  # pytorch-grad-cam's ViT tutorial
        r = t[:, 1:, :].reshape(t.size(0), grid, grid, t.size(2))
        return r.transpose(2, 3).transpose(1, 2)

    return f


def ref_pgc(case: Case, c: int, kind: str) -> np.ndarray:
    """pytorch-grad-cam's raw map before scale_cam_image (ReLU of get_cam_image)."""
    pgc = pytorch_grad_cam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "layercam": pgc.LayerCAM}[kind]
    raw: list[np.ndarray] = []
    with cls(model=case.net, target_layers=[case.net.blocks[-1].norm1],
             reshape_transform=reshape_transform(case.grid)) as cam:
        orig = cam.get_cam_image

        def record(*args, **kwargs):
            out = orig(*args, **kwargs)
            raw.append(np.asarray(out))
            return out

        cam.get_cam_image = record
        cam(input_tensor=case.xt(), targets=[ClassifierOutputTarget(c)])
    return np.maximum(raw[0], 0)[0]


def torch_attention(case: Case, c: int | None = None) -> tuple[list, list]:
    """The torch model's attention probabilities per block (B, heads, T, T) and, for class ``c``, their gradients."""
    for b in case.net.blocks:
        b.attn.keep = True
    try:
        x = case.xt()
        if c is None:
            with torch.no_grad():
                case.net(x)
            return [b.attn.attn.numpy().astype(np.float64) for b in case.net.blocks], []
        out = case.net(x)
        attns = [b.attn.attn for b in case.net.blocks]
        for a in attns:
            a.retain_grad()
        out[0, c].backward()
        return ([a.detach().numpy().astype(np.float64) for a in attns],
                [a.grad.numpy().astype(np.float64) for a in attns])
    finally:
        for b in case.net.blocks:
            b.attn.keep = False
            b.attn.attn = None


def torch_rollout(attns: list, fusion: str, discard_ratio: float) -> np.ndarray:
    """Abnar & Zuidema's rollout as jacobgil/vit-explain writes it, rows re-normalised (keepdim)."""
    result = torch.eye(attns[0].shape[-1], dtype=torch.float64)[None]
    for a in attns:
        a = torch.from_numpy(a)
        fused = {"mean": a.mean(dim=1), "max": a.max(dim=1).values, "min": a.min(dim=1).values}[fusion]
        flat = fused.reshape(fused.size(0), -1).clone()
        k = int(flat.size(-1) * discard_ratio)
        if k:
            _, idx = flat.topk(k, -1, largest=False)
            idx = idx[idx != 0]
            flat[0, idx] = 0
        fused = flat.reshape(fused.shape)
        eye = torch.eye(fused.size(-1), dtype=torch.float64)
        m = (fused + eye) / 2
        m = m / m.sum(dim=-1, keepdim=True)
        result = torch.matmul(m, result)
    return result[0, 0, 1:].numpy()


def torch_chefer(attns: list, grads: list) -> np.ndarray:
    """Chefer et al.'s ViT recipe (Transformer-MM-Explainability: avg_heads + apply_self_attention_rules)."""
    R = torch.eye(attns[0].shape[-1], dtype=torch.float64)
    for a, g in zip(attns, grads, strict=True):
        cam = (torch.from_numpy(g)[0] * torch.from_numpy(a)[0]).clamp(min=0).mean(dim=0)
        R = R + torch.matmul(cam, R)
    return R[0, 1:].numpy()


MODELS = ["legacy", "dynamo", "vit_shapes"]


@pytest.mark.parametrize("kind", ["gradcam", "gradcam++", "layercam"])
@pytest.mark.parametrize("target", ["top", "alt"])
@pytest.mark.parametrize("model", MODELS)
def test_cam_vs_pytorch_grad_cam(cases, model, target, kind):
    case = cases(model)
    c = case.top() if target == "top" else (case.top() + 1) % 3
    e = case.ex.explain(case.x.copy(), method=kind, target=None if target == "top" else c)  # auto layer
    assert e.target == c
    assert e.extras["layer"] == case.ex.model.graph.producer(e.extras["layer"]).outputs[0]
    assert "norm1" in e.extras["layer"] or "layer_norm" in e.extras["layer"]
    ref = ref_pgc(case, c, kind)
    assert e.attribution.shape == (case.grid, case.grid)
    err = rel_err(e.attribution, ref)
    assert err <= RTOL, f"{model}/{kind}/{target}: {err:.3e}"


@pytest.mark.parametrize("model", MODELS)
def test_saliency_vs_captum(cases, model):
    captum_attr = pytest.importorskip("captum.attr")
    case = cases(model)
    c = case.top()
    e = case.ex.explain(case.x.copy(), method="saliency")
    ref = captum_attr.Saliency(case.net).attribute(case.xt(), target=c, abs=False).detach().numpy()
    assert rel_err(e.attribution, ref) <= RTOL


@pytest.mark.parametrize("fusion,discard", [("mean", 0.0), ("max", 0.0), ("min", 0.0), ("mean", 0.5), ("max", 0.9)])
@pytest.mark.parametrize("model", MODELS)
def test_rollout_vs_torch(cases, model, fusion, discard):
    case = cases(model)
    e = case.ex.explain(case.x.copy(), method="attention-rollout", head_fusion=fusion, discard_ratio=discard)
    attns, _ = torch_attention(case)
    ref = torch_rollout(attns, fusion, discard).reshape(case.grid, case.grid)
    assert e.attribution.shape == ref.shape
    assert rel_err(e.attribution, ref) <= RTOL


@pytest.mark.parametrize("target", ["top", "alt"])
@pytest.mark.parametrize("model", MODELS)
def test_attention_gradient_vs_torch(cases, model, target):
    case = cases(model)
    c = case.top() if target == "top" else (case.top() + 1) % 3
    e = case.ex.explain(case.x.copy(), method="attention-gradient", target=None if target == "top" else c)
    assert e.target == c
    attns, grads = torch_attention(case, c)
    ref = torch_chefer(attns, grads).reshape(case.grid, case.grid)
    assert rel_err(e.attribution, ref) <= RTOL


def test_attention_gradient_batch_equals_single(cases):
    """A batch of two with different targets equals each image alone (the batched forward + backward path)."""
    case = cases("legacy")
    x2 = vm.image(SIZE, seed=9)
    ex = case.ex
    batch = ex.explain([case.x.copy(), x2], method="attention-gradient", target=[1, 2])
    for e, x, t in zip(batch, [case.x, x2], [1, 2], strict=True):
        one = ex.explain(x.copy(), method="attention-gradient", target=t)
        assert e.target == t
        np.testing.assert_allclose(e.attribution, one.attribution, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------- ConvNeXt


@pytest.fixture(scope="module")
def convnext(tmp_path_factory):
    net = vm.tiny_convnext()
    path = vm.export(net, SIZE, tmp_path_factory.mktemp("cnx") / "convnext.onnx")
    return net, onnxfix.Explainer(str(path), threads=1)


@pytest.mark.parametrize("where", ["auto", "nhwc-norm"])
def test_convnext_gradcam_vs_pytorch_grad_cam(convnext, where):
    """ConvNeXt: the auto layer is the last stage's output (NCHW, pytorch-grad-cam's ``stages[-1]``); the NHWC
    LayerNorm inside the last block (between permutes) is mapped like ``reshape_transform=permute(0, 3, 1, 2)``."""
    pgc = pytorch_grad_cam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net, ex = convnext
    x = vm.image(SIZE, seed=2)
    c = int(net(torch.from_numpy(x)).argmax())
    if where == "auto":
        e = ex.explain(x.copy(), method="gradcam")
        module, rt = net.stages[-1], None
    else:
        norms = [n.outputs[0] for n in ex.model.graph.nodes if n.op_type == "LayerNormalization"
                 and "stages.2" in n.name]
        e = ex.explain(x.copy(), method="gradcam", layer=norms[-1])
        module, rt = net.stages[-1][0].norm, (lambda t: t.permute(0, 3, 1, 2))
    raw: list[np.ndarray] = []
    with pgc.GradCAM(model=net, target_layers=[module], reshape_transform=rt) as cam:
        orig = cam.get_cam_image

        def record(*args, **kwargs):
            out = orig(*args, **kwargs)
            raw.append(np.asarray(out))
            return out

        cam.get_cam_image = record
        cam(input_tensor=torch.from_numpy(x.copy()), targets=[ClassifierOutputTarget(c)])
    assert e.target == c
    assert rel_err(e.attribution, np.maximum(raw[0], 0)[0]) <= RTOL
