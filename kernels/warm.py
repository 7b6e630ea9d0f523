"""Numba's cache, cold or warm: numpy twins while it is cold, and one detached process that fills it.

A fresh install has an empty numba cache, and compiling the fixation pass (:func:`onnxfix.kernels.plan.run_plan`)
and the density kernels costs ~13 s of CPU. Until a kernel's compiled form is on disk (or in memory), its callers
run the numpy twin (:func:`onnxfix.kernels.plan.run_plan_numpy`, the density kernels' numpy paths: the same
arithmetic in the same order, tested equal), and the first such call starts ``python -m onnxfix.kernels.warm`` —
a detached, low-priority process that compiles every kernel into the cache for the next runs. Numba writes its
cache files through a temporary name and ``os.replace``, so two processes filling one cache cannot corrupt it; a
lock file keeps a second warmer from doing the same work twice.

``$ONNXFIX_KERNELS``: ``auto`` (default, as above), ``numba`` (always compile; no numpy twin, no background
process) or ``numpy`` (never compile). ``$ONNXFIX_BACKGROUND_COMPILE=0``: no background process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numba

__all__ = ["MODE", "ready", "warm_all"]

#: ``auto``, ``numba`` or ``numpy`` (see the module docstring); tests set it.
MODE = os.environ.get("ONNXFIX_KERNELS", "auto").strip().lower() or "auto"

_READY: set[int] = set()
_started = False
_lock = threading.Lock()


def _on_disk(disp, args: tuple) -> bool:
    """Whether numba's cache holds ``disp``'s overload for these arguments (numba's own index key)."""
    try:
        sig = tuple(numba.typeof(a) for a in args)
        if sig in disp.overloads:
            return True
        cache = disp._cache
        key = cache._index_key(sig, disp.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # noqa: BLE001 - an unknown numba: compile as usual
        return True


def ready(disp, *args) -> bool:
    """Whether calling the jitted ``disp`` with ``args`` is cheap now (compiled, or in numba's cache).

    When not, the caller runs the numpy twin, and a background process is started that fills the cache.
    """
    if MODE == "numba":
        return True
    if MODE == "numpy":
        return False
    key = id(disp)
    if key in _READY:
        return True
    if _on_disk(disp, args):
        _READY.add(key)
        return True
    _start_background()
    return False


def _start_background() -> None:
    global _started
    with _lock:
        if _started or os.environ.get("ONNXFIX_BACKGROUND_COMPILE", "1") == "0":
            return
        _started = True
    try:
        kw: dict = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                    "close_fds": True, "env": {**os.environ, "ONNXFIX_KERNELS": "numba"}}
        if os.name == "posix":
            kw["start_new_session"] = True
        else:  # pragma: no cover - Windows
            kw["creationflags"] = getattr(subprocess, "DETACHED_PROCESS", 0) | getattr(
                subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        subprocess.Popen([sys.executable, "-m", "onnxfix.kernels.warm"], **kw)  # noqa: S603
    except OSError:
        pass


def warm_all() -> None:
    """Compile (or load) every kernel the fixation method and its maps call, with the argument types they use."""
    import numpy as np

    from . import density, plan

    plan.compile_now()
    pts = np.array([[1.0, 2.0], [2.0, 2.0]])
    density.splat(pts, 4, 4)
    density.gaussian_blur(np.zeros((4, 4), np.float32), 1.0)
    density.neighbour_counts(pts, 1.5)


def _main() -> None:
    """Fill numba's cache, once at a time (a lock file next to the cache), at low priority."""
    try:
        os.nice(10)
    except (AttributeError, OSError):
        pass
    lock = None
    try:
        import fcntl

        from .plan import run_plan

        path = os.path.join(run_plan._cache.cache_path, "onnxfix-warm.lock")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock = open(path, "a")  # noqa: SIM115 - held for the process's life
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another warmer is at it
    except Exception:  # noqa: BLE001 - no lock on this platform: warm anyway (numba's writes are atomic)
        pass
    warm_all()


if __name__ == "__main__":
    _main()
