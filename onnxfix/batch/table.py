"""The results table: ``DIR/explanations.parquet``, a Parquet dataset of part files, one row group each.

Crash safety: every row group is written as its own part file under a temporary dot-name and renamed into place
(:func:`onnxfix.io.atomic.write_atomic`), so a reader — and a resumed run — only ever sees whole parts; a process
killed at any moment loses at most the part it was writing. The table is the union of the parts
(``pyarrow.dataset`` / ``pandas.read_parquet(DIR/explanations.parquet)`` read it as one; names starting with ``.``
are skipped by both). A part's name is derived from its chunk's content, so a task that a cluster retries rewrites
the same part instead of adding a copy.

Row key: ``key`` = hash(sha256 of the file bytes, method, options, requested target) — the resume rule. A second
key, ``file_key`` = hash(path, size, mtime, method, options, requested target), lets a rerun skip finished images
from a ``stat`` alone, without reading them again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from onnxfix.errors import InputError

TABLE = "explanations.parquet"
META = "batch.json"
PART_PREFIX = "part-"


def require_pyarrow() -> None:
    """Raise ``InputError`` naming the extra to install when pyarrow is missing."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InputError("onnxfix batch writes Parquet and needs pyarrow: pip install 'onnxfix[batch]'") from None


def schema():
    """The Arrow schema of a results row (see docs/batch.md for every column)."""
    import pyarrow as pa

    top = pa.struct([("index", pa.int32()), ("label", pa.string()), ("score", pa.float64()),
                     ("logit", pa.float64())])
    return pa.schema([
        ("key", pa.string()), ("file_key", pa.string()),
        ("path", pa.string()), ("sha256", pa.string()), ("file_bytes", pa.int64()), ("file_mtime_ns", pa.int64()),
        ("image_width", pa.int32()), ("image_height", pa.int32()),
        ("model", pa.string()), ("method", pa.string()), ("options", pa.string()), ("target_request", pa.string()),
        ("target", pa.int32()), ("label", pa.string()), ("step", pa.int32()), ("score", pa.float64()),
        ("logit", pa.float64()), ("top", pa.list_(top)),
        ("box", pa.list_(pa.float64())), ("points", pa.list_(pa.list_(pa.float32()))),
        ("map", pa.binary()), ("map_height", pa.int32()), ("map_width", pa.int32()),
        ("seconds", pa.float64()), ("error", pa.string()), ("png", pa.string()),
    ])


def _digest(*parts: object) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(b"\x1f" + ("" if p is None else str(p)).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def row_key(content_id: str, method: str, options: str, target: str | None) -> str:
    """The resume key: content (sha256 of the bytes, or ``path:...`` for an unreadable file) + method + options +
    requested target."""
    return _digest("k", content_id, method, options, target)


def file_key(path: str, size: int, mtime_ns: int, method: str, options: str, target: str | None) -> str:
    """The stat-level key: same row as :func:`row_key` as long as the file's path, size and mtime are unchanged."""
    return _digest("f", path, size, mtime_ns, method, options, target)


def part_name(keys: list[str]) -> str:
    """A part's file name from the keys of the work it holds (stable across retries of the same chunk)."""
    return f"{PART_PREFIX}{_digest('p', *keys)}.parquet"


def table_dir(out: str | os.PathLike) -> Path:
    return Path(out) / TABLE


def part_files(out: str | os.PathLike) -> list[Path]:
    d = table_dir(out)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.name.startswith(PART_PREFIX) and p.name.endswith(".parquet"))


def write_part(rows: list[dict[str, Any]], out: str | os.PathLike, name: str) -> Path:
    """Write ``rows`` as one row group in ``DIR/explanations.parquet/name``, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from onnxfix.io.atomic import write_atomic

    table = pa.Table.from_pylist(rows, schema=schema())
    return write_atomic(table_dir(out) / name,
                        lambda fh: pq.write_table(table, fh, row_group_size=max(1, len(rows)), compression="zstd"))


def clean_stale(out: str | os.PathLike) -> int:
    """Remove the temporary files a killed run left in the table and PNG folders (``.*.part``, the names of
    :mod:`onnxfix.io.atomic`; never a finished file); returns how many. One run per results folder at a time."""
    n = 0
    for d in (table_dir(out), Path(out) / "png"):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(".") and p.name.endswith(".part"):
                try:
                    p.unlink()
                    n += 1
                except OSError:
                    pass
    return n


def remove_results(out: str | os.PathLike) -> None:
    """``--fresh``: delete the table's parts and the run description (nothing else in DIR)."""
    clean_stale(out)
    for p in part_files(out):
        p.unlink()
    meta = Path(out) / META
    if meta.exists():
        meta.unlink()


class DoneIndex:
    """The keys already in the table (a snapshot): sorted byte-string arrays, 16 bytes per row and key kind."""

    def __init__(self, keys: np.ndarray | None = None, file_keys: np.ndarray | None = None):
        self.keys = np.sort(keys) if keys is not None else np.zeros(0, "S32")
        self.file_keys = np.sort(file_keys) if file_keys is not None else np.zeros(0, "S32")

    @staticmethod
    def _member(sorted_arr: np.ndarray, queries: list[str]) -> np.ndarray:
        q = np.asarray(queries, dtype="S32")
        if len(sorted_arr) == 0 or len(q) == 0:
            return np.zeros(len(q), bool)
        i = np.searchsorted(sorted_arr, q).clip(0, len(sorted_arr) - 1)
        return sorted_arr[i] == q

    def has_keys(self, keys: list[str]) -> np.ndarray:
        return self._member(self.keys, keys)

    def has_file_keys(self, keys: list[str]) -> np.ndarray:
        return self._member(self.file_keys, keys)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def load(cls, out: str | os.PathLike, retry_errors: bool = False) -> DoneIndex:
        """The keys of every finished part in ``out`` (rows with an error excluded when ``retry_errors``)."""
        files = part_files(out)
        if not files:
            return cls()
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        t = ds.dataset([str(f) for f in files], format="parquet").to_table(columns=["key", "file_key", "error"])
        if retry_errors:
            t = t.filter(pc.is_null(t.column("error")))
        keys = t.column("key").to_numpy(zero_copy_only=False).astype("S32")
        fkeys = t.column("file_key").to_numpy(zero_copy_only=False).astype("S32")
        return cls(keys, fkeys)


def check_meta(out: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write ``DIR/batch.json`` for a new table; for an existing one, refuse a different model or preprocessing."""
    from onnxfix.io.atomic import write_atomic

    path = Path(out) / META
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable run description ({exc}); use --fresh to start over") from None
        for k in ("model_sha256", "preprocess", "map_size", "labels", "output"):
            if old.get(k) != meta.get(k):
                raise InputError(f"{out} holds results of another run ({k} differs: {old.get(k)!r} there, "
                                 f"{meta.get(k)!r} now); use another --out, or --fresh to start over")
        return
    if part_files(out):
        raise InputError(f"{out}: a results table without its batch.json; use --fresh to start over")
    write_atomic(path, lambda fh: fh.write(json.dumps(meta, indent=2, sort_keys=True)), binary=False)


def read_results(out: str | os.PathLike, columns: list[str] | None = None, format: str = "auto",
                 maps: bool = False, dedupe: bool = True):
    """The results of ``onnxfix batch`` in ``out`` as one table.

    Parameters
    ----------
    out : str or path
        The ``--out`` folder of the batch run (or its ``explanations.parquet`` folder).
    columns : list of str, optional
        Read only these columns (``key`` and ``error`` are added when de-duplicating).
    format : {"auto", "pandas", "arrow"}
        ``"auto"``: a pandas DataFrame when pandas is installed, else a ``pyarrow.Table``.
    maps : bool
        pandas only: add a ``heatmap`` column holding each stored map as a 2-D float16 array (None for errors).
    dedupe : bool
        Keep one row per ``key`` (the same content met under two paths, or a retried error, can write two):
        the first row without an error, else the first one.

    Returns
    -------
    pandas.DataFrame or pyarrow.Table
        One row per image × method × target; an empty table with the full schema when there are no results.
    """
    require_pyarrow()
    import pyarrow as pa
    import pyarrow.dataset as ds

    base = Path(out)
    if base.name != TABLE and (base / TABLE).is_dir():
        base = base / TABLE
    if not base.exists():
        raise InputError(f"{out}: no batch results here (expected {TABLE})")
    files = sorted(p for p in base.iterdir() if p.name.startswith(PART_PREFIX) and p.name.endswith(".parquet"))
    cols = None if columns is None else list(dict.fromkeys(list(columns) + (["key", "error"] if dedupe else [])))
    if files:
        t = ds.dataset([str(f) for f in files], format="parquet", schema=schema()).to_table(columns=cols)
    else:
        sch = schema()
        t = sch.empty_table() if cols is None else pa.schema([sch.field(c) for c in cols]).empty_table()
    if dedupe and t.num_rows:
        t = _dedupe(t)
    if columns is not None:
        t = t.select(list(columns))
    if format == "arrow":
        return t
    try:
        import pandas  # noqa: F401
    except ImportError:
        if format == "pandas":
            raise InputError("read_results(format='pandas') needs pandas: pip install pandas") from None
        return t
    import pandas as pd

    ints = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}  # nullable: error rows have no size/target
    df = t.to_pandas(types_mapper=ints.get)
    if maps and "map" in df.columns:
        df["heatmap"] = [decode_map(m, h, w) for m, h, w in zip(df["map"], df["map_height"], df["map_width"],
                                                                  strict=True)]
    return df


def _dedupe(t):
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = t.column("key").to_numpy(zero_copy_only=False).astype("S32")
    if len(np.unique(keys)) == len(keys):
        return t
    err = pc.is_valid(t.column("error")).to_numpy(zero_copy_only=False)
    order = np.lexsort((np.arange(len(keys)), err, keys))  # by key, rows without error first, then table order
    sk = keys[order]
    first = np.ones(len(order), bool)
    first[1:] = sk[1:] != sk[:-1]
    return t.take(pa.array(np.sort(order[first])))


def decode_map(value: bytes | None, height: int | None, width: int | None) -> np.ndarray | None:
    """A stored ``map`` cell → the (height, width) float16 array (little-endian, row-major); None stays None."""
    if value is None or height is None or width is None:
        return None
    return np.frombuffer(value, dtype="<f2").reshape(int(height), int(width))
