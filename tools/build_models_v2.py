#!/usr/bin/env python
"""Build the v2 sample models (detectors, segmenter, two-input classifier, ViT, ConvNeXt) into sample_models/.

    python tools/build_models_v2.py                      # all (one CPU thread by default; < 10 min)
    python tools/build_models_v2.py --only vit_shapes    # one model (and the files that derive from it)
    python tools/build_models_v2.py --out /tmp/m         # somewhere else

Every model is trained on generated scenes (tools/scenes.py) with fixed seeds on the CPU, with one thread
unless OMP_NUM_THREADS says otherwise (deterministic algorithms), exported to ONNX, stamped with onnxfix's
preprocessing metadata (``onnxfix.*``), checked (onnx.checker, < 2 MB, ONNX Runtime == torch) and scored on
held-out scenes.  Files per model NAME: NAME.onnx, NAME.labels.txt, NAME.png (a held-out scene at 2x the input
size) and NAME.json (what the model is, its inputs/outputs, accuracy, the sample scene's ground truth, and the
``twin`` section tools/nets_v2.load_twin reads).  docs/sample_models_v2.md describes them.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import nets_v2 as N  # noqa: E402
from tools import scenes as S  # noqa: E402

THREADS = int(os.environ["OMP_NUM_THREADS"])
torch.set_num_threads(THREADS)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass
torch.use_deterministic_algorithms(True)
warnings.filterwarnings("ignore")

SIZE = 64
MAX_BYTES = 2 * 1024 * 1024
SCALE_STR = "0.00392156862745098"  # 1/255
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PLAIN = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
LABELS = list(S.SCENE_CLASSES)
SEG_LABELS = ["background", *S.SCENE_CLASSES]
NAMES = ["yolov8_shapes", "yolov5_shapes", "nms_shapes", "unet_shapes", "cond_shapes", "vit_shapes",
         "vit_shapes_dynamo", "convnext_shapes"]
DERIVED = {"nms_shapes": "yolov8_shapes", "vit_shapes_dynamo": "vit_shapes"}  # same trained weights


def log(msg: str) -> None:
    print(msg, flush=True)


# =============================================================================================== data
_DATA: dict[str, dict] = {}
SMOKE = False  # --smoke: tiny data and one epoch, to exercise the code paths (the models are then useless)


def data(kind: str) -> dict:
    """Generated train/held-out sets (cached for the run); seeds fixed per kind."""
    if kind not in _DATA:
        t0 = time.process_time()
        k = 10 if SMOKE else 1
        if kind == "det":
            tr, te = S.detection_set(5000 // k, 1001, SIZE), S.detection_set(500 // k, 1002, SIZE, keep=500)
        elif kind == "cls":
            tr, te = S.classification_set(6000 // k, 2001, SIZE), S.classification_set(600 // k, 2002, SIZE, keep=200)
        else:
            tr, te = S.pair_set(5000 // k, 3001, SIZE), S.pair_set(600 // k, 3002, SIZE, keep=200)
        _DATA[kind] = {"train": tr, "test": te}
        log(f"  data {kind}: {len(tr['images'])} train / {len(te['images'])} held-out scenes "
            f"({time.process_time() - t0:.1f}s cpu)")
    return _DATA[kind]


def tensor(images_u8: np.ndarray, norm) -> torch.Tensor:
    return torch.from_numpy(S.normalise(images_u8, *norm))


# ========================================================================================== training
def fit(net: torch.nn.Module, n: int, step, epochs: int, lr: float, bs: int, seed: int, wd: float = 5e-4,
        channels_last: bool = True) -> None:
    """AdamW + one-cycle over ``epochs`` passes of ``n`` items; ``step(idx)`` returns the batch loss."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    per_epoch = n // bs
    decay = [p for p in net.parameters() if p.requires_grad and p.ndim > 1]
    other = [p for p in net.parameters() if p.requires_grad and p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": other, "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch, pct_start=0.2)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    for m in convs if channels_last else []:
        m.to(memory_format=torch.channels_last)  # faster CPU convs; same numbers
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=g).numpy()
        tot, t0 = 0.0, time.process_time()
        for b in range(per_epoch):
            loss = step(np.sort(perm[b * bs:(b + 1) * bs]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
        log(f"    epoch {ep + 1}/{epochs} loss {tot / per_epoch:.4f} ({time.process_time() - t0:.1f}s cpu)")
    for m in convs:
        m.to(memory_format=torch.contiguous_format)
    net.eval()


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------- v8 assignment
def assign_v8(boxes: list, classes: list, anchors_px: np.ndarray, strides: np.ndarray, radius: float = 1.0):
    """Static centre-sampling assignment: an anchor point is positive for a ground-truth box when it lies inside
    the box and within ``radius`` strides (Chebyshev) of its centre; the nearest stride-8 point when none; the
    smallest box wins a shared point.  Returns class [n, N] (-1 background) and boxes [n, N, 4] (corners)."""
    n, na = len(boxes), anchors_px.shape[1]
    tcls = np.full((n, na), -1, np.int64)
    tbox = np.zeros((n, na, 4), np.float32)
    ax, ay = anchors_px
    for i, (bb, cc) in enumerate(zip(boxes, classes, strict=True)):
        best = np.full(na, np.inf)
        for b, c in zip(bb, cc, strict=True):
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            inside = (ax > b[0]) & (ax < b[2]) & (ay > b[1]) & (ay < b[3])
            near = (np.abs(ax - cx) < radius * strides) & (np.abs(ay - cy) < radius * strides)
            pos = inside & near
            if not pos.any():
                d = np.where(strides == strides.min(), (ax - cx) ** 2 + (ay - cy) ** 2, np.inf)
                pos = np.zeros(na, bool)
                pos[int(np.argmin(d))] = True
            area = (b[2] - b[0]) * (b[3] - b[1])
            win = pos & (area < best)
            best[win], tcls[i, win], tbox[i, win] = area, c, b
    return tcls, tbox


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of corner boxes [..., 4]."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter + 1e-7
    cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    hull = cw * ch + 1e-7
    return inter / union - (hull - union) / hull


def train_v8(net: N.YoloV8Det, d: dict, norm, epochs: int, lr: float, bs: int, seed: int) -> None:
    tr = d["train"]
    anchors_px = (net.anchors[0] * net.stride_map[0]).numpy()
    strides = net.stride_map[0, 0].numpy()
    tcls, tbox = assign_v8(tr["boxes"], tr["classes"], anchors_px, strides)
    log(f"    {int((tcls >= 0).sum())} positive anchors for {sum(len(b) for b in tr['boxes'])} boxes")
    tcls_t, tbox_t = torch.from_numpy(tcls), torch.from_numpy(tbox)
    apx = torch.from_numpy(anchors_px)  # [2, N]
    st = torch.from_numpy(strides)  # [N]
    rmax = net.reg_max

    def step(idx):
        x = _cl(tensor(tr["images"][idx], norm))
        box, cls = net.raw(x)
        fg = tcls_t[idx] >= 0  # [B, N]
        nfg = max(int(fg.sum()), 1)
        t = torch.zeros_like(cls)
        b_i, n_i = torch.nonzero(fg, as_tuple=True)
        t[b_i, tcls_t[idx][b_i, n_i], n_i] = 1.0
        l_cls = F.binary_cross_entropy_with_logits(cls, t, reduction="sum") / nfg
        tb = tbox_t[idx][b_i, n_i]  # [P, 4] px
        s = st[n_i]
        ax, ay = apx[0, n_i], apx[1, n_i]
        tgt = torch.stack([ax - tb[:, 0], ay - tb[:, 1], tb[:, 2] - ax, tb[:, 3] - ay], 1) / s[:, None]
        tgt = tgt.clamp(0, rmax - 1 - 0.01)
        logits = box[b_i, :, n_i].view(-1, 4, rmax)  # [P, 4, R]
        dist = (logits.softmax(-1) * torch.arange(rmax, dtype=torch.float32)).sum(-1) * s[:, None]
        pbox = torch.stack([ax - dist[:, 0], ay - dist[:, 1], ax + dist[:, 2], ay + dist[:, 3]], 1)
        l_iou = (1 - giou(pbox, tb)).sum() / nfg
        tl = tgt.floor().long()
        wl = (tl + 1).float() - tgt
        lp = logits.log_softmax(-1)
        l_dfl = -(lp.gather(-1, tl[..., None])[..., 0] * wl + lp.gather(-1, (tl + 1)[..., None])[..., 0] * (1 - wl))
        l_dfl = l_dfl.mean(-1).sum() / nfg
        return 7.5 * l_iou + 0.5 * l_cls + 1.5 * l_dfl

    fit(net, len(tr["images"]), step, epochs, lr, bs, seed)


# ---------------------------------------------------------------------------------- v5 assignment
def assign_v5(boxes: list, classes: list, net: N.YoloV5Det, anchor_t: float = 2.0):
    """YOLOv5's build_targets, precomputed: per level, every anchor whose width/height ratio to a box is below
    ``anchor_t`` is responsible for it in the box centre's cell and in the two nearest neighbour cells.
    Returns per level: class [n, na, ny, nx] (-1 background) and box [n, na, ny, nx, 4] (centre x/y, w, h px)."""
    out = []
    for li, s in enumerate(net.strides):
        g = SIZE // s
        tcls = np.full((len(boxes), net.na, g, g), -1, np.int64)
        tbox = np.zeros((len(boxes), net.na, g, g, 4), np.float32)
        anchors = net.anchor_px[li].numpy()
        for i, (bb, cc) in enumerate(zip(boxes, classes, strict=True)):
            for b, c in sorted(zip(bb, cc, strict=True), key=lambda bc: -(bc[0][2] - bc[0][0]) * (bc[0][3] - bc[0][1])):
                wh = np.array([b[2] - b[0], b[3] - b[1]])
                xy = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]) / s
                cells = [(int(xy[0]), int(xy[1]))]
                fx, fy = xy % 1
                cells.append((int(xy[0]) - 1 if fx < 0.5 else int(xy[0]) + 1, int(xy[1])))
                cells.append((int(xy[0]), int(xy[1]) - 1 if fy < 0.5 else int(xy[1]) + 1))
                for a in range(net.na):
                    r = wh / anchors[a]
                    if np.maximum(r, 1 / r).max() >= anchor_t:
                        continue
                    for gx, gy in cells:
                        if 0 <= gx < g and 0 <= gy < g:
                            tcls[i, a, gy, gx] = c
                            tbox[i, a, gy, gx] = [*(xy * s), *wh]
        out.append((tcls, tbox))
    return out


def train_v5(net: N.YoloV5Det, d: dict, norm, epochs: int, lr: float, bs: int, seed: int) -> None:
    tr = d["train"]
    targets = [(torch.from_numpy(c), torch.from_numpy(b)) for c, b in assign_v5(tr["boxes"], tr["classes"], net)]
    log(f"    {sum(int((c >= 0).sum()) for c, _ in targets)} positive (level, anchor, cell) slots")
    balance = (4.0, 1.0)

    def step(idx):
        raw = net.raw(_cl(tensor(tr["images"][idx], norm)))
        l_box, l_obj, l_cls = 0.0, 0.0, 0.0
        for li, p in enumerate(raw):
            tcls, tbox = targets[li][0][idx], targets[li][1][idx]
            fg = tcls >= 0
            tobj = torch.zeros_like(p[..., 4])
            if fg.any():
                ps = p[fg]  # [P, 5 + C]
                b_i, a_i, y_i, x_i = torch.nonzero(fg, as_tuple=True)
                s = net.strides[li]
                pxy = (ps[:, :2].sigmoid() * 2 - 0.5 + torch.stack([x_i, y_i], 1).float()) * s
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * net.anchor_px[li][a_i]
                tb = tbox[fg]
                pc = torch.cat([pxy - pwh / 2, pxy + pwh / 2], 1)
                tc = torch.cat([tb[:, :2] - tb[:, 2:] / 2, tb[:, :2] + tb[:, 2:] / 2], 1)
                iou = giou(pc, tc)
                l_box = l_box + (1 - iou).mean()
                tobj[fg] = iou.detach().clamp(0)
                t = torch.zeros_like(ps[:, 5:])
                t[torch.arange(len(t)), tcls[fg]] = 1.0
                l_cls = l_cls + F.binary_cross_entropy_with_logits(ps[:, 5:], t)
            l_obj = l_obj + balance[li] * F.binary_cross_entropy_with_logits(p[..., 4], tobj)
        return (0.05 * l_box + 1.0 * l_obj + 0.5 * l_cls) * 8

    fit(net, len(tr["images"]), step, epochs, lr, bs, seed)


def train_seg(net, d: dict, norm, epochs: int, lr: float, bs: int, seed: int, n: int) -> None:
    tr = d["train"]
    lab = torch.from_numpy(tr["labels"].astype(np.int64))
    weight = torch.tensor([1.0, 2.0, 2.0, 2.0])

    def step(idx):
        return F.cross_entropy(net(_cl(tensor(tr["images"][idx], norm))), lab[idx], weight=weight)

    fit(net, n, step, epochs, lr, bs, seed)


def cell_hist(labels_u8: np.ndarray, grid: int, n_classes: int = 4) -> torch.Tensor:
    """Class fractions (0 = background) of the label map in each cell of a grid x grid partition: [B, grid^2, C]."""
    lab = torch.from_numpy(labels_u8.astype(np.int64))
    cell = lab.shape[-1] // grid
    oh = F.one_hot(lab, n_classes).float().view(-1, grid, cell, grid, cell, n_classes).mean((2, 4))
    return oh.reshape(-1, grid * grid, n_classes)


def dense_aux(feats: torch.Tensor, aux: torch.nn.Linear, labels_u8: np.ndarray, grid: int) -> torch.Tensor:
    """Auxiliary loss used only in training: each token / cell of the last features predicts the class mix of its
    patch of the label map (soft cross-entropy).  It teaches shape features fast; the exported model is unchanged."""
    t = cell_hist(labels_u8, grid)
    return -(t * aux(feats).log_softmax(-1)).sum(-1).mean()


def _aux_feats(net, x: torch.Tensor, query: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(logits, per-cell features [B, cells, D], grid) for the nets trained with the dense auxiliary loss."""
    if isinstance(net, N.ViT):
        tok = net.tokens(x)
        return net.head(tok[:, 0]), tok[:, 1:], net.grid
    if isinstance(net, N.CondClassifier):
        f = net.feature_map(x, query)
        return net.fc(torch.flatten(f, 1)), f.flatten(2).transpose(1, 2), f.shape[-1]
    f = net.feature_map(x)
    logits = net.head(net.norm(torch.flatten(F.adaptive_avg_pool2d(f, 1), 1)))
    return logits, f.flatten(2).transpose(1, 2), f.shape[-1]


def train_cls(net, d: dict, norm, epochs: int, lr: float, bs: int, seed: int, wd: float = 5e-4,
              channels_last: bool = True) -> None:
    tr = d["train"]
    y = torch.from_numpy(tr["y"])
    rng = np.random.default_rng(seed)
    dim = net.head.in_features
    torch.manual_seed(seed + 1)
    aux = torch.nn.Linear(dim, 4)
    net.add_module("_aux", aux)  # trained with the net, removed before export

    def step(idx):
        im, lab = tr["images"][idx], tr["labels"][idx]
        flip = rng.uniform(size=len(idx)) < 0.5  # horizontal flips keep a shape's class
        im = np.where(flip[:, None, None, None], im[:, :, ::-1], im)
        lab = np.where(flip[:, None, None], lab[:, :, ::-1], lab)
        x = tensor(im, norm)
        logits, feats, grid = _aux_feats(net, _cl(x) if channels_last else x)
        return F.cross_entropy(logits, y[idx]) + dense_aux(feats, aux, lab, grid)

    fit(net, len(y), step, epochs, lr, bs, seed, wd=wd, channels_last=channels_last)
    del net._aux


def train_cond(net, d: dict, norm, epochs: int, lr: float, bs: int, seed: int) -> None:
    tr = d["train"]
    cls = torch.from_numpy(tr["classes"])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed + 1)
    aux = torch.nn.Linear(net.c, 4)
    net.add_module("_aux", aux)

    def step(idx):
        side = torch.from_numpy(rng.integers(0, 2, size=len(idx)))
        q = F.one_hot(side, 2).float()
        logits, feats, grid = _aux_feats(net, _cl(tensor(tr["images"][idx], norm)), q)
        loss = F.cross_entropy(logits, cls[idx].gather(1, side[:, None])[:, 0])
        return loss + dense_aux(feats, aux, tr["labels"][idx], grid)

    fit(net, len(cls), step, epochs, lr, bs, seed)
    del net._aux


# ============================================================================================ export
def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    c = Counter(n.op_type for n in model.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def export_legacy(net, args: tuple, inputs: list[str], outputs: list[str], dynamic: bool) -> onnx.ModelProto:
    buf = io.BytesIO()
    axes = {n: {0: "batch"} for n in inputs + outputs} if dynamic else None
    torch.onnx.export(net, args, buf, dynamo=False, opset_version=17, do_constant_folding=True,
                      input_names=inputs, output_names=outputs, dynamic_axes=axes)
    return onnx.load_from_string(buf.getvalue())


def export_dynamo(net, args: tuple, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(net, args, str(path), dynamo=True, opset_version=18, external_data=False,
                          input_names=inputs, output_names=outputs)
        return onnx.load(str(path))


def add_nms(det: onnx.ModelProto, nc: int, iou: float, score: float, max_per_class: int) -> onnx.ModelProto:
    """Append post-processing nodes to a YOLOv8-style graph (output0 [1, 4 + C, N]): corner boxes,
    NonMaxSuppression (per class), Gather/GatherND -> boxes [K, 4], scores [K], classes [K] (int64)."""
    g = det.graph
    c = helper.make_tensor
    g.initializer.extend([
        c("pp/starts_box", TensorProto.INT64, [1], [0]), c("pp/ends_box", TensorProto.INT64, [1], [4]),
        c("pp/ends_cls", TensorProto.INT64, [1], [4 + nc]), c("pp/axis1", TensorProto.INT64, [1], [1]),
        c("pp/axis2", TensorProto.INT64, [1], [2]), c("pp/s0", TensorProto.INT64, [1], [0]),
        c("pp/s2", TensorProto.INT64, [1], [2]), c("pp/s4", TensorProto.INT64, [1], [4]),
        c("pp/half", TensorProto.FLOAT, [], [0.5]), c("pp/axis0", TensorProto.INT64, [1], [0]),
        c("pp/max_out", TensorProto.INT64, [1], [max_per_class]),
        c("pp/iou", TensorProto.FLOAT, [1], [iou]), c("pp/score", TensorProto.FLOAT, [1], [score]),
        c("pp/i1", TensorProto.INT64, [], [1]), c("pp/i2", TensorProto.INT64, [], [2]),
    ])
    mk = helper.make_node
    g.node.extend([
        mk("Slice", ["output0", "pp/starts_box", "pp/ends_box", "pp/axis1"], ["pp/xywh_t"], name="pp/slice_box"),
        mk("Slice", ["output0", "pp/ends_box", "pp/ends_cls", "pp/axis1"], ["pp/cls_scores"], name="pp/slice_cls"),
        mk("Transpose", ["pp/xywh_t"], ["pp/xywh"], perm=[0, 2, 1], name="pp/transpose"),
        mk("Slice", ["pp/xywh", "pp/s0", "pp/s2", "pp/axis2"], ["pp/xy"], name="pp/slice_xy"),
        mk("Slice", ["pp/xywh", "pp/s2", "pp/s4", "pp/axis2"], ["pp/wh"], name="pp/slice_wh"),
        mk("Mul", ["pp/wh", "pp/half"], ["pp/half_wh"], name="pp/mul_half"),
        mk("Sub", ["pp/xy", "pp/half_wh"], ["pp/x0y0"], name="pp/sub"),
        mk("Add", ["pp/xy", "pp/half_wh"], ["pp/x1y1"], name="pp/add"),
        mk("Concat", ["pp/x0y0", "pp/x1y1"], ["pp/corners"], axis=2, name="pp/concat"),
        mk("NonMaxSuppression", ["pp/corners", "pp/cls_scores", "pp/max_out", "pp/iou", "pp/score"],
           ["pp/selected"], center_point_box=0, name="pp/nms"),
        mk("Gather", ["pp/selected", "pp/i1"], ["classes"], axis=1, name="pp/gather_class"),
        mk("Gather", ["pp/selected", "pp/i2"], ["pp/box_index"], axis=1, name="pp/gather_index"),
        mk("Squeeze", ["pp/corners", "pp/axis0"], ["pp/corners0"], name="pp/squeeze"),
        mk("Gather", ["pp/corners0", "pp/box_index"], ["boxes"], axis=0, name="pp/gather_boxes"),
        mk("GatherND", ["pp/cls_scores", "pp/selected"], ["scores"], name="pp/gather_scores"),
    ])
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["K", 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["K"]),
        helper.make_tensor_value_info("classes", TensorProto.INT64, ["K"]),
    ])
    return det


def fix_output_shapes(m: onnx.ModelProto) -> onnx.ModelProto:
    """Declare static output sizes where the legacy exporter wrote made-up names (``Concatoutput0_dim_1``):
    every output axis but a ``batch`` one gets the size ONNX Runtime produces (as real YOLO exports declare)."""
    sess = session(m)
    feeds = {i.name: np.zeros([1 if not isinstance(d, int) else d for d in i.shape], np.float32)
             for i in sess.get_inputs()}
    for o, a in zip(m.graph.output, sess.run(None, feeds), strict=True):
        for k, d in enumerate(o.type.tensor_type.shape.dim):
            if d.dim_param and d.dim_param not in ("batch", "K"):
                d.dim_value = int(a.shape[k])
    return m


def metadata(norm, labels: list[str] | None, description: str, extra: dict | None = None) -> dict[str, str]:
    m = {"onnxfix.channels": "rgb", "onnxfix.layout": "nchw", "onnxfix.scale": SCALE_STR,
         "onnxfix.mean": ",".join(repr(v) for v in norm[0]), "onnxfix.std": ",".join(repr(v) for v in norm[1]),
         "onnxfix.description": description}
    if labels is not None:
        m["onnxfix.labels"] = json.dumps(labels)
    m.update(extra or {})
    return m


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_ort(sess, feeds: dict) -> list[np.ndarray]:
    return sess.run(None, feeds)


def shapes_of(values) -> list[list]:
    return [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values]


# ============================================================================================= specs
SPECS: dict[str, dict] = {
    "yolov8_shapes": dict(
        arch="YoloV8Det", kwargs={"n_classes": 3, "size": SIZE, "reg_max": 8}, data="det", norm=PLAIN,
        seed=801, epochs=8, lr=4e-3, bs=32,
        what="YOLOv8-style anchor-free detector: Conv-SiLU backbone with C2f blocks (Split/Concat) to stride 16, "
             "FPN top-down (nearest Resize x2 + Concat) and PAN bottom-up (strided Conv + Concat), decoupled "
             "box/class heads per level, DFL box branch (Softmax over 8 bins + fixed 1x1 Conv), dist2bbox decode",
        description="YOLOv8-style anchor-free shape detector (circle/square/triangle) with FPN and DFL head; "
                    "output0 [1, 4+C, N]: centre x, centre y, w, h (input pixels), class sigmoid scores.",
        inputs=["images"], outputs=["output0"]),
    "yolov5_shapes": dict(
        arch="YoloV5Det", kwargs={"n_classes": 3, "size": SIZE}, data="det", norm=PLAIN,
        seed=501, epochs=8, lr=4e-3, bs=32,
        what="YOLOv5-style detector with objectness: same backbone/neck family, one 1x1 Conv head per level with "
             "2 anchors, sigmoid decode in the graph (xy = (2s - 0.5 + cell) x stride, wh = (2s)^2 x anchor)",
        description="YOLOv5-style shape detector (circle/square/triangle) with anchors and objectness; "
                    "output0 [1, N, 5+C]: centre x, centre y, w, h (input pixels), objectness, class scores.",
        inputs=["images"], outputs=["output0"]),
    "nms_shapes": dict(
        arch="YoloV8NMS", kwargs={"n_classes": 3, "size": SIZE, "reg_max": 8, "iou_threshold": 0.5,
                                  "score_threshold": 0.25, "max_per_class": 20},
        data="det", norm=PLAIN, derived="yolov8_shapes",
        what="yolov8_shapes (same weights) + post-processing in the graph: corner boxes, NonMaxSuppression per "
             "class (IoU > 0.5 suppressed, score > 0.25, <= 20 per class), Gather/GatherND",
        description="Shape detector (circle/square/triangle) with NMS inside the graph: boxes [K, 4] "
                    "(x0, y0, x1, y1 input pixels), scores [K], classes [K] (int64).",
        inputs=["images"], outputs=["boxes", "scores", "classes"]),
    "unet_shapes": dict(
        arch="UNetSeg", kwargs={"n_classes": 4, "w": [8, 16, 24, 32]}, data="det", norm=IMAGENET,
        seed=401, epochs=4, lr=5e-3, bs=16, n_train=3000,
        what="U-Net: 3 encoder levels (Conv-BN-ReLU x2 + MaxPool), bottleneck at 1/8, decoder with ConvTranspose "
             "2x2/2 (1/8 -> 1/4), bilinear Resize x2 (1/4 -> 1/2), ConvTranspose (1/2 -> 1), skip Concat, 1x1 Conv",
        description="U-Net shape segmenter: logits [1, 4, 64, 64] for background/circle/square/triangle "
                    "(distractor crosses and stars are background).",
        inputs=["image"], outputs=["logits"]),
    "cond_shapes": dict(
        arch="CondClassifier", kwargs={"n_classes": 3}, data="pair", norm=IMAGENET,
        seed=301, epochs=12, lr=4e-3, bs=32,
        what="Two-input classifier: image + query [1, 2] (one-hot left/right); Conv-ReLU to 1/8, FiLM modulation "
             "by a Gemm on the query (x * (1 + gamma) + beta, Relu), Conv, Flatten, Gemm",
        description="Two-input shape classifier: image [1, 3, 64, 64] + query [1, 2] (one-hot: 1,0 = the object "
                    "in the left half, 0,1 = the right half); logits [1, 3] name the queried object's shape.",
        inputs=["image", "query"], outputs=["logits"]),
    "vit_shapes": dict(
        arch="ViT", kwargs={"n_classes": 3, "size": SIZE, "patch": 8, "dim": 48, "depth": 4, "heads": 3,
                            "mlp_ratio": 2.0},
        data="cls", norm=HALF, seed=601, epochs=20, lr=2e-3, bs=64, wd=0.05,
        what="ViT: patch embedding Conv 8x8/8 (64 patches), class token (Expand to the batch), position "
             "embedding, 4 pre-norm blocks (LayerNorm, qkv MatMul, q @ k^T x scale, Softmax, @ v, proj; LayerNorm, "
             "MLP 48-96-48 with GELU), LayerNorm, head on token 0; legacy exporter, opset 17, dynamic batch",
        description="Small ViT shape classifier (circle/square/triangle; one object per image): patch 8, class "
                    "token, 4 blocks, dim 48, 3 heads; attention probabilities are one Softmax per block.",
        inputs=["image"], outputs=["logits"]),
    "vit_shapes_dynamo": dict(
        arch="ViT", kwargs={"n_classes": 3, "size": SIZE, "patch": 8, "dim": 48, "depth": 4, "heads": 3,
                            "mlp_ratio": 2.0},
        data="cls", norm=HALF, derived="vit_shapes",
        what="vit_shapes (same weights) exported by the dynamo exporter (torch.export + onnxscript), opset 18, "
             "batch 1, no external data",
        description="Small ViT shape classifier (circle/square/triangle), dynamo export (opset 18) of the same "
                    "weights as vit_shapes.",
        inputs=["image"], outputs=["logits"]),
    "convnext_shapes": dict(
        arch="ConvNeXtTiny", kwargs={"n_classes": 3, "dims": [32, 48, 64], "depths": [1, 2, 1]},
        data="cls", norm=IMAGENET, seed=701, epochs=16, lr=4e-3, bs=64, wd=0.05,
        what="ConvNeXt-like: patchify stem (Conv 4x4/4 + LayerNorm in NHWC via Transpose), 3 stages of blocks "
             "(depthwise Conv 7x7, Transpose to NHWC, LayerNorm, MatMul 4x, GELU (Erf), MatMul, layer scale Mul, "
             "Transpose back, residual Add), LayerNorm + Conv 2x2/2 downsampling, GlobalAveragePool, LayerNorm, Gemm",
        description="ConvNeXt-like shape classifier (circle/square/triangle; one object per image): depthwise 7x7 "
                    "convs, LayerNorm over channels in NHWC, inverted MLP with GELU, layer scale.",
        inputs=["image"], outputs=["logits"]),
}


# ========================================================================================= evaluation
def eval_det(name: str, sess, te: dict, norm) -> tuple[dict, list]:
    x = S.normalise(te["images"], *norm)
    preds = []
    for i in range(len(x)):
        out = run_ort(sess, {"images": x[i:i + 1]})
        if name == "yolov8_shapes":
            preds.append(S.decode_yolov8(out[0][0]))
        elif name == "yolov5_shapes":
            preds.append(S.decode_yolov5(out[0][0]))
        else:
            preds.append((out[0], out[1], out[2]))
    return S.detection_metrics(preds, te["boxes"], te["classes"]), preds


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def evaluate(name: str, spec: dict, sess) -> tuple[dict, dict]:
    """Held-out scores through ONNX Runtime, and the sample scene (index into the held-out set + its facts)."""
    d = data(spec["data"])
    te, norm = d["test"], spec["norm"]
    if spec["data"] == "det" and name != "unet_shapes":
        m, preds = eval_det(name, sess, te, norm)
        best = None
        for i, (pb, ps, pc) in enumerate(preds):  # a 3-object scene found exactly (and confidently)
            gb, gc = te["boxes"][i], te["classes"][i]
            if len(gb) == 3 and len(pb) == 3 and len(set(gc.tolist())) == 3:
                ious = S.box_iou(pb, gb)
                if all(ious[k].max() >= 0.7 and gc[ious[k].argmax()] == pc[k] for k in range(3)):
                    key = float(ps.min())
                    if best is None or key > best[0]:
                        best = (key, i)
        i = best[1] if best is not None else 0
        sample = {"index": i, "detections": [[*map(float, b), float(s), int(c)] for b, s, c in zip(*preds[i],
                                                                                                  strict=True)]}
        return m, sample
    if name == "unet_shapes":
        x = S.normalise(te["images"], *norm)
        pred = np.concatenate([run_ort(sess, {"image": x[i:i + 50]})[0].argmax(1) for i in range(0, len(x), 50)])
        m = S.segmentation_metrics(pred, te["labels"])
        scores = [(len(te["boxes"][i]) == 3, float(np.mean(pred[i] == te["labels"][i])), i) for i in range(len(x))]
        i = max(scores)[2]
        return m, {"index": i, "pixel_accuracy": scores[i][1]}
    if name == "cond_shapes":
        x = S.normalise(te["images"], *norm)
        res = []
        for side in (0, 1):
            q = np.zeros((len(x), 2), np.float32)
            q[:, side] = 1
            res.append(run_ort(sess, {"image": x, "query": q})[0])
        acc = [float(np.mean(res[s].argmax(1) == te["classes"][:, s])) for s in (0, 1)]
        both = (res[0].argmax(1) == te["classes"][:, 0]) & (res[1].argmax(1) == te["classes"][:, 1])
        changed = float(np.mean(res[0].argmax(1) != res[1].argmax(1)))
        m = {"accuracy_left_query": acc[0], "accuracy_right_query": acc[1], "accuracy_both": float(both.mean()),
             "prediction_changes_with_query": changed, "n_images": len(x)}
        conf = np.minimum(softmax(res[0]).max(1), softmax(res[1]).max(1)) * both
        i = int(np.argmax(conf[:200]))
        return m, {"index": i, "left": LABELS[te["classes"][i, 0]], "right": LABELS[te["classes"][i, 1]]}
    x = S.normalise(te["images"], *norm)
    if name == "vit_shapes_dynamo":
        logits = np.concatenate([run_ort(sess, {"image": x[i:i + 1]})[0] for i in range(len(x))])
    else:
        logits = run_ort(sess, {"image": x})[0]
    pred = logits.argmax(1)
    m = {"accuracy": float(np.mean(pred == te["y"])), "n_images": len(x),
         "per_class_accuracy": {c: float(np.mean(pred[te["y"] == k] == k)) for k, c in enumerate(LABELS)}}
    conf = softmax(logits).max(1) * (pred == te["y"])
    i = int(np.argmax(conf[:200]))
    return m, {"index": i, "label": LABELS[te["y"][i]], "probability": float(softmax(logits[i])[te["y"][i]])}


# ========================================================================================== parity
@torch.no_grad()
def parity(name: str, spec: dict, net, sess, n: int = 4) -> float:
    """Max |ORT - torch| over random inputs (and held-out scenes for the NMS model)."""
    g = torch.Generator().manual_seed(7)
    worst = 0.0
    te = data(spec["data"])["test"]
    for k in range(n):
        dim0 = sess.get_inputs()[0].shape[0]
        batch = dim0 if isinstance(dim0, int) else 2
        if name == "nms_shapes":
            x = torch.from_numpy(S.normalise(te["images"][k:k + 1], *spec["norm"]))
        else:
            x = torch.randn(batch, 3, SIZE, SIZE, generator=g)
        args = (x,)
        if name == "cond_shapes":
            args = (x, torch.rand(batch, 2, generator=g))
        feeds = {n_: a.numpy() for n_, a in zip(spec["inputs"], args, strict=True)}
        ref = net(*args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = run_ort(sess, feeds)
        for r, o in zip(ref, got, strict=True):
            if tuple(r.shape) != o.shape:
                raise SystemExit(f"{name}: ORT output shape {o.shape} != torch {tuple(r.shape)}")
            if r.numel():
                worst = max(worst, float(np.abs(r.double().numpy() - o.astype(np.float64)).max()))
    return worst


# =========================================================================================== build
_NETS: dict[str, torch.nn.Module] = {}


def train_net(name: str, spec: dict) -> torch.nn.Module:
    torch.manual_seed(spec["seed"])
    net = N.ARCHS[spec["arch"]](**spec["kwargs"])
    d = data(spec["data"])
    args = (net, d, spec["norm"], 1 if SMOKE else spec["epochs"], spec["lr"], spec["bs"], spec["seed"])
    if spec["arch"] == "YoloV8Det":
        train_v8(*args)
    elif spec["arch"] == "YoloV5Det":
        train_v5(*args)
    elif spec["arch"] == "UNetSeg":
        train_seg(*args, n=min(spec["n_train"], len(d["train"]["images"])))
    elif spec["arch"] == "CondClassifier":
        train_cond(*args)
    else:
        train_cls(*args, wd=spec.get("wd", 5e-4), channels_last=spec["arch"] != "ViT")
    return N.fuse(net).eval()


def build(name: str, out_dir: Path) -> dict:
    spec = SPECS[name]
    t_cpu, t_wall = time.process_time(), time.time()
    log(f"== {name}")
    if "derived" in spec:
        base = spec["derived"]
        if base not in _NETS:
            _NETS[base] = train_net(base, SPECS[base])
        net = _NETS[base]
        if name == "nms_shapes":
            twin = N.YoloV8NMS(**spec["kwargs"])
            twin.det = net
            twin.eval()
            net_for_twin = twin
        else:
            net_for_twin = net
    else:
        net = _NETS[name] = train_net(name, spec)
        net_for_twin = net
    n_params = sum(p.numel() for p in net.parameters())
    x1 = torch.zeros(1, 3, SIZE, SIZE)
    if name == "nms_shapes":
        m = export_legacy(net, (x1,), ["images"], ["output0"], dynamic=False)
        m = add_nms(m, 3, spec["kwargs"]["iou_threshold"], spec["kwargs"]["score_threshold"],
                    spec["kwargs"]["max_per_class"])
    elif name == "vit_shapes_dynamo":
        m = export_dynamo(net, (x1,), spec["inputs"], spec["outputs"])
    elif name == "cond_shapes":
        m = export_legacy(net, (x1, torch.tensor([[1.0, 0.0]])), spec["inputs"], spec["outputs"], dynamic=True)
    else:
        m = export_legacy(net, (x1,), spec["inputs"], spec["outputs"], dynamic=True)
    shape_ops = {"Shape", "Size"} & {n.op_type for n in m.graph.node}
    if shape_ops and name != "vit_shapes":
        log(f"  export has {sorted(shape_ops)}: fixed batch 1")
        m = export_legacy(net, (x1,) if name != "cond_shapes" else (x1, torch.tensor([[1.0, 0.0]])),
                          spec["inputs"], spec["outputs"], dynamic=False)
    m = fix_output_shapes(m)
    labels = SEG_LABELS if name == "unet_shapes" else LABELS
    extra = {}
    if name in ("yolov8_shapes", "yolov5_shapes", "nms_shapes"):  # what ultralytics writes, no onnxfix.labels
        extra = {"names": str(dict(enumerate(labels))), "stride": "16", "task": "detect", "imgsz": f"[{SIZE}, {SIZE}]"}
    del m.metadata_props[:]
    helper.set_model_props(m, metadata(spec["norm"], None if extra else labels, spec["description"], extra))
    m.doc_string = spec["description"]
    m.producer_name, m.producer_version = "onnxfix tools/build_models_v2.py", torch.__version__
    onnx.checker.check_model(m, full_check=True)
    raw = m.SerializeToString()
    if len(raw) >= MAX_BYTES:
        raise SystemExit(f"{name}: {len(raw)} bytes (>= 2 MB)")
    sess = session(m)
    diff = parity(name, spec, net_for_twin, sess)
    if diff > 1e-4:
        raise SystemExit(f"{name}: ONNX Runtime differs from torch by {diff:.3g}")
    pmap = N.param_map(net_for_twin, m)
    metrics, sample = evaluate(name, spec, sess)
    log(f"  held-out: {json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)})}")

    te = data(spec["data"])["test"]
    sc = te["kept"][sample["index"]]
    png = io.BytesIO()
    sc.image2x.save(png, format="PNG", optimize=True)
    sample.update({"image": f"{name}.png", "image_size": list(sc.image2x.size),
                   "boxes": [[float(v) * 2 for v in b] for b in sc.boxes],
                   "boxes_input": [[float(v) for v in b] for b in sc.boxes],
                   "classes": sc.classes.tolist(), "class_names": [LABELS[c] for c in sc.classes]})
    if name == "unet_shapes":
        sample["mask"] = f"{name}.mask.png"
    cpu, wall = time.process_time() - t_cpu, time.time() - t_wall
    info = {
        "name": name, "description": spec["description"], "architecture": spec["what"],
        "file": f"{name}.onnx", "size_bytes": len(raw), "params": n_params,
        "exporter": "dynamo (torch.export + onnxscript), opset 18" if name == "vit_shapes_dynamo"
        else "legacy TorchScript, opset 17, constant folding" + (" + hand-written NMS nodes" if name == "nms_shapes"
                                                                  else ""),
        "inputs": [{"name": i.name, "shape": s} for i, s in zip(m.graph.input, shapes_of(m.graph.input), strict=True)],
        "outputs": [{"name": o.name, "shape": s} for o, s in zip(m.graph.output, shapes_of(m.graph.output),
                                                                strict=True)],
        "labels": labels,
        "preprocess": {"resize": "whole image, PIL bilinear, to 64x64", "scale": SCALE_STR,
                       "mean": list(spec["norm"][0]), "std": list(spec["norm"][1])},
        "metadata": {p.key: p.value for p in m.metadata_props},
        "ops": op_counts(m), "heldout": metrics,
        "training": {k: spec[k] for k in ("seed", "epochs", "lr", "bs") if k in spec} | (
            {"same_weights_as": spec["derived"]} if "derived" in spec else {}),
        "max_abs_diff_ort_torch": diff, "build_cpu_seconds": round(cpu, 1), "build_wall_seconds": round(wall, 1),
        "sample": sample,
        "twin": {"class": type(net_for_twin).__name__, "kwargs": spec["kwargs"], "params": pmap},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.onnx").write_bytes(raw)
    (out_dir / f"{name}.labels.txt").write_text("\n".join(labels) + "\n")
    (out_dir / f"{name}.png").write_bytes(png.getvalue())
    if name == "unet_shapes":
        from PIL import Image

        Image.fromarray(sc.labels).save(out_dir / f"{name}.mask.png", optimize=True)
    (out_dir / f"{name}.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"  {len(raw) / 1024:.0f} KiB, {n_params} params, |ORT-torch| {diff:.2e}, ops {info['ops']}")
    log(f"  built in {cpu:.1f}s cpu / {wall:.1f}s wall")
    return info


DOCS_INTRO = """# Sample models v2: detectors, segmenter, two-input model, ViT, ConvNeXt

Eight small ONNX models (seven trained networks) for explaining more than classifiers: a YOLOv8-style and a
YOLOv5-style detector, a detector with NonMaxSuppression inside the graph, a U-Net segmenter, a two-input
classifier, a ViT (two exporters) and a ConvNeXt-like classifier. They are trained on generated scenes
with known boxes, masks and classes, so an explanation can be checked against the truth. Each file is
< 2 MB and has a torch twin with the same weights for parity tests.

Rebuild (CPU, deterministic seeds, one thread unless `OMP_NUM_THREADS` says otherwise):

    python tools/build_models_v2.py                    # all models: {total_cpu:.0f} s CPU on one core
    python tools/build_models_v2.py --only vit_shapes  # one model (a derived file retrains its base)
    python tools/build_models_v2.py --docs             # only rewrite this page from the NAME.json files
    python -m pytest -q tests/test_models_v2.py        # files, ONNX == twin, accuracy, evidence in the box

Files per model NAME in `sample_models/`: `NAME.onnx`; `NAME.labels.txt` (one label per line);
`NAME.png`, a held-out scene at 2× the input size (128×128) that the model gets right;
`NAME.json`: the description, inputs/outputs with shapes, labels, preprocessing, the metadata written
into the file, op counts, held-out scores, training settings, the sample scene's ground truth
(`sample.boxes` in the PNG's pixels, `sample.boxes_input` in input pixels, `[x0, y0, x1, y1]`, x1/y1
exclusive; `sample.classes`) and the `twin` section. `unet_shapes.mask.png` is the sample's label map at
64×64 (pixel value = class index, 0 = background).

## Scenes (tools/scenes.py)

Every scene is rendered at 128×128 with PIL and shrunk to 64×64 with PIL bilinear (what onnxfix does with
a picture): a textured background (flat, gradient, stripes, checker or bicubic blotches around a random
low-saturation colour, amplitude ≤ 22 levels), 3–9 small clutter blobs and 1–4 thin lines of random
colours, then filled shapes — circle, square, triangle (`SCENE_CLASSES`), random size, colour (luma
≥ 60 away from the background's mean), rotation (triangles any, squares ±0.4 rad) and position, never
overlapping — and ±8 levels of pixel noise. Detection/segmentation scenes (`detection_set`) hold 1–3
objects of 11–28 px plus, in 30 % of them, one unlabelled distractor (cross or star) that detectors must
ignore and the segmenter must call background. Classification scenes (`classification_set`) hold one
object of 18–33 px (its class is the label). Pair scenes (`pair_set`) hold two objects of different
classes, one in each vertical half. Boxes come from the 2× masks (PIL `getbbox`, halved); the label map
marks a pixel as an object's when at least half of its 2×2 block at 2× is. Seeds: training sets 1001
(detection, 5000 scenes), 2001 (classification, 6000), 3001 (pairs, 5000); held-out sets 1002, 2002,
3002; the tests use 4242–4244. `scenes.py` also holds numpy references: `decode_yolov8`,
`decode_yolov5`, class-aware `nms`, `detection_metrics` (precision/recall at score > 0.25, NMS IoU 0.5,
AP@0.5 per class, VOC all-point) and `segmentation_metrics`.

## Torch twins (tools/nets_v2.py)

`load_twin(name)` builds the architecture named in `NAME.json` (`twin.class`, `twin.kwargs`), replaces
every Conv+BatchNorm pair by one Conv with a bias (the ONNX files hold them folded) and reads every
weight from the ONNX initializers (`twin.params`: state-dict key → initializer name, and whether the
initializer is the transposed matrix, as the exporters write `Linear` on 3-D/4-D inputs). `forward`
takes the ONNX inputs in order and returns the ONNX outputs; ONNX Runtime equals it within 1e-5
(absolute below 1, relative above: detector boxes are in pixels). The ViT's `blocks[i].attn.keep = True`
keeps each block's attention probabilities in `blocks[i].attn.attn` ([B, 3, 65, 65], equal to the
graph's Softmax outputs). Module names follow the usual code: the ViT uses timm's (`patch_embed`,
`cls_token`, `pos_embed`, `blocks[i].norm1/attn/norm2/mlp`, `norm`, `head`), so pytorch-grad-cam's
ViT recipe applies as written (`target_layers=[net.blocks[-1].norm1]`, `reshape_transform` dropping token
0 and reshaping 64 tokens to 8×8); the ConvNeXt uses ConvNeXt's (`dwconv`, `norm`, `pwconv1/2`, `gamma`).

## The models
"""

LAYOUTS = {
    "yolov8_shapes": "`output0` [B, 7, 80]: rows 0–3 = centre x, centre y, width, height in input pixels, rows "
                     "4–6 = sigmoid class scores (circle, square, triangle); no objectness. Columns = anchor "
                     "points: 64 of the stride-8 grid (8×8, row-major, point (i+0.5)·8) then 16 of the stride-16 "
                     "grid (4×4). Box = dist2bbox of the DFL distances: per side a Softmax over 8 bins "
                     "([B, 8, 4, 80] after a Reshape and Transpose; axis 1) and a fixed 1×1 Conv with weights "
                     "0..7, so an auto Grad-CAM layer must skip that Conv. Decode: `scenes.decode_yolov8` "
                     "(score = max class score > 0.25, class-aware NMS IoU 0.5). Metadata as ultralytics writes "
                     "it: `names`, `stride`, `task`, `imgsz` (no `onnxfix.labels`).",
    "yolov5_shapes": "`output0` [B, 160, 8]: per row centre x, centre y, width, height (input pixels), objectness, "
                     "3 class scores (all sigmoids). Rows: stride-8 level (2 anchors × 8×8) then stride-16 "
                     "level (2 anchors × 4×4), anchor-major then row-major cells. Anchors (px): (10,10), "
                     "(16,16) at stride 8; (22,22), (32,32) at stride 16. Score = objectness × class score "
                     "(`scenes.decode_yolov5`). Metadata like yolov8_shapes.",
    "nms_shapes": "`boxes` [K, 4] float (x0, y0, x1, y1, input pixels), `scores` [K] float, `classes` [K] int64 "
                  "(K ≥ 0 dynamic). Graph: yolov8_shapes' graph (its `output0` is still an internal value), "
                  "then Slice/Transpose/Mul/Sub/Add/Concat to corner boxes, `NonMaxSuppression` "
                  "(center_point_box 0, max 20 per class, IoU threshold 0.5, score threshold 0.25), Gather "
                  "of class and box index, Gather of the boxes, GatherND of the scores. Batch 1. Not "
                  "differentiable end to end (D-RISE territory).",
    "unet_shapes": "`logits` [B, 4, 64, 64]: per-pixel class logits, channel 0 = background, 1–3 = circle, "
                   "square, triangle. Prediction = argmax over channels.",
    "cond_shapes": "inputs `image` [B, 3, 64, 64] and `query` [B, 2] float (one-hot: [1, 0] asks for the object "
                   "in the left half, [0, 1] for the one in the right half; no default in the graph); `logits` "
                   "[B, 3] name the queried object's shape. The second input is used by a Gemm whose output "
                   "(split by Slice, Unsqueeze to [B, 48, 1, 1]) scales and shifts the image features (FiLM).",
    "vit_shapes": "`logits` [B, 3]. 65 tokens: token 0 = class token, tokens 1–64 = 8×8 patches, row-major. "
                  "Attention: one Softmax per block over the keys, shape [B, 3, 65, 65]. Dynamic batch: the "
                  "class token is Expanded to the batch through Shape/Gather/Concat/Where/Expand, reshapes "
                  "take the batch from Shape, as timm exports do. GELU is exported as Erf arithmetic.",
    "vit_shapes_dynamo": "`logits` [1, 3]. Same weights and token layout as vit_shapes; batch 1; the dynamo "
                         "exporter's graph (opset 18): LayerNormalization, MatMul, Softmax ×4, Erf GELU, "
                         "different value names.",
    "convnext_shapes": "`logits` [B, 3]. Stem Conv 4×4/4 → 16×16, stages at 16×16 (32 ch, 1 block), 8×8 "
                       "(48 ch, 2 blocks), 4×4 (64 ch, 1 block); LayerNorm over channels in NHWC "
                       "(Transpose → LayerNormalization → Transpose). The last stage's output (4×4) or the "
                       "second stage's (8×8) are the natural Grad-CAM layers.",
}


def _fmt_scores(name: str, h: dict) -> str:
    if "map50" in h:
        return (f"AP@0.5 {h['map50']:.3f}, precision {h['precision']:.3f}, recall {h['recall']:.3f} "
                f"({h['n_objects']} objects in {h['n_images']} scenes)")
    if "miou" in h:
        per = ", ".join(f"{k} {v:.3f}" for k, v in h["iou_per_class"].items())
        return f"mIoU {h['miou']:.3f} (IoU {per}), pixel accuracy {h['pixel_accuracy']:.4f} on 500 scenes"
    if "accuracy_both" in h:
        return (f"accuracy {h['accuracy_left_query']:.3f} (left query), {h['accuracy_right_query']:.3f} (right "
                f"query); prediction changes with the query on {100 * h['prediction_changes_with_query']:.1f} % "
                f"of {h['n_images']} scenes")
    return f"accuracy {h['accuracy']:.3f} on {h['n_images']} scenes"


def write_docs(out_dir: Path, docs: Path) -> None:
    infos = [json.loads((out_dir / f"{n}.json").read_text()) for n in NAMES if (out_dir / f"{n}.json").exists()]
    total = sum(i["build_cpu_seconds"] for i in infos)
    rows, sections = [], []
    for i in infos:
        io_ = ", ".join(f"`{x['name']}` {'×'.join(map(str, x['shape']))}" for x in i["inputs"])
        oo = ", ".join(f"`{x['name']}` {'×'.join(map(str, x['shape']))}" for x in i["outputs"])
        pre = i["preprocess"]
        norm = "pixel/255" if pre["std"] == [1.0, 1.0, 1.0] else f"(pixel/255 − {pre['mean']}) / {pre['std']}"
        rows.append(f"| `{i['name']}` | {io_} → {oo} | {norm} | {_fmt_scores(i['name'], i['heldout'])} | "
                    f"{i['size_bytes'] / 1024:.0f} KiB, {i['params']:,} params |")
        tr = i["training"]
        how = (f"same weights as `{tr['same_weights_as']}`" if "same_weights_as" in tr else
               f"{tr['epochs']} epochs, AdamW one-cycle max lr {tr['lr']}, batch {tr['bs']}, seed {tr['seed']}")
        sections.append(
            f"### {i['name']}\n\n{i['description']}\n\n- Architecture: {i['architecture']}.\n"
            f"- Exporter: {i['exporter']}. Ops: {', '.join(f'{k}×{v}' for k, v in i['ops'].items())}.\n"
            f"- Output layout: {LAYOUTS[i['name']]}\n- Labels: {', '.join(i['labels'])}. Preprocessing: "
            f"resize to 64×64 (PIL bilinear), {norm} (metadata `onnxfix.*`).\n"
            f"- Held-out: {_fmt_scores(i['name'], i['heldout'])}.\n- Training: {how}; "
            f"|ORT − torch| ≤ {i['max_abs_diff_ort_torch']:.1e}; built in {i['build_cpu_seconds']} s CPU.\n"
            f"- Sample `{i['sample']['image']}`: {', '.join(i['sample']['class_names'])} at "
            f"{i['sample']['boxes_input']} (input pixels).\n")
    text = (DOCS_INTRO.format(total_cpu=total)
            + "\n| Model | Inputs → outputs | Normalisation | Held-out | Size |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n\n" + "\n".join(sections))
    docs.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=NAMES, action="append", help="build just this model (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "sample_models", help="output folder (default sample_models)")
    ap.add_argument("--smoke", action="store_true", help="tiny data, one epoch: exercise the code paths only")
    ap.add_argument("--docs", action="store_true", help="only rewrite docs/sample_models_v2.md from the NAME.json")
    args = ap.parse_args(argv)
    global SMOKE
    SMOKE = args.smoke
    default_out = args.out.resolve() == ROOT / "sample_models"
    docs = ROOT / "docs" / "sample_models_v2.md" if default_out else args.out / "README_v2.md"
    if args.docs:
        write_docs(args.out, docs)
        return 0
    names = [n for n in NAMES if n in (args.only or NAMES)]
    t_cpu, t_wall = time.process_time(), time.time()
    for name in names:
        build(name, args.out)
    write_docs(args.out, docs)
    log(f"done: {len(names)} models in {time.process_time() - t_cpu:.1f}s cpu / {time.time() - t_wall:.1f}s wall "
        f"({THREADS} thread{'s' if THREADS > 1 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
