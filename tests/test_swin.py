"""Swin's windowed layout (issue #12 item 2): the auto layer, token grids, window partition / cyclic shift undone,
parity with pytorch-grad-cam 1.5.7 (``layers[-1].blocks[-1].norm1`` and its Swin ``reshape_transform``,
usage_examples/swinT_example.py) and Captum, and the refusals (attention rollout on windows, layers that do not map).

Models: a random-weight ``SwinTiny`` (tools/nets_swin.py) exported here by the legacy exporter (opset 17, dynamic
batch), and the trained sample ``sample_models/swin_shapes.onnx`` through its torch twin (``load_swin_twin``).
Every parity case asserts ``max |ours − ref| / max |ref| ≤ 1e-4``.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import import_peer

torch = pytest.importorskip("torch")

import onnxfix  # noqa: E402
from onnxfix.errors import InputError, OnnxfixError  # noqa: E402
from onnxfix.methods import METHODS  # noqa: E402
from onnxfix.methods.layers import (  # noqa: E402
    auto_layer,
    layer_view,
    layout_index,
    packing,
    windowed_attention,
    windowed_attention_reason,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "swin_shapes.onnx"
RTOL = 1e-4
LAST = "/layers.1/blocks.1"  # the last (shifted) block of the legacy export


def _nets_swin():
    spec = importlib.util.spec_from_file_location("onnxfix_tools_nets_swin", ROOT / "tools" / "nets_swin.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("onnxfix_tools_nets_swin", mod)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


NS = _nets_swin()


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    scale = float(np.abs(ref).max())
    assert scale > 0, "the reference is identically zero: the case tests nothing"
    return float(np.abs(ours - ref).max()) / scale


def pytorch_grad_cam():
    return import_peer("pytorch_grad_cam")


class Case:
    def __init__(self, net, path: Path, x: np.ndarray):
        self.net, self.path, self.x = net, path, x
        self.ex = onnxfix.Explainer(str(path), threads=1)
        self.g = net.final_grid

    def xt(self):
        return torch.from_numpy(self.x.copy())

    def top(self) -> int:
        with torch.no_grad():
            return int(self.net(self.xt()).argmax())


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cache: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in cache:
            if name == "swin_shapes":
                if not SAMPLE.exists():
                    pytest.skip(f"{SAMPLE} is not built yet (tools/build_swin.py)")
                net, path = NS.load_swin_twin(SAMPLE), SAMPLE
                x = onnxfix.Explainer(str(SAMPLE), threads=1).prepare(SAMPLE.with_suffix(".png"))[0]
            else:
                torch.manual_seed(3)
                net = NS.SwinTiny().eval()
                path = tmp_path_factory.mktemp("swin") / "swin_random.onnx"
                buf = io.BytesIO()
                torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), buf, dynamo=False, opset_version=17,
                                  do_constant_folding=True, input_names=["image"], output_names=["logits"],
                                  dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
                path.write_bytes(buf.getvalue())
                x = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)
            cache[name] = Case(net, path, np.ascontiguousarray(x, np.float32))
        return cache[name]

    yield get
    torch.set_num_threads(threads)


MODELS = ["random", "swin_shapes"]


def _tensor(case: Case, node: str, i: int = 0) -> str:
    return case.ex.model.graph.node_by_name[node].outputs[i] if i >= 0 else ""


def window_partition_tensor(case: Case) -> str:
    """The last block's window partition [N·nW, ws², C] (the qkv MatMul's input)."""
    return case.ex.model.graph.node_by_name[f"{LAST}/attn/qkv/MatMul"].inputs[0]


def swin_reshape_transform(h: int, w: int):
    def f(t):  # pytorch-grad-cam usage_examples/swinT_example.py
        r = t.reshape(t.size(0), h, w, t.size(2))
        return r.transpose(2, 3).transpose(1, 2)

    return f


def ref_pgc(case: Case, c: int, kind: str, module=None, transform=None) -> np.ndarray:
    """pytorch-grad-cam's raw map before scale_cam_image (ReLU of get_cam_image)."""
    pgc = pytorch_grad_cam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "layercam": pgc.LayerCAM}[kind]
    module = module if module is not None else case.net.layers[-1].blocks[-1].norm1
    raw: list[np.ndarray] = []
    with cls(model=case.net, target_layers=[module],
             reshape_transform=transform or swin_reshape_transform(case.g, case.g)) as cam:
        orig = cam.get_cam_image

        def record(*args, **kwargs):
            out = orig(*args, **kwargs)
            raw.append(np.asarray(out))
            return out

        cam.get_cam_image = record
        cam(input_tensor=case.xt(), targets=[ClassifierOutputTarget(c)])
    return np.maximum(raw[0], 0)[0]


# ------------------------------------------------------------------------------------------------------ the model
def test_twin_equals_onnx(cases):
    case = cases("swin_shapes")
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    ours = case.ex.model.runtime.run({case.ex.model.input: x}, [case.ex.model.head.logits])[case.ex.model.head.logits]
    with torch.no_grad():
        ref = case.net(torch.from_numpy(x)).numpy()
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert SAMPLE.stat().st_size < 2 * 1024 * 1024


@pytest.mark.parametrize("model", MODELS)
def test_auto_layer_is_last_norm1_in_raster_order(cases, model):
    """pytorch-grad-cam's Swin advice, ``layers[-1].blocks[-1].norm1``: in the graph, the LayerNormalization
    before the view/roll/partition — [N, 64, C] raster tokens on the 8×8 grid after patch merging."""
    case = cases(model)
    m = case.ex.model
    layer = auto_layer(m)
    assert layer == f"{LAST}/norm1/LayerNormalization_output_0"
    assert packing(m, layer) == 1
    e = case.ex.explain(case.x.copy(), method="gradcam")
    assert e.extras["layer"] == layer and e.attribution.shape == (case.g, case.g) and e.attribution.max() > 0


# ------------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("kind", ["gradcam", "gradcam++", "layercam"])
@pytest.mark.parametrize("which", ["top", "other"])
@pytest.mark.parametrize("model", MODELS)
def test_cams_vs_pytorch_grad_cam(cases, model, kind, which):
    case = cases(model)
    top = case.top()
    c = top if which == "top" else (top + 1) % 3
    e = case.ex.explain(case.x.copy(), method=kind, target=c)
    assert e.target == c
    assert rel_err(e.attribution, ref_pgc(case, c, kind)) <= RTOL


@pytest.mark.parametrize("model", MODELS)
def test_saliency_vs_captum(cases, model):
    captum_attr = pytest.importorskip("captum.attr")
    case = cases(model)
    c = case.top()
    e = case.ex.explain(case.x.copy(), method="saliency", target=c)
    ref = captum_attr.Saliency(case.net).attribute(case.xt(), target=c, abs=False).detach().numpy()
    assert rel_err(e.attribution, ref) <= RTOL


# ------------------------------------------------------------------------------------------------ window layouts
@pytest.mark.parametrize("model", MODELS)
def test_window_partition_maps_back_to_the_grid(cases, model):
    """The window partition of the shifted block ([N·4, 16, C]) mapped back equals the torch norm1 output on the
    grid (the roll and the partition undone), for a batch of 2; Grad-CAM there equals Grad-CAM at norm1."""
    case = cases(model)
    m = case.ex.model
    xw = window_partition_tensor(case)
    assert packing(m, xw) == 4 and layout_index(m, xw) is not None
    x2 = np.concatenate([case.x, case.x[:, :, ::-1, :]]).copy()
    got = layer_view(m, xw)(m.runtime.run({m.input: x2}, [xw])[xw])
    seen = {}
    blk = case.net.layers[-1].blocks[-1]
    hook = blk.norm1.register_forward_hook(lambda mod, i, o: seen.setdefault("o", o.detach()))
    with torch.no_grad():
        case.net(torch.from_numpy(x2))
    hook.remove()
    ref = NS.as_grid(seen["o"], case.g, case.g).numpy()
    assert got.shape == ref.shape == (2, 64, case.g, case.g)
    assert rel_err(got, ref) <= 1e-5
    a = case.ex.explain(case.x.copy(), method="gradcam", layer=xw)
    b = case.ex.explain(case.x.copy(), method="gradcam")
    assert a.extras["layer"] == xw
    assert rel_err(a.attribution, b.attribution) <= 1e-5


@pytest.mark.parametrize("kind", ["gradcam", "layercam"])
@pytest.mark.parametrize("model", MODELS)
def test_window_attention_output_vs_pytorch_grad_cam(cases, model, kind):
    """A layer in window order that is *not* a move of a raster tensor — the last block's attention output (proj,
    [N·nW, 16, C]) — is mapped through its descendants (window reverse, reverse roll); the reference is
    pytorch-grad-cam on ``blocks[-1].attn`` with a reshape_transform written from Swin's own window_reverse and
    torch.roll."""
    case = cases(model)
    blk = case.net.layers[-1].blocks[-1]
    r, ws, s = blk.res, blk.ws, blk.shift
    assert s > 0

    def transform(t):
        y = NS.window_reverse(t.reshape(-1, ws, ws, t.size(-1)), ws, r, r)
        y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        return y.permute(0, 3, 1, 2)

    proj = _tensor(case, f"{LAST}/attn/proj/Add")
    c = case.top()
    e = case.ex.explain(case.x.copy(), method=kind, target=c, layer=proj)
    assert rel_err(e.attribution, ref_pgc(case, c, kind, module=blk.attn, transform=transform)) <= RTOL


def test_windowed_batch_equals_single(cases):
    case = cases("random")
    xw = window_partition_tensor(case)
    xs = [case.x[0].transpose(1, 2, 0).copy(), case.x[0, :, ::-1].transpose(1, 2, 0).copy()]
    xs = [np.ascontiguousarray(x[None].transpose(0, 3, 1, 2)) for x in xs]
    batch = case.ex.explain(xs, method="gradcam", layer=xw, target=1)
    for x, b in zip(xs, batch, strict=True):
        one = case.ex.explain(x, method="gradcam", layer=xw, target=1)
        np.testing.assert_allclose(b.attribution, one.attribution, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------- refusals
def test_layers_that_do_not_map_are_refused_naming_those_that_do(cases):
    case = cases("random")
    for node in (f"{LAST}/attn/qkv/Add", f"{LAST}/attn/MatMul_1"):
        with pytest.raises(InputError) as err:
            case.ex.explain(case.x.copy(), method="gradcam", layer=_tensor(case, node))
        msg = str(err.value)
        assert "packs 4 windows per image" in msg
        assert f"{LAST}/norm1/LayerNormalization_output_0" in msg and window_partition_tensor(case) in msg


@pytest.mark.parametrize("method", ["attention-rollout", "attention-gradient"])
def test_attention_methods_refuse_windowed_attention(cases, method):
    """Window attention is a 16×16 matrix per window (cyclic shift between blocks, patch merging between stages),
    not an image-wide token matrix: the attention methods refuse instead of drawing a 4×4 map."""
    case = cases("random")
    m = case.ex.model
    assert len(windowed_attention(m)) == 4
    why = windowed_attention_reason(m)
    assert why is not None and "windowed" in why and "gradcam" in why
    assert METHODS[method].applies(m) == why
    with pytest.raises(OnnxfixError):
        case.ex.explain(case.x.copy(), method=method)


def test_vit_attention_is_not_windowed():
    path = ROOT / "sample_models" / "vit_shapes.onnx"
    if not path.exists():
        pytest.skip("vit_shapes not built")
    m = onnxfix.Explainer(str(path), threads=1).model
    assert windowed_attention(m) == [] and windowed_attention_reason(m) is None
    assert METHODS["attention-rollout"].applies(m) is None


def test_fixations_through_windows(cases):
    case = cases("random")
    e = case.ex.explain(case.x.copy(), method="fixations")
    assert e.points is not None and len(e.points)
