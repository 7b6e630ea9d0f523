"""Torch definition of the Swin-like sample model (tools/build_swin.py) and its twin loaded from ONNX.

``SwinTiny`` follows the original Swin Transformer code (Liu et al., ICCV 2021, §3.1–3.2; microsoft/Swin-Transformer
``swin_transformer.py``) in the [B, L, C] token layout, at toy size: patch embedding Conv 4×4/4 + LayerNorm, then
``layers[i]`` (``BasicLayer``) of ``blocks[j]`` (``SwinBlock``: norm1 → view [B, H, W, C] → cyclic shift
``torch.roll`` on odd blocks → ``window_partition`` [B·nW, ws², C] → window attention with relative position bias
(and the shift mask) → ``window_reverse`` → reverse roll → residual; norm2 → MLP → residual), ``PatchMerging``
(2×2 neighbours concatenated, LayerNorm, Linear 4C → 2C) at the end of every stage but the last, LayerNorm,
mean over tokens, Linear head.  Tokens are raster order (row-major on the H×W grid) everywhere outside the
window partition; module names as the reference (``layers[-1].blocks[-1].norm1`` is pytorch-grad-cam's Swin layer).

:func:`load_swin_twin` rebuilds the net from ``sample_models/swin_shapes.json`` (``twin.kwargs``) and copies every
weight from the ONNX initializers (``twin.params``); the relative position bias table, which the exporter folds
into the gathered [heads, ws², ws²] bias, is read back from that bias (every table entry is gathered at least once).

Only torch, numpy and onnx are imported (onnx lazily), so tests can import the module by path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, H, W, C] → [B·nW, ws, ws, C], windows in raster order per image, images outermost."""
    h, w, c = (int(v) for v in x.shape[1:])  # static sizes: no Shape ops in the export
    x = x.view(-1, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """[B·nW, ws, ws, C] → [B, H, W, C] (the inverse of :func:`window_partition`)."""
    c = int(windows.shape[-1])
    x = windows.view(-1, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """[ws², ws²] index into the (2ws − 1)² relative position bias table (Swin §3.2)."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shift_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """[nW, ws², ws²] additive mask (0 / −100) of the shifted windows (Swin §3.2, "efficient batch computation")."""
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = window_partition(img, ws).view(-1, ws * ws)
    mask = win[:, None, :] - win[:, :, None]
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with relative position bias; ``keep = True`` keeps the last
    probabilities [B·nW, heads, ws², ws²] in ``self.attn``."""

    def __init__(self, dim: int, ws: int, heads: int):
        super().__init__()
        self.dim, self.ws, self.heads, self.hd = dim, ws, heads, dim // heads
        self.scale = self.hd ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(ws), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.keep = False
        self.attn: torch.Tensor | None = None

    def bias(self) -> torch.Tensor:
        n = self.ws * self.ws
        b = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return b.permute(2, 0, 1).contiguous()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n, c = self.ws * self.ws, self.dim
        qkv = self.qkv(x).reshape(-1, n, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.bias().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(-1, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.heads, n, n)
        attn = attn.softmax(dim=-1)
        if self.keep:
            self.attn = attn
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Swin block on [B, H·W, C] raster tokens: (shifted) window attention and MLP, pre-norm, residuals."""

    def __init__(self, dim: int, res: int, heads: int, ws: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.dim, self.res, self.ws, self.shift = dim, res, ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", shift_mask(res, res, ws, shift) if shift else None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, c, ws, s = self.res, self.dim, self.ws, self.shift
        y = self.norm1(x).view(-1, r, r, c)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = window_partition(y, ws).view(-1, ws * ws, c)
        y = self.attn(y, self.attn_mask)
        y = window_reverse(y.view(-1, ws, ws, c), ws, r, r)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y.reshape(-1, r * r, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """[B, H·W, C] → [B, H/2·W/2, 2C]: the 2×2 neighbours concatenated (x0, x1, x2, x3 as Swin), LayerNorm, Linear."""

    def __init__(self, res: int, dim: int):
        super().__init__()
        self.res, self.dim = res, dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, c = self.res, self.dim
        x = x.view(-1, r, r, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(-1, (r // 2) * (r // 2), 4 * c)))


class BasicLayer(nn.Module):
    def __init__(self, dim: int, res: int, depth: int, heads: int, ws: int, mlp_ratio: float, merge: bool):
        super().__init__()
        ws = min(ws, res)
        self.blocks = nn.ModuleList(SwinBlock(dim, res, heads, ws, 0 if j % 2 == 0 or ws >= res else ws // 2,
                                              mlp_ratio) for j in range(depth))
        self.downsample = PatchMerging(res, dim) if merge else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTiny(nn.Module):
    """Swin-like classifier: patch embedding (Conv patch×patch), ``len(depths)`` stages with window attention
    (shifted on odd blocks) and patch merging between stages, LayerNorm, mean over tokens, Linear head."""

    def __init__(self, n_classes: int = 3, size: int = 64, patch: int = 4, dim: int = 32,
                 depths: tuple[int, ...] = (2, 2), heads: tuple[int, ...] = (2, 4), window: int = 4,
                 mlp_ratio: float = 2.0):
        super().__init__()
        self.grid = size // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.layers = nn.ModuleList()
        res, d = self.grid, dim
        for i, (depth, h) in enumerate(zip(depths, heads, strict=True)):
            self.layers.append(BasicLayer(d, res, depth, h, window, mlp_ratio, i < len(depths) - 1))
            if i < len(depths) - 1:
                res, d = res // 2, d * 2
        self.final_grid, self.num_features = res, d
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_classes)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's normalised tokens [B, final_grid², num_features], raster order."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(x).mean(1))


def _initializers(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    inits.setdefault(n.output[0], numpy_helper.to_array(a.t))
    return inits


def swin_param_map(net: SwinTiny, model) -> dict[str, list]:
    """For every state-dict entry: ``[initializer name, how]`` with how = ``"same"``, ``"T"`` (the transpose) or
    ``"bias"`` (a relative position bias table, held as the folded gathered bias [heads, ws², ws²], any leading
    1-axes)."""
    inits = _initializers(model)
    mods = dict(net.named_modules())
    out: dict[str, list] = {}
    for key, t in net.state_dict().items():
        a = t.detach().cpu().numpy()
        cands: list[tuple[np.ndarray, str]] = [(a, "same")] + ([(a.T, "T")] if a.ndim == 2 else [])
        if key.endswith("relative_position_bias_table"):
            mod = mods[key.rsplit(".", 1)[0]]
            cands.insert(0, (mod.bias().detach().numpy(), "bias"))
        hit = None
        for ref, how in cands:
            for name, v in inits.items():
                if v.size == ref.size and v.dtype == ref.dtype and np.array_equal(v.reshape(ref.shape), ref) and (
                        v.shape == ref.shape or how == "bias"):
                    hit = [name, how]
                    break
            if hit:
                break
        if hit is None:
            raise ValueError(f"no ONNX initializer holds {key} {tuple(a.shape)}")
        out[key] = hit
    return out


def load_swin_twin(path: str | Path = SAMPLES / "swin_shapes.onnx") -> SwinTiny:
    """The torch twin of ``sample_models/swin_shapes.onnx`` with the weights read from the ONNX file.

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file; the ``.json`` beside it holds ``twin.kwargs`` and ``twin.params``.

    Returns
    -------
    SwinTiny
        Eval mode, float32; ``forward(image)`` equals ONNX Runtime's ``logits``.
    """
    import onnx

    path = Path(path)
    info = json.loads(path.with_suffix(".json").read_text())["twin"]
    inits = _initializers(onnx.load(str(path)))
    net = SwinTiny(**info["kwargs"]).eval()
    mods = dict(net.named_modules())
    state = {}
    for key, (iname, how) in info["params"].items():
        a = inits[iname]
        if how == "T":
            a = a.T
        elif how == "bias":
            wa = mods[key.rsplit(".", 1)[0]]
            n = wa.ws * wa.ws
            b = a.reshape(wa.heads, n * n).T  # [ws⁴, heads], row k = table[index.flat[k]]
            table = np.zeros(tuple(wa.relative_position_bias_table.shape), np.float32)
            table[wa.relative_position_index.view(-1).numpy()] = b
            a = table
        state[key] = torch.from_numpy(np.ascontiguousarray(a).copy())
    net.load_state_dict(state, strict=True)
    return net.eval()


def as_grid(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """pytorch-grad-cam's Swin ``reshape_transform``: [B, H·W, C] → [B, C, H, W]."""
    return tokens.reshape(tokens.size(0), h, w, tokens.size(2)).transpose(2, 3).transpose(1, 2)


__all__ = ["SwinTiny", "as_grid", "load_swin_twin", "swin_param_map", "window_partition", "window_reverse"]
