"""Tiny transformer models for the transformer tests: the ViT of tools/nets_v2.py (timm's module names), small
random weights (fixed seed), exported by torch's legacy exporter (opset 17, dynamic batch) or by dynamo (opset 18).

Shared by tests/test_transformers.py, tests/test_attention_parity.py and tools/bench_transformers.py.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: where the v2 sample models are (ONNXFIX_SAMPLES_V2 overrides, e.g. a fresh tools/build_models_v2.py --out folder)
SAMPLES = Path(os.environ.get("ONNXFIX_SAMPLES_V2", ROOT / "sample_models"))


def nets_v2():
    """tools/nets_v2.py as a module (it imports only torch, numpy and onnx)."""
    name = "onnxfix_tools_nets_v2"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "nets_v2.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return sys.modules[name]


def tiny_vit(seed: int = 0, size: int = 32, patch: int = 8, dim: int = 32, depth: int = 2, heads: int = 2,
             n_classes: int = 5):
    """A random-weight ViT (eval mode); weights scaled up so attention is far from uniform."""
    import torch

    N = nets_v2()
    torch.manual_seed(seed)
    net = N.ViT(n_classes=n_classes, size=size, patch=patch, dim=dim, depth=depth, heads=heads, mlp_ratio=2.0)
    with torch.no_grad():
        net.pos_embed.normal_(0, 0.5)
        net.cls_token.normal_(0, 0.5)
        for blk in net.blocks:
            blk.attn.qkv.weight.mul_(2.0)
            for ln in (blk.norm1, blk.norm2):
                ln.weight.normal_(1.0, 0.2)
                ln.bias.normal_(0.0, 0.2)
    return net.eval()


def export(net, size: int, path: Path, exporter: str = "legacy") -> Path:
    """Export ``net`` to ``path``: ``legacy`` (TorchScript, opset 17, dynamic batch) or ``dynamo`` (opset 18)."""
    import onnx
    import torch

    x1 = torch.zeros(1, 3, size, size)
    if exporter == "legacy":
        buf = io.BytesIO()
        torch.onnx.export(net, (x1,), buf, dynamo=False, opset_version=17, do_constant_folding=True,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        m = onnx.load_from_string(buf.getvalue())
    else:
        tmp = path.with_suffix(".dynamo.tmp.onnx")
        torch.onnx.export(net, (x1,), str(tmp), dynamo=True, opset_version=18, external_data=False,
                          input_names=["image"], output_names=["logits"])
        m = onnx.load(str(tmp))
        tmp.unlink()
    onnx.save(m, str(path))
    return path


def image(size: int = 32, seed: int = 1) -> np.ndarray:
    """A deterministic input batch of one, (1, 3, size, size) float32."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, 3, size, size)).astype(np.float32)


def tiny_convnext(seed: int = 0):
    """A random-weight ConvNeXt-like net (tools/nets_v2.ConvNeXtTiny: NHWC LayerNorm between permutes), eval mode."""
    import torch

    torch.manual_seed(seed)
    return nets_v2().ConvNeXtTiny(n_classes=3, dims=(16, 24, 32), depths=(1, 1, 1)).eval()
