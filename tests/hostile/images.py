"""Unusual and broken image files for the hostile-input corpus (Pillow + hand-made headers)."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def pixels(h: int = 20, w: int = 30, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(w: int, h: int, bit_depth: int = 8, color: int = 2, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR declares ``w``×``h``: a decompression bomb costs nothing to make (no pixels follow)."""
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(idat)) + _chunk(b"IEND", b"")


def png_bomb(w: int, h: int) -> bytes:
    """A real bomb: a 1-bit ``w``×``h`` PNG of zeros (under 1 MB for 40 000², 200 MB once inflated).

    Built fast: a block of 1000 identical rows is deflated once with a full flush, so its compressed bytes can be
    repeated; the stream ends with an empty final block and the Adler-32 of all the rows."""
    row = b"\x00" * (1 + (w + 7) // 8)
    block = row * 1000
    c = zlib.compressobj(9)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every later block: the window was reset
    n, rest = divmod(h, 1000)
    adler = 1
    for _ in range(n):
        adler = zlib.adler32(block, adler)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate for the last partial block
    last = tail.compress(row * rest) + tail.flush(zlib.Z_FULL_FLUSH) if rest else b""
    adler = zlib.adler32(row * rest, adler)
    data = first + again * (n - 1) + last + b"\x03\x00" + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def gif_header_only(w: int, h: int) -> bytes:
    """A GIF whose logical screen and first image declare ``w``×``h``."""
    head = b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    desc = b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02\x02\x44\x01\x00"
    return head + desc + b"\x3b"


def jpeg_with_orientation(arr: np.ndarray, orientation: int) -> bytes:
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif(frames: list[np.ndarray]) -> bytes:
    ims = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=100, loop=0)
    return buf.getvalue()


def variants() -> dict[str, bytes]:
    """name (with extension) → bytes of images that must decode (unusual but valid)."""
    a = pixels()
    rgb = Image.fromarray(a)
    out: dict[str, bytes] = {
        "plain.png": encode(rgb, "PNG"),
        "one_pixel.png": encode(Image.fromarray(a[:1, :1]), "PNG"),
        "one_row.png": encode(Image.fromarray(a[:1]), "PNG"),
        "one_column.png": encode(Image.fromarray(a[:, :1]), "PNG"),
        "tall.png": encode(Image.fromarray(np.repeat(a[:, :2], 40, axis=0)), "PNG"),
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "cmyk.tif": encode(rgb.convert("CMYK"), "TIFF"),
        "gray.png": encode(rgb.convert("L"), "PNG"),
        "bilevel.png": encode(rgb.convert("1"), "PNG"),
        "palette.png": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        "palette_transparent.png": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG",
                                          transparency=0),
        "rgba.png": encode(Image.fromarray(np.dstack([a, np.linspace(0, 255, a.shape[1], dtype=np.uint8)[None]
                                                      .repeat(a.shape[0], 0)])), "PNG"),
        "la.png": encode(rgb.convert("LA"), "PNG"),
        "gray16.png": encode(Image.fromarray(a[..., 0].astype(np.uint16) * 257), "PNG"),
        "int32.tif": encode(Image.fromarray(a[..., 0].astype(np.int32) * 1000), "TIFF"),
        "float.tif": encode(Image.fromarray(a[..., 0].astype(np.float32) / 7.0), "TIFF"),
        "float_nan.tif": encode(Image.fromarray(np.where(a[..., 0] > 128, np.nan, 1.0).astype(np.float32)), "TIFF"),
        "rgb.bmp": encode(rgb, "BMP"),
        "rgb.webp": encode(rgb, "WEBP", lossless=True),
        "progressive.jpg": encode(rgb, "JPEG", progressive=True),
        "rgb.gif": encode(rgb, "GIF"),
        "ycbcr.tif": encode(rgb, "TIFF", compression="jpeg"),
        "wrong_extension.jpg": encode(rgb, "PNG"),  # a PNG named .jpg: content decides
        "no_extension": encode(rgb, "PNG"),
    }
    for o in range(2, 9):
        out[f"exif_orientation_{o}.jpg"] = jpeg_with_orientation(a, o)
    return out


def broken() -> dict[str, tuple[bytes | Callable[[], bytes], str]]:
    """name → (bytes, a substring the error message must contain) for images that must be refused (exit 2)."""
    a = pixels(40, 60)
    png = encode(Image.fromarray(a), "PNG")
    jpg = encode(Image.fromarray(a), "JPEG", quality=90)
    gif = encode(Image.fromarray(a), "GIF")
    out: dict[str, tuple[bytes | Callable[[], bytes], str]] = {
        "text.jpg": (b"this is not an image, just text\n" * 10, "cannot decode"),
        "text.png": (b"hello", "cannot decode"),
        "empty.png": (b"", "empty"),
        "html.jpg": (b"<!DOCTYPE html><html><body>404 not found</body></html>", "cannot decode"),
        "zero_width.png": (png_header_only(0, 10), "cannot decode"),
        "zero_height.png": (png_header_only(10, 0), "cannot decode"),
        "bomb_header_40000.png": (png_header_only(40_000, 40_000), "--max-image-pixels"),
        "bomb_40000.png": (lambda: png_bomb(40_000, 40_000), "--max-image-pixels"),  # built when used
        "bomb_wide.png": (png_header_only(2_000_000, 60), "--max-image-pixels"),
        "bomb_header_40000.gif": (gif_header_only(40_000, 40_000), "--max-image-pixels"),
        "png_no_idat.png": (png[:33] + _chunk(b"IEND", b""), "cannot decode"),
        "png_bad_crc.png": (png[:29] + b"\x00\x00\x00\x00" + png[33:], "cannot decode"),
        "jpeg_header_only.jpg": (jpg[:20], "cannot decode"),
        "gif_header_only.gif": (gif[:13], "cannot decode"),
    }
    # truncations at many offsets: inside the header, the data and just before the end marker
    for frac in (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.97):
        out[f"truncated_{int(frac * 100):02d}.png"] = (png[: int(len(png) * frac)], "cannot decode")
        out[f"truncated_{int(frac * 100):02d}.jpg"] = (jpg[: int(len(jpg) * frac)], "cannot decode")
    return out


def write(folder: Path, name: str, data: bytes) -> Path:
    p = folder / name
    p.write_bytes(data)
    return p


def fuzz_found() -> dict[str, bytes]:
    """Inputs the fuzzer (tests/test_fuzz.py) found, reduced to one mutation of a seed."""
    a = pixels(12, 16, seed=5)
    tif = bytearray(encode(Image.fromarray(a), "TIFF"))
    tif[15] = 4  # a tag whose data lies past the end: Pillow's TIFF plugin warned on the user's stderr
    return {"tiff_tag_past_end.tif": bytes(tif)}
