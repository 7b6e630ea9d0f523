"""The autodiff engine on whole models with the new ops (against torch autograd in float64), on symbolic H/W
(built per input shape), with seeds built in the graph (per batch item, custom seed builders), and with a mode
registered as an override table."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfix.autodiff import ArgmaxSeed, GradientProgram, register_mode
from onnxfix.autodiff.program import clear_cache
from onnxfix.autodiff.registry import MODE_TABLES
from onnxfix.errors import InputError
from onnxfix.graph import Graph

try:  # tests/ may or may not be a package
    from . import autodiff_graphs as AG
except ImportError:
    import autodiff_graphs as AG

F32 = np.float32


def _classifier(batch="N", hw=("H", "W"), k=5):
    """x → Conv → Relu → Resize ×2 (nearest) → Conv s2 → GlobalAveragePool → Flatten → Gemm → logits."""
    r = np.random.default_rng(0)
    inits = {"w1": r.standard_normal((4, 3, 3, 3)).astype(F32), "w2": r.standard_normal((6, 4, 3, 3)).astype(F32),
             "fw": r.standard_normal((k, 6)).astype(F32), "sc": np.array([1, 1, 2, 2], F32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Resize", ["r1", "", "sc"], ["u"], mode="nearest"),
             helper.make_node("Conv", ["u", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, *hw])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(v, n) for n, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


# ---------------------------------------------------------------------------------------------------------------
# Dynamic spatial sizes


def test_symbolic_hw_is_built_per_input_shape():
    clear_cache()
    model = _classifier()
    graph = Graph.from_model(model)
    prog = GradientProgram(graph, "logits", ["x"])
    assert prog.per_shape
    rng = np.random.default_rng(1)
    for shape in ((1, 3, 8, 8), (2, 3, 6, 10), (1, 3, 8, 8)):
        x = rng.standard_normal(shape).astype(F32)
        seed = rng.standard_normal((shape[0], 5)).astype(F32)
        out = prog.run({"x": x}, seed)
        assert out["grad:x"].shape == shape
        d_err, c_err = AG.Reference64(model, "logits", seed).check({"x": x}, "x", out["grad:x"], rng, 2, 2)
        assert d_err <= 1e-4 and c_err <= 1e-4, (shape, d_err, c_err)
    assert len(prog._variants) == 2  # one build per distinct shape
    assert GradientProgram(graph, "logits", ["x"]) is prog


def test_symbolic_hw_with_a_missing_rule_still_fails_at_construction():
    from onnxfix.errors import UnsupportedOp

    model = _classifier()
    for n in model.graph.node:
        if n.op_type == "Relu":
            n.op_type = "Hardmax"
    with pytest.raises(UnsupportedOp, match="Hardmax"):
        GradientProgram(Graph.from_model(model), "logits", ["x"])


# ---------------------------------------------------------------------------------------------------------------
# Seeds built in the graph


def _onehot_rows(logits):
    s = np.zeros_like(logits)
    s[np.arange(len(logits)), logits.argmax(1)] = 1
    return s


def test_argmax_seed_per_batch_item_and_the_old_default():
    clear_cache()
    model = _classifier(batch=3, hw=(6, 6))
    graph = Graph.from_model(model)
    x = np.random.default_rng(2).standard_normal((3, 3, 6, 6)).astype(F32)
    fed = GradientProgram(graph, "logits", ["x"])
    logits = fed.run({"x": x}, np.zeros((3, 5), F32))["logits"]
    want = fed.run({"x": x}, _onehot_rows(logits))["grad:x"]
    for prog in (GradientProgram(graph, "logits", ["x"], seed=ArgmaxSeed(batch_axis=0)),
                 GradientProgram(graph, "logits", ["x"], seed="argmax", argmax_axis=1),
                 GradientProgram(graph, "logits", ["x"], seed=ArgmaxSeed(axis=-1))):
        np.testing.assert_allclose(prog.run({"x": x})["grad:x"], want, rtol=1e-6, atol=1e-7)
    whole = np.zeros_like(logits)
    whole.reshape(-1)[logits.argmax()] = 1
    old = GradientProgram(graph, "logits", ["x"], seed="argmax").run({"x": x})["grad:x"]
    np.testing.assert_allclose(old, fed.run({"x": x}, whole)["grad:x"], rtol=1e-6, atol=1e-7)


class MaskSeed:
    """A custom seed builder: a fixed weight per logit (a stand-in for box/region masks)."""

    def __init__(self, weights):
        self.weights = np.asarray(weights, F32)
        self.key = ("mask", self.weights.tobytes(), self.weights.shape)

    def build(self, model: onnx.ModelProto, seed_name: str, of: str) -> None:
        g = model.graph
        g.initializer.append(numpy_helper.from_array(self.weights, seed_name + "/w"))
        g.node.append(helper.make_node("Mul", [seed_name + "/w", seed_name + "/ones"], [seed_name]))
        g.node.insert(len(g.node) - 1, helper.make_node("Shape", [of], [seed_name + "/shape"]))
        g.node.insert(len(g.node) - 1, helper.make_node(
            "ConstantOfShape", [seed_name + "/shape"], [seed_name + "/ones"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])))


def test_custom_seed_builder_is_used_and_cached_by_key():
    clear_cache()
    model = _classifier(batch=2, hw=(6, 6))
    graph = Graph.from_model(model)
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype(F32)
    w = np.random.default_rng(4).standard_normal((2, 5)).astype(F32)
    prog = GradientProgram(graph, "logits", ["x"], seed=MaskSeed(w))
    assert GradientProgram(graph, "logits", ["x"], seed=MaskSeed(w)) is prog
    assert GradientProgram(graph, "logits", ["x"], seed=MaskSeed(w * 2)) is not prog
    want = GradientProgram(graph, "logits", ["x"]).run({"x": x}, w)["grad:x"]
    np.testing.assert_allclose(prog.run({"x": x})["grad:x"], want, rtol=1e-6, atol=1e-7)
    with pytest.raises(InputError):
        GradientProgram(graph, "logits", ["x"], seed="softmax")
    with pytest.raises(InputError):
        GradientProgram(graph, "logits", ["x"], seed=object())


# ---------------------------------------------------------------------------------------------------------------
# A mode registered as an override table


def test_registered_mode_layers_over_the_base_rules():
    clear_cache()

    def doubled_relu(b, node, gy):  # defers to the base rule and scales its answer
        gx = b.defer(node, gy)
        return [b.mul(gx[0], b.scalar(2.0, like=node.inputs[0]))]

    register_mode("test-doubled", {"Relu": doubled_relu})
    try:
        graph = Graph.from_model(_classifier(batch=1, hw=(6, 6)))
        x = np.random.default_rng(5).standard_normal((1, 3, 6, 6)).astype(F32)
        seed = np.eye(5, dtype=F32)[[1]]
        base = GradientProgram(graph, "logits", ["x", "r1"]).run({"x": x}, seed)
        mine = GradientProgram(graph, "logits", ["x", "r1"], mode="test-doubled").run({"x": x}, seed)
        np.testing.assert_allclose(mine["grad:x"], 2 * base["grad:x"], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(mine["grad:r1"], base["grad:r1"])  # downstream of the ReLU: unchanged
    finally:
        MODE_TABLES.pop("test-doubled", None)
        clear_cache()


# ---------------------------------------------------------------------------------------------------------------
# Whole networks against torch autograd (float64) on identical weights

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


class DetectorNet(nn.Module):
    """Detector/segmenter ops: SiLU, nearest ×2 upsample, Concat, ConvTranspose (output_padding, groups), bilinear
    and bicubic resizes, ELU/Softplus/Mish, InstanceNorm, max over channels, a DFL head (softmax over 8 bins)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.norm = nn.InstanceNorm2d(8, affine=True)
        self.head = nn.Conv2d(8, 4 * 8, 1)
        self.cls = nn.Conv2d(8, 3, 1)
        self.proj = nn.Parameter(torch.arange(8, dtype=torch.float32), requires_grad=False)

    def forward(self, x):
        a = F.silu(self.stem(x))                                      # 8×8
        b = F.silu(self.down(a))                                      # 4×4
        u = F.interpolate(b, scale_factor=2, mode="nearest")          # 8×8
        c = torch.cat([a, u], 1)
        t = F.elu(self.norm(self.up(c)))                              # 16×16
        t = F.interpolate(t, size=(12, 12), mode="bilinear", align_corners=False)
        t = F.softplus(t) + F.mish(F.interpolate(t, size=(12, 12), mode="bicubic", align_corners=True))
        bins = self.head(t).view(1, 4, 8, -1).softmax(2)              # DFL
        dist = (bins * self.proj.view(1, 1, 8, 1)).sum(2)             # (1, 4, 144)
        score = torch.amax(self.cls(t), dim=1).flatten(1)             # (1, 144)
        return torch.cat([dist.mean(2), score.abs().mean(1, keepdim=True), score.max(1, keepdim=True)[0]], 1)


class TinyViT(nn.Module):
    """Patch embedding, class token (expand + cat), LayerNorm, 2-head attention (4-D MatMul or einsum), GELU MLP,
    the class token's output (Gather of token 0)."""

    def __init__(self, einsum=False, dim=12, heads=2):
        super().__init__()
        self.einsum, self.heads = einsum, heads
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.1)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)                  # (1, 16, D)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
        B, T, D = t.shape
        qkv = self.qkv(self.ln1(t)).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.einsum:
            att = torch.einsum("bhqd,bhkd->bhqk", q, k) * (D // self.heads) ** -0.5
        else:
            att = q @ k.transpose(-2, -1) * (D // self.heads) ** -0.5
        o = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
        t = t + self.proj(o)
        t = t + self.mlp(self.ln2(t))
        return self.head(self.ln3(t)[:, 0])


class RecurrentNet(nn.Module):
    """OCR-style: conv features as a sequence → bidirectional GRU (batch_first) → RNN → per-step linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.gru = nn.GRU(8, 5, batch_first=True, bidirectional=True)
        self.rnn = nn.RNN(10, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        f = F.relu(self.conv(x))                                      # (1, 4, 2, 6)
        seq = f.flatten(1, 2).transpose(1, 2)                         # (1, 6, 8)
        y, _ = self.gru(seq)
        z, _ = self.rnn(y.transpose(0, 1))                            # (6, 1, 4)
        return self.out(z[:, 0])                                      # (6, 3)


NETS = {
    "detector": (DetectorNet, (1, 3, 16, 16), 17),
    "vit_matmul": (TinyViT, (1, 3, 16, 16), 17),
    "vit_einsum_gelu20": (lambda: TinyViT(einsum=True), (1, 3, 16, 16), 20),
    "recurrent": (RecurrentNet, (1, 1, 2, 6), 17),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_against_torch(name, tmp_path):
    make, shape, opset = NETS[name]
    torch.manual_seed(0)
    net = make().eval()
    x = np.random.default_rng(0).standard_normal(shape).astype(F32)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.tensor(x),), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                      output_names=["logits"])
    model = onnx.load(str(path))
    net = net.double()
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = net(xt)
    seed = np.random.default_rng(1).standard_normal(tuple(y.shape))
    (y * torch.tensor(seed)).sum().backward()
    out = GradientProgram(Graph.from_model(model), "logits", ["input"]).run({"input": x}, seed.astype(F32))
    np.testing.assert_allclose(out["logits"], y.detach().numpy(), rtol=1e-4, atol=1e-5)
    err = AG.rel_err(out["grad:input"], xt.grad.numpy())
    assert err <= 1e-4, err
