"""Atomic output files: written to a temporary name in the destination folder, then renamed into place.

A failure or Ctrl-C at any point leaves the destination as it was and no temporary file behind; an output that
would replace one of the inputs (``protect``) is refused.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from onnxfix.errors import InputError


def write_atomic(path: str | os.PathLike, write: Callable[[IO[Any]], None], binary: bool = True,
                 protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path`` and rename it to ``path``.

    Raises
    ------
    InputError
        ``path`` is one of the ``protect`` files, or its folder cannot be written.
    """
    dest = Path(path)
    for p in protect:
        try:
            if Path(p).exists() and dest.exists() and dest.resolve() == Path(p).resolve():
                raise InputError(f"{dest}: refusing to overwrite an input file")
        except OSError:
            continue
    folder = dest.parent if str(dest.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise InputError(f"{folder}: cannot write output here ({exc.strerror or exc})") from None
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")) as fh:
            write(fh)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return dest
