"""What ``onnxfix batch`` explains: image files, folders (recursive), globs, and CSV/Parquet manifests.

Items are produced lazily (a folder of millions of images or a manifest of millions of rows is never held in
memory as a whole): folders are walked in sorted order, a glob's matches are sorted, manifests are read in row
batches. A manifest has a ``path`` column (relative paths are relative to the manifest's folder) and an optional
``target`` column holding any target string (``"281"``, ``"espresso"``, ``"box:0"``...; empty: the top class).
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from onnxfix.errors import InputError
from onnxfix.pipeline import IMAGE_EXTS

#: Extensions picked up when walking folders or expanding globs (an image named explicitly is always taken): the
#: main command's (onnxfix.pipeline.IMAGE_EXTS).
IMAGE_EXTENSIONS = IMAGE_EXTS
MANIFEST_EXTENSIONS = frozenset({".csv", ".parquet", ".pq"})
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Item:
    """One image to explain: its path (absolute) and the requested target (``None``: the top class)."""

    path: str
    target: str | None = None


def _clean_target(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:  # NaN from a pandas-written numeric column
            return None
        if value.is_integer():
            value = int(value)
    text = str(value).strip()
    return text or None


def _walk(folder: Path, exclude: frozenset[str] = frozenset()) -> Iterator[str]:
    """Image files under ``folder``, sorted, hidden files and folders and the ``exclude`` folders left out."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(root, d)) not in exclude)
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                yield os.path.abspath(os.path.join(root, name))


def _manifest(path: Path, default_target: str | None) -> Iterator[Item]:
    base = path.parent
    if path.suffix.lower() == ".csv":
        try:
            fh = open(path, newline="", encoding="utf-8-sig")
        except OSError as exc:
            raise InputError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
        with fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            if "path" not in cols:
                raise InputError(f"{path}: a manifest needs a 'path' column (found: {', '.join(cols) or 'none'})")
            reader.fieldnames = cols
            for row in reader:
                p = (row.get("path") or "").strip()
                if not p:
                    continue
                t = _clean_target(row.get("target")) if "target" in cols else None
                yield Item(os.path.abspath(base / p), t if t is not None else default_target)
        return
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
    except ImportError:
        raise InputError(f"{path}: reading a Parquet manifest needs pyarrow (pip install 'onnxfix[batch]')") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise InputError(f"{path}: cannot read the Parquet manifest ({exc})") from None
    names = pf.schema_arrow.names
    if "path" not in names:
        raise InputError(f"{path}: a manifest needs a 'path' column (found: {', '.join(names) or 'none'})")
    cols = ["path"] + (["target"] if "target" in names else [])
    for rb in pf.iter_batches(batch_size=65536, columns=cols):
        paths = rb.column("path").to_pylist()
        targets = rb.column("target").to_pylist() if "target" in cols else [None] * len(paths)
        for p, t in zip(paths, targets, strict=True):
            if p is None or not str(p).strip():
                continue
            t = _clean_target(t)
            yield Item(os.path.abspath(base / str(p).strip()), t if t is not None else default_target)


def check_inputs(inputs: list[str]) -> None:
    """Refuse (``InputError``) an INPUT that names nothing: a missing file or folder, or a glob matching no file."""
    if not inputs:
        raise InputError("no INPUT given: name image files, folders, globs or a manifest (.csv/.parquet)")
    for raw in inputs:
        s = str(raw)
        if _GLOB_CHARS & set(s) and not os.path.exists(s):
            if next(glob.iglob(s, recursive=True), None) is None:
                raise InputError(f"{s}: the pattern matches no file")
        elif not os.path.exists(s):
            raise InputError(f"{s}: no such file or folder")


def iter_items(inputs: list[str], target: str | None = None, exclude: list[str] = ()) -> Iterator[Item]:
    """Every image named by ``inputs``, in order (folders sorted, recursive), as :class:`Item`.

    ``target`` applies to every image that has no per-row target in a manifest; folders in ``exclude`` (the
    results folder, so that a rerun does not explain its own PNGs) are left out of folder walks.
    """
    default = _clean_target(target)
    skip = frozenset(os.path.realpath(str(e)) for e in exclude)
    for raw in inputs:
        s = str(raw)
        p = Path(s)
        if _GLOB_CHARS & set(s) and not p.exists():
            for m in sorted(glob.glob(s, recursive=True)):
                mp = Path(m)
                if mp.is_dir():
                    for f in _walk(mp, skip):
                        yield Item(f, default)
                elif mp.suffix.lower() in IMAGE_EXTENSIONS:
                    yield Item(os.path.abspath(m), default)
        elif p.is_dir():
            for f in _walk(p, skip):
                yield Item(f, default)
        elif p.suffix.lower() in MANIFEST_EXTENSIONS:
            yield from _manifest(p, default)
        else:
            yield Item(os.path.abspath(s), default)


def count_items(inputs: list[str], exclude: list[str] = ()) -> int:
    """How many items :func:`iter_items` yields (one cheap pass: directory listings and manifest rows)."""
    n = 0
    for _ in iter_items(inputs, exclude=exclude):
        n += 1
    return n
