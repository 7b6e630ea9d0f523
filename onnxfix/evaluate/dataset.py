"""Evaluation datasets: a folder with images and ONE annotation file (format fixed in docs/evaluation.md).

1. ``annotations.json``: ``{"classes": [...] (optional), "images": [{"file", "label", "boxes", "mask", "accept"}]}``
2. ``annotations.csv``: header ``file,label,x0,y0,x1,y1,mask``; one row per box, rows with the same file merged.
3. Pascal-VOC / ImageNet XML files (``<annotation><filename>…<object><name>…<bndbox>…``), one per image.

Boxes are ``[x0, y0, x1, y1]`` in the image's pixels, x0/y0 inclusive, x1/y1 exclusive (PIL getbbox). VOC/ImageNet
XML boxes are 1-based and inclusive (the VOC devkit's convention), so they become ``[xmin − 1, ymin − 1, xmax,
ymax]``. Masks are PNGs of the image's size, nonzero = the object.

**Frames.** Boxes and masks are in the image file's *stored* pixel grid (what ``Image.open`` gives, as in VOC,
ImageNet and PIL's getbbox). The model sees the image upright (its EXIF orientation applied, as everywhere in
onnxfix), so a box is turned into the upright frame at load time (``Item.boxes`` and ``Item.size`` are upright;
``Item.orientation`` says how to turn the mask): the map and the boxes are always scored in one frame.

Bounds: the annotation file must be a regular file of at most :data:`MAX_ANNOTATION_BYTES` (JSON nested at most
:data:`onnxfix.io.files.MAX_JSON_DEPTH` levels; XML with entity declarations is refused); an image above
:data:`onnxfix.io.image.MAX_PIXELS` is skipped from its header.

Decisions: a bad row never stops the load — the image is *skipped* with a reason (:class:`Skipped`) and the rest
is evaluated: a file that is missing, unreadable or outside the dataset folder; a box that is malformed, empty or
not inside the image; a mask that is missing or of another size; a missing label. Labels are checked against the
model later (:func:`resolve_labels`): an index out of range or a name the model does not know skips the image.
A name matches a model label exactly, case-insensitively, as one of its comma-separated synonyms, or as the
WordNet id a label starts with (``n02123045 tabby, tabby cat``). Only the annotation file's rows are evaluated.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from onnxfix.errors import InputError, printable
from onnxfix.io import files as fileio
from onnxfix.io import image as image_io

#: Largest annotation file read (bytes).
MAX_ANNOTATION_BYTES = 256 * 1024**2
#: Largest XML annotation file read (bytes).
MAX_XML_BYTES = 16 * 1024**2

ANNOTATION_FILES = ("annotations.json", "annotations.csv")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".JPEG", ".JPG", ".PNG")


@dataclass(frozen=True)
class Item:
    """One annotated image: ``file`` as written (relative), ``path`` resolved, ``size`` (width, height) and
    ``boxes`` in the upright frame (EXIF ``orientation`` applied; the mask file is turned when read)."""

    file: str
    path: Path
    label: int | str
    boxes: list[list[float]] = field(default_factory=list)
    mask: Path | None = None
    accept: list[int] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)
    orientation: int = 1


@dataclass(frozen=True)
class Skipped:
    """A row that is not evaluated, and why."""

    file: str
    reason: str
    where: str = ""  # "row 3", "images[2]", the XML file…

    def __str__(self) -> str:
        return f"{self.where + ': ' if self.where else ''}{self.file or '?'}: {self.reason}"


@dataclass
class Dataset:
    """The loaded folder: valid ``items``, ``skipped`` rows with reasons, optional ``classes`` names."""

    folder: Path
    format: str
    items: list[Item]
    skipped: list[Skipped]
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.items)


# -- reading -----------------------------------------------------------------------------------------------------
def _inside(folder: Path, rel: str) -> Path | None:
    p = (folder / rel).resolve()
    try:
        p.relative_to(folder.resolve())
    except ValueError:
        return None
    return p


def _label(v: object) -> int | str | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    s = str(v).strip()
    if re.fullmatch(r"-?[0-9]{1,18}", s):
        return int(s)
    return None if re.fullmatch(r"-?[0-9]+", s) else s  # a 19+-digit index is no class


def _coord(v: object) -> float:
    """One box coordinate: a number, or the text of one (a CSV cell); never a bool, never a character of a
    string (``"boxes": ["0355"]`` used to be read as [0, 3, 5, 5])."""
    if isinstance(v, bool):
        raise ValueError(v)
    if isinstance(v, int | float):
        f = float(v)
    elif isinstance(v, str) and re.fullmatch(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?\s*", v):
        f = float(v)
    else:
        raise ValueError(v)
    if not math.isfinite(f):
        raise ValueError(v)
    return f


def _box(b: object) -> list[float] | None:
    if not isinstance(b, list | tuple) or len(b) != 4:
        return None
    try:
        return [_coord(v) for v in b]
    except ValueError:
        return None


def _open_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, Pillow's warnings silenced and the pixel limit applied."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            w, h = int(im.size[0]), int(im.size[1])
    if w * h > image_io.MAX_PIXELS:
        raise ValueError(f"image is {w}×{h} pixels, above the limit of {image_io.MAX_PIXELS}")
    return w, h


def _check(folder: Path, raw: dict, where: str) -> Item | Skipped:
    """Validate one merged record {file, label, boxes, mask, accept}."""
    file = str(raw.get("file") or "")
    if not file:
        return Skipped("", "no image file named", where)
    path = _inside(folder, file)
    if path is None:
        return Skipped(file, "path leaves the dataset folder", where)
    if not path.is_file():
        return Skipped(file, "image file not found", where)
    try:
        size = _open_size(path)
    except ValueError as exc:
        return Skipped(file, f"unreadable image ({exc})", where)
    except (OSError, Image.DecompressionBombError, SyntaxError, EOFError) as exc:
        return Skipped(file, f"unreadable image ({exc.__class__.__name__})", where)
    label = _label(raw.get("label"))
    if label is None:
        return Skipped(file, "no label", where)
    boxes: list[list[float]] = []
    raw_boxes = raw.get("boxes") or []
    if not isinstance(raw_boxes, list | tuple):
        return Skipped(file, f"boxes {printable(repr(raw_boxes))[:60]} is not a list of boxes", where)
    for b in raw_boxes:
        bb = _box(b)
        if bb is None:
            return Skipped(file, f"box {printable(repr(b))[:60]} is not four finite numbers", where)
        x0, y0, x1, y1 = bb
        if not (x1 > x0 and y1 > y0):
            return Skipped(file, f"box {bb} is empty (need x0 < x1 and y0 < y1)", where)
        if x0 < 0 or y0 < 0 or x1 > size[0] or y1 > size[1]:
            return Skipped(file, f"box {bb} is outside the {size[0]}×{size[1]} image", where)
        boxes.append(bb)
    mask = None
    if raw.get("mask"):
        mask = _inside(folder, str(raw["mask"]))
        if mask is None:
            return Skipped(file, f"mask {raw['mask']} leaves the dataset folder", where)
        if not mask.is_file():
            return Skipped(file, f"mask {raw['mask']} not found", where)
        try:
            msize = _open_size(mask)
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError, EOFError) as exc:
            return Skipped(file, f"unreadable mask {raw['mask']} ({exc.__class__.__name__})", where)
        if tuple(msize) != size:
            return Skipped(file, f"mask {raw['mask']} is {msize[0]}×{msize[1]}, the image {size[0]}×{size[1]}",
                           where)
    accept = []
    raw_accept = raw.get("accept") or []
    if not isinstance(raw_accept, list | tuple):
        return Skipped(file, "accept is not a list of class indices", where)
    for a in raw_accept:
        if isinstance(a, bool) or not isinstance(a, int | str) or not re.fullmatch(r"-?[0-9]{1,18}", str(a).strip()):
            return Skipped(file, f"accept entry {printable(repr(a))[:40]} is not a class index", where)
        accept.append(int(str(a).strip()))
    orientation = image_io.exif_orientation(path)
    if orientation != 1:  # boxes are given in the stored frame; the model (and the map) see the upright one
        boxes = [image_io.orient_box(b, orientation, size) for b in boxes]
        size = image_io.oriented_size(size, orientation)
    return Item(file=file, path=path, label=label, boxes=boxes, mask=mask, accept=accept, size=size,
                orientation=orientation)


def _read_json(folder: Path, path: Path) -> tuple[list[tuple[dict, str]], list[str] | None]:
    obj = fileio.read_json(path, "annotations", MAX_ANNOTATION_BYTES)
    if isinstance(obj, list):
        obj = {"images": obj}
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list):
        raise InputError(f"{path}: expected {{\"images\": [...]}} (see docs/evaluation.md)")
    classes = obj.get("classes")
    classes = [str(c) for c in classes] if isinstance(classes, list) else None
    rows = []
    for i, r in enumerate(obj["images"]):
        if isinstance(r, dict) and not isinstance(r.get("file"), str | type(None)):
            r = {"file": None}
        rows.append((r if isinstance(r, dict) else {"file": None}, f"images[{i}]"))
    return rows, classes


def _read_csv(folder: Path, path: Path) -> list[tuple[dict, str]]:
    text = fileio.read_text(path, "annotations", MAX_ANNOTATION_BYTES)
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "file" not in reader.fieldnames or "label" not in reader.fieldnames:
        raise InputError(f"{path}: the header must be file,label,x0,y0,x1,y1,mask")
    merged: dict[str, tuple[dict, str]] = {}
    for n, row in enumerate(reader, start=2):
        file = (row.get("file") or "").strip()
        where = f"line {n}"
        box_cells = [(row.get(k) or "").strip() for k in ("x0", "y0", "x1", "y1")]
        rec = merged.get(file)
        if rec is None:
            rec = ({"file": file, "label": (row.get("label") or "").strip(), "boxes": [],
                    "mask": (row.get("mask") or "").strip() or None}, where)
            merged[file] = rec
        if any(box_cells):
            rec[0]["boxes"].append(box_cells)  # a partly empty box is reported as malformed by _check
        if not rec[0]["mask"] and (row.get("mask") or "").strip():
            rec[0]["mask"] = row["mask"].strip()
    return list(merged.values())


def _find_image(folder: Path, xml: Path, filename: str) -> str:
    base = xml.parent / filename
    cands = [base] if Path(filename).suffix else []
    cands += [base.with_name(base.name + e) for e in IMAGE_EXTS] + [xml.with_suffix(e) for e in IMAGE_EXTS]
    for c in cands:
        if c.is_file():
            return str(c.relative_to(folder))
    return str((xml.parent / filename).relative_to(folder))


def _read_xml(folder: Path, files: list[Path]) -> list[tuple[dict, str]]:
    rows = []
    for xml in files:
        where = str(xml.relative_to(folder))
        try:
            data = fileio.read_bytes(xml, "annotation", MAX_XML_BYTES)
            if b"<!ENTITY" in data or b"<!entity" in data:
                raise ValueError("entity declarations are refused")
            root = ET.fromstring(data)
        except (ET.ParseError, OSError, InputError, ValueError) as exc:
            rows.append(({"file": where, "label": None, "_error": f"unreadable XML ({exc})"}, where))
            continue
        filename = (root.findtext("filename") or xml.stem).strip()
        objs = root.findall("object")
        names = [(o.findtext("name") or "").strip() for o in objs]
        label = names[0] if names else None
        boxes = []
        for o, name in zip(objs, names, strict=True):
            if name != label:
                continue
            bb = o.find("bndbox")
            vals = [bb.findtext(k) if bb is not None else None for k in ("xmin", "ymin", "xmax", "ymax")]
            try:
                x0, y0, x1, y1 = (float(v) for v in vals)  # type: ignore[arg-type]
                boxes.append([x0 - 1, y0 - 1, x1, y1])
            except (TypeError, ValueError):
                boxes.append(vals)
        rows.append(({"file": _find_image(folder, xml, filename), "label": label, "boxes": boxes}, where))
    return rows


def load_dataset(folder: str | Path) -> Dataset:
    """Read ``folder``'s annotations (annotations.json, else annotations.csv, else ``*.xml``) and check every row.

    Raises
    ------
    InputError
        The folder does not exist or has no annotation file, or the file cannot be parsed as a whole.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{folder}: dataset folder not found")
    classes = None
    if (root / "annotations.json").exists():
        rows, classes = _read_json(root, root / "annotations.json")
        fmt = "json"
    elif (root / "annotations.csv").exists():
        rows, fmt = _read_csv(root, root / "annotations.csv"), "csv"
    else:
        xmls = sorted(p for p in root.rglob("*.xml") if p.is_file())
        if not xmls:
            raise InputError(f"{folder}: no annotations.json, annotations.csv or *.xml files (see docs/evaluation.md)")
        rows, fmt = _read_xml(root, xmls), "xml"
    items: list[Item] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for raw, where in rows:
        if raw.get("_error"):
            skipped.append(Skipped(str(raw.get("file")), raw["_error"], where))
            continue
        r = _check(root, raw, where)
        if isinstance(r, Skipped):
            skipped.append(r)
        elif r.file in seen:
            skipped.append(Skipped(r.file, "listed twice; the first entry is used", where))
        else:
            seen.add(r.file)
            items.append(r)
    return Dataset(folder=root, format=fmt, items=items, skipped=skipped, classes=classes)


# -- labels against a model ---------------------------------------------------------------------------------------
def label_index(label: int | str, labels: list[str] | None, n_classes: int) -> int | None:
    """The model class index of a dataset label (index, name, synonym or WordNet id), None if unknown."""
    if isinstance(label, int):
        return label if 0 <= label < n_classes else None
    names = labels or []
    low = label.lower()
    for i, name in enumerate(names):
        if name == label:
            return i
    for i, name in enumerate(names):
        n = name.lower()
        if n == low or low in [s.strip() for s in n.split(",")]:
            return i
        if re.fullmatch(r"n\d{8}", low) and n.split(" ", 1)[0] == low:
            return i
    return None


def resolve_labels(dataset: Dataset, labels: list[str] | None, n_classes: int) -> tuple[list[Item], list[Skipped]]:
    """Items with integer labels (and in-range ``accept``) for a model with ``n_classes`` classes, and the items
    skipped because their label is not in the model."""
    out: list[Item] = []
    skipped: list[Skipped] = []
    for it in dataset.items:
        idx = label_index(it.label, labels, n_classes)
        if idx is None:
            what = f"class index {it.label}" if isinstance(it.label, int) else f"label {it.label!r}"
            skipped.append(Skipped(it.file, f"{what} is not in the model ({n_classes} classes)"))
            continue
        bad = [a for a in it.accept if not 0 <= a < n_classes]
        if bad:
            skipped.append(Skipped(it.file, f"accept {bad} out of range for the model ({n_classes} classes)"))
            continue
        out.append(replace(it, label=idx))
    return out, skipped
