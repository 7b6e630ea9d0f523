#!/usr/bin/env python
"""Build onnxfix's bundled sample models into sample_models/.

    python tools/build_samples.py                 # all five models (~5-8 min on 2 CPU cores)
    python tools/build_samples.py --only captioner

Each model is trained (CPU, 2 threads, fixed seeds) on a learnable synthetic task, exported with the
legacy TorchScript exporter (opset 17, constant folding), stamped with onnxfix's preprocessing
metadata and verified: only whitelisted ops, onnx.checker (full), ONNX Runtime == torch
(max |diff| < 1e-4), file < 2 MB, and the sample PNG goes through the app's own preprocessing
(whole-image PIL bilinear resize, x = (pixel*scale - mean)/std) to the right answer.

Artifacts per model NAME: NAME.onnx, NAME.labels.txt, NAME.png (a held-out image at 2x the input
size), NAME.json (label, index, ground-truth boxes in the PNG's pixels).  build_info.json keeps
every model's numbers so that README.md can be regenerated after a partial (--only) build.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import samples_data as D  # noqa: E402
import samples_nets as N  # noqa: E402

ROOT = HERE.parent
OUT_DIR = ROOT / "sample_models"
INFO_FILE = "build_info.json"

SCALE_STR = "0.00392156862745098"  # 1/255
SCALE = float(SCALE_STR)
OPSET = 17
MAX_BYTES = 2 * 1024 * 1024
ALLOWED_OPS = {
    "Conv", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm", "MatMul", "Add", "Mul",
    "Concat", "BatchNormalization", "HardSwish", "HardSigmoid", "Sigmoid", "Flatten", "Reshape",
    "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather", "Split", "LSTM", "Constant", "Identity", "ArgMax",
}

torch.set_num_threads(2)
try:
    torch.set_num_interop_threads(2)
except RuntimeError:  # already set in this process
    pass
torch.use_deterministic_algorithms(True)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")


def log(msg: str) -> None:
    print(msg, flush=True)


# =========================================================================================== data sets
_CACHE: dict[str, dict] = {}


def data_digits() -> dict:
    if "digits" not in _CACHE:
        from sklearn.datasets import load_digits

        d = load_digits()
        perm = np.random.default_rng(1234).permutation(len(d.target))
        tr, te = perm[:1497], perm[1497:]  # held-out digits are images the net never saw
        xtr, ytr, _ = D.make_digits(d.images[tr], d.target[tr], copies=6, seed=11)
        xte, yte, kept = D.make_digits(d.images[te], d.target[te], copies=2, seed=12, keep=300)
        _CACHE["digits"] = dict(xtr=xtr, ytr=ytr, xte=xte, yte=yte, kept=kept,
                                note=f"{len(tr)} sklearn digits x6 random placements = {len(ytr)} images; "
                                     f"held out: the other {len(te)} digits x2 = {len(yte)} images")
    return _CACHE["digits"]


def data_shapes() -> dict:
    if "shapes" not in _CACHE:
        xtr, ytr, _ = D.make_shapes(9000, seed=21)
        xte, yte, kept = D.make_shapes(1500, seed=22, keep=200)
        _CACHE["shapes"] = dict(xtr=xtr, ytr=ytr, xte=xte, yte=yte, kept=kept,
                                note=f"{len(ytr)} fresh random 'shapes' images; held out: {len(yte)} others")
    return _CACHE["shapes"]


def data_captions() -> dict:
    if "captions" not in _CACHE:
        xtr, ytr, _ = D.make_captions(8000, seed=31)
        xte, yte, kept = D.make_captions(1000, seed=32, keep=200)
        _CACHE["captions"] = dict(xtr=xtr, ytr=ytr, xte=xte, yte=yte, kept=kept,
                                  note=f"{len(ytr)} random {D.CAPTION_OBJECTS}-shape scenes; held out: {len(yte)} "
                                       f"others ({D.CAPTION_OBJECTS * len(yte)} tokens)")
    return _CACHE["captions"]


# ============================================================================================= specs
@dataclass
class Spec:
    name: str
    what: str  # README: what it is
    description: str  # metadata: one sentence
    channels: str  # "rgb" | "gray"
    hw: tuple[int, int]
    labels: list[str]
    net: Callable[[], torch.nn.Module]
    data: Callable[[], dict]
    epochs: int
    lr: float
    seed: int
    dynamic: bool = True
    caption: bool = False
    required_ops: set[str] = field(default_factory=set)
    prefer: str | None = None  # preferred class of the sample PNG (variety between the shapes models)
    min_acc: float = 0.90
    bs: int = 64


SPECS = [
    Spec("digits_cnn",
         "Plain CNN: 3x(Conv 3x3, Relu, MaxPool 2) then Gemm-Relu-Gemm",
         "Handwritten digit classifier (sklearn 8x8 digits upscaled and placed anywhere on a noisy "
         "56x56 canvas): plain Conv/Relu/MaxPool/Gemm CNN.",
         "gray", (56, 56), [str(i) for i in range(10)], lambda: N.DigitsCNN(10), data_digits,
         epochs=7, lr=3e-3, seed=101, required_ops={"Conv", "Relu", "MaxPool", "Gemm"}),
    Spec("resnet_shapes",
         "ResNet: stem + 3 residual blocks (Add skip, 1x1 projection shortcuts, BatchNormalization after "
         "each Add), GlobalAveragePool, Gemm",
         "Shape classifier (circle/square/triangle/cross/star on a cluttered background): small ResNet "
         "with Add skip connections and unfused BatchNormalization after each Add.",
         "rgb", (64, 64), list(D.SHAPE_CLASSES), lambda: N.ResNetShapes(len(D.SHAPE_CLASSES)), data_shapes,
         epochs=7, lr=3e-3, seed=202, prefer="star",
         required_ops={"Add", "BatchNormalization", "GlobalAveragePool", "Gemm"}),
    Spec("inception_shapes",
         "Inception: stem, 2 Inception blocks (1x1 | 3x3 | 5x5 or dilated 3x3 | AvgPool 3x3 s1 -> 1x1, "
         "Concat), MaxPool and strided Conv between, AveragePool 8x8, Flatten, Gemm",
         "Shape classifier (circle/square/triangle/cross/star on a cluttered background): small "
         "Inception network with parallel 1x1/3x3/5x5/pool branches joined by Concat.",
         "rgb", (64, 64), list(D.SHAPE_CLASSES), lambda: N.InceptionShapes(len(D.SHAPE_CLASSES)), data_shapes,
         epochs=7, lr=3e-3, seed=303, prefer="circle",
         required_ops={"Concat", "AveragePool", "MaxPool", "Flatten", "Gemm"}),
    Spec("mobile_shapes",
         "MobileNetV3-like: depthwise (3x3, 3x3 s2, 5x5 s2) + pointwise convs, HardSwish, 2 "
         "Squeeze-Excitation blocks (HardSigmoid gate, Mul), residual Add, GlobalAveragePool, Gemm",
         "Shape classifier (circle/square/triangle/cross/star on a cluttered background): "
         "MobileNetV3-style net with depthwise convs, HardSwish and Squeeze-Excitation.",
         "rgb", (64, 64), list(D.SHAPE_CLASSES), lambda: N.MobileShapes(len(D.SHAPE_CLASSES)), data_shapes,
         epochs=6, lr=4e-3, seed=404, prefer="cross",
         required_ops={"Conv", "HardSwish", "HardSigmoid", "Mul", "GlobalAveragePool", "Gemm"}),
    Spec("captioner",
         "Show-and-Tell-style: CNN (4x Conv/Relu/MaxPool) -> Gemm image embedding = LSTM input at step 0 "
         "(half its units read the left half of the feature grid, half the right); "
         "step 1's input = word embedding (Gather) of step 0's ArgMax; one LSTM op per step, state carried "
         "Y_h/Y_c -> initial_h/initial_c; two-slot LSTM (fixed block masks: hidden units A = the object named "
         "now read the left input half, B = the object queued the right half; A reads B of m_t-1 through R; "
         "the words are read from A); Gemm per step -> logits [1, 2, 4]",
         "Captioner that names the two shapes in the scene from left to right: the CNN image embedding is "
         "the LSTM's input at step 0, the previous word's embedding after (CNN Fixations III-D).",
         "rgb", (48, 96), list(D.CAPTION_VOCAB),
         lambda: N.Captioner(len(D.CAPTION_VOCAB), D.CAPTION_OBJECTS, split=True, slots=True),
         data_captions, epochs=14, lr=3e-3, seed=505, dynamic=False, caption=True, min_acc=0.9,
         required_ops={"Conv", "MaxPool", "Gemm", "LSTM", "ArgMax", "Gather"}),
]
BY_NAME = {s.name: s for s in SPECS}


# ===================================================================================== preprocessing
def norm_stats(x_u8: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of pixel*scale over the training set, rounded to 3 decimals."""
    a = x_u8.astype(np.float64) * SCALE
    axes = tuple(range(a.ndim - 1)) if a.ndim == 4 else None
    mean, std = np.atleast_1d(a.mean(axis=axes)), np.atleast_1d(a.std(axis=axes))
    return [round(float(m), 3) for m in mean], [round(float(s), 3) for s in std]


def to_tensor(x_u8: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 NHWC (or NHW for gray) -> normalised float32 NCHW, exactly like the app."""
    a = x_u8.astype(np.float32) * np.float32(SCALE)
    a = a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2)
    m = np.asarray(mean, np.float32)[None, :, None, None]
    s = np.asarray(std, np.float32)[None, :, None, None]
    return torch.from_numpy(np.ascontiguousarray((a - m) / s))


def app_preprocess(img: Image.Image, channels: str, hw, mean, std) -> np.ndarray:
    """What onnxfix does with a picture (independent re-implementation used for verification)."""
    img = img.convert("L" if channels == "gray" else "RGB").resize((hw[1], hw[0]), Image.BILINEAR)
    a = np.asarray(img, np.float32) * np.float32(SCALE)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    a = (a - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    return np.ascontiguousarray(a[None], dtype=np.float32)


# ========================================================================================== training
def train(spec: Spec, net: torch.nn.Module, d: dict, mean, std) -> None:
    torch.manual_seed(spec.seed)
    g = torch.Generator().manual_seed(spec.seed)
    n = len(d["ytr"])
    per_epoch = n // spec.bs
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.epochs * per_epoch,
                                                pct_start=0.25)
    net.to(memory_format=torch.channels_last)  # ~25% faster convs on CPU; same numbers
    for ep in range(spec.epochs):
        net.train()
        perm = torch.randperm(n, generator=g).numpy()
        tot, t0 = 0.0, time.time()
        for b in range(per_epoch):
            idx = np.sort(perm[b * spec.bs:(b + 1) * spec.bs])
            xb = to_tensor(d["xtr"][idx], mean, std).contiguous(memory_format=torch.channels_last)
            yb = torch.from_numpy(d["ytr"][idx])
            out = net(xb, yb) if spec.caption else net(xb)  # the captioner: teacher forcing
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
        log(f"  epoch {ep + 1}/{spec.epochs}  loss {tot / per_epoch:.4f}  ({time.time() - t0:.1f}s)")
    net.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def evaluate(net: torch.nn.Module, d: dict, mean, std) -> float:
    net.eval()
    preds = []
    for i in range(0, len(d["yte"]), 250):
        preds.append(net(to_tensor(d["xte"][i:i + 250], mean, std)).argmax(-1).numpy())
    p = np.concatenate(preds)
    return float((p == d["yte"]).mean())


# ============================================================================================ export
def op_counts(model: onnx.ModelProto) -> Counter:
    c: Counter = Counter()

    def walk(g):
        for nd in g.node:
            c[nd.op_type] += 1
            for a in nd.attribute:
                if a.g is not None and a.g.node:
                    walk(a.g)

    walk(model.graph)
    return c


def export(spec: Spec, net: torch.nn.Module) -> tuple[onnx.ModelProto, bool]:
    net.eval()
    dummy = torch.zeros(1, 1 if spec.channels == "gray" else 3, *spec.hw)
    kw = dict(dynamo=False, opset_version=OPSET, do_constant_folding=True, input_names=["image"],
              output_names=["logits"])

    def run(dynamic: bool) -> onnx.ModelProto:
        buf = io.BytesIO()
        axes = {"image": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (dummy,), buf, dynamic_axes=axes, **kw)
        return onnx.load_from_string(buf.getvalue())

    if spec.dynamic:
        m = run(True)
        if "Shape" not in op_counts(m):
            return m, True
        log("  dynamic batch export contains Shape ops -> falling back to fixed batch 1")
    return run(False), False


def check_ops(spec: Spec, m: onnx.ModelProto) -> Counter:
    ops = op_counts(m)
    bad = sorted(set(ops) - ALLOWED_OPS)
    if bad:
        raise SystemExit(f"{spec.name}: forbidden ops in the exported graph: {bad} (inventory {dict(ops)})")
    missing = sorted(spec.required_ops - set(ops))
    if missing:
        raise SystemExit(f"{spec.name}: expected ops missing from the exported graph: {missing}")
    if spec.name == "mobile_shapes":
        dw = [nd for nd in m.graph.node if nd.op_type == "Conv"
              and any(a.name == "group" and a.i > 1 for a in nd.attribute)]
        strided = [nd for nd in dw if any(a.name == "strides" and max(a.ints) > 1 for a in nd.attribute)]
        if not dw or not strided:
            raise SystemExit("mobile_shapes: no depthwise (group > 1) / strided depthwise Conv in the graph")
    return ops


def metadata(spec: Spec, mean, std) -> dict[str, str]:
    return {
        "onnxfix.channels": spec.channels,
        "onnxfix.layout": "nchw",
        "onnxfix.scale": SCALE_STR,
        "onnxfix.mean": ",".join(repr(v) for v in mean),
        "onnxfix.std": ",".join(repr(v) for v in std),
        "onnxfix.labels": json.dumps(spec.labels),
        "onnxfix.description": spec.description,
    }


def session(path_or_bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


@torch.no_grad()
def verify_ort(spec: Spec, net, sess, d, mean, std, dynamic: bool) -> float:
    net.eval()
    x = to_tensor(d["xte"][:32], mean, std)
    worst = 0.0
    batches = [x] if dynamic else []
    batches += [x[i:i + 1] for i in range(8 if dynamic else 32)]
    for xb in batches:
        ref = net(xb).numpy()
        got = sess.run(["logits"], {"image": xb.numpy()})[0]
        if got.shape != ref.shape:
            raise SystemExit(f"{spec.name}: ORT output shape {got.shape} != torch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    if not worst < 1e-4:
        raise SystemExit(f"{spec.name}: ONNX Runtime differs from torch by {worst:.3g} (>= 1e-4)")
    return worst


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def pick_sample(spec: Spec, sess, d, mean, std) -> tuple[dict, bytes]:
    """The held-out sample (of class spec.prefer if any; for the captioner, different words)
    that the exported model gets right most confidently (>= 0.9) through the app's own path:
    PNG bytes -> PIL -> resize -> normalise -> ONNX Runtime."""
    best: tuple[float, int, dict, bytes] | None = None
    for order, k in enumerate(d["kept"]):
        if spec.caption:
            preferred = len(set(k["tokens"])) == len(k["tokens"])
        else:
            preferred = spec.prefer is None or spec.labels[k["index"]] == spec.prefer
        buf = io.BytesIO()
        k["image"].save(buf, format="PNG", optimize=True)
        png = buf.getvalue()
        x = app_preprocess(Image.open(io.BytesIO(png)), spec.channels, spec.hw, mean, std)
        prob = softmax(sess.run(["logits"], {"image": x})[0][0].astype(np.float64))
        if spec.caption:
            ok = prob.argmax(-1).tolist() == list(k["tokens"])
            conf = float(prob.max(-1).min())
        else:
            ok = int(prob.argmax()) == k["index"]
            conf = float(prob.max())
        if not ok or conf < 0.9:
            continue
        key = (float(preferred), conf)
        if best is None or key > best[0]:
            best = (key, order, k, png)
    if best is None:
        raise SystemExit(f"{spec.name}: no held-out sample classified correctly with confidence >= 0.9")
    _, _, k, png = best
    size = list(k["image"].size)
    if spec.caption:
        toks = [spec.labels[t] for t in k["tokens"]]
        info = {"label": " ".join(toks), "index": list(k["tokens"]), "tokens": toks, "boxes": k["boxes"]}
    else:
        info = {"label": spec.labels[k["index"]], "index": k["index"], "boxes": k["boxes"]}
    info["image_size"] = size
    return info, png


# ============================================================================================= build
def build(spec: Spec) -> dict:
    t0 = time.time()
    log(f"== {spec.name}")
    d = spec.data()
    if "norm" not in d:
        d["norm"] = norm_stats(d["xtr"])
    mean, std = d["norm"]
    log(f"  data ready ({time.time() - t0:.1f}s): {d['note']}; mean {mean} std {std}")
    torch.manual_seed(spec.seed)
    net = spec.net()
    n_params = sum(p.numel() for p in net.parameters())
    train(spec, net, d, mean, std)
    acc = evaluate(net, d, mean, std)
    unit = "per-token " if spec.caption else ""
    log(f"  held-out {unit}accuracy {acc:.4f}")
    if acc < spec.min_acc:
        raise SystemExit(f"{spec.name}: held-out accuracy {acc:.4f} < {spec.min_acc}")

    m, dynamic = export(spec, net)
    ops = check_ops(spec, m)
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, metadata(spec, mean, std))
    m.doc_string = spec.description
    onnx.checker.check_model(m, full_check=True)
    raw = m.SerializeToString()
    if len(raw) >= MAX_BYTES:
        raise SystemExit(f"{spec.name}: ONNX file is {len(raw)} bytes (>= 2 MB)")
    sess = session(raw)
    diff = verify_ort(spec, net, sess, d, mean, std, dynamic)

    # held-out accuracy of the exported model through ONNX Runtime (should equal torch's)
    xte = to_tensor(d["xte"], mean, std).numpy()
    if dynamic:
        logits = np.concatenate([sess.run(["logits"], {"image": xte[i:i + 250]})[0]
                                 for i in range(0, len(xte), 250)])
    else:
        logits = np.concatenate([sess.run(["logits"], {"image": xte[i:i + 1]})[0] for i in range(len(xte))])
    ort_acc = float((logits.argmax(-1) == d["yte"]).mean())
    seq_acc = float((logits.argmax(-1) == d["yte"]).all(-1).mean()) if spec.caption else None

    sample, png = pick_sample(spec, sess, d, mean, std)
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / f"{spec.name}.onnx").write_bytes(raw)
    (OUT_DIR / f"{spec.name}.labels.txt").write_text("\n".join(spec.labels) + "\n")
    (OUT_DIR / f"{spec.name}.png").write_bytes(png)
    (OUT_DIR / f"{spec.name}.json").write_text(json.dumps(sample, indent=1) + "\n")

    in_shape = ["batch" if dynamic else 1, 1 if spec.channels == "gray" else 3, *spec.hw]
    out_shape = [d_.dim_param or d_.dim_value for d_ in m.graph.output[0].type.tensor_type.shape.dim]
    secs = time.time() - t0
    info = {
        "input_shape": in_shape, "output_shape": out_shape, "channels": spec.channels,
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))), "nodes": sum(ops.values()),
        "params": n_params, "size_bytes": len(raw), "heldout_accuracy": round(acc, 4),
        "heldout_accuracy_ort": round(ort_acc, 4), "heldout_n": int(d["yte"].size),
        "heldout_sequence_accuracy": None if seq_acc is None else round(seq_acc, 4),
        "max_abs_diff_ort_torch": diff, "epochs": spec.epochs, "lr": spec.lr, "batch_size": spec.bs,
        "data": d["note"], "mean": mean, "std": std, "what": spec.what, "sample": sample["label"],
        "build_seconds": round(secs, 1),
    }
    log(f"  input {in_shape} -> logits {out_shape}; {n_params} params; {len(raw) / 1024:.0f} KiB; "
        f"ORT acc {ort_acc:.4f}; |ORT-torch| {diff:.2e}")
    log(f"  ops {info['ops']}")
    log(f"  sample: {sample['label']!r} boxes {sample['boxes']}; built in {secs:.1f}s")
    return info


# ============================================================================================ README
def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def fmt_ops(ops: dict) -> str:
    return ", ".join(f"{k}×{v}" for k, v in ops.items())


def write_readme(info: dict) -> None:
    rows = []
    for spec in SPECS:
        if spec.name not in info:
            continue
        i = info[spec.name]
        shape = "×".join(str(v) for v in i["input_shape"])
        acc = f"{100 * i['heldout_accuracy']:.1f}%"
        if spec.caption:
            acc += f" per token ({100 * i['heldout_sequence_accuracy']:.1f}% whole captions)"
        acc += f" on {i['heldout_n']}"
        rows.append(
            f"| `{spec.name}` | {_cell(i['what'])}. Classes: {', '.join(spec.labels)} | `image` {shape} "
            f"{i['channels']} → `logits` {'×'.join(str(v) for v in i['output_shape'])} | "
            f"{fmt_ops(i['ops'])} | {i['data']}; {i['epochs']} epochs AdamW (one-cycle, max lr {i['lr']}), "
            f"batch {i['batch_size']}, CPU, fixed seeds | {acc} | {i['size_bytes'] / 1024:.0f} KiB, "
            f"{i['params']:,} params |")
    text = f"""# Sample models

Small ONNX models bundled with onnxfix so that every explainer path (plain CNN, residual Add,
Inception Concat, MobileNet depthwise/SE, LSTM captioner) can be tried without downloading anything.
All of them are trained on synthetic but learnable tasks, so the explanations should land on the
object: each `NAME.json` gives the ground-truth box(es) of the object(s) in `NAME.png`.

Rebuild (CPU, 2 threads, deterministic seeds; about 5–8 minutes on two otherwise idle cores):

    python tools/build_samples.py              # all models
    python tools/build_samples.py --only captioner

Files per model: `NAME.onnx`, `NAME.labels.txt` (one label per line), `NAME.png` (a held-out image,
at 2× the model's input size so the app's resize is exercised: the one of a chosen class that the
exported model, fed through the app's preprocessing, gets right most confidently) and
`NAME.json` (`label`, `index`, `boxes` as `[x0, y0, x1, y1]` in the PNG's pixels with x1/y1
exclusive; the captioner adds `tokens` and lists the boxes in caption order, left to right).
`build_info.json` holds the numbers of the table below in machine-readable form.

Conventions: input `image` float32 NCHW, output `logits` (before softmax). Preprocessing (stored in
the metadata as `onnxfix.channels/layout/scale/mean/std/labels/description`): resize the whole image
with PIL bilinear (no crop) to the input H×W, then `x = (pixel * 0.00392156862745098 - mean) / std`
per channel. The models were trained on exactly that. A batch axis named `batch` is dynamic where
the export then contains no `Shape` op; the captioner has batch 1. Only these ops appear: Conv,
Relu, MaxPool, AveragePool, GlobalAveragePool, Gemm, MatMul, Add, Mul, Concat, BatchNormalization,
HardSwish, HardSigmoid, Sigmoid, Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Slice, Gather,
Split, LSTM, Constant, Identity, ArgMax (exported with the legacy TorchScript exporter, opset {OPSET},
constant folding; ONNX Runtime matches torch to < 1e-4).

| Model | What it is | Input → output | Ops in the graph (counts) | How it was trained | Held-out accuracy | Size |
|---|---|---|---|---|---|---|
""" + "\n".join(rows) + """

Data: *digits* are sklearn's 8×8 `load_digits` images upscaled ×3 (24×24 at input size) and pasted
at a random position into a dark 56×56 canvas with faint specks, scratches and noise; the held-out
set uses digit images never seen in training. *shapes* is one filled shape (circle, square,
triangle, cross, star) of random colour, size (18–33 px) and position on a random background with
small blobs and lines of other colours plus pixel noise. *captioner* scenes are 96×48 with one of
circle/square/triangle/cross in each of two 48-px slots, jittered, named left to right (trained with
teacher forcing, exported with greedy ArgMax feedback), with a few specks. All images
are rendered at 2× and shrunk with PIL bilinear, exactly like the app shrinks the sample PNGs.
"""
    (OUT_DIR / "README.md").write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=list(BY_NAME), action="append",
                    help="build just this model (repeatable); the others' files are left alone")
    ap.add_argument("--readme", action="store_true", help="only rewrite README.md from build_info.json")
    args = ap.parse_args(argv)
    if args.readme:
        write_readme(json.loads((OUT_DIR / INFO_FILE).read_text()))
        return 0
    names = args.only or [s.name for s in SPECS]
    OUT_DIR.mkdir(exist_ok=True)
    info_path = OUT_DIR / INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    t0 = time.time()
    for name in names:
        info[name] = build(BY_NAME[name])
        info_path.write_text(json.dumps({s.name: info[s.name] for s in SPECS if s.name in info}, indent=1) + "\n")
        write_readme(info)
    log(f"done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
