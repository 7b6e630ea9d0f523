"""Output files: written whole to a temporary file in the destination folder, then put in place in one step.

Guarantees (docs/robustness.md):

* **Complete or absent.** A reader never sees a half-written output; a failure, Ctrl-C or SIGTERM at any point leaves
  no ``.part`` file behind (the CLI's signal handler removes the temporary files in flight, see
  :func:`signal_cleanup`).
* **Never replace, unless asked.** :func:`write_new` claims the first free name of a list of candidates atomically:
  the finished temporary file is hard-linked to the candidate, which fails if anything already has that name, so N
  processes writing ``photo.fixations.png`` into one folder at once get N distinct complete files
  (``photo…``, ``photo-2…``, …) and each learns the name it got. Without hard links (some network and FAT file
  systems) the name is claimed by an exclusive create (``O_EXCL``) and the finished file renamed over it.
  ``overwrite=True`` replaces the first candidate instead (``os.replace``).
* **Never replace an input.** A candidate that is one of the ``protect`` files is refused even with ``overwrite``.
* **The user's umask.** Files get ``0666 & ~umask`` (0644 typically), not the 0600 of a temporary file.
* **OS errors are user errors.** A name too long, a full disk, a file-size limit, a folder in the way, a read-only
  or forbidden folder: :class:`~onnxfix.errors.InputError` naming the path and the reason.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from onnxfix.errors import InputError, OutputError, printable

#: Temporary files being written right now (the signal handler removes them before the process unwinds).
_LIVE: set[str] = set()
_LOCK = threading.Lock()
#: How many numbered names :func:`write_new` tries before giving up.
MAX_CANDIDATES = 100_000

_REASONS = {
    errno.ENAMETOOLONG: "file name too long for the file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit: ulimit -f?)",
    errno.EISDIR: "a folder is in the way",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way",
    errno.ENOENT: "the folder does not exist",
}


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by the SIGTERM (and SIGHUP) handler of :func:`signal_cleanup`."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def reason(exc: OSError) -> str:
    """A short human reason for an ``OSError`` (its errno), e.g. ``no space left on the device``."""
    return _REASONS.get(exc.errno or -1) or (exc.strerror or exc.__class__.__name__).lower()


def os_error(path: str | os.PathLike, exc: OSError, what: str = "cannot write output") -> OutputError:
    """The one-line :class:`~onnxfix.errors.OutputError` (an ``InputError``, exit 2) for ``exc`` at ``path``."""
    return OutputError(f"{printable(os.fspath(path))}: {what} ({reason(exc)})")


def output_mode() -> int:
    """``0o666 & ~umask``: the mode a plain ``open(path, "w")`` would give."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _remove(tmp: str) -> None:
    with _LOCK:
        _LIVE.discard(tmp)
    try:
        os.unlink(tmp)
    except OSError:
        pass


def remove_partial_files() -> None:
    """Delete every temporary file still being written (for signal handlers)."""
    with _LOCK:
        live = list(_LIVE)
    for tmp in live:
        _remove(tmp)


def _on_signal(signum: int, frame: Any) -> None:
    remove_partial_files()
    raise Terminated(signum)


class signal_cleanup:  # noqa: N801 - used as a context manager, like contextlib's
    """Context manager: while inside, SIGTERM and SIGHUP remove the temporary files in flight and raise
    :class:`Terminated` (a ``KeyboardInterrupt``) in the main thread, so the process unwinds as on Ctrl-C.
    Outside the main thread it does nothing."""

    def __enter__(self) -> signal_cleanup:
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if s is not None:
                    try:
                        self._old[s] = signal.signal(s, _on_signal)
                    except (ValueError, OSError):
                        pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            try:
                signal.signal(s, h)
            except (ValueError, OSError, TypeError):
                pass


def numbered(stem: str, tail: str) -> Iterator[str]:
    """``stem + tail``, ``stem-2 + tail``, ``stem-3 + tail``… (``photo.fixations.png``, ``photo-2.fixations.png``)."""
    yield f"{stem}{tail}"
    for k in range(2, MAX_CANDIDATES + 1):
        yield f"{stem}-{k}{tail}"


def _same_file(a: Path, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _check_name(dest: Path) -> None:
    """Refuse a name that no file system takes (more than 255 bytes), naming it, before any work."""
    try:
        limit = os.pathconf(dest.parent if str(dest.parent) else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    n = len(os.fsencode(dest.name))
    if n > limit:
        raise InputError(f"{printable(str(dest))}: cannot write output (file name too long: {n} bytes, the file "
                         f"system allows {limit})")


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise os_error(folder, exc, "cannot write output here (a file, not a folder)") from None
    except OSError as exc:
        raise os_error(folder, exc, "cannot write output here") from None
    if not folder.is_dir():
        raise InputError(f"{printable(str(folder))}: cannot write output here (not a folder)")


def _write_temp(folder: Path, write: Callable[[IO[Any]], None], binary: bool, label: Path) -> str:
    """Write the whole content to a temporary file in ``folder`` with the output's final mode; return its path."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".onnxfix-", suffix=".part", dir=folder)
    except OSError as exc:
        raise os_error(folder, exc, "cannot write output here") from None
    with _LOCK:
        _LIVE.add(tmp)
    try:
        os.fchmod(fd, output_mode())
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")) as fh:
            write(fh)
    except OSError as exc:
        _remove(tmp)
        raise os_error(label, exc) from None
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _claim(tmp: str, cand: Path) -> bool:
    """Give the finished ``tmp`` the name ``cand`` unless something has it; True when claimed."""
    try:
        os.link(tmp, cand)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV,
                             errno.ENOSYS):
            raise
    # no hard links here: claim the name by an exclusive create, then move the finished file over it
    try:
        fd = os.open(cand, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    try:
        os.replace(tmp, cand)
    except BaseException:
        try:
            os.unlink(cand)
        except OSError:
            pass
        raise
    return True


def write_new(candidates: Iterable[str | os.PathLike], write: Callable[[IO[Any]], None], binary: bool = True,
              protect: Iterable[str | os.PathLike] = (), overwrite: bool = False,
              used: set[Path] | None = None) -> Path:
    """Write an output under the first free name of ``candidates``; return the name it got.

    Parameters
    ----------
    candidates : iterable of paths
        Names in order of preference, all in one folder (e.g. ``folder / n for n in numbered(stem, tail)``).
    write : callable
        ``write(file)`` writes the whole content.
    binary : bool
        Binary file (default) or UTF-8 text.
    protect : iterable of paths
        Input files: never replaced; a candidate that is one of them is skipped (refused with ``overwrite``).
    overwrite : bool
        Replace the first candidate not in ``used`` (default: claim the first name nothing has, atomically).
    used : set of Path, optional
        Names this run already wrote (skipped, then added to).

    Raises
    ------
    InputError
        The folder cannot be written, the disk is full, a name is too long, an input would be replaced...
    """
    it = iter(candidates)
    first = Path(next(it))
    _check_name(first)
    folder = first.parent if str(first.parent) else Path(".")
    _make_folder(folder)
    protect = [p for p in protect]
    tmp = _write_temp(folder, write, binary, first)
    cand = first
    try:
        for cand in itertools.chain((first,), (Path(c) for c in it)):  # noqa: B020 - cand names the path in errors
            if used is not None and cand in used:
                continue
            if overwrite:
                if any(_same_file(cand, p) for p in protect):
                    raise InputError(f"{printable(str(cand))}: refusing to overwrite an input file")
                os.replace(tmp, cand)
                break
            if _claim(tmp, cand):
                break
        else:
            raise InputError(f"{printable(str(first))}: cannot write output (no free name left)")
    except OSError as exc:
        _remove(tmp)
        raise os_error(cand, exc) from None
    except BaseException:
        _remove(tmp)
        raise
    _remove(tmp)  # the link's other name (after os.replace it is gone already)
    if used is not None:
        used.add(cand)
    return cand


def write_atomic(path: str | os.PathLike, write: Callable[[IO[Any]], None], binary: bool = True,
                 protect: Iterable[str | os.PathLike] = (), overwrite: bool = True) -> Path:
    """Write ``path`` atomically: ``write(file)`` fills a temporary file beside it, which then takes the name.

    ``overwrite=True`` (the default, for an explicit path chosen by a program) replaces an existing file;
    ``overwrite=False`` refuses it (:class:`InputError`, ``already exists``). Either way an input listed in
    ``protect`` is never replaced.

    Raises
    ------
    InputError
        ``path`` is one of the ``protect`` files, exists (``overwrite=False``), or cannot be written.
    """
    dest = Path(path)
    protect = list(protect)
    if any(_same_file(dest, p) for p in protect):
        raise InputError(f"{printable(str(dest))}: refusing to overwrite an input file")
    if not overwrite and os.path.lexists(dest):
        raise InputError(f"{printable(str(dest))}: already exists; refusing to replace it (pass --overwrite)")
    got = write_new([dest], write, binary, protect, overwrite=overwrite)
    return got


def claim_name(candidates: Iterable[str | os.PathLike], used: set[Path] | None = None) -> Path:
    """Claim the first free name of ``candidates`` by creating it empty and exclusively (``O_EXCL``), for outputs
    that are written in place over time (a results journal); return it."""
    it = iter(candidates)
    first = Path(next(it))
    _check_name(first)
    _make_folder(first.parent if str(first.parent) else Path("."))
    cand = first
    try:
        for cand in (first, *(Path(c) for c in it)):  # noqa: B020
            if used is not None and cand in used:
                continue
            try:
                fd = os.open(cand, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            os.close(fd)
            if used is not None:
                used.add(cand)
            return cand
    except OSError as exc:
        raise os_error(cand, exc) from None
    raise InputError(f"{printable(str(first))}: cannot write output (no free name left)")
