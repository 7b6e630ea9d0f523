"""Bounded reads of small untrusted files (labels, annotations, JSON side files).

Every read here is of a **regular file** (a FIFO, a device such as ``/dev/zero``, a socket or a folder is refused
before anything blocks or streams), of at most ``max_bytes`` bytes (checked on the open file, then enforced while
reading, so a file growing under us cannot get past it), and JSON is parsed only when its nesting depth is at most
``max_depth`` (a deeply nested document would otherwise end in a RecursionError). Failures are
:class:`~onnxfix.errors.InputError` naming the file and the reason.
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any

import numpy as np

from onnxfix.errors import InputError, printable

#: Default cap of a small text file (labels, a relevant-filters JSON): 16 MB.
MAX_SMALL_FILE = 16 * 1024**2
#: Default cap of a JSON document's nesting depth.
MAX_JSON_DEPTH = 32

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_bytes(path: str | os.PathLike, what: str, max_bytes: int = MAX_SMALL_FILE) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``); ``what`` names it in errors ("labels")."""
    label = printable(os.fspath(path))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise InputError(f"{label}: cannot read {what} (no such file)") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot read {what} ({(exc.strerror or str(exc)).lower()})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
            raise InputError(f"{label}: cannot read {what} (not a regular file: {kind})")
        if st.st_size > max_bytes:
            raise InputError(f"{label}: {what} file is {st.st_size} bytes, above the limit of {max_bytes}")
        chunks = []
        got = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            if got > max_bytes:
                raise InputError(f"{label}: {what} file is larger than the limit of {max_bytes} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise InputError(f"{label}: cannot read {what} ({(exc.strerror or str(exc)).lower()})") from None
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike, what: str, max_bytes: int = MAX_SMALL_FILE) -> str:
    """:func:`read_bytes` decoded as UTF-8 (a leading byte-order mark is dropped)."""
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{printable(os.fspath(path))}: cannot read {what} (not UTF-8 text: byte {exc.start})") \
            from None


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in a JSON text (strings ignored), without parsing it."""
    bare = _STRING.sub('""', text)
    codes = np.frombuffer(bare.encode("utf-8", "surrogatepass"), np.uint8)
    step = np.zeros(len(codes), np.int64)
    step[(codes == ord("[")) | (codes == ord("{"))] = 1
    step[(codes == ord("]")) | (codes == ord("}"))] = -1
    return int(np.cumsum(step).max()) if len(step) else 0


def loads(text: str, label: str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON ``text`` refusing nesting deeper than ``max_depth``; errors name ``label`` and ``what``."""
    depth = json_depth(text)
    if depth > max_depth:
        raise InputError(f"{printable(label)}: {what} is JSON nested {depth} levels deep, above the limit of "
                         f"{max_depth}")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise InputError(f"{printable(label)}: {what} is not valid JSON ({printable(exc)})") from None


def read_json(path: str | os.PathLike, what: str, max_bytes: int = MAX_SMALL_FILE,
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A bounded regular JSON file, parsed (see :func:`loads`)."""
    return loads(read_text(path, what, max_bytes), os.fspath(path), what, max_depth)


def is_regular_file(path: str | os.PathLike) -> bool:
    """True for an existing regular file (links followed); never blocks."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


__all__ = ["MAX_JSON_DEPTH", "MAX_SMALL_FILE", "is_regular_file", "json_depth", "loads", "read_bytes", "read_json",
           "read_text"]
