"""Small PyTorch nets for the reference-parity tests (tests/test_parity_captum.py) and their ONNX exports.

Every net is built with a fixed seed, switched to eval mode, and exported with torch's legacy exporter
(``dynamo=False, opset_version=17, input_names=["image"], output_names=["logits"]``), so the ONNX model and the
torch model that Captum / pytorch-grad-cam attribute share the same weights.  For each net a *layer* (a torch
module path) is mapped to the ONNX tensor that holds its output, found by walking the exported graph: the output
of the last node in the module's ONNX scope (``/features/features.7/Relu`` → ``/features/features.7/Relu_output_0``),
then checked numerically against a forward hook (:func:`check_layer_tensor`).

Nets (input 1×3×32×32, 10 classes, logits out, no softmax):

* ``plain``  – VGG-like conv/ReLU/max-pool stack, Flatten, two Linear layers (ReLU between).
* ``resnet`` – conv+BN+ReLU stem, two BasicBlocks (the second strided, with a 1×1+BN shortcut), GAP, Linear.
  BatchNorm in eval mode with non-trivial running statistics (the exporter folds it into the convs).
* ``mobile`` – MobileNetV2-style: ReLU6 everywhere (exported as Clip(0, 6)), depthwise 3×3 convs (stride 1
  and 2), an inverted residual with a linear bottleneck, GAP, Linear. Weights are scaled so that a good share
  of the ReLU6 inputs lie above 6 (the upper clip matters).
* ``senet``  – conv/ReLU/max-pool, a squeeze-and-excitation gate (GAP → 1×1 conv → ReLU → 1×1 conv → Sigmoid →
  Mul), a strided conv/ReLU, GAP, Linear.  Its layer is the SE module's output: the ``Mul`` tensor.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

INPUT_SHAPE = (1, 3, 32, 32)
NUM_CLASSES = 10


# ------------------------------------------------------------------------------------------------ the nets


class PlainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 0 1 2   -> 8×16×16
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 3 4 5  -> 16×8×8
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),  # 6 7                    -> 16×8×8
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)  # -> 32×16×16
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.dw(self.expand(x)))


class MobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU6())  # -> 16×16×16
        self.block = InvertedResidual(16, 2)
        self.down = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU6())  # depthwise, stride 2 -> 16×8×8
        self.head = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        x = self.head(self.down(self.block(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(c, c // r, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(c // r, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # -> 16×16×16
        self.conv = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.se = SqueezeExcite(32)
        self.down = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU())  # -> 32×8×8
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        x = self.down(self.se(self.conv(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# ------------------------------------------------------------------------------------------------ specs


@dataclass(frozen=True)
class NetSpec:
    name: str
    build: type
    layer: str  # module path attributed to by the layer methods (Grad-CAM…)
    extra_layers: tuple[str, ...] = ()  # more layers checked for Grad-CAM only
    input_scale: float = 1.0
    weight_scale: float = 1.0  # conv/linear weights multiplied by this after init (ReLU6 saturation)
    has_relu6: bool = False
    last_block: str = ""  # the module whose output is the last conv block's (the default Grad-CAM layer)
    alt_target: int = 7  # a second class whose Grad-CAM sum Σ α_k A_k has mixed signs (Grad-CAM and its
    #                      counterfactual both non-zero at ``layer``)


SPECS: dict[str, NetSpec] = {
    "plain": NetSpec("plain", PlainNet, layer="features.7", extra_layers=("features.4", "features.1"), alt_target=5,
                      last_block="features.7"),
    "resnet": NetSpec("resnet", ResNet, layer="layer2", extra_layers=("layer1", "layer2.relu1"), last_block="layer2"),
    "mobile": NetSpec("mobile", MobileNet, layer="head.2", extra_layers=("down.2", "block.dw.2"),
                      input_scale=3.0, weight_scale=3.0, has_relu6=True, last_block="head.2"),
    "senet": NetSpec("senet", SENet, layer="se", extra_layers=("down.1", "conv.1"), last_block="down.1"),
}


def build_torch(name: str) -> nn.Module:
    """The eval-mode torch net ``name`` with its fixed-seed weights (BatchNorm statistics randomised too)."""
    spec = SPECS[name]
    seed = 1234 + sorted(SPECS).index(name)
    torch.manual_seed(seed)
    net = spec.build()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and spec.weight_scale != 1.0:
                m.weight.mul_(spec.weight_scale)
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.3 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return net.eval()


def make_input(name: str, seed: int = 0) -> np.ndarray:
    """A fixed float32 input shaped like the model input."""
    rng = np.random.default_rng(seed + 17 * sorted(SPECS).index(name))
    x = rng.standard_normal(INPUT_SHAPE).astype(np.float32)
    return (x * np.float32(SPECS[name].input_scale)).astype(np.float32)


def export(net: nn.Module, path: str | Path) -> Path:
    """torch's legacy exporter, opset 17, input ``image``, output ``logits``."""
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        torch.onnx.export(net, (torch.zeros(INPUT_SHAPE),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"])
    return path


# ------------------------------------------------------------------------------------------------ module → tensor


def _unqualified(qualified: str) -> str:
    """torch.onnx's scope label of a module: its qualified name from the last non-numeric atom on."""
    atoms = qualified.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return qualified


def onnx_scope(net: nn.Module, path: str) -> str:
    """The ONNX node-name prefix of module ``path`` in a legacy export: ``/features/features.7/``.

    One scope label per called ancestor (containers that are never called, ModuleList/ModuleDict, add none)."""
    parts = path.split(".")
    labels = []
    for i in range(1, len(parts) + 1):
        q = ".".join(parts[:i])
        m = net.get_submodule(q)
        if isinstance(m, (nn.ModuleList, nn.ModuleDict)):
            continue
        labels.append(_unqualified(q))
    return "/" + "/".join(labels) + "/"


def layer_tensor(model: onnx.ModelProto, net: nn.Module, path: str) -> tuple[str, str]:
    """(tensor name, node name) of the output of module ``path``: the last node of its scope, in graph order."""
    scope = onnx_scope(net, path)
    nodes = [n for n in model.graph.node if n.name.startswith(scope) and n.op_type != "Constant"]
    if not nodes:
        raise KeyError(f"no ONNX node in scope {scope!r} (module {path!r})")
    last = nodes[-1]
    return last.output[0], last.name


def check_layer_tensor(model: onnx.ModelProto, net: nn.Module, path: str, tensor: str, x: np.ndarray) -> float:
    """max |ONNX tensor − torch module output| for input ``x`` (the mapping's numerical check)."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    got = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]
    seen = {}
    h = net.get_submodule(path).register_forward_hook(lambda _m, _i, o: seen.update(o=o.detach()))
    try:
        with torch.no_grad():
            net(torch.from_numpy(x))
    finally:
        h.remove()
    return float(np.abs(got - seen["o"].numpy()).max())


@dataclass
class Exported:
    """A net, its export, and the layer mapping."""

    name: str
    net: nn.Module
    path: Path
    proto: onnx.ModelProto
    x: np.ndarray
    layer: str  # torch module path
    tensor: str  # ONNX tensor name of its output
    node: str  # ONNX node producing it
    extra: dict[str, tuple[str, str]] = field(default_factory=dict)  # module path -> (tensor, node)
    spec: NetSpec | None = None

    def module(self, path: str | None = None) -> nn.Module:
        return self.net.get_submodule(path or self.layer)


def build(name: str, folder: str | Path) -> Exported:
    """Build, export to ``folder/<name>.onnx`` and map the layers of net ``name``."""
    spec = SPECS[name]
    net = build_torch(name)
    path = export(net, Path(folder) / f"{name}.onnx")
    proto = onnx.load(str(path))
    tensor, node = layer_tensor(proto, net, spec.layer)
    extra = {p: layer_tensor(proto, net, p) for p in spec.extra_layers}
    return Exported(name, net, path, proto, make_input(name), spec.layer, tensor, node, extra, spec)


# ------------------------------------------------------------------------------------------------ ReLU6 rules


class _GuidedReLU6(torch.autograd.Function):
    """Guided backprop through ReLU6: grad_in = grad_out · [0 < x < 6] · [grad_out > 0]."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0.0, 6.0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ((x > 0) & (x < 6)).to(g.dtype) * (g > 0).to(g.dtype)


class _DeconvReLU6(torch.autograd.Function):
    """Deconvnet through ReLU6 (Zeiler: the backward ReLU ignores the forward input): grad_in = ReLU(grad_out)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(0.0, 6.0)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0.0)


class GuidedReLU6(nn.Module):
    def forward(self, x):
        return _GuidedReLU6.apply(x)


class DeconvReLU6(nn.Module):
    def forward(self, x):
        return _DeconvReLU6.apply(x)


def replace_relu6(net: nn.Module, kind: type[nn.Module]) -> nn.Module:
    """A deep copy of ``net`` with every nn.ReLU6 replaced by ``kind()`` (GuidedReLU6 or DeconvReLU6)."""
    import copy

    net = copy.deepcopy(net)
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(parent, child_name, kind())
    return net.eval()


def relu6_saturation(net: nn.Module, x: np.ndarray) -> list[float]:
    """Share of each ReLU6's inputs above 6 (the models are scaled so that the upper clip is exercised)."""
    shares: list[float] = []
    hooks = [m.register_forward_hook(lambda _m, i, _o: shares.append(float((i[0] > 6).float().mean())) and None)
             for m in net.modules() if isinstance(m, nn.ReLU6)]
    try:
        with torch.no_grad():
            net(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    return shares
