"""Images in, model tensors out — and the way back from model-input coordinates to the user's pixels.

Decisions (written here because no issue fixes them):

* **Resize, no crop.** The whole image is resized (PIL bilinear) to the model's input H×W, so every pixel of the
  user's image is seen and every model-input point maps back into the image: ``x_img = (x + 0.5)·W_img/W − 0.5``.
  A user who wants ImageNet's resize-256-centre-crop-224 crops first and passes the crop.
* **Normalisation:** ``x = (pixel·scale − mean) / std`` per channel, pixel in 0..255. Defaults: scale 1/255,
  ImageNet mean/std for 3 channels, mean 0.5 / std 0.5 for one channel. A model may carry its own in ONNX
  ``metadata_props`` (``onnxfix.channels``, ``onnxfix.layout``, ``onnxfix.mean``, ``onnxfix.std``,
  ``onnxfix.scale``); CLI flags override both.
* **Layout** is read from the input's shape: a dimension of 1 or 3 in position 1 → NCHW, in the last → NHWC; a
  non-image input (rank ≠ 4, or no channel axis of 1/3/4) is refused with a clear message unless an
  already-preprocessed array is given.
* Decoding honours EXIF orientation, takes the first frame of animations, flattens alpha onto black and converts
  palette, CMYK and 16-bit images to 8-bit RGB (or L for one channel). Images above ``MAX_PIXELS`` are refused
  before decoding (decompression bombs).
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from onnxfix.errors import InputError

#: Largest image (width × height) decoded unless the caller raises it: ``--max-image-pixels`` on the command line,
#: ``Explainer(max_image_pixels=...)``, or this module-level default (100 megapixels).
MAX_PIXELS = 100_000_000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor."""

    height: int
    width: int
    layout: str = "nchw"  # or "nhwc"
    channels: str = "rgb"  # "rgb", "bgr" or "gray"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale: float = 1.0 / 255.0
    dtype: str = "float32"

    @property
    def n_channels(self) -> int:
        return 1 if self.channels == "gray" else 3

    def with_overrides(self, **kw: Any) -> Preprocess:
        """A copy with the given non-None fields replaced (CLI flags)."""
        clean = {k: v for k, v in kw.items() if v is not None}
        for k in ("mean", "std"):
            if k in clean:
                clean[k] = tuple(float(x) for x in clean[k])
        for k in ("height", "width"):
            if k in clean and not 0 < int(clean[k]) <= 16384:
                raise InputError(f"input {k} {clean[k]} is out of range (--size H W takes 1..16384)")
        if "std" in clean and (not all(np.isfinite(clean["std"])) or any(v == 0 for v in clean["std"])):
            raise InputError(f"std {list(clean['std'])} must be finite and non-zero (--std)")
        for k in ("mean", "scale"):
            if k in clean and not np.isfinite(clean[k]).all():
                raise InputError(f"{k} {clean[k]} must be finite (--{k})")
        return replace(self, **clean)


@dataclass(frozen=True)
class Frame:
    """Maps model-input pixel coordinates to the user's image pixel coordinates (and back)."""

    input_hw: tuple[int, int]
    image_hw: tuple[int, int]

    @property
    def scale_xy(self) -> tuple[float, float]:
        return self.image_hw[1] / self.input_hw[1], self.image_hw[0] / self.input_hw[0]

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) model-input (x, y) → image (x, y); pixel centres are integers in both frames."""
        sx, sy = self.scale_xy
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return np.stack([(xy[:, 0] + 0.5) * sx - 0.5, (xy[:, 1] + 0.5) * sy - 0.5], axis=1)

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        sx, sy = self.scale_xy
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return np.stack([(xy[:, 0] + 0.5) / sx - 0.5, (xy[:, 1] + 0.5) / sy - 0.5], axis=1)


def _parse_floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.replace(";", ",").split(",") if x.strip())


def infer_preprocess(
    input_shape: tuple[int | None, ...] | None, metadata: dict[str, str] | None = None, name: str = "input"
) -> Preprocess:
    """Guess the preprocessing from the model's image input shape and its ``onnxfix.*`` metadata.

    Raises
    ------
    InputError
        The input does not look like an image (rank ≠ 4 or no channel axis of size 1, 3 or 4).
    """
    meta = metadata or {}
    if input_shape is None or len(input_shape) != 4:
        raise InputError(
            f"model input {name!r} has shape {list(input_shape) if input_shape else 'unknown'}; an image input "
            "must be 4-D (N,C,H,W or N,H,W,C) — pass an already-preprocessed array to the Python API instead"
        )
    layout = meta.get("onnxfix.layout")
    if layout is None:
        c1, c3 = input_shape[1], input_shape[3]
        if c1 in (1, 3, 4) and c3 not in (1, 3, 4):
            layout = "nchw"
        elif c3 in (1, 3, 4) and c1 not in (1, 3, 4):
            layout = "nhwc"
        elif c1 in (1, 3, 4):
            layout = "nchw"
        else:
            raise InputError(
                f"model input {name!r} has shape {list(input_shape)}: no channel axis of size 1 or 3; "
                "use --layout and --size"
            )
    if layout == "nchw":
        c, h, w = input_shape[1], input_shape[2], input_shape[3]
    else:
        h, w, c = input_shape[1], input_shape[2], input_shape[3]
    h = h if isinstance(h, int) and h > 0 else 224
    w = w if isinstance(w, int) and w > 0 else 224
    channels = meta.get("onnxfix.channels") or ("gray" if c == 1 else "rgb")
    ncol = 1 if channels == "gray" else 3
    mean = _parse_floats(meta["onnxfix.mean"]) if "onnxfix.mean" in meta else (
        IMAGENET_MEAN if ncol == 3 else (0.5,))
    std = _parse_floats(meta["onnxfix.std"]) if "onnxfix.std" in meta else (IMAGENET_STD if ncol == 3 else (0.5,))
    scale = float(meta["onnxfix.scale"]) if "onnxfix.scale" in meta else 1.0 / 255.0
    return Preprocess(int(h), int(w), layout, channels, tuple(mean), tuple(std), scale)


#: a model whose image input has a dynamic height/width (OCR, detectors) gets each image at its own size, its long
#: side brought down to this and its short side up to OWN_SIZE_MIN (aspect kept): docs/decisions.md
OWN_SIZE_MAX = 640
OWN_SIZE_MIN = 32


def own_size(hw: tuple[int, int], long_max: int = OWN_SIZE_MAX, short_min: int = OWN_SIZE_MIN) -> tuple[int, int]:
    """The model-input size for an image of ``hw`` (H, W) when the model's H/W are dynamic: the image's own,
    scaled (aspect kept) so the long side is at most ``long_max`` and, where that allows, the short side at least
    ``short_min``."""
    h, w = max(1, int(hw[0])), max(1, int(hw[1]))
    f = 1.0
    if max(h, w) > long_max:
        f = long_max / max(h, w)
    elif min(h, w) < short_min:
        f = min(short_min / min(h, w), long_max / max(h, w))
    if f == 1.0:
        return h, w
    return max(1, round(h * f)), max(1, round(w * f))


def decode_image(source: str | os.PathLike | Image.Image | np.ndarray, max_pixels: int | None = None) -> Image.Image:
    """Open ``source`` as an 8-bit RGB PIL image (EXIF rotation applied, first frame, alpha flattened).

    ``max_pixels`` (default :data:`MAX_PIXELS`, read at call time; ``--max-image-pixels`` on the command line)
    bounds width × height; it is checked from the header, before any pixel is decoded.

    Raises
    ------
    InputError
        The file is missing, not an image, truncated, too large, or the array has an unusable shape/dtype.
    """
    if isinstance(source, np.ndarray):
        return _array_to_pil(source)
    if isinstance(source, Image.Image):
        return _to_rgb(source, "<PIL image>")
    path = Path(source)
    label = str(source)
    if not path.exists():
        raise InputError(f"{label}: no such image file")
    if not path.is_file():
        raise InputError(f"{label}: not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{label}: the image file is empty")
    max_pixels = MAX_PIXELS if max_pixels is None else int(max_pixels)
    old = Image.MAX_IMAGE_PIXELS
    # Pillow's own check (a warning above its limit, an error above twice it) is replaced by ours: the header's
    # size is checked right after open, before any pixel is decoded, with one message naming the flag
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a plugin's notes on a damaged file must not reach the user's stderr
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise _too_big(label, w, h, max_pixels)
                if w == 0 or h == 0:
                    raise InputError(f"{label}: image has zero size ({w}×{h})")
                im.seek(0)
                im.load()
                return _to_rgb(im, label)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{label}: cannot decode the image: {_bomb_text(exc, max_pixels)}") from None
    except UnidentifiedImageError as exc:
        raise InputError(f"{label}: cannot decode the image ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, ZeroDivisionError) as exc:
        raise InputError(f"{label}: cannot decode the image (truncated or corrupt: {exc})") from None
    except MemoryError:
        raise InputError(f"{label}: cannot decode the image (out of memory; lower its size)") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _too_big(label: str, w: int, h: int, max_pixels: int) -> InputError:
    return InputError(f"{label}: image is {w}×{h} = {w * h} pixels, above the limit of {max_pixels} "
                      "(a decompression bomb?); raise it with --max-image-pixels or max_image_pixels=")


def _bomb_text(exc: BaseException, max_pixels: int) -> str:
    return (f"{exc} The limit is {max_pixels} pixels; raise it with --max-image-pixels or max_image_pixels=")


def _to_rgb(im: Image.Image, label: str) -> Image.Image:
    try:
        im = ImageOps.exif_transpose(im) or im
    except Exception:  # noqa: BLE001 - a broken EXIF block should not lose the image
        pass
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        arr = arr / (hi if hi > 255 else 255.0) * 255.0
        im = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        im = Image.fromarray(arr.astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (0, 0, 0))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if im.mode != "RGB":
        im = im.convert("RGB")
    if im.size[0] == 0 or im.size[1] == 0:
        raise InputError(f"{label}: image has zero size")
    return im


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"image array has shape {list(a.shape)}; expected H×W, H×W×1, H×W×3 or H×W×4")
    if a.dtype != np.uint8:
        if not np.isfinite(a).all():
            raise InputError("image array contains NaN or Inf")
        if np.issubdtype(a.dtype, np.floating) and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(a)), "<array>")


def to_tensor(image: Image.Image, spec: Preprocess) -> np.ndarray:
    """Resize ``image`` to the model input and normalise it; returns a batch-of-one tensor in ``spec.layout``."""
    im = image.convert("L") if spec.channels == "gray" else image
    im = im.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.float32)
    if a.ndim == 2:
        a = a[:, :, None]
    if spec.channels == "bgr":
        a = a[:, :, ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 1, -1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 1, -1)
    a = (a * np.float32(spec.scale) - mean) / std
    if spec.layout == "nchw":
        a = a.transpose(2, 0, 1)
    if np.issubdtype(np.dtype(spec.dtype), np.integer):  # integer inputs take rounded, clipped values
        info = np.iinfo(np.dtype(spec.dtype))
        a = np.clip(np.rint(a), info.min, info.max)
    return np.ascontiguousarray(a[None].astype(spec.dtype))


#: Bytes per input element that preprocessing holds at its peak: the resized uint8 image, three float32
#: working copies (convert, normalise, transpose) and the result.
PREPROCESS_BYTES_PER_ELEMENT = 1 + 3 * 4


def preprocess_bytes(spec: Preprocess) -> int:
    """Peak bytes that preprocessing one image to ``spec`` allocates (input H × W × channels)."""
    return int(spec.height) * int(spec.width) * spec.n_channels * (
        PREPROCESS_BYTES_PER_ELEMENT + np.dtype(spec.dtype).itemsize)


def default_memory_budget() -> int | None:
    """The default memory budget in bytes: ``onnxfix.runtime.MEMORY_FRACTION`` of the available memory."""
    from onnxfix import runtime

    avail = runtime.available_memory()
    return None if avail is None else int(avail * runtime.MEMORY_FRACTION)


def check_input_size(spec: Preprocess, budget: int | None = None, what: str = "the model input") -> None:
    """Refuse a declared input size whose preprocessing alone would exceed the memory budget — before any pixel is
    resized (a 1 KB model declaring a 16384² input made a 30×20 photo take 20 GB and 100 s).

    Parameters
    ----------
    spec : Preprocess
        The preprocessing (size, channels, dtype).
    budget : int, optional
        Bytes (``--memory-budget-mb``, ``Explainer(memory_budget_mb=)``); default :func:`default_memory_budget`.

    Raises
    ------
    InputError
        Naming the size, the bytes, the budget and the flags that change them.
    """
    budget = default_memory_budget() if budget is None else int(budget)
    need = preprocess_bytes(spec)
    if budget is not None and need > budget:
        raise InputError(f"{what} is {spec.height}×{spec.width}×{spec.n_channels} {spec.dtype}: preprocessing one "
                         f"image needs about {need / 1024**2:.1f} MB, above the memory budget of "
                         f"{budget / 1024**2:.1f} MB; give a smaller size with --size H W or raise "
                         "--memory-budget-mb")


def prepare(
    source: str | os.PathLike | Image.Image | np.ndarray, spec: Preprocess, input_shape: tuple[int | None, ...],
    max_pixels: int | None = None, memory_budget: int | None = None,
) -> tuple[np.ndarray, Frame, Image.Image | None]:
    """Turn a user input into (model tensor, frame, the decoded image or None for preprocessed arrays).

    ``max_pixels`` bounds a decoded image (see :func:`decode_image`); ``memory_budget`` (bytes, default
    :func:`default_memory_budget`) bounds what preprocessing to the model's size allocates
    (:func:`check_input_size`), checked before the image is decoded."""
    if isinstance(source, np.ndarray) and source.dtype != np.uint8 and source.ndim == len(input_shape):
        arr = np.asarray(source, dtype=np.float32)
        if arr.ndim == 4 and arr.shape[0] != 1:
            raise InputError(f"preprocessed array has batch {arr.shape[0]}; explain one image at a time")
        for got, want in zip(arr.shape, input_shape, strict=True):
            if isinstance(want, int) and want > 0 and got != want:
                raise InputError(f"preprocessed array has shape {list(arr.shape)}; the model wants {list(input_shape)}")
        if not np.isfinite(arr).all():
            raise InputError("preprocessed array contains NaN or Inf")
        hw = (arr.shape[2], arr.shape[3]) if spec.layout == "nchw" else (arr.shape[1], arr.shape[2])
        return np.ascontiguousarray(arr), Frame(hw, hw), None
    check_input_size(spec, memory_budget)
    image = decode_image(source, max_pixels)
    tensor = to_tensor(image, spec)
    frame = Frame((spec.height, spec.width), (image.size[1], image.size[0]))
    return tensor, frame, image


# -- EXIF orientation: the stored pixel frame vs the upright frame the model sees ------------------------------------
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def exif_orientation(path: str | os.PathLike) -> int:
    """The EXIF orientation (1..8) that :func:`decode_image` applies to ``path``; 1 when there is none (or it is
    unreadable, as :func:`decode_image` then keeps the stored frame)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                o = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - no readable EXIF: the stored frame
        return 1
    return int(o) if isinstance(o, int) and 1 <= o <= 8 else 1


def orient_image(im: Image.Image, orientation: int) -> Image.Image:
    """``im`` (e.g. a mask in the stored frame) turned like an image with this EXIF orientation."""
    t = _TRANSPOSE.get(int(orientation))
    return im if t is None else im.transpose(t)


def orient_box(box: list[float], orientation: int, size: tuple[int, int]) -> list[float]:
    """A box [x0, y0, x1, y1] (edges; x1/y1 exclusive) in the stored frame of a ``size`` = (W, H) image → the same
    pixels' box in the upright frame that EXIF orientation ``orientation`` gives."""
    w, h = float(size[0]), float(size[1])
    f = {1: lambda x, y: (x, y), 2: lambda x, y: (w - x, y), 3: lambda x, y: (w - x, h - y),
         4: lambda x, y: (x, h - y), 5: lambda x, y: (y, x), 6: lambda x, y: (h - y, x),
         7: lambda x, y: (h - y, w - x), 8: lambda x, y: (y, w - x)}[int(orientation) if 1 <= int(orientation) <= 8
                                                                     else 1]
    x0, y0, x1, y1 = (float(v) for v in box)
    pts = [f(x0, y0), f(x1, y1)]
    return [min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts)]


def oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(W, H) of the upright image."""
    return (size[1], size[0]) if int(orientation) in (5, 6, 7, 8) else (size[0], size[1])
