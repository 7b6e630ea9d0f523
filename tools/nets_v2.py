"""Torch definitions of the v2 sample models (tools/build_models_v2.py) and their twins loaded from ONNX.

Every committed ``sample_models/NAME.onnx`` of this family has a torch twin: :func:`load_twin` builds the
architecture named in ``sample_models/NAME.json`` (``twin.class``, ``twin.kwargs``), turns every
Conv+BatchNorm pair into one Conv with a bias (:func:`fuse`, as the ONNX file holds them) and copies every
weight from the ONNX initializers (``twin.params`` maps each state-dict key to an initializer name, and says
when the initializer holds the transposed matrix, as the exporters write ``Linear`` on 3-D/4-D inputs).
The twin's ``forward`` takes the ONNX inputs in order and returns what the ONNX outputs hold::

    from tools.nets_v2 import load_twin          # or load this file by path
    net = load_twin("yolov8_shapes")             # eval mode, float32, weights from the .onnx file
    out = net(torch.randn(1, 3, 64, 64))         # == onnxruntime's output, within 1e-5

Models (see docs/sample_models_v2.md): ``YoloV8Det`` (anchor-free, FPN with nearest Resize + Concat,
decoupled head, DFL box branch; [B, 4+C, N]), ``YoloV5Det`` (anchors + objectness; [B, N, 5+C]),
``YoloV8NMS`` (``YoloV8Det`` + per-class greedy NMS, the semantics of ONNX NonMaxSuppression; boxes [K, 4]
xyxy, scores [K], classes [K]), ``UNetSeg`` (ConvTranspose and bilinear Resize; [B, 4, H, W] logits),
``CondClassifier`` (image + query [B, 2]; FiLM conditioning), ``ViT`` (patch embedding Conv, class token,
explicit attention with one Softmax per block), ``ConvNeXtTiny`` (depthwise 7x7, NHWC LayerNorm via permute,
inverted MLP with GELU, layer scale).

Only torch, numpy and onnx are imported (onnx lazily), so tests can import the module by path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


# ============================================================================================ blocks
class ConvBNAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> activation; after :func:`fuse`: Conv (with bias) -> activation."""

    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1, act: str = "silu", groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(cout)
        self.act = {"silu": nn.SiLU(), "relu": nn.ReLU(), "none": nn.Identity()}[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


@torch.no_grad()
def fuse(model: nn.Module) -> nn.Module:
    """Fold every ``ConvBNAct``'s BatchNorm into its Conv in place (running statistics; eval semantics).

    Called on the trained network before export and on a freshly built twin before its weights are loaded
    (the statistics are then irrelevant: only the structure, Conv with bias and no BN, matters).
    """
    for m in model.modules():
        if isinstance(m, ConvBNAct) and isinstance(m.bn, nn.BatchNorm2d):
            c, bn = m.conv, m.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                             groups=c.groups, bias=True)
            conv.weight.copy_(c.weight * scale[:, None, None, None])
            conv.bias.copy_(bn.bias - bn.running_mean * scale)
            m.conv, m.bn = conv, nn.Identity()
    return model


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1 = ConvBNAct(c, c, 3)
        self.cv2 = ConvBNAct(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's C2f: 1x1 Conv, Split in two halves, a residual bottleneck on the second, Concat, 1x1 Conv."""

    def __init__(self, cin: int, cout: int, shortcut: bool = True):
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBNAct(cin, 2 * self.c, 1)
        self.m = Bottleneck(self.c) if shortcut else nn.Sequential(ConvBNAct(self.c, self.c, 3),
                                                                    ConvBNAct(self.c, self.c, 3))
        self.cv2 = ConvBNAct(3 * self.c, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split([self.c, self.c], 1)  # explicit sizes: a constant Split, no Shape op
        return self.cv2(torch.cat([a, b, self.m(b)], 1))


class Backbone(nn.Module):
    """Stem to stride 16: returns P3 (stride 8) and P4 (stride 16) feature maps."""

    def __init__(self, w: tuple[int, int, int, int] = (16, 24, 32, 48)):
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(3, w[0], 3, 2), ConvBNAct(w[0], w[1], 3, 2), C2f(w[1], w[1]))
        self.p3 = nn.Sequential(ConvBNAct(w[1], w[2], 3, 2), C2f(w[2], w[2]))
        self.p4 = nn.Sequential(ConvBNAct(w[2], w[3], 3, 2), C2f(w[3], w[3]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p3 = self.p3(self.stem(x))
        return p3, self.p4(p3)


class Neck(nn.Module):
    """FPN top-down (nearest Resize x2 + Concat) and PAN bottom-up (strided Conv + Concat)."""

    def __init__(self, c3: int, c4: int, o3: int, o4: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td = C2f(c4 + c3, o3, shortcut=False)
        self.down = ConvBNAct(o3, o3, 3, 2)
        self.bu = C2f(o3 + c4, o4, shortcut=False)

    def forward(self, p3: torch.Tensor, p4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n3 = self.td(torch.cat([self.up(p4), p3], 1))
        n4 = self.bu(torch.cat([self.down(n3), p4], 1))
        return n3, n4


def grid_points(size: int, strides: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points (cell centres in grid units, [2, N]) and their strides ([1, N]), level by level, row-major."""
    pts, strs = [], []
    for s in strides:
        n = size // s
        yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32),
                                indexing="ij")
        pts.append(torch.stack([xx.reshape(-1), yy.reshape(-1)]) + 0.5)
        strs.append(torch.full((1, n * n), float(s)))
    return torch.cat(pts, 1), torch.cat(strs, 1)


# =========================================================================================== YOLOv8
class YoloV8Det(nn.Module):
    """YOLOv8-style anchor-free detector: backbone to stride 16, FPN/PAN neck, decoupled head per level.

    ``raw(x)`` gives the training outputs (box logits [B, 4*reg_max, N], class logits [B, C, N]); ``forward``
    decodes them as ultralytics' exported ``Detect`` does: the DFL (Softmax over ``reg_max`` bins per side,
    then a fixed 1x1 Conv with weights 0..reg_max-1) gives left/top/right/bottom distances in grid units,
    ``dist2bbox`` turns them into centre x, centre y, width, height around the anchor point, times the stride
    (input pixels); class scores are sigmoids.  Output [B, 4 + C, N], N = (S/8)^2 + (S/16)^2.
    """

    def __init__(self, n_classes: int = 3, size: int = 64, reg_max: int = 8, width: int = 32):
        super().__init__()
        self.nc, self.size, self.reg_max = n_classes, size, reg_max
        self.strides = (8, 16)
        self.backbone = Backbone()
        self.neck = Neck(32, 48, 32, 48)
        chans = (32, 48)
        self.box = nn.ModuleList(nn.Sequential(ConvBNAct(c, width, 3), ConvBNAct(width, width, 3),
                                               nn.Conv2d(width, 4 * reg_max, 1)) for c in chans)
        self.cls = nn.ModuleList(nn.Sequential(ConvBNAct(c, width, 3), ConvBNAct(width, width, 3),
                                               nn.Conv2d(width, n_classes, 1)) for c in chans)
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)
        anchors, strides = grid_points(size, self.strides)
        self.n_anchors = anchors.shape[1]
        self.register_buffer("anchors", anchors[None], persistent=False)  # [1, 2, N]
        self.register_buffer("stride_map", strides[None], persistent=False)  # [1, 1, N]
        self._init_bias()

    def _init_bias(self) -> None:
        for seq, s in zip(self.cls, self.strides, strict=True):  # prior: ~5 objects per 640x640 image
            nn.init.constant_(seq[-1].bias, math.log(5 / self.nc / (640 / s) ** 2))
        for seq in self.box:
            nn.init.constant_(seq[-1].bias, 1.0)

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n3, n4 = self.neck(*self.backbone(x))
        boxes, scores = [], []
        for i, f in enumerate((n3, n4)):
            hw = (self.size // self.strides[i]) ** 2
            boxes.append(self.box[i](f).reshape(-1, 4 * self.reg_max, hw))
            scores.append(self.cls[i](f).reshape(-1, self.nc, hw))
        return torch.cat(boxes, 2), torch.cat(scores, 2)

    def distances(self, box: torch.Tensor) -> torch.Tensor:
        """DFL: [B, 4*reg_max, N] logits -> [B, 4, N] expected distances (grid units)."""
        a = self.n_anchors  # a Python int: no Shape op in the export
        return self.dfl(box.view(-1, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(-1, 4, a)

    def decode(self, box: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        lt, rb = self.distances(box).split([2, 2], 1)
        x1y1 = self.anchors - lt
        x2y2 = self.anchors + rb
        dbox = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1) * self.stride_map
        return torch.cat([dbox, cls.sigmoid()], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.raw(x))


def nms_torch(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float,
              max_per_class: int) -> torch.Tensor:
    """Greedy per-class NMS with ONNX NonMaxSuppression's semantics (batch 1, corner boxes).

    Parameters
    ----------
    boxes : Tensor [N, 4]
        x0, y0, x1, y1.
    scores : Tensor [C, N]
    iou_threshold, score_threshold : float
        A box is a candidate when its score is > ``score_threshold``; it is suppressed when its IoU with a kept
        box is > ``iou_threshold``.
    max_per_class : int

    Returns
    -------
    Tensor [K, 3] int64
        (batch 0, class, box index), class by class, each class's boxes by decreasing score.
    """
    x0 = torch.minimum(boxes[:, 0], boxes[:, 2])
    x1 = torch.maximum(boxes[:, 0], boxes[:, 2])
    y0 = torch.minimum(boxes[:, 1], boxes[:, 3])
    y1 = torch.maximum(boxes[:, 1], boxes[:, 3])
    area = (x1 - x0) * (y1 - y0)
    out = []
    for c in range(scores.shape[0]):
        cand = torch.nonzero(scores[c] > score_threshold).flatten()
        order = cand[torch.argsort(scores[c, cand], descending=True, stable=True)]
        kept: list[int] = []
        for i in order.tolist():
            if len(kept) >= max_per_class:
                break
            ok = True
            for j in kept:
                iw = torch.clamp(torch.minimum(x1[i], x1[j]) - torch.maximum(x0[i], x0[j]), min=0)
                ih = torch.clamp(torch.minimum(y1[i], y1[j]) - torch.maximum(y0[i], y0[j]), min=0)
                inter = iw * ih
                union = area[i] + area[j] - inter
                if union > 0 and inter / union > iou_threshold:
                    ok = False
                    break
            if ok:
                kept.append(i)
        out += [[0, c, i] for i in kept]
    return torch.tensor(out, dtype=torch.int64).reshape(-1, 3)


class YoloV8NMS(nn.Module):
    """``YoloV8Det`` followed by the post-processing the NMS sample writes in ONNX nodes: corner boxes,
    NonMaxSuppression per class, then boxes [K, 4] (x0, y0, x1, y1 input pixels), scores [K], classes [K]."""

    def __init__(self, n_classes: int = 3, size: int = 64, reg_max: int = 8, iou_threshold: float = 0.5,
                 score_threshold: float = 0.25, max_per_class: int = 20):
        super().__init__()
        self.det = YoloV8Det(n_classes, size, reg_max)
        self.nc = n_classes
        self.iou_threshold, self.score_threshold, self.max_per_class = iou_threshold, score_threshold, max_per_class

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.det(x)  # [1, 4 + C, N]
        xywh = out[:, :4].transpose(1, 2)  # [1, N, 4]
        half = xywh[..., 2:4] * 0.5
        corners = torch.cat([xywh[..., 0:2] - half, xywh[..., 0:2] + half], 2)[0]
        scores = out[0, 4:]
        sel = nms_torch(corners, scores, self.iou_threshold, self.score_threshold, self.max_per_class)
        return corners[sel[:, 2]], scores[sel[:, 1], sel[:, 2]], sel[:, 1]


# =========================================================================================== YOLOv5
class YoloV5Det(nn.Module):
    """YOLOv5-style detector with anchors and objectness, decoded in the graph as YOLOv5's exported ``Detect``:
    per level and anchor, sigmoid of everything, xy = (2 s - 0.5 + cell) * stride, wh = (2 s)^2 * anchor.
    Output [B, N, 5 + C] (centre x, centre y, w, h in input pixels, objectness, class scores),
    N = anchors per level x ((S/8)^2 + (S/16)^2), level by level, anchor-major within a level."""

    def __init__(self, n_classes: int = 3, size: int = 64,
                 anchors: tuple[tuple[tuple[float, float], ...], ...] = (((10, 10), (16, 16)), ((22, 22), (32, 32)))):
        super().__init__()
        self.nc, self.no, self.size = n_classes, 5 + n_classes, size
        self.strides = (8, 16)
        self.na = len(anchors[0])
        self.backbone = Backbone()
        self.neck = Neck(32, 48, 32, 48)
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in (32, 48))
        a = torch.tensor(anchors, dtype=torch.float32)  # [levels, na, 2] pixels
        self.register_buffer("anchor_px", a, persistent=False)
        grids, agrids = [], []
        for i, s in enumerate(self.strides):
            n = size // s
            yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32),
                                    indexing="ij")
            grids.append(torch.stack([xx, yy], -1).view(1, 1, n, n, 2) - 0.5)
            agrids.append(a[i].view(1, self.na, 1, 1, 2).expand(1, self.na, n, n, 2).clone())
        for i in range(len(self.strides)):
            self.register_buffer(f"grid{i}", grids[i], persistent=False)
            self.register_buffer(f"anchor_grid{i}", agrids[i], persistent=False)
        with torch.no_grad():  # YOLOv5's bias prior
            for mi, s in zip(self.m, self.strides, strict=True):
                b = mi.bias.view(self.na, -1)
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (self.nc - 0.99999))

    def raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per level logits [B, na, ny, nx, 5 + C]."""
        feats = self.neck(*self.backbone(x))
        out = []
        for i, f in enumerate(feats):
            n = self.size // self.strides[i]
            out.append(self.m[i](f).view(-1, self.na, self.no, n, n).permute(0, 1, 3, 4, 2))
        return out

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        z = []
        for i, p in enumerate(raw):
            y = p.sigmoid()
            xy, wh, conf = y.split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + getattr(self, f"grid{i}")) * self.strides[i]
            wh = (wh * 2) ** 2 * getattr(self, f"anchor_grid{i}")
            n = self.size // self.strides[i]
            z.append(torch.cat((xy, wh, conf), 4).view(-1, self.na * n * n, self.no))
        return torch.cat(z, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.raw(x))


# ============================================================================================= U-Net
class UNetSeg(nn.Module):
    """Small U-Net: three encoder levels (Conv-BN-ReLU x2, MaxPool), a bottleneck at 1/8, a decoder that
    upsamples with ConvTranspose (2x2, stride 2) at 1/8 -> 1/4, bilinear Resize (align_corners=False) at
    1/4 -> 1/2 and ConvTranspose at 1/2 -> 1, each followed by Concat with the skip and Conv-BN-ReLU x2;
    a 1x1 Conv gives [B, C, H, W] logits (class 0 = background)."""

    def __init__(self, n_classes: int = 4, w: tuple[int, int, int, int] = (12, 16, 24, 32)):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(ConvBNAct(cin, cout, 3, act="relu"), ConvBNAct(cout, cout, 3, act="relu"))

        self.e1, self.e2, self.e3 = block(3, w[0]), block(w[0], w[1]), block(w[1], w[2])
        self.bott = block(w[2], w[3])
        self.pool = nn.MaxPool2d(2)
        self.up3 = nn.ConvTranspose2d(w[3], w[2], 2, 2)
        self.d3 = block(2 * w[2], w[2])
        self.up2 = nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False)
        self.d2 = block(w[2] + w[1], w[1])
        self.up1 = nn.ConvTranspose2d(w[1], w[0], 2, 2)
        self.d1 = block(2 * w[0], w[0])
        self.head = nn.Conv2d(w[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(x)
        e2 = self.e2(self.pool(e1))
        e3 = self.e3(self.pool(e2))
        b = self.bott(self.pool(e3))
        d3 = self.d3(torch.cat([self.up3(b), e3], 1))
        d2 = self.d2(torch.cat([self.up2(d3), e2], 1))
        d1 = self.d1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


# ==================================================================================== two-input model
class CondClassifier(nn.Module):
    """Two inputs: ``image`` [B, 3, 64, 64] and ``query`` [B, 2] (one-hot: left half, right half).  Conv features
    to 1/8 are modulated by the query (FiLM: x * (1 + gamma) + beta, then Relu; gamma and beta from a Gemm on the
    query), then Conv, Flatten and Gemm (position-aware): the logits name the shape of the queried object."""

    def __init__(self, n_classes: int = 3, n_query: int = 2, w: tuple[int, int, int] = (16, 32, 48)):
        super().__init__()
        self.c = w[2]
        self.features = nn.Sequential(ConvBNAct(3, w[0], 3, 2, act="relu"), ConvBNAct(w[0], w[1], 3, 2, act="relu"),
                                      ConvBNAct(w[1], w[2], 3, 2, act="relu"))
        self.film = nn.Linear(n_query, 2 * w[2])
        self.post = ConvBNAct(w[2], w[2], 3, act="relu")
        self.fc = nn.Linear(w[2] * 8 * 8, n_classes)

    def feature_map(self, image: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """The 8x8 map that Flatten + Gemm read ([B, 48, 8, 8])."""
        f = self.features(image)
        gb = self.film(query)
        gamma, beta = gb[:, :self.c, None, None], gb[:, self.c:, None, None]
        return self.post(F.relu(f * (1 + gamma) + beta))

    def forward(self, image: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.feature_map(image, query), 1))


# =============================================================================================== ViT
class Attention(nn.Module):
    """Multi-head self-attention written out (timm's layout): qkv Linear, q @ k^T * scale, Softmax over the
    keys, @ v, proj Linear.  With ``keep = True`` the last attention probabilities [B, heads, T, T] stay in
    ``self.attn`` (e.g. for attention rollout on the torch side; call ``retain_grad`` on it for Chefer)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.scale = self.hd ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.keep = False
        self.attn: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, d = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, t, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        if self.keep:
            self.attn = attn
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Small ViT with timm's module names: ``patch_embed`` (Conv, kernel = stride = patch), ``cls_token``
    (expanded to the batch), ``pos_embed``, ``blocks[i].norm1/attn/norm2/mlp``, ``norm``, ``head`` on token 0.
    Tokens: 1 class token + (S/patch)^2 patch tokens in row-major order."""

    def __init__(self, n_classes: int = 3, size: int = 64, patch: int = 8, dim: int = 64, depth: int = 4,
                 heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        self.grid = size // patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid * self.grid + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, n_classes)
        nn.init.normal_(self.cls_token, std=0.02)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The final normalised tokens [B, 1 + grid^2, dim]."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(x)[:, 0])


# ========================================================================================== ConvNeXt
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor, computed in NHWC via permute (as ConvNeXt's reference code)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 Conv -> permute to NHWC -> LayerNorm -> Linear 4x -> GELU -> Linear -> layer scale ->
    permute back -> residual Add."""

    def __init__(self, dim: int, ls_init: float = 0.1):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), ls_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtTiny(nn.Module):
    """ConvNeXt-like classifier: patchify stem (Conv 4x4 stride 4 + LayerNorm2d), three stages separated by
    LayerNorm2d + Conv 2x2 stride 2, GlobalAveragePool, LayerNorm, Linear."""

    def __init__(self, n_classes: int = 3, dims: tuple[int, int, int] = (32, 48, 64), depths=(1, 2, 1)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
        self.stages = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, (d, n) in enumerate(zip(dims, depths, strict=True)):
            if i > 0:
                self.downsample.append(nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6),
                                                     nn.Conv2d(dims[i - 1], d, 2, 2)))
            self.stages.append(nn.Sequential(*[ConvNeXtBlock(d) for _ in range(n)]))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], n_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output [B, dims[-1], S/16, S/16]."""
        x = self.stages[0](self.stem(x))
        for down, stage in zip(self.downsample, self.stages[1:], strict=True):
            x = stage(down(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(self.feature_map(x), 1), 1)
        return self.head(self.norm(x))


ARCHS = {c.__name__: c for c in (YoloV8Det, YoloV8NMS, YoloV5Det, UNetSeg, CondClassifier, ViT, ConvNeXtTiny)}


# ============================================================================================== twins
def param_map(net: nn.Module, model) -> dict[str, list]:
    """For every state-dict entry of ``net``: ``[initializer name, transposed]`` of the ONNX initializer
    (``model``: an onnx.ModelProto) holding exactly its values (or its transpose, for 2-D weights)."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:  # exporters also keep weights in Constant nodes
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    inits.setdefault(n.output[0], numpy_helper.to_array(a.t))
    by_shape: dict[tuple, list[str]] = {}
    for k, v in inits.items():
        by_shape.setdefault(tuple(v.shape), []).append(k)
    out: dict[str, list] = {}
    for key, t in net.state_dict().items():
        a = t.detach().cpu().numpy()
        hit = None
        for name in by_shape.get(tuple(a.shape), []):
            if np.array_equal(inits[name], a):
                hit = [name, False]
                break
        if hit is None and a.ndim == 2:
            for name in by_shape.get(tuple(a.T.shape), []):
                if np.array_equal(inits[name], a.T):
                    hit = [name, True]
                    break
        if hit is None:
            raise ValueError(f"no ONNX initializer holds {key} {tuple(a.shape)}")
        out[key] = hit
    return out


def build(arch: str, kwargs: dict | None = None) -> nn.Module:
    """A fresh (fused) module of class ``arch`` in eval mode."""
    net = ARCHS[arch](**(kwargs or {}))
    return fuse(net).eval()


def load_twin(name: str | Path) -> nn.Module:
    """The torch twin of a v2 sample model, with the weights read from its ONNX file.

    Parameters
    ----------
    name : str or Path
        A model name in sample_models/ (``"vit_shapes"``) or the path of its ``.onnx`` file (the ``.json``
        beside it describes the twin).

    Returns
    -------
    torch.nn.Module
        Eval mode, float32; ``forward`` takes the ONNX inputs in order and returns its outputs.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(name)
    if path.suffix != ".onnx":
        path = SAMPLES / f"{name}.onnx"
    info = json.loads(path.with_suffix(".json").read_text())["twin"]
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    inits.setdefault(n.output[0], a.t)
    net = build(info["class"], info.get("kwargs"))
    state = {}
    for key, (iname, transposed) in info["params"].items():
        a = numpy_helper.to_array(inits[iname])
        state[key] = torch.from_numpy(np.ascontiguousarray(a.T if transposed else a).copy())
    net.load_state_dict(state, strict=True)
    return net.eval()
